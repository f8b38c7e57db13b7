r"""Closed forms for many one-hidden-layer tanh networks at once: logits, Jacobian and Hessian norms.

For :math:`F(x) = W_2 \tanh(W_1 x + b_1) + b_2`, with :math:`z = W_1 x + b_1`,
:math:`s = \phi'(z) = 1 - \tanh^2 z` and :math:`t = \phi''(z) = -2\tanh z\,(1 - \tanh^2 z)`,
the input Jacobian is :math:`J = W_2 \operatorname{diag}(s) W_1` and the input
Hessian of output :math:`k` is :math:`H_k = \sum_j (W_2)_{kj}\, t_j\, w_j w_j^\top`
(:math:`w_j` the :math:`j`-th row of :math:`W_1`). Hence (lecture 12,
book/12-noise-inside-regulariser.md, eq-07-closed-form)

.. math::

    \lVert J \rVert_F^2 = s^\top \bigl( (W_2^\top W_2) \circ (W_1 W_1^\top) \bigr) s,
    \qquad
    \lVert H \rVert_F^2 = t^\top \bigl( (W_2^\top W_2) \circ (W_1 W_1^\top)
        \circ (W_1 W_1^\top) \bigr) t,

quadratic forms in the hidden slopes and curvatures: with no autograd through the input,
the Jacobian penalty of Rifai et al. (2011) costs about one forward pass. Every function
takes :math:`M` networks stacked along a leading axis, ``params = (W1, b1, W2[, b2])`` of
shapes :math:`(M, h, d)`, :math:`(M, h)`, :math:`(M, c, h)`, :math:`(M, c)` (from
:func:`stack_one_hidden_layer`), and one batch ``x`` of shape :math:`(M, B, d)` per network,
so that an ensemble of small networks trains as one batched computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._checks import check_tensor
from .noise import standard_noise
from .seeding import check_generator

__all__ = [
    "stack_one_hidden_layer", "one_hidden_layer_logits", "one_hidden_layer_penalty",
    "one_hidden_layer_hessian_norm",
]


def stack_one_hidden_layer(
    models: Sequence[nn.Module], *, device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> list[Tensor]:
    r"""Stack the parameters of :math:`M` networks ``MLP([d, h, c])`` (tanh) into ``[W1, b1, W2, b2]``.

    ``models`` are :func:`gni_lib.models.MLP` with one hidden tanh layer (children 1
    and 4 are the two :class:`torch.nn.Linear`), all with the same widths. The tensors
    are detached copies, moved to ``device`` and ``dtype`` (unchanged where ``None``),
    with shapes :math:`(M, h, d)`, :math:`(M, h)`, :math:`(M, c, h)`, :math:`(M, c)`;
    call ``requires_grad_()`` on them to train.

    Raises:
        TypeError: if ``models`` is not a sequence of such networks.
        ValueError: if it is empty, or the networks' widths differ.
    """
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)):
        raise TypeError(f"models must be a sequence of MLP([d, h, c]) networks, got {type(models).__name__}")
    if len(models) == 0:
        raise ValueError("models must hold at least one MLP([d, h, c]) network, got an empty sequence")
    for i, model in enumerate(models):
        ok = (
            isinstance(model, nn.Sequential)
            and len(model) == 5
            and isinstance(model[1], nn.Linear)
            and isinstance(model[2], nn.Tanh)
            and isinstance(model[4], nn.Linear)
        )
        if not ok:
            raise TypeError(f"models[{i}] must be a tanh MLP([d, h, c]) with one hidden layer, got {model!r}")
    layers = ((1, "weight"), (1, "bias"), (4, "weight"), (4, "bias"))
    shapes = {tuple(getattr(m[k], name).shape for k, name in layers) for m in models}
    if len(shapes) != 1:
        raise ValueError(f"models must all have the same widths, got parameter shapes {sorted(shapes)}")
    return [
        torch.stack([getattr(m[k], name).detach() for m in models]).to(device=device, dtype=dtype)
        for k, name in layers
    ]


def _check_params(params: object, x: object, *, with_output_bias: bool, finite: bool = True) -> tuple[Tensor, ...]:
    wanted = "(W1, b1, W2, b2)" if with_output_bias else "(W1, b1, W2) or (W1, b1, W2, b2)"
    if not isinstance(params, Sequence) or len(params) not in ((4,) if with_output_bias else (3, 4)):
        got = type(params).__name__ if not isinstance(params, Sequence) else f"{len(params)} tensors"
        raise TypeError(f"params must be a sequence {wanted}, got {got}")
    W1 = check_tensor(params[0], "params[0] (W1)", ndim=3, finite=False)
    b1 = check_tensor(params[1], "params[1] (b1)", ndim=2, finite=False)
    W2 = check_tensor(params[2], "params[2] (W2)", ndim=3, finite=False)
    x = check_tensor(x, "x", ndim=3, finite=finite)
    M, h, d = W1.shape
    if b1.shape != (M, h):
        raise ValueError(f"params[1] (b1) must have shape {(M, h)} to match W1 {tuple(W1.shape)}, got {tuple(b1.shape)}")
    if W2.shape[0] != M or W2.shape[2] != h:
        raise ValueError(f"params[2] (W2) must have shape (M={M}, c, h={h}), got {tuple(W2.shape)}")
    if x.shape[0] != M or x.shape[2] != d:
        raise ValueError(f"x must have shape (M={M}, B, d={d}), one batch per network, got {tuple(x.shape)}")
    checked = (W1, b1, W2, x)
    if len(params) == 4:
        b2 = check_tensor(params[3], "params[3] (b2)", ndim=2, finite=False)
        if b2.shape != (M, W2.shape[1]):
            raise ValueError(f"params[3] (b2) must have shape {(M, W2.shape[1])}, got {tuple(b2.shape)}")
        checked += (b2,)
    return checked


def one_hidden_layer_logits(params: Sequence[Tensor], x: Tensor) -> Tensor:
    r"""The outputs :math:`W_2 \tanh(W_1 x + b_1) + b_2` of :math:`M` stacked networks.

    Args:
        params: ``(W1, b1, W2, b2)``, shapes :math:`(M, h, d)`, :math:`(M, h)`,
            :math:`(M, c, h)`, :math:`(M, c)`.
        x: inputs, :math:`(M, B, d)`: batch :math:`m` goes through network :math:`m`.

    Returns:
        Tensor: shape :math:`(M, B, c)`, differentiable in ``params``.

    Raises:
        TypeError: if ``params`` is not a sequence of four tensors or ``x`` is not a tensor.
        ValueError: if the shapes do not match, or ``x`` is not finite.
    """
    W1, b1, W2, x, b2 = _check_params(params, x, with_output_bias=True)
    hidden = torch.tanh(torch.baddbmm(b1.unsqueeze(1), x, W1.transpose(1, 2)))
    return torch.baddbmm(b2.unsqueeze(1), hidden, W2.transpose(1, 2))


def one_hidden_layer_penalty(
    params: Sequence[Tensor], x: Tensor, noise_std: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Batch mean of :math:`\lVert J_F(x + \varepsilon)\rVert_F^2` for :math:`M` stacked tanh networks.

    .. math::

        P_m = \frac1B \sum_{b=1}^{B} s_{mb}^\top \bigl( (W_2^\top W_2) \circ (W_1 W_1^\top) \bigr)_m s_{mb},
        \qquad s_{mb} = 1 - \tanh^2\bigl(W_1 (x_{mb} + \varepsilon_{mb}) + b_1\bigr),

    the closed form of the Jacobian penalty (Bishop 1995) and, with noise in its input,
    one draw of the noisy penalty of Rifai et al. (2011) (eq-07-closed-form). With
    ``noise_std=None``, :math:`\varepsilon = 0` and nothing is drawn; otherwise
    :math:`\varepsilon` is ``noise_std.view(-1, 1, 1)`` times
    :func:`gni_lib.noise.standard_noise` of ``x``'s shape: for :math:`M = 1` the same draw as
    ``gni_lib.penalties.jacobian_penalty(model, x[0], noise_std=..., samples=1)`` from a
    generator in the same state.

    Args:
        params: ``(W1, b1, W2)`` or ``(W1, b1, W2, b2)`` (``b2`` is not used).
        x: inputs, :math:`(M, B, d)`, finite.
        noise_std: ``None``, or a tensor of :math:`M` standard deviations :math:`\ge 0`.
        generator: the source of the noise, on ``x``'s device type (``None``: torch's global one).

    Returns:
        Tensor: shape :math:`(M,)`, differentiable in ``params``.

    Raises:
        TypeError: if ``params``, ``x``, ``noise_std`` or ``generator`` has the wrong type.
        ValueError: on mismatched shapes, a non-finite ``x``, a ``noise_std`` not of shape
            :math:`(M,)`, negative or not finite, or a generator on another device type.
    """
    W1, b1, W2, x = _check_params(params, x, with_output_bias=False, finite=noise_std is None)[:4]
    if noise_std is not None:
        noise_std = check_tensor(noise_std, "noise_std", ndim=1, finite=False)
        if noise_std.shape[0] != W1.shape[0]:
            raise ValueError(f"noise_std must have shape (M={W1.shape[0]},), one value per network, "
                             f"got {tuple(noise_std.shape)}")
        # the three value checks in one read-back: this runs at every training step
        flags = torch.stack([~x.isfinite().all(), ~noise_std.isfinite().all(), (noise_std < 0).any()])
        x_bad, std_bad, negative = flags.tolist()
        if x_bad:
            raise ValueError("x must be finite, but it holds NaN or infinite entries")
        if std_bad:
            raise ValueError("noise_std must be finite, but it holds NaN or infinite entries")
        if negative:
            raise ValueError("noise_std must hold standard deviations >= 0, got a negative entry")
        check_generator(generator, x.device)
        x = x + noise_std.view(-1, 1, 1) * standard_noise(x.shape, generator, dtype=x.dtype, device=x.device)
    slopes = 1 - torch.tanh(torch.baddbmm(b1.unsqueeze(1), x, W1.transpose(1, 2))) ** 2  # phi'(W1 x + b1)
    gram = (W2.transpose(1, 2) @ W2) * (W1 @ W1.transpose(1, 2))  # (M, h, h)
    return ((slopes @ gram) * slopes).sum(dim=(1, 2)) / x.shape[1]


def one_hidden_layer_hessian_norm(params: Sequence[Tensor], x: Tensor) -> Tensor:
    r"""Batch mean of :math:`\lVert H_F(x)\rVert_F^2 = \sum_k \lVert \nabla_x^2 F_k \rVert_F^2` for :math:`M` tanh networks.

    .. math::

        \lVert H \rVert_F^2 = t^\top \bigl( (W_2^\top W_2) \circ (W_1 W_1^\top)
            \circ (W_1 W_1^\top) \bigr) t, \qquad t = \phi''(W_1 x + b_1),

    from :math:`H_k = \sum_j (W_2)_{kj}\,\phi''(z_j)\, w_j w_j^\top`; the oracle
    is :func:`gni_lib.penalties.input_hessian_norm`.

    Args, Raises: as :func:`one_hidden_layer_penalty` (no noise).

    Returns:
        Tensor: shape :math:`(M,)`.
    """
    W1, b1, W2, x = _check_params(params, x, with_output_bias=False)[:4]
    a = torch.tanh(torch.baddbmm(b1.unsqueeze(1), x, W1.transpose(1, 2)))
    curvatures = -2 * a * (1 - a**2)  # phi''(z) for phi = tanh
    inner = W1 @ W1.transpose(1, 2)
    gram = (W2.transpose(1, 2) @ W2) * inner * inner
    return ((curvatures @ gram) * curvatures).sum(dim=(1, 2)) / x.shape[1]

r"""Penalties on input derivatives: the Jacobian (Tikhonov) penalty, with optional noise in its input.

For a model :math:`F : \mathbb R^{d_\text{in}} \to \mathbb R^{d_\text{out}}`,

.. math::

    P_0(x) = \lVert J_F(x) \rVert_F^2, \qquad
    P_\sigma(x) = \mathbb E_{\varepsilon \sim \mathcal N(0, \sigma^2 I)}
        \lVert J_F(x + \varepsilon) \rVert_F^2 .

:math:`P_0` is the Tikhonov regulariser that small input noise amounts to for the
squared error (Bishop 1995); :math:`P_\sigma` is the penalty of Rifai et al. (2011),
with noise only *inside* the regulariser. To second order (derived in lecture 12,
book/12-noise-inside-regulariser.md),

.. math::

    P_\sigma(x) = \lVert J_F \rVert_F^2
        + \sigma^2 \Bigl( \lVert H_F \rVert_F^2
        + \sum_{k,i} J_{ki}\, \partial_i \Delta F_k \Bigr) + O(\sigma^4),

with the Hessian term :func:`input_hessian_norm` and the third-derivative cross term
:func:`jacobian_laplacian_cross`. All routes need examples that do not interact:
example :math:`b`'s output depends on :math:`x_b` only, so the Jacobian routes run the
model once and get row :math:`i` of every example's Jacobian from one vector-Jacobian
product with the cotangent :math:`e_i` on every example.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_choice, check_positive_int, check_real
from .jacobians import output_basis
from .noise import standard_noise
from .seeding import check_generator

__all__ = [
    "jacobian_penalty",
    "per_example_jacobians",
    "input_derivatives",
    "input_hessian_norm",
    "jacobian_laplacian_cross",
    "PENALTY_METHODS",
]

#: The estimators :func:`jacobian_penalty` accepts as ``method``.
PENALTY_METHODS = ("exact", "hutchinson")


def _check_model_and_input(model: object, x: object) -> Tensor:
    if not callable(model):
        raise TypeError(
            f"model must be callable (B, d_in) -> (B, d_out), got {type(model).__name__}"
        )
    return _check_input(x)


def _check_input(x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, d_in), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"x must have shape (B, d_in) with B, d_in >= 1, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite, but it holds NaN or infinite entries")
    return x


def _vjp_rows(model: Callable[[Tensor], Tensor], x: Tensor, cotangents: Callable[[Tensor], Tensor]) -> Tensor:
    r"""(c, N, d_in): the rows :math:`v^\top J_F(x_n)` for the cotangents ``cotangents(output)``, (c, N, d_out)."""
    output, vjp_fn = torch.func.vjp(model, x)
    _check_output(output, x)
    (rows,) = torch.func.vmap(vjp_fn)(cotangents(output))
    return rows


def _jacobians(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """(B, d_out, d_in): cotangent :math:`e_i` on every example gives row :math:`i` of every Jacobian."""
    return _vjp_rows(model, x, lambda output: output_basis(output).transpose(0, 1)).transpose(0, 1)


def per_example_jacobians(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    r"""Return the Jacobians :math:`J_F(x_b) = \partial F(x_b) / \partial x_b` of every example.

    .. math::

        J[b, i, a] = \frac{\partial F_i(x_b)}{\partial x_{b,a}},

    by :math:`d_\text{out}` vector-Jacobian products vectorised with
    :func:`torch.func.vmap` (module docstring). Differentiable with respect to the
    parameters (and ``x``) when autograd is on.

    Args:
        model: maps :math:`(B, d_\text{in})` to :math:`(B, d_\text{out})`.
        x: the inputs, shape :math:`(B, d_\text{in})`, finite, floating point.

    Returns:
        Tensor: shape :math:`(B, d_\text{out}, d_\text{in})`, on ``x``'s device and dtype.

    Raises:
        TypeError: if ``model`` is not callable or ``x`` is not a tensor.
        ValueError: if ``x`` is not a finite 2-D floating tensor, or the output
            is not of shape :math:`(B, d_\text{out})`.
    """
    x = _check_model_and_input(model, x)
    return _jacobians(model, x)


def jacobian_penalty(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    noise_std: float = 0.0,
    samples: int = 1,
    method: str = "exact",
    probes: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Return the mean squared Frobenius norm of the input-output Jacobian, at noisy inputs.

    .. math::

        P = \frac{1}{S B} \sum_{s=1}^{S} \sum_{b=1}^{B}
            \bigl\lVert J_F(x_b + \varepsilon_{s,b}) \bigr\rVert_F^2,
        \qquad \varepsilon_{s,b} \sim \mathcal N(0, \sigma^2 I_{d_\text{in}}),

    with :math:`\sigma` = ``noise_std`` and :math:`S` = ``samples``: Bishop's (1995)
    Tikhonov regulariser at :math:`\sigma = 0`, else the Monte Carlo estimate of
    Rifai et al.'s (2011) noisy-input penalty.

    ``method="exact"``: every Jacobian, :math:`d_\text{out}` vector-Jacobian products.
    ``method="hutchinson"``: the unbiased estimate (:math:`\mathbb E[v v^\top] = I`)

    .. math::

        \lVert J \rVert_F^2 = \mathbb E_v \lVert v^\top J \rVert^2
        \approx \frac1M \sum_{m=1}^{M} \lVert v_m^\top J \rVert^2,
        \qquad v_m \in \{-1, +1\}^{d_\text{out}} \text{ Rademacher},

    with :math:`M` = ``probes`` per noisy example: :math:`M` products instead of
    :math:`d_\text{out}`. For a fixed draw it is smooth in the parameters, so its
    gradient is unbiased for the exact penalty's.

    **Draw order.** If :math:`\sigma > 0`: ``noise_std * torch.randn((samples, B, d_in),
    generator=generator, device=x.device, dtype=x.dtype)``, :math:`\varepsilon_{s,b}`
    its entry ``[s, b]`` (at :math:`\sigma = 0` nothing is drawn and ``samples`` does not
    matter). Then, for ``"hutchinson"``, ``2 * torch.randint(0, 2, (probes, N, d_out),
    generator=generator, device=x.device) - 1`` in ``x``'s dtype, over the :math:`N = S B`
    noisy inputs in the noise's order (:math:`N = B` at :math:`\sigma = 0`).

    The model runs as given, once on all :math:`N` inputs: its own noise sites should
    be off (``model.eval()``). Differentiable with respect to the parameters (add it
    to a training loss); under :func:`torch.no_grad`, without a graph.

    Args:
        model: maps :math:`(N, d_\text{in})` to :math:`(N, d_\text{out})`, e.g. an
            :func:`gni_lib.models.MLP` in ``eval()`` mode.
        x: the inputs, shape :math:`(B, d_\text{in})`, finite, floating point.
        noise_std: :math:`\sigma \ge 0`, a standard deviation (not variance).
        samples: :math:`S \ge 1`, noise draws per example.
        method: one of :data:`PENALTY_METHODS`.
        probes: :math:`M \ge 1` (``"hutchinson"`` only).
        generator: the source of :math:`\varepsilon` and the probes, on ``x``'s device
            type; ``None`` uses torch's global generator.

    Returns:
        Tensor: a scalar on ``x``'s device and dtype.

    Raises:
        TypeError: if ``model`` is not callable or ``x``, ``noise_std``, ``samples``,
            ``probes`` or ``generator`` has the wrong type.
        ValueError: for bad ``x``, a negative or non-finite ``noise_std``, ``samples``
            or ``probes`` below 1, an unknown ``method``, a generator on another device
            type, or an output not :math:`(N, d_\text{out})`.
    """
    x = _check_model_and_input(model, x)
    noise_std = check_real(noise_std, "noise_std", what=" (a standard deviation)")
    samples = check_positive_int(samples, "samples")
    method = check_choice(method, "method", PENALTY_METHODS)
    probes = check_positive_int(probes, "probes")
    check_generator(generator, x.device)

    batch, d_in = x.shape
    if noise_std == 0:
        inputs = x
        count = batch
    else:
        eps = standard_noise((samples, batch, d_in), generator, dtype=x.dtype, device=x.device)
        inputs = (x.unsqueeze(0) + noise_std * eps).reshape(samples * batch, d_in)
        count = samples * batch
    if method == "hutchinson":
        return _hutchinson_squared_norm(model, inputs, probes, generator) / count
    jac = _jacobians(model, inputs)
    return jac.pow(2).sum() / count


def _hutchinson_squared_norm(
    model: Callable[[Tensor], Tensor], inputs: Tensor, probes: int, generator: torch.Generator | None
) -> Tensor:
    """Sum over rows of the probe-mean of ||v^T J||^2, Rademacher v over the outputs."""

    def probe(output: Tensor) -> Tensor:
        shape = (probes, *output.shape)
        return standard_noise(shape, generator, dtype=output.dtype, device=inputs.device, distribution="rademacher")

    return _vjp_rows(model, inputs, probe).pow(2).sum() / probes


def _check_output(output: object, x: Tensor) -> None:
    if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != x.shape[0]:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"model must map x of shape (B, d_in) = {tuple(x.shape)} to an output of shape "
            f"(B, d_out), got {shape}"
        )


def _per_example(model: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[Tensor], Tensor]:
    """Check the model on the batch and return the map of one example, (d_in,) -> (d_out,)."""
    with torch.no_grad():
        _check_output(model(x[:1]), x[:1])

    def one(xb: Tensor) -> Tensor:
        return model(xb.unsqueeze(0)).squeeze(0)

    return one


def _input_hessian(one: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """(d_in,) -> (d_out, d_in, d_in): the forward-over-reverse Hessians of every output."""
    return torch.func.jacfwd(torch.func.jacrev(one))


def input_hessian_norm(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    r"""Return the mean squared Frobenius norm of the input Hessians of every output.

    .. math::

        \frac1B \sum_{b=1}^{B} \lVert H_F(x_b) \rVert_F^2
        = \frac1B \sum_{b} \sum_{k=1}^{d_\text{out}} \sum_{a,c=1}^{d_\text{in}}
          \Bigl(\frac{\partial^2 F_k(x_b)}{\partial x_a \partial x_c}\Bigr)^2 .

    The Hessian penalty that Rifai et al. (2011) obtain at order :math:`\sigma^2`
    from :math:`\mathbb E \lVert J_F(x + \varepsilon) \rVert_F^2` without computing it;
    here computed exactly (:func:`torch.func.jacfwd` of :func:`torch.func.jacrev`,
    vmapped over the batch), as the oracle for that claim: :math:`d_\text{out} d_\text{in}`
    products per example, for the book's small networks. The model must act on each
    example separately and draw no random numbers (``eval()`` mode). Differentiable
    with respect to the parameters. Args and raises as :func:`per_example_jacobians`.

    Returns:
        Tensor: a scalar on ``x``'s device and dtype.
    """
    x = _check_model_and_input(model, x)
    hessians = torch.func.vmap(_input_hessian(_per_example(model, x)))(x)
    return hessians.pow(2).sum() / x.shape[0]


def jacobian_laplacian_cross(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    r"""Return the mean third-derivative cross term :math:`\sum_{k,i} J_{ki}\, \partial_i \Delta F_k`.

    .. math::

        \frac1B \sum_{b=1}^{B} \sum_{k=1}^{d_\text{out}} \sum_{i=1}^{d_\text{in}}
          \frac{\partial F_k(x_b)}{\partial x_i}\,
          \frac{\partial}{\partial x_i} \sum_{a=1}^{d_\text{in}}
          \frac{\partial^2 F_k(x_b)}{\partial x_a^2}
        = \frac1B \sum_b \sum_k \nabla F_k \cdot \nabla \Delta F_k .

    The second term of the :math:`\sigma^2` coefficient of
    :math:`\mathbb E \lVert J_F(x + \varepsilon) \rVert_F^2` (Rifai et al. 2011):
    :math:`\tfrac12 \Delta \lVert J_F \rVert_F^2 = \lVert H_F \rVert_F^2 + \sum_k \nabla F_k
    \cdot \nabla\Delta F_k`. Unlike :func:`input_hessian_norm` it has no sign. Computed
    as the reverse-mode Jacobian of the Laplacian (the trace of the forward-over-reverse
    Hessian), vmapped over the batch: a third derivative, for small networks.
    Model, differentiability, args, returns and raises as :func:`input_hessian_norm`.
    """
    x = _check_model_and_input(model, x)
    one = _per_example(model, x)

    def laplacian(xb: Tensor) -> Tensor:
        hessian = _input_hessian(one)(xb)  # (d_out, d_in, d_in)
        return torch.diagonal(hessian, dim1=-2, dim2=-1).sum(-1)  # (d_out,)

    grad_laplacian = torch.func.vmap(torch.func.jacrev(laplacian))(x)  # (B, d_out, d_in)
    jac = _jacobians(model, x)  # (B, d_out, d_in)
    return (jac * grad_laplacian).sum() / x.shape[0]


def input_derivatives(fn: Callable[[Tensor], Tensor], x: Tensor, order: int) -> list[Tensor]:
    r"""Return :math:`[F, F', F'', \dots, F^{(\text{order})}]` at every point of a 1-D input.

    For :math:`F : (N, 1) \to (N, 1)` applied row by row, derivative :math:`k` is the
    gradient of the batch sum of derivative :math:`k-1` with respect to the input (row
    :math:`n`'s output depends on row :math:`n` only), keeping the graph for the next
    order. Used for Bishop's expansion, whose :math:`\sigma^{2k}` coefficients need
    :math:`F^{(2k)}` (lecture 01).

    Args:
        fn: maps inputs of shape :math:`(N, 1)` to outputs of shape :math:`(N, 1)`,
            row by row (a network in ``eval()`` mode, or a per-example loss).
        x: the points, shape :math:`(N, 1)`, finite, floating point.
        order: the highest derivative wanted, :math:`\ge 0`.

    Returns:
        ``order + 1`` tensors of shape :math:`(N, 1)`, detached from the graph.

    Raises:
        TypeError: if ``fn`` is not callable, ``x`` is not a tensor or ``order`` is not an int.
        ValueError: if ``x`` is not :math:`(N, 1)` or not finite, ``order`` is negative,
            or ``fn``'s output is not :math:`(N, 1)`.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (N, 1) -> (N, 1), got {type(fn).__name__}")
    x = _check_input(x)
    if x.shape[1] != 1:
        raise ValueError(f"x must have shape (N, 1), one input variable, got {tuple(x.shape)}")
    if isinstance(order, bool) or not isinstance(order, numbers.Integral):
        raise TypeError(f"order must be a non-negative int, got {type(order).__name__}")
    if order < 0:
        raise ValueError(f"order must be a non-negative int, got {order}")
    with torch.enable_grad():
        inputs = x.detach().requires_grad_(True)
        values = fn(inputs)
        if not isinstance(values, Tensor) or values.shape != inputs.shape:
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"fn must map x of shape {tuple(x.shape)} to the same shape, got {shape}")
        derivatives = [values]
        for _ in range(int(order)):
            (step,) = torch.autograd.grad(
                derivatives[-1].sum(), inputs, create_graph=True, allow_unused=True
            )
            derivatives.append(torch.zeros_like(inputs) if step is None else step)
    return [t.detach() for t in derivatives]

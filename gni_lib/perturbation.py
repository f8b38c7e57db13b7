r"""Gradients at a perturbed point: the models, their Hessian traces, and the gradient's variance.

Perturbed gradient descent, :math:`w \leftarrow w - \eta \nabla L(w + \xi)` with
:math:`\xi \sim \mathcal N(0, \sigma^2 I)` (Orvieto et al. 2023), descends in expectation the
smoothed loss, which for the degree-four polynomial losses here is exactly (lecture 16,
book/16-perturbed-gradients.md)

.. math::

    \mathbb E_\xi L(w + \xi) = L(w) + \frac{\sigma^2}{2} \operatorname{Tr} \nabla^2 L(w)
        + \frac{\sigma^4}{8} \Delta^2 L ,

with :math:`\Delta^2 L` a constant. This module has the Hessian traces of the *group*
diagonal network :math:`\beta_g = v_g u_g` and of the *two-factor* model :math:`B = W_2 W_1`;
a design whose columns are orthonormal within groups, under which the traces become
group-lasso and nuclear-norm penalties; the balanced factorisation that minimises the factor
penalty; and :func:`perturbed_gradient_variance`, a Monte Carlo estimate of the variance of
:math:`\nabla L(w + \xi)`, all tensors perturbed at once or one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ._checks import check_dtype, check_int, check_real, check_tensor
from .noise import standard_noise
from .proximal import _check_groups, group_index
from .seeding import check_generator, make_generator
from .stats import mean_and_se

__all__ = [
    "orthonormal_design", "group_network_hessian_trace", "factorised_loss",
    "factorised_hessian_trace", "balanced_factors", "perturbed_gradient_variance",
]


# --- data --------------------------------------------------------------------------------------


def orthonormal_design(
    n: int, d: int, *, group_sizes: Sequence[int] | None = None, seed: int = 0,
    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
) -> Tensor:
    r"""A centred design matrix with :math:`X_g^\top X_g / n = I` for every group (or for all of :math:`X`).

    A CPU generator seeded with ``seed`` draws :math:`Z \in \mathbb R^{n \times d}`,
    :math:`\mathcal N(0, 1)` in float64; each block of columns is centred and replaced by
    :math:`\sqrt n\, Q_g` from its thin QR decomposition (:math:`\operatorname{diag} R_g > 0`).
    ``group_sizes=None`` whitens the whole matrix (the nuclear-norm result); with groups,
    only the within-group Gram blocks are the identity (the group-lasso result).

    Args:
        n: rows, more than the largest block (the centred columns must have full rank).
        d: columns, :math:`\ge 1`.
        group_sizes: contiguous block sizes adding up to :math:`d`, or ``None``.
        seed, dtype, device: as the generators of :mod:`gni_lib.data`.

    Returns:
        Tensor: shape :math:`(n, d)`.

    Raises:
        TypeError, ValueError: on bad sizes (named), or if :math:`n` is not larger than the largest block.
    """
    d = check_int(d, "d", 1)
    n = check_int(n, "n", 2)
    sizes = [d] if group_sizes is None else _check_groups(group_sizes, d)
    if n <= max(sizes):
        raise ValueError(f"n must exceed the largest block size {max(sizes)} to whiten it, got {n}")
    dtype = check_dtype(dtype)
    generator = make_generator(seed, device="cpu")
    z = torch.randn(n, d, generator=generator, dtype=torch.float64)
    blocks = []
    for block in z.split(sizes, dim=1):
        q, r = torch.linalg.qr(block - block.mean(dim=0))
        blocks.append(q * torch.sign(torch.diagonal(r)) * math.sqrt(n))
    device = torch.device("cpu") if device is None else torch.device(device)
    return torch.cat(blocks, dim=1).to(device=device, dtype=dtype)


# --- group diagonal network --------------------------------------------------------------------


def group_network_hessian_trace(u: Tensor, v: Tensor, x: Tensor, group_sizes: Sequence[int]) -> Tensor:
    r"""The Hessian trace of least squares for the group diagonal network :math:`\beta_g = v_g u_g`.

    For :math:`L(u, v) = \frac{1}{2n} \lVert X\beta - y \rVert^2`, :math:`u_g \in \mathbb R^{d_g}`
    the coordinates of group :math:`g` and one scalar :math:`v_g` per group (Orvieto et al.
    2023, group version of the diagonal network), and :math:`G = X^\top X / n`,

    .. math::

        \operatorname{Tr} \nabla^2 L = \sum_g \Big( v_g^2 \sum_{j \in g} G_{jj}
            + u_g^\top G_{gg}\, u_g \Big),

    free of :math:`y`. When :math:`G_{gg} = I`, it is :math:`\sum_g (d_g v_g^2 + \lVert u_g
    \rVert^2) \ge 2 \sum_g \sqrt{d_g}\, \lVert \beta_g \rVert_2`, with equality for
    :math:`\lVert u_g \rVert = \sqrt{d_g}\, |v_g|`.

    Shapes:
        ``u`` :math:`(d,)`, ``v`` :math:`(G,)`, ``x`` :math:`(n, d)`; a scalar out.

    Raises:
        TypeError, ValueError: on non-tensors, non-floating tensors, mismatched shapes,
            or group sizes that do not add up to :math:`d`.
    """
    u = check_tensor(u, "u", ndim=1, finite=False)
    v = check_tensor(v, "v", ndim=1, finite=False)
    x = check_tensor(x, "x", ndim=2, finite=False)
    sizes = _check_groups(group_sizes, u.shape[0])
    if v.shape != (len(sizes),):
        raise ValueError(f"v must have one entry per group, shape ({len(sizes)},), got {tuple(v.shape)}")
    if x.shape[1] != u.shape[0]:
        raise ValueError(f"x must have shape (n, {u.shape[0]}), got {tuple(x.shape)}")
    index = group_index(sizes, v.device)
    gram = x.T @ x / x.shape[0]
    from_u = (torch.diagonal(gram) * v[index].pow(2)).sum()
    from_v = u @ (gram * (index[:, None] == index[None, :])) @ u  # the diagonal blocks G_gg only
    return from_u + from_v


# --- two-factor linear model -------------------------------------------------------------------


def _factor_args(w1: object, w2: object, x: object) -> tuple[Tensor, Tensor, Tensor]:
    w1 = check_tensor(w1, "w1", ndim=2, finite=False)
    w2 = check_tensor(w2, "w2", ndim=2, finite=False)
    x = check_tensor(x, "x", ndim=2, finite=False)
    if w2.shape[1] != w1.shape[0]:
        raise ValueError(f"w2 must have shape (k, {w1.shape[0]}) to multiply w1 {tuple(w1.shape)}, "
                         f"got {tuple(w2.shape)}")
    if x.shape[1] != w1.shape[1]:
        raise ValueError(f"x must have shape (n, {w1.shape[1]}), got {tuple(x.shape)}")
    return w1, w2, x


def factorised_loss(w1: Tensor, w2: Tensor, x: Tensor, y: Tensor) -> Tensor:
    r"""Multi-output least squares for the two-factor model :math:`B = W_2 W_1`.

    .. math::

        L(W_1, W_2) = \frac{1}{2n} \sum_{i=1}^n \lVert W_2 W_1 x_i - y_i \rVert^2 ,

    a linear network with one hidden layer of width :math:`m`.

    Shapes:
        ``w1`` :math:`(m, d)`, ``w2`` :math:`(k, m)`, ``x`` :math:`(n, d)`,
        ``y`` :math:`(n, k)`; a scalar out. Leading batch dimensions are not supported;
        use :func:`torch.func.vmap`.

    Raises:
        TypeError, ValueError: on non-tensors, non-floating tensors or mismatched shapes.
    """
    w1, w2, x = _factor_args(w1, w2, x)
    y = check_tensor(y, "y", ndim=2, finite=False)
    if y.shape != (x.shape[0], w2.shape[0]):
        raise ValueError(f"y must have shape ({x.shape[0]}, {w2.shape[0]}), got {tuple(y.shape)}")
    return (x @ w1.T @ w2.T - y).pow(2).sum() / (2 * x.shape[0])


def factorised_hessian_trace(w1: Tensor, w2: Tensor, x: Tensor) -> Tensor:
    r"""The trace of the Hessian of :func:`factorised_loss`.

    With :math:`G = X^\top X / n` and :math:`k` outputs,

    .. math::

        \operatorname{Tr} \nabla^2 L = \operatorname{Tr}(G)\, \lVert W_2 \rVert_F^2
            + k \operatorname{Tr}(W_1 G W_1^\top),

    which for whitened inputs (:math:`G = I_d`) is :math:`d \lVert W_2 \rVert_F^2 +
    k \lVert W_1 \rVert_F^2 \ge 2\sqrt{dk}\, \lVert W_2 W_1 \rVert_*`.

    Shapes, Raises: as :func:`factorised_loss` (no ``y``).
    """
    w1, w2, x = _factor_args(w1, w2, x)
    gram = x.T @ x / x.shape[0]
    return torch.trace(gram) * w2.pow(2).sum() + w2.shape[0] * torch.trace(w1 @ gram @ w1.T)


def balanced_factors(
    b: Tensor, width: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""Factors :math:`W_2 W_1 = B` that minimise :math:`d \lVert W_2 \rVert_F^2 + k \lVert W_1 \rVert_F^2`.

    With :math:`B = U S V^\top` (compact SVD, :math:`r = \min(k, d)`), a random
    :math:`Q \in \mathbb R^{m \times r}` with orthonormal columns and
    :math:`a = (k/d)^{1/4}`,

    .. math::

        W_1 = a^{-1} Q S^{1/2} V^\top, \qquad W_2 = a\, U S^{1/2} Q^\top ,

    so that :math:`d \lVert W_2 \rVert_F^2 = k \lVert W_1 \rVert_F^2 = \sqrt{dk}\,
    \lVert B \rVert_*`, the lower bound. :math:`Q`, the Q factor of an :math:`m \times r`
    Gaussian matrix from ``generator``, spreads the factorisation over all :math:`m` hidden units.

    Shapes:
        ``b`` :math:`(k, d)`; returns ``w1`` :math:`(m, d)` and ``w2`` :math:`(k, m)`.

    Raises:
        TypeError: if ``b`` is not a tensor or ``width`` not an int.
        ValueError: if ``width < min(k, d)``, or the generator is on another device.
    """
    b = check_tensor(b, "b", ndim=2, finite=False)
    k, d = b.shape
    r = min(k, d)
    width = check_int(width, "width", r)
    check_generator(generator, b.device)
    u, s, vh = torch.linalg.svd(b, full_matrices=False)
    gauss = torch.randn(width, r, generator=generator, dtype=b.dtype, device=b.device)
    q, _ = torch.linalg.qr(gauss)
    a = (k / d) ** 0.25
    root = s.sqrt()
    return (q * root) @ vh / a, a * (u * root) @ q.T


# --- the variance of the perturbed gradient ----------------------------------------------------


def _sample_total_variance(
    grad_fn: Callable, params: Mapping[str, Tensor], keys: list[str], sigma: float, samples: int,
    chunk: int, generator: torch.Generator | None,
) -> tuple[float, float]:
    """Total variance of the flattened gradient over `samples` draws perturbing `keys`, and its SE."""
    grads = []
    batched = torch.func.vmap(grad_fn)
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        stacked = {}
        for name, value in params.items():
            rows = value.detach().unsqueeze(0).expand(size, *value.shape)
            if name in keys:
                noise = standard_noise((size, *value.shape), generator, dtype=value.dtype, device=value.device)
                rows = rows + sigma * noise
            stacked[name] = rows
        g = batched(stacked)
        grads.append(torch.cat([g[name].reshape(size, -1) for name in params], dim=1))
    flat = torch.cat(grads)
    centred = flat - flat.mean(dim=0)
    # Unbiased: E[sum_s ||g_s - mean||^2] / (S - 1) = Tr Cov; per draw the summand times S/(S-1).
    per_draw = centred.pow(2).sum(dim=1) * samples / (samples - 1)
    return mean_and_se(per_draw)


def perturbed_gradient_variance(
    loss_fn: Callable[[dict[str, Tensor]], Tensor], params: Mapping[str, Tensor], sigma: float, *,
    layerwise: bool = False, samples: int = 1000, chunk: int = 250,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    r"""Monte Carlo estimate of the total variance of the perturbed gradient, with its standard error.

    All tensors at once (``layerwise=False``, perturbed GD of Orvieto et al. 2023), or one
    tensor at a time (``layerwise=True``, the cyclic scheme of :class:`gni_lib.optim.PerturbedGD`,
    one step's variance averaged over a cycle of :math:`G` tensors):

    .. math::

        V_\text{all} = \operatorname{Tr} \operatorname{Cov}_\xi \big[\nabla L(w + \xi)\big],
        \qquad
        V_\text{layer} = \frac1G \sum_{t=1}^{G} \operatorname{Tr} \operatorname{Cov}_{\xi_t}
            \big[\nabla L(w + \xi_t)\big],

    :math:`\xi \sim \mathcal N(0, \sigma^2 I_P)`, :math:`\xi_t` the same on tensor :math:`t` and
    zero elsewhere; the gradient is over *all* parameters. Each trace is estimated from
    :math:`S` draws as :math:`\frac{1}{S-1}\sum_s \lVert g_s - \bar g \rVert^2`, with the standard
    error of the mean of the per-draw terms (the :math:`O(1/S)` error of :math:`\bar g` is
    ignored); the :math:`G` layer-wise estimates are averaged, their standard errors added in quadrature
    and divided by :math:`G`.

    Args:
        loss_fn: maps a dict of tensors shaped like ``params`` to a scalar loss; a pure tensor
            function (it goes through :func:`torch.func.grad` and :func:`torch.func.vmap`).
        params: the point :math:`w`, tensors by name, all on one device.
        sigma: :math:`\sigma \ge 0`, a standard deviation per coordinate.
        samples: :math:`S \ge 2` draws per estimate.
        chunk: draws evaluated at once (memory: ``chunk`` copies of the parameters).
        generator: the source of :math:`\xi`, on the parameters' device.

    Returns:
        tuple[float, float]: the estimate and its standard error.

    Raises:
        TypeError: if ``loss_fn`` is not callable, ``params`` not a dict of tensors, or ``generator`` not a generator.
        ValueError: if ``params`` is empty, ``sigma < 0``, ``samples < 2``, ``chunk < 1``, or
            the generator is on another device.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (params dict -> scalar), got {type(loss_fn).__name__}")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of tensors by name, got {type(params).__name__}")
    if not params:
        raise ValueError("params must hold at least one tensor, got an empty dict")
    for name, value in params.items():
        check_tensor(value, f"params[{name!r}]", finite=False)
    sigma = check_real(sigma, "sigma", what=" (a standard deviation)")
    if not isinstance(layerwise, bool):
        raise TypeError(f"layerwise must be True or False, got {type(layerwise).__name__}")
    samples = check_int(samples, "samples", 2)
    chunk = check_int(chunk, "chunk", 1)
    first = next(iter(params.values()))
    check_generator(generator, first.device)
    grad_fn = torch.func.grad(loss_fn)
    names = list(params)
    if not layerwise:
        return _sample_total_variance(grad_fn, params, names, sigma, samples, chunk, generator)
    estimates = [_sample_total_variance(grad_fn, params, [name], sigma, samples, chunk, generator)
                 for name in names]
    value = sum(e for e, _ in estimates) / len(names)
    se = math.sqrt(sum(s * s for _, s in estimates)) / len(names)
    return value, se

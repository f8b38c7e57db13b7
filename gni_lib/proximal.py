r"""Reference solvers for the convex problems that perturbed gradients solve implicitly.

Orvieto et al. (2023) show that gradient descent with the gradient taken at a
perturbed point, :math:`w \leftarrow w - \eta \nabla L(w + \xi)`, minimises
:math:`\mathbb E_\xi L(w + \xi)`, and that for three over-parametrised linear
models this smoothed loss, minimised over the parametrisations of one predictor,
is a classical penalised least-squares problem:

- diagonal networks :math:`\beta = u \odot v` give the lasso (weighted
  :math:`\ell_1`);
- their group version :math:`\beta_g = v_g u_g` gives the group lasso with
  weights :math:`\sqrt{d_g}`;
- a two-factor model :math:`B = W_2 W_1` gives nuclear-norm regularised least
  squares, with weight :math:`\sqrt{dk}`.

This module solves the last two independently, by proximal gradient descent
(FISTA, Beck and Teboulle 2009) on

.. math::

    F(\beta) = \frac{1}{2n} \lVert y - X\beta \rVert^2 + \lambda\, \Omega(\beta),

with the proximal operator of :math:`\Omega` in closed form: block soft
thresholding for the group norm, singular-value thresholding for the nuclear
norm. The lasso itself is checked against scikit-learn. Everything is a pure
function on tensors; the solvers work in the dtype of their input (use float64
for reference solutions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import check_int, check_real, check_tensor

__all__ = [
    "soft_threshold",
    "group_soft_threshold",
    "singular_value_threshold",
    "group_lasso",
    "group_lasso_kkt_violation",
    "nuclear_norm_regression",
    "nuclear_norm_kkt_violation",
    "group_index",
]


# --- validation --------------------------------------------------------------------------------


def group_index(group_sizes: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    r"""Return the group of each coordinate: ``[0]*d_0 + [1]*d_1 + ...`` as an int64 tensor.

    Groups are contiguous blocks of sizes :math:`d_0, d_1, \dots`; coordinate
    :math:`j` belongs to group ``group_index(sizes)[j]``.

    Raises:
        TypeError: if ``group_sizes`` is not a sequence of ints.
        ValueError: if it is empty or holds a size below 1.
    """
    if isinstance(group_sizes, (str, bytes)) or not isinstance(group_sizes, Sequence):
        raise TypeError(f"group_sizes must be a sequence of positive ints, got {type(group_sizes).__name__}")
    if len(group_sizes) == 0:
        raise ValueError("group_sizes must be a non-empty sequence of positive ints, got []")
    sizes = [check_int(s, "group_sizes") for s in group_sizes]
    device = torch.device("cpu") if device is None else torch.device(device)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                   torch.tensor(sizes, device=device))


def _check_groups(group_sizes: Sequence[int], d: int) -> list[int]:
    if isinstance(group_sizes, (str, bytes)) or not isinstance(group_sizes, Sequence):
        raise TypeError(f"group_sizes must be a sequence of positive ints, got {type(group_sizes).__name__}")
    sizes = [check_int(s, "group_sizes") for s in group_sizes]
    if sum(sizes) != d:
        raise ValueError(f"group_sizes must add up to the number of coefficients {d}, got sum {sum(sizes)}")
    return sizes


def _check_weights(weights: object, count: int, sizes: list[int], dtype: torch.dtype,
                   device: torch.device) -> Tensor:
    if weights is None:
        return torch.tensor([math.sqrt(s) for s in sizes], dtype=dtype, device=device)
    if isinstance(weights, Tensor):
        w = weights.to(dtype=dtype, device=device)
    else:
        try:
            w = torch.tensor([float(v) for v in weights], dtype=dtype, device=device)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise TypeError("weights must be a sequence of non-negative reals, one per group") from None
    if w.shape != (count,):
        raise ValueError(f"weights must have one entry per group ({count}), got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    return w


# --- proximal operators ------------------------------------------------------------------------


def soft_threshold(z: Tensor, tau: float) -> Tensor:
    r"""The proximal operator of :math:`\tau\lVert\cdot\rVert_1`: :math:`\operatorname{sign}(z)\max(|z| - \tau, 0)`.

    Shapes:
        any shape in, the same out.

    Raises:
        TypeError: if ``z`` is not a tensor or ``tau`` not a real number.
        ValueError: if ``tau < 0`` or ``z`` is not finite floating point.
    """
    z = check_tensor(z, "z")
    tau = check_real(tau, "tau")
    return torch.sign(z) * torch.clamp(z.abs() - tau, min=0.0)


def group_soft_threshold(z: Tensor, group_sizes: Sequence[int], thresholds: Tensor | Sequence[float]) -> Tensor:
    r"""Block soft thresholding, the proximal operator of :math:`\sum_g \tau_g \lVert z_g \rVert_2`.

    .. math::

        \operatorname{prox}(z)_g = \Big(1 - \frac{\tau_g}{\lVert z_g \rVert_2}\Big)_+ z_g .

    Shapes:
        ``z`` :math:`(d,)` with contiguous groups of sizes ``group_sizes`` (summing
        to :math:`d`); ``thresholds`` :math:`(G,)`, :math:`\tau_g \ge 0`.

    Raises:
        TypeError, ValueError: on a bad ``z``, ``group_sizes`` or ``thresholds``
            (each named in the message).
    """
    z = check_tensor(z, "z", ndim=1)
    sizes = _check_groups(group_sizes, z.shape[0])
    tau = _check_weights(thresholds, len(sizes), sizes, z.dtype, z.device)
    return _block_shrink(z, group_index(sizes, z.device), tau)


def _block_shrink(z: Tensor, index: Tensor, tau: Tensor) -> Tensor:
    """Block soft thresholding without validation (the solvers' inner loop)."""
    sizes = tau.shape[0]
    norms = torch.zeros(sizes, dtype=z.dtype, device=z.device).index_add_(0, index, z * z).sqrt()
    scale = torch.clamp(1 - tau / torch.where(norms > 0, norms, torch.ones_like(norms)), min=0.0)
    scale = torch.where(norms > 0, scale, torch.zeros_like(scale))
    return z * scale[index]


def singular_value_threshold(m: Tensor, tau: float) -> Tensor:
    r"""Singular-value thresholding, the proximal operator of :math:`\tau \lVert\cdot\rVert_*`.

    .. math::

        \operatorname{SVT}_\tau(M) = U \operatorname{diag}\big((s_i - \tau)_+\big) V^\top,
        \qquad M = U \operatorname{diag}(s) V^\top .

    (Cai, Candès and Shen 2010.) It solves
    :math:`\min_B \tfrac12 \lVert B - M \rVert_F^2 + \tau \lVert B \rVert_*` exactly.

    Shapes:
        ``m`` :math:`(k, d)`; the same out.

    Raises:
        TypeError, ValueError: if ``m`` is not a finite 2-D floating tensor or ``tau < 0``.
    """
    m = check_tensor(m, "m", ndim=2)
    tau = check_real(tau, "tau")
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (u * torch.clamp(s - tau, min=0.0)) @ vh


# --- solvers -----------------------------------------------------------------------------------


def _check_design(x: object, y: object, y_ndim: int) -> tuple[Tensor, Tensor]:
    x = check_tensor(x, "x", ndim=2)
    y = check_tensor(y, "y", ndim=y_ndim)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have {x.shape[0]} rows (one per row of x), got shape {tuple(y.shape)}")
    if y.dtype != x.dtype or y.device != x.device:
        raise ValueError(f"y must have the dtype and device of x ({x.dtype}, {x.device})")
    return x, y


def _fista(grad, prox, start: Tensor, step: float, max_iter: int, tol: float) -> Tensor:
    """FISTA with a fixed step 1/Lipschitz; stops when an iterate moves less than tol (max-norm)."""
    beta = start
    momentum_point = start
    t = 1.0
    for _ in range(max_iter):
        new = prox(momentum_point - step * grad(momentum_point), step)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        momentum_point = new + ((t - 1) / t_next) * (new - beta)
        change = (new - beta).abs().max().item()
        beta, t = new, t_next
        if change <= tol:
            break
    return beta


def group_lasso(
    x: Tensor,
    y: Tensor,
    group_sizes: Sequence[int],
    lam: float,
    *,
    weights: Tensor | Sequence[float] | None = None,
    max_iter: int = 20_000,
    tol: float = 1e-12,
) -> Tensor:
    r"""Solve the group lasso by proximal gradient descent (FISTA).

    .. math::

        \hat\beta = \arg\min_\beta \ \frac{1}{2n} \lVert y - X\beta \rVert^2
            + \lambda \sum_g w_g \lVert \beta_g \rVert_2 ,

    with contiguous groups of sizes :math:`d_g` and, by default,
    :math:`w_g = \sqrt{d_g}`: the weights that perturbed gradient descent on
    :math:`\beta_g = v_g u_g` produces with :math:`\lambda = \sigma^2` (Orvieto et al.
    2023). With singleton groups and unit weights this is scikit-learn's
    ``Lasso(alpha=lam, fit_intercept=False)``. The step is :math:`1/L` with
    :math:`L = \lVert X \rVert_2^2 / n`, the gradient's Lipschitz constant.

    Args:
        x: :math:`X`, shape :math:`(n, d)`.
        y: shape :math:`(n,)`, the dtype and device of ``x``.
        group_sizes: positive ints summing to :math:`d`.
        lam: :math:`\lambda \ge 0`.
        weights: :math:`w_g \ge 0`, one per group; ``None`` means :math:`\sqrt{d_g}`.
        max_iter, tol: stop after ``max_iter`` iterations or when no coefficient
            moves more than ``tol`` in one iteration.

    Returns:
        Tensor: :math:`\hat\beta`, shape :math:`(d,)`.

    Raises:
        TypeError, ValueError: on bad shapes, non-finite data, negative ``lam`` or
            weights, or group sizes that do not add up to :math:`d` (each named).
    """
    x, y = _check_design(x, y, 1)
    n, d = x.shape
    sizes = _check_groups(group_sizes, d)
    lam = check_real(lam, "lam")
    w = _check_weights(weights, len(sizes), sizes, x.dtype, x.device)
    max_iter = check_int(max_iter, "max_iter")
    tol = check_real(tol, "tol")
    lipschitz = torch.linalg.matrix_norm(x, ord=2).item() ** 2 / n
    if lipschitz == 0:
        return torch.zeros(d, dtype=x.dtype, device=x.device)
    xty = x.T @ y / n
    gram = x.T @ x / n

    def grad(beta: Tensor) -> Tensor:
        return gram @ beta - xty

    index = group_index(sizes, x.device)

    def prox(z: Tensor, step: float) -> Tensor:
        return _block_shrink(z, index, step * lam * w)

    return _fista(grad, prox, torch.zeros(d, dtype=x.dtype, device=x.device), 1 / lipschitz, max_iter, tol)


def group_lasso_kkt_violation(
    x: Tensor,
    y: Tensor,
    beta: Tensor,
    group_sizes: Sequence[int],
    lam: float,
    *,
    weights: Tensor | Sequence[float] | None = None,
) -> float:
    r"""How far ``beta`` is from satisfying the optimality conditions of :func:`group_lasso`.

    With :math:`c = X^\top (y - X\beta)/n`, :math:`\beta` is optimal if and only if,
    for every group, :math:`c_g = \lambda w_g \beta_g / \lVert \beta_g \rVert` when
    :math:`\beta_g \ne 0` and :math:`\lVert c_g \rVert \le \lambda w_g` when
    :math:`\beta_g = 0`. Returns the largest violation, in the units of :math:`c`:
    :math:`\max_g \lVert c_g - \lambda w_g \beta_g/\lVert\beta_g\rVert \rVert` over
    active groups and :math:`\max_g (\lVert c_g \rVert - \lambda w_g)_+` over inactive ones.

    Raises:
        TypeError, ValueError: as :func:`group_lasso`, and if ``beta`` is not :math:`(d,)`.
    """
    x, y = _check_design(x, y, 1)
    beta = check_tensor(beta, "beta", ndim=1)
    if beta.shape[0] != x.shape[1]:
        raise ValueError(f"beta must have shape ({x.shape[1]},), got {tuple(beta.shape)}")
    sizes = _check_groups(group_sizes, x.shape[1])
    lam = check_real(lam, "lam")
    w = _check_weights(weights, len(sizes), sizes, x.dtype, x.device)
    c = x.T @ (y - x @ beta) / x.shape[0]
    worst = 0.0
    for g, (cg, bg) in enumerate(zip(c.split(sizes), beta.split(sizes))):
        norm = torch.linalg.vector_norm(bg).item()
        if norm > 0:
            worst = max(worst, torch.linalg.vector_norm(cg - lam * w[g] * bg / norm).item())
        else:
            worst = max(worst, torch.linalg.vector_norm(cg).item() - lam * w[g].item())
    return max(worst, 0.0)


def nuclear_norm_regression(
    x: Tensor,
    y: Tensor,
    lam: float,
    *,
    max_iter: int = 20_000,
    tol: float = 1e-12,
) -> Tensor:
    r"""Solve nuclear-norm regularised multi-output least squares by proximal gradient (FISTA + SVT).

    .. math::

        \hat B = \arg\min_{B \in \mathbb R^{k \times d}} \ \frac{1}{2n}
            \lVert Y - X B^\top \rVert_F^2 + \lambda \lVert B \rVert_* ,

    the problem that perturbed gradient descent on :math:`B = W_2 W_1` solves with
    :math:`\lambda = \sigma^2 \sqrt{dk}` for whitened inputs (Orvieto et al. 2023).
    The proximal step is :func:`singular_value_threshold`. For whitened inputs,
    :math:`X^\top X / n = I`, the answer is :math:`\operatorname{SVT}_\lambda(Y^\top X / n)`
    in one step.

    Args:
        x: shape :math:`(n, d)`.
        y: shape :math:`(n, k)`.
        lam: :math:`\lambda \ge 0`.
        max_iter, tol: as :func:`group_lasso`.

    Returns:
        Tensor: :math:`\hat B`, shape :math:`(k, d)`.

    Raises:
        TypeError, ValueError: on bad shapes, non-finite data or negative ``lam``.
    """
    x, y = _check_design(x, y, 2)
    n, d = x.shape
    lam = check_real(lam, "lam")
    max_iter = check_int(max_iter, "max_iter")
    tol = check_real(tol, "tol")
    k = y.shape[1]
    lipschitz = torch.linalg.matrix_norm(x, ord=2).item() ** 2 / n
    if lipschitz == 0:
        return torch.zeros(k, d, dtype=x.dtype, device=x.device)
    gram = x.T @ x / n
    ytx = y.T @ x / n

    def grad(b: Tensor) -> Tensor:
        return b @ gram - ytx

    def prox(z: Tensor, step: float) -> Tensor:
        u, s, vh = torch.linalg.svd(z, full_matrices=False)
        return (u * torch.clamp(s - step * lam, min=0.0)) @ vh

    return _fista(grad, prox, torch.zeros(k, d, dtype=x.dtype, device=x.device), 1 / lipschitz, max_iter, tol)


def nuclear_norm_kkt_violation(x: Tensor, y: Tensor, b: Tensor, lam: float, *, rank_tol: float = 1e-9) -> float:
    r"""How far ``b`` is from satisfying the optimality conditions of :func:`nuclear_norm_regression`.

    With :math:`C = (Y - X B^\top)^\top X / n` (the negative gradient) and the
    compact SVD :math:`B = U_r S V_r^\top` (singular values above ``rank_tol``
    times the largest), :math:`B` is optimal iff :math:`C = \lambda(U_r V_r^\top + W)`
    with :math:`U_r^\top W = 0`, :math:`W V_r = 0` and :math:`\lVert W \rVert_2 \le 1`.
    Returns the largest of :math:`\lVert C V_r - \lambda U_r \rVert_F`,
    :math:`\lVert U_r^\top C - \lambda V_r^\top \rVert_F` and
    :math:`(\lVert P_U^\perp C P_V^\perp \rVert_2 - \lambda)_+`.

    Raises:
        TypeError, ValueError: as :func:`nuclear_norm_regression`, and if ``b`` is not :math:`(k, d)`.
    """
    x, y = _check_design(x, y, 2)
    b = check_tensor(b, "b", ndim=2)
    if b.shape != (y.shape[1], x.shape[1]):
        raise ValueError(f"b must have shape ({y.shape[1]}, {x.shape[1]}), got {tuple(b.shape)}")
    lam = check_real(lam, "lam")
    rank_tol = check_real(rank_tol, "rank_tol")
    c = (y - x @ b.T).T @ x / x.shape[0]
    u, s, vh = torch.linalg.svd(b, full_matrices=False)
    r = int((s > rank_tol * max(s.max().item(), 1e-300)).sum().item()) if s.numel() else 0
    ur, vr = u[:, :r], vh[:r].T
    first = torch.linalg.matrix_norm(c @ vr - lam * ur).item() if r else 0.0
    second = torch.linalg.matrix_norm(ur.T @ c - lam * vr.T).item() if r else 0.0
    pu = torch.eye(c.shape[0], dtype=c.dtype, device=c.device) - ur @ ur.T
    pv = torch.eye(c.shape[1], dtype=c.dtype, device=c.device) - vr @ vr.T
    third = max(torch.linalg.matrix_norm(pu @ c @ pv, ord=2).item() - lam, 0.0)
    return max(first, second, third)

r"""Reference solvers for the convex problems that perturbed gradients solve implicitly.

Gradient descent at a perturbed point, :math:`w \leftarrow w - \eta \nabla L(w + \xi)`,
minimises :math:`\mathbb E_\xi L(w + \xi)`; for three over-parametrised linear
models this is a penalised least-squares problem in the predictor (Orvieto et al.
2023, derived in lecture 16, ``book/16-perturbed-gradients.md``): diagonal networks
:math:`\beta = u \odot v` give the lasso (scikit-learn's), their group version
:math:`\beta_g = v_g u_g` the group lasso with weights :math:`\sqrt{d_g}`
(:func:`group_lasso`, by FISTA), and :math:`B = W_2 W_1` nuclear-norm least squares
with weight :math:`\sqrt{dk}` (for whitened inputs, one :func:`singular_value_threshold`).
Pure functions on tensors, in the dtype of their input (float64 for reference solutions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import check_int, check_real, check_tensor

__all__ = ["singular_value_threshold", "group_lasso", "group_index"]


def group_index(group_sizes: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    r"""Return the group of each coordinate: ``[0]*d_0 + [1]*d_1 + ...`` as an int64 tensor.

    Groups are contiguous blocks of sizes :math:`d_0, d_1, \dots` (on ``device``, CPU by default).

    Raises:
        TypeError: if ``group_sizes`` is not a sequence of ints.
        ValueError: if it is empty or holds a size below 1.
    """
    sizes = _check_groups(group_sizes)
    device = torch.device("cpu") if device is None else torch.device(device)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                   torch.tensor(sizes, device=device))


def _check_groups(group_sizes: Sequence[int], d: int | None = None) -> list[int]:
    if isinstance(group_sizes, (str, bytes)) or not isinstance(group_sizes, Sequence):
        raise TypeError(f"group_sizes must be a sequence of positive ints, got {type(group_sizes).__name__}")
    if len(group_sizes) == 0:
        raise ValueError("group_sizes must be a non-empty sequence of positive ints, got []")
    sizes = [check_int(s, "group_sizes") for s in group_sizes]
    if d is not None and sum(sizes) != d:
        raise ValueError(f"group_sizes must add up to the number of coefficients {d}, got sum {sum(sizes)}")
    return sizes


def _check_weights(weights: object, sizes: list[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    if weights is None:
        return torch.tensor([math.sqrt(s) for s in sizes], dtype=dtype, device=device)
    if isinstance(weights, Tensor):
        w = weights.to(dtype=dtype, device=device)
    else:
        try:
            w = torch.tensor([float(v) for v in weights], dtype=dtype, device=device)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise TypeError("weights must be a sequence of non-negative reals, one per group") from None
    if w.shape != (len(sizes),):
        raise ValueError(f"weights must have one entry per group ({len(sizes)}), got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    return w


def singular_value_threshold(m: Tensor, tau: float) -> Tensor:
    r"""Singular-value thresholding, the proximal operator of :math:`\tau \lVert\cdot\rVert_*`.

    .. math::

        \operatorname{SVT}_\tau(M) = U \operatorname{diag}\big((s_i - \tau)_+\big) V^\top,
        \qquad M = U \operatorname{diag}(s) V^\top .

    (Cai, Candès and Shen 2010.) It solves
    :math:`\min_B \tfrac12 \lVert B - M \rVert_F^2 + \tau \lVert B \rVert_*`, so for
    whitened inputs (:math:`X^\top X / n = I`)
    :math:`\operatorname{SVT}_\lambda(Y^\top X / n)` solves
    :math:`\min_B \frac{1}{2n} \lVert Y - X B^\top \rVert_F^2 + \lambda \lVert B \rVert_*`,
    the problem of perturbed gradient descent on :math:`B = W_2 W_1` with
    :math:`\lambda = \sigma^2 \sqrt{dk}` (Orvieto et al. 2023).

    Shapes:
        ``m`` :math:`(k, d)`; the same out.

    Raises:
        TypeError, ValueError: if ``m`` is not a finite 2-D floating tensor or ``tau < 0``.
    """
    m = check_tensor(m, "m", ndim=2)
    tau = check_real(tau, "tau")
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (u * torch.clamp(s - tau, min=0.0)) @ vh


def _block_shrink(z: Tensor, index: Tensor, tau: Tensor) -> Tensor:
    r"""Block soft thresholding :math:`(1 - \tau_g / \lVert z_g \rVert_2)_+ z_g`, the prox of :math:`\sum_g \tau_g \lVert z_g \rVert_2`."""
    norms = torch.zeros(tau.shape[0], dtype=z.dtype, device=z.device).index_add_(0, index, z * z).sqrt()
    scale = torch.clamp(1 - tau / torch.where(norms > 0, norms, torch.ones_like(norms)), min=0.0)
    scale = torch.where(norms > 0, scale, torch.zeros_like(scale))
    return z * scale[index]


_CHECK_EVERY = 50  # FISTA tests its stopping rule once per this many iterations: one host sync each


def _fista(grad: Callable[[Tensor], Tensor], prox: Callable[[Tensor, float], Tensor], start: Tensor,
           step: float, max_iter: int, tol: float) -> Tensor:
    """FISTA with step 1/Lipschitz: the first iterate that moves at most tol (max-norm), found in blocks of
    ``_CHECK_EVERY`` iterations (one host sync each) with the same result as a check after every iteration."""
    beta = momentum_point = start
    t = 1.0
    done = 0
    while done < max_iter:
        iterates, moves = [], []
        for _ in range(min(_CHECK_EVERY, max_iter - done)):
            new = prox(momentum_point - step * grad(momentum_point), step)
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            momentum_point = new + ((t - 1) / t_next) * (new - beta)
            moves.append((new - beta).abs().max())
            iterates.append(new)
            beta, t = new, t_next
        done += len(iterates)
        converged = torch.nonzero(torch.stack(moves) <= tol)  # the one host sync of the block
        if converged.numel():
            return iterates[int(converged[0, 0])]
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

    with contiguous groups of sizes :math:`d_g` and, by default, :math:`w_g = \sqrt{d_g}`,
    the weights of perturbed gradient descent on :math:`\beta_g = v_g u_g` with
    :math:`\lambda = \sigma^2` (Orvieto et al. 2023). Singleton groups with unit weights
    give scikit-learn's ``Lasso(alpha=lam, fit_intercept=False)``. FISTA (Beck and
    Teboulle 2009) with step :math:`1/L`, :math:`L = \lVert X \rVert_2^2 / n`, and block
    soft thresholding :math:`\operatorname{prox}(z)_g = (1 - \tau_g / \lVert z_g \rVert_2)_+ z_g`.

    Args:
        x: :math:`X`, shape :math:`(n, d)`.
        y: shape :math:`(n,)`, the dtype and device of ``x``.
        group_sizes: positive ints summing to :math:`d`.
        lam: :math:`\lambda \ge 0`.
        weights: :math:`w_g \ge 0`, one per group; ``None`` means :math:`\sqrt{d_g}`.
        max_iter, tol: stop after ``max_iter`` iterations or at the first iteration in
            which no coefficient moves more than ``tol``.

    Returns:
        Tensor: :math:`\hat\beta`, shape :math:`(d,)`.

    Raises:
        TypeError, ValueError: on bad shapes, non-finite data, negative ``lam`` or
            weights, or group sizes that do not add up to :math:`d` (each named).
    """
    x = check_tensor(x, "x", ndim=2)
    y = check_tensor(y, "y", ndim=1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have {x.shape[0]} rows (one per row of x), got shape {tuple(y.shape)}")
    if y.dtype != x.dtype or y.device != x.device:
        raise ValueError(f"y must have the dtype and device of x ({x.dtype}, {x.device})")
    n, d = x.shape
    sizes = _check_groups(group_sizes, d)
    lam = check_real(lam, "lam")
    w = _check_weights(weights, sizes, x.dtype, x.device)
    max_iter = check_int(max_iter, "max_iter")
    tol = check_real(tol, "tol")
    lipschitz = torch.linalg.matrix_norm(x, ord=2).item() ** 2 / n
    if lipschitz == 0:
        return torch.zeros(d, dtype=x.dtype, device=x.device)
    xty = x.T @ y / n
    gram = x.T @ x / n
    index = group_index(sizes, x.device)
    return _fista(lambda beta: gram @ beta - xty, lambda z, step: _block_shrink(z, index, step * lam * w),
                  torch.zeros(d, dtype=x.dtype, device=x.device), 1 / lipschitz, max_iter, tol)

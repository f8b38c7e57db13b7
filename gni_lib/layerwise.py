r"""Perturbed gradient descent in practice: chains, reference checks and the variance by width.

Orvieto et al. (2023) show that perturbed gradient descent,
:math:`w \leftarrow w - \eta \nabla L(w + \xi)` with :math:`\xi \sim \mathcal N(0, \sigma^2 I)`,
descends on average the smoothed loss :math:`L + \frac{\sigma^2}{2}\operatorname{Tr}\nabla^2 L`,
and that perturbing one layer at a time keeps the gradient's variance from growing with
the width. Lectures 16 and 17 (book/16-perturbed-gradients.md,
book/17-variance-and-layer-wise-noise.md) check both; this module holds their plumbing:
chains of :class:`gni_lib.optim.PerturbedGD` run side by side and averaged over time, the
scale of their stationary fluctuations, a verdict on the distance of the chains' mean to a
stated solution, and the gradient's variance across widths with a log-log slope.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from ._checks import check_int, check_real, check_tensor
from .optim import PerturbedGD
from .perturbation import perturbed_gradient_variance
from .stats import loglog_slope
from .verdicts import Region, verdict

__all__ = [
    "ReferenceCheck", "chain_time_averages", "judge_against_reference", "loglog_slope_with_se",
    "stationary_covariance_scale", "variance_by_width",
]


def _check_callables(**functions: object) -> None:
    for name, fn in functions.items():
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def chain_time_averages(
    params: Sequence[Tensor], loss_of: Callable[..., Tensor], predictor: Callable[..., Tensor], *,
    sigma: float, lr: float, steps: int, burn_in: int, generator: torch.Generator | None = None,
) -> Tensor:
    r"""Run perturbed gradient descent on chain-batched parameters; return each chain's time average.

    Every tensor of ``params`` (copied, not changed) carries a leading dimension of
    :math:`C` chains and ``loss_of(*params)`` sums the chains' losses; since
    :class:`~gni_lib.optim.PerturbedGD` draws independent noise per coordinate, these are
    :math:`C` independent runs of :math:`w_{n+1} = w_n - \eta\nabla L(w_n + \xi_n)`
    (Orvieto et al. 2023, §3), :math:`\eta` = ``lr`` :math:`> 0`, :math:`\xi_n \sim \mathcal N(0,
    \sigma^2 I)` with :math:`\sigma` = ``sigma`` :math:`\ge 0` (a standard deviation), drawn
    from ``generator`` (on the parameters' device).
    With :math:`P` = ``predictor`` (e.g. ``u * v``, shape ``(C, ...)``), :math:`N` = ``steps``
    and :math:`N_0` = ``burn_in`` (:math:`0 \le N_0 < N`), the result, of shape ``(C, ...)``, is

    .. math::

        \bar P = \frac{1}{N - N_0} \sum_{n = N_0}^{N - 1} P(w_{n+1}).

    Raises:
        TypeError: if ``params`` is not a non-empty sequence of tensors or a function is not callable.
        ValueError: if ``sigma < 0``, ``lr <= 0``, ``steps < 1`` or ``burn_in`` is not in ``[0, steps)``.
    """
    if isinstance(params, Tensor) or not isinstance(params, Sequence) or not params:
        raise TypeError("params must be a non-empty list of tensors with a leading chain dimension")
    for i, value in enumerate(params):
        check_tensor(value, f"params[{i}]")
    _check_callables(loss_of=loss_of, predictor=predictor)
    sigma = check_real(sigma, "sigma", what=" (a standard deviation)")
    lr = check_real(lr, "lr", positive=True)
    steps = check_int(steps, "steps", 1)
    burn_in = check_int(burn_in, "burn_in", 0)
    if burn_in >= steps:
        raise ValueError(f"burn_in must be smaller than steps={steps}, got {burn_in}")
    weights = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimiser = PerturbedGD(weights, lr=lr, sigma=sigma, generator=generator)

    def closure() -> Tensor:
        optimiser.zero_grad()
        value = loss_of(*weights)
        value.backward()
        return value

    total = None
    for step in range(steps):
        optimiser.step(closure)
        if step >= burn_in:
            with torch.no_grad():
                current = predictor(*weights)
                total = current.clone() if total is None else total + current
    return total / (steps - burn_in)


def stationary_covariance_scale(
    loss_at: Callable[..., Tensor], point: Tensor, unflatten: Callable[[Tensor], Sequence[Tensor]], *,
    lr: float, sigma: float,
) -> tuple[float, float]:
    r"""The largest stationary covariance of perturbed GD near a minimum, :math:`\eta\sigma^2\lambda_{\max}/2`.

    Linearised at a minimum, the perturbed gradient is
    :math:`\nabla L_\sigma(w) + \nabla^2 L\,\xi`; a constant step :math:`\eta` turns this
    noise into fluctuations of covariance :math:`\frac{\eta\sigma^2\lambda}{2 - \eta\lambda}
    \approx \frac{\eta\sigma^2\lambda}{2}` along an eigenvector of :math:`\nabla^2 L` with
    eigenvalue :math:`\lambda`. The scale returned uses :math:`\lambda_{\max}` of the full
    Hessian at ``point`` (by :func:`torch.func.hessian`).

    Args:
        loss_at: the loss as a function of the unflattened parameters, ``loss_at(*unflatten(w))``.
        point: the flat parameter vector :math:`w`, shape ``(P,)``.
        unflatten: maps a flat vector to the arguments of ``loss_at``.
        lr, sigma: :math:`\eta > 0` and :math:`\sigma \ge 0`.

    Returns:
        tuple[float, float]: :math:`\eta\sigma^2\lambda_{\max}/2` and :math:`\lambda_{\max}`.

    Raises:
        TypeError: if a function is not callable or ``point`` is not a tensor.
        ValueError: if ``point`` is not a finite vector, ``lr <= 0`` or ``sigma < 0``.
    """
    _check_callables(loss_at=loss_at, unflatten=unflatten)
    point = check_tensor(point, "point", ndim=1)
    lr = check_real(lr, "lr", positive=True)
    sigma = check_real(sigma, "sigma", what=" (a standard deviation)")
    hessian = torch.func.hessian(lambda w: loss_at(*unflatten(w)))(point)
    lam_max = torch.linalg.eigvalsh(hessian).max().item()
    return lr * sigma**2 * lam_max / 2, lam_max


@dataclass(frozen=True)
class ReferenceCheck:
    """What :func:`judge_against_reference` finds: ``t`` and its interval [``low``, ``high``],
    the ``gap`` :math:`g`, the per-coordinate ``err`` and ``se``, and the ``verdict``."""

    t: float
    low: float
    high: float
    gap: float
    err: Tensor
    se: Tensor
    verdict: str


def judge_against_reference(
    chain_values: Tensor, stated: Tensor, wrong: Tensor, *, claim: Region,
    approx: Region | None = None, level: float = 0.95,
) -> ReferenceCheck:
    r"""Verdict on :math:`T = \max_j\lvert\bar\beta_j - \beta^\star_j\rvert / \max_j\lvert\beta^\dagger_j - \beta^\star_j\rvert`.

    :math:`\bar\beta` is the mean of :math:`C` independent chains (rows of
    ``chain_values``), :math:`\beta^\star` the stated solution and :math:`\beta^\dagger`
    the solution with the nearest wrong constant. The interval of :math:`T` comes from
    simultaneous :math:`t`-intervals for all :math:`p` coordinates (Bonferroni: each at
    level :math:`1 - (1 - \text{level})/p`, :math:`C - 1` degrees of freedom), so it
    covers the noise-free :math:`T` with probability at least ``level``:

    .. math::

        \Big[\max_j (e_j - k\,\mathrm{SE}_j)_+ ,\ \max_j (e_j + k\,\mathrm{SE}_j)\Big] / g,
        \quad e = \lvert\bar\beta - \beta^\star\rvert,\ g = \max_j\lvert\beta^\dagger_j - \beta^\star_j\rvert .

    Args:
        chain_values: shape ``(C, p)``, :math:`C \ge 2`.
        stated, wrong: shape ``(p,)``; they must differ somewhere.
        claim, approx: the regions of :func:`gni_lib.verdicts.verdict` for :math:`T`.
        level: the simultaneous confidence level, in :math:`(0, 1)`.

    Returns:
        ReferenceCheck

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: on mismatched shapes, :math:`C < 2`, ``stated`` equal to ``wrong``, or ``level`` outside :math:`(0, 1)`.
    """
    chain_values = check_tensor(chain_values, "chain_values", ndim=2)
    stated = check_tensor(stated, "stated", ndim=1)
    wrong = check_tensor(wrong, "wrong", ndim=1)
    c, p = chain_values.shape
    if c < 2:
        raise ValueError(f"chain_values must hold at least 2 chains (rows), got {c}")
    if stated.shape != (p,) or wrong.shape != (p,):
        raise ValueError(f"stated and wrong must have shape ({p},), got {tuple(stated.shape)} and {tuple(wrong.shape)}")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level must be a real number in (0, 1), got {level!r}")
    gap = (wrong - stated).abs().max().item()
    if gap == 0:
        raise ValueError("wrong must differ from stated somewhere (the gap between them is zero)")
    mean, se = chain_values.mean(dim=0), chain_values.std(dim=0) / math.sqrt(c)
    k = stats.t.ppf(1 - (1 - level) / 2 / p, c - 1)
    err = (mean - stated).abs()
    low = (err - k * se).clamp(min=0).max().item() / gap
    high = (err + k * se).max().item() / gap
    return ReferenceCheck(err.max().item() / gap, low, high, gap, err, se,
                          verdict(low, high, claim=claim, approx=approx))


def variance_by_width(
    loss_fn: Callable[[dict[str, Tensor]], Tensor],
    weights_at: Callable[[int], Mapping[str, Tensor]], widths: Sequence[int], sigma: float, *,
    samples: int, generator: torch.Generator | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    r"""Per-parameter variance of the perturbed gradient at each width, all tensors at once and layer-wise.

    For each width :math:`m`, ``weights_at(m)`` gives the point :math:`w_m` (called once,
    before any noise is drawn for that width), and
    :func:`gni_lib.perturbation.perturbed_gradient_variance` estimates
    :math:`\operatorname{Tr}\operatorname{Cov}_\xi[\nabla L(w_m + \xi)] / P_m`, :math:`P_m` the
    number of parameters, first with every tensor perturbed (``"all"``), then one tensor
    per step, averaged over a cycle (``"layer"``; Orvieto et al. 2023, §4).

    Args:
        loss_fn, sigma, samples, generator: as
            :func:`~gni_lib.perturbation.perturbed_gradient_variance`.
        weights_at: maps a width to the dict of tensors at that width.
        widths: :math:`m`, positive ints.

    Returns:
        tuple[dict, dict]: the variances per parameter and their standard errors, each
        ``{"all": [...], "layer": [...]}`` in the order of ``widths``.

    Raises:
        TypeError, ValueError: if a function is not callable or ``widths`` is not a non-empty
            sequence of ints :math:`\ge 1`; otherwise as
            :func:`~gni_lib.perturbation.perturbed_gradient_variance`.
    """
    _check_callables(loss_fn=loss_fn, weights_at=weights_at)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths:
        raise ValueError(f"widths must be a non-empty sequence of ints >= 1, got {widths!r}")
    widths = [check_int(m, "widths[i]", 1) for m in widths]
    values: dict[str, list[float]] = {"all": [], "layer": []}
    errors: dict[str, list[float]] = {"all": [], "layer": []}
    for m in widths:
        weights = dict(weights_at(m))
        count = sum(w.numel() for w in weights.values())
        for key, layerwise in (("all", False), ("layer", True)):
            value, se = perturbed_gradient_variance(loss_fn, weights, sigma, layerwise=layerwise,
                                                    samples=samples, generator=generator)
            values[key].append(value / count)
            errors[key].append(se / count)
    return values, errors


def loglog_slope_with_se(
    x: Sequence[float], values: Sequence[float], ses: Sequence[float]
) -> tuple[float, float]:
    r"""The least-squares slope of :math:`\log v_i` against :math:`\log x_i`, and its standard error.

    The slope is :math:`\sum_i a_i \log v_i` with
    :math:`a_i = (\ell_i - \bar\ell)/\sum_k(\ell_k - \bar\ell)^2`, :math:`\ell_i = \log x_i`.
    For independent estimates :math:`v_i` with standard errors :math:`s_i`, the standard
    error of :math:`\log v_i` is :math:`s_i / v_i` to first order, so

    .. math::

        \mathrm{SE} = \Big(\sum_i a_i^2\, (s_i / v_i)^2\Big)^{1/2}.

    Args:
        x: :math:`n \ge 2` positive abscissae, not all equal.
        values: the positive estimates :math:`v_i`, shape ``(n,)``.
        ses: their standard errors :math:`s_i \ge 0`, shape ``(n,)``.

    Returns:
        tuple[float, float]: the slope and its standard error.

    Raises:
        ValueError: if the lengths differ, or the entries are not as above; otherwise as
            :func:`gni_lib.stats.loglog_slope`.
    """
    xs, vs, ss = (np.asarray(a, dtype=float).reshape(-1) for a in (x, values, ses))
    if not xs.shape == vs.shape == ss.shape:
        raise ValueError(f"x, values and ses must have one length, got {xs.size}, {vs.size} and {ss.size}")
    if xs.size < 2 or (xs <= 0).any() or np.ptp(xs) == 0:
        raise ValueError(f"x must hold at least two positive values, not all equal, got {xs.tolist()}")
    if (vs <= 0).any():
        raise ValueError(f"values must be positive to take their logarithm, got {vs.tolist()}")
    if (ss < 0).any() or not np.isfinite(ss).all():
        raise ValueError(f"ses must be finite and >= 0, got {ss.tolist()}")
    logs = np.log(xs)
    weights = (logs - logs.mean()) / ((logs - logs.mean()) ** 2).sum()
    return loglog_slope(xs, vs), math.sqrt(float((weights**2 * (ss / vs) ** 2).sum()))

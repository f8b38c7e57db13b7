r"""The statistics behind the book's asserts: standard errors, intervals over seeds, slopes.

A chapter tests a numerical claim within float64 round-off (identities), :math:`k`
standard errors (Monte Carlo) or an interval over seeds (training); these helpers
compute the last two, and the log-log slope that orders (":math:`O(\sigma^4)`") are asserted on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats as _scipy_stats

from ._checks import check_fraction, check_interval

__all__ = ["mean_and_se", "t_interval", "interval_sign", "loglog_slope", "ratio_interval"]


def _as_vector(values: object, name: str, minimum: int, *, flatten: bool = False) -> np.ndarray:
    """A finite float64 vector of at least ``minimum`` values; ``flatten`` accepts a tensor of any shape."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double()
        values = (values.reshape(-1) if flatten else values).numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-D sequence of real numbers") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size < minimum:
        raise ValueError(f"{name} must hold at least {minimum} values, got {array.size}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, but it holds NaN or infinite entries")
    return array


def mean_and_se(values: Sequence[float] | torch.Tensor | np.ndarray) -> tuple[float, float]:
    r"""Return the sample mean and its standard error.

    .. math::

        \bar v = \frac1n \sum_{i=1}^n v_i, \qquad
        \operatorname{SE} = \frac{s}{\sqrt n}, \quad
        s^2 = \frac{1}{n-1} \sum_{i=1}^n (v_i - \bar v)^2 .

    Args:
        values: :math:`n \ge 2` independent draws, shape ``(n,)`` (a tensor is
            flattened first).

    Raises:
        TypeError: if ``values`` is not numeric.
        ValueError: if it holds fewer than two values or non-finite ones.
    """
    array = _as_vector(values, "values", 2, flatten=True)
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(array.size))


def t_interval(
    values: Sequence[float] | torch.Tensor | np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    r"""Two-sided Student-:math:`t` confidence interval for the mean of ``values``.

    .. math::

        \bar v \pm t_{n-1,\,(1+\text{level})/2} \, \frac{s}{\sqrt n} .

    Used over seeds; the :math:`t` quantile accounts for the few seeds a quick preset
    affords. ``values``: :math:`n \ge 2` per-seed values, shape ``(n,)``; ``level`` in :math:`(0, 1)`.

    Returns:
        ``(low, high)``.

    Raises:
        TypeError: if ``values`` is not numeric or ``level`` is not a real number.
        ValueError: if there are fewer than two finite values, or ``level`` is
            not in :math:`(0, 1)`.
    """
    level = check_fraction(level, "level")
    mean, se = mean_and_se(values)
    n = _as_vector(values, "values", 2, flatten=True).size
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return mean - half, mean + half


def interval_sign(low: float, high: float) -> int:
    r"""Which side of zero an interval :math:`[\text{low}, \text{high}]` lies on.

    Returns ``1`` if :math:`\text{low} > 0`, ``-1`` if :math:`\text{high} < 0`, and ``0``
    if the interval contains 0 (the data do not resolve the sign).

    Raises:
        TypeError: if ``low`` or ``high`` is not a real number.
        ValueError: if either is not finite, or ``low > high``.
    """
    low, high = check_interval(low, high)
    return 1 if low > 0 else -1 if high < 0 else 0


def loglog_slope(
    x: Sequence[float] | torch.Tensor | np.ndarray, y: Sequence[float] | torch.Tensor | np.ndarray
) -> float:
    r"""Least-squares slope of :math:`\log\lvert y\rvert` against :math:`\log x`.

    If :math:`y \approx c\,x^p`, the slope estimates :math:`p`, the order of
    convergence (":math:`O(\sigma^4)`") that the book asserts.

    Args:
        x: :math:`n \ge 2` positive abscissae (e.g. noise levels :math:`\sigma`), shape ``(n,)``.
        y: the matching non-zero values (their sign is ignored), shape ``(n,)``.

    Raises:
        TypeError: if either is not numeric.
        ValueError: if the shapes differ, fewer than two points are given, some
            ``x`` is not positive, or some ``y`` is zero or not finite.
    """
    xs = _as_vector(x, "x", 2)
    ys = _as_vector(y, "y", 2)
    if xs.shape != ys.shape:
        raise ValueError(f"y must have the shape of x, {xs.shape}, got {ys.shape}")
    if (xs <= 0).any():
        raise ValueError("x must be positive to take its logarithm")
    if (ys == 0).any():
        raise ValueError("y must be non-zero to take the logarithm of its magnitude")
    slope, _ = np.polyfit(np.log(xs), np.log(np.abs(ys)), 1)
    return float(slope)


def ratio_interval(
    numerator: Sequence[float] | torch.Tensor | np.ndarray,
    denominator: Sequence[float] | torch.Tensor | np.ndarray,
    level: float = 0.95,
) -> tuple[float, float] | None:
    r"""Fieller's confidence interval for a ratio of means, :math:`\rho = \mathbb E[a] / \mathbb E[b]`.

    ``numerator`` holds :math:`n_a` draws of :math:`a`, ``denominator`` :math:`n_b`
    draws of :math:`b`; the first :math:`k = \min(n_a, n_b)` of each are paired (the
    same seed) and the rest independent. With the sample means :math:`\bar a, \bar b`,
    their variances :math:`v_a = s_a^2/n_a`, :math:`v_b = s_b^2/n_b` and covariance
    :math:`c = k\, s_{ab} / (n_a n_b)` (:math:`s_{ab}` from the :math:`k` pairs), the
    interval is the set of :math:`\rho` that the :math:`t`-test of
    :math:`\mathbb E[a] - \rho\,\mathbb E[b] = 0` does not reject,

    .. math::

        (\bar a - \rho \bar b)^2 \le t^2 \,(v_a - 2\rho c + \rho^2 v_b),
        \qquad t = t_{k-1,\,(1+\text{level})/2},

    a bounded interval exactly when :math:`\bar b^2 > t^2 v_b`, i.e. when the
    denominator's mean is resolved from zero at this level. Unlike a :math:`t`-interval
    of per-seed ratios :math:`a_i / b_i`, it stays valid when single :math:`b_i` are near 0.

    Returns:
        ``(low, high)``, or ``None`` when the set is unbounded (the data do not
        bound the ratio).

    Raises:
        TypeError: if an argument is not numeric or ``level`` is not a real number.
        ValueError: if either sample holds fewer than two (finite) values, or
            ``level`` is not in :math:`(0, 1)`.
    """
    level = check_fraction(level, "level")
    a = _as_vector(numerator, "numerator", 2, flatten=True)
    b = _as_vector(denominator, "denominator", 2, flatten=True)
    k = min(a.size, b.size)
    t = float(_scipy_stats.t.ppf(0.5 + level / 2, k - 1))
    v_a, v_b = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    c = k * np.cov(a[:k], b[:k], ddof=1)[0, 1] / (a.size * b.size)
    quad = b.mean() ** 2 - t**2 * v_b  # (quad) rho^2 + (lin) rho + const <= 0
    lin = -2 * (a.mean() * b.mean() - t**2 * c)
    const = a.mean() ** 2 - t**2 * v_a
    disc = lin**2 - 4 * quad * const
    if quad <= 0 or disc < 0:
        return None
    root = math.sqrt(disc)
    return float((-lin - root) / (2 * quad)), float((-lin + root) / (2 * quad))


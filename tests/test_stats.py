"""gni_lib.stats against scipy and numpy done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from gni_lib.stats import interval_sign, loglog_slope, mean_and_se, ratio_interval, t_interval


def test_mean_and_se_by_hand() -> None:
    values = [1.0, 2.0, 4.0, 7.0]
    mean = 3.5
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert mean_and_se(values) == pytest.approx((mean, s / 2), rel=1e-14)


def test_tensor_input_is_flattened() -> None:
    values = torch.tensor([[1.0, 2.0], [4.0, 7.0]], dtype=torch.float64)
    assert mean_and_se(values) == pytest.approx(mean_and_se([1.0, 2.0, 4.0, 7.0]), rel=1e-14)
    assert t_interval(values) == pytest.approx(t_interval([1.0, 2.0, 4.0, 7.0]), rel=1e-14)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30).filter(lambda v: np.std(v) > 1e-6),
    st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_t_interval_matches_scipy(values: list[float], level: float) -> None:
    expected = scipy_stats.t.interval(
        level, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values)
    )
    assert t_interval(values, level) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_t_interval_is_wider_than_normal_for_few_seeds() -> None:
    values = [0.1, 0.3, 0.2, 0.25, 0.15]
    mean, se = mean_and_se(values)
    low, high = t_interval(values)
    assert high - mean == pytest.approx(2.7764451051977987 * se, rel=1e-12)  # t_{4, 0.975}
    assert high - mean > 1.96 * se


@pytest.mark.parametrize("power", [1.0, 3.0, 4.0, -2.0])
def test_loglog_slope_recovers_exact_powers(power: float) -> None:
    x = np.array([0.01, 0.02, 0.05, 0.1])
    assert loglog_slope(x, -3.0 * x**power) == pytest.approx(power, abs=1e-12)


def test_loglog_slope_is_least_squares() -> None:
    x = np.array([1.0, 2.0, 4.0, 8.0])
    y = np.array([1.0, 5.0, 15.0, 70.0])
    expected = np.polyfit(np.log(x), np.log(y), 1)[0]
    assert loglog_slope(x, y) == pytest.approx(expected, rel=1e-14)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="values"):
        mean_and_se([1.0])
    with pytest.raises(ValueError, match="values"):
        mean_and_se([1.0, float("nan")])
    with pytest.raises(ValueError, match="values"):
        mean_and_se([[1.0, 2.0]])
    with pytest.raises(TypeError, match="values"):
        mean_and_se(["a", "b"])
    with pytest.raises(ValueError, match="level"):
        t_interval([1.0, 2.0], level=1.0)
    with pytest.raises(TypeError, match="level"):
        t_interval([1.0, 2.0], level="0.95")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="x must be positive"):
        loglog_slope([0.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="y must be non-zero"):
        loglog_slope([1.0, 2.0], [0.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        loglog_slope([1.0, 2.0, 3.0], [1.0, 2.0])


def test_interval_sign_by_hand() -> None:
    assert interval_sign(0.1, 0.3) == 1
    assert interval_sign(-0.3, -0.1) == -1
    assert interval_sign(-0.1, 0.2) == 0
    assert interval_sign(0.0, 0.2) == 0  # touching zero does not resolve the sign
    assert interval_sign(np.float64(0.5), np.float64(0.5)) == 1


@pytest.mark.parametrize(
    ("low", "high", "error", "name"),
    [(1.0, 0.0, ValueError, "low"), (float("nan"), 1.0, ValueError, "low"),
     (0.0, float("inf"), ValueError, "high"), ("0", 1.0, TypeError, "low"), (0.0, True, TypeError, "high")],
)
def test_interval_sign_rejects_bad_input(low, high, error, name) -> None:
    with pytest.raises(error, match=name):
        interval_sign(low, high)


def _pivot_t(a: np.ndarray, b: np.ndarray, rho: float) -> float:
    """|t| of the paired test of E[a] - rho E[b] = 0, by hand (equal lengths)."""
    d = a - rho * b
    return abs(d.mean()) / (d.std(ddof=1) / math.sqrt(d.size))


def test_ratio_interval_inverts_the_paired_t_test() -> None:
    rng = np.random.default_rng(3)
    b = rng.normal(2.0, 0.5, 20)
    a = 1.5 * b + rng.normal(0.0, 0.3, 20)
    low, high = ratio_interval(a, b)
    t = scipy_stats.t.ppf(0.975, 19)
    assert low < a.mean() / b.mean() < high
    for end in (low, high):  # the ends are where the test is just not rejected
        assert _pivot_t(a, b, end) == pytest.approx(t, rel=1e-9)
    for inside in np.linspace(low, high, 7)[1:-1]:
        assert _pivot_t(a, b, inside) < t
    assert _pivot_t(a, b, low - 0.01) > t and _pivot_t(a, b, high + 0.01) > t


def test_ratio_interval_with_unpaired_extra_draws() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(1.0, 1.0, 60), rng.normal(-2.0, 0.4, 15)
    low, high = ratio_interval(a, b, level=0.9)
    k = 15
    v_a, v_b = a.var(ddof=1) / 60, b.var(ddof=1) / 15
    c = k * np.cov(a[:k], b[:k])[0, 1] / (60 * 15)
    t = scipy_stats.t.ppf(0.95, k - 1)
    for end in (low, high):
        pivot = (a.mean() - end * b.mean()) ** 2 / (v_a - 2 * end * c + end**2 * v_b)
        assert pivot == pytest.approx(t**2, rel=1e-9)
    assert low < a.mean() / b.mean() < high


def test_ratio_interval_is_none_when_the_denominator_is_not_resolved() -> None:
    rng = np.random.default_rng(5)
    b = rng.normal(0.0, 1.0, 10)
    b -= b.mean()  # mean exactly 0: no finite interval can hold the ratio
    assert ratio_interval(rng.normal(1.0, 1.0, 10), b) is None
    assert ratio_interval(torch.tensor([1.0, 1.1, 0.9]), torch.tensor([2.0, 2.1, 1.9])) is not None


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [(([1.0], [1.0, 2.0]), ValueError, "numerator"), (([1.0, 2.0], [1.0, float("nan")]), ValueError, "denominator"),
     (([1.0, 2.0], [1.0, 2.0], 1.5), ValueError, "level"), ((["a", "b"], [1.0, 2.0]), TypeError, "numerator")],
)
def test_ratio_interval_rejects_bad_input(args, error, name) -> None:
    with pytest.raises(error, match=name):
        ratio_interval(*args)


"""gni_lib.stats against scipy and numpy done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from gni_lib.stats import interval_sign, loglog_slope, mean_and_se, t_interval


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

"""Tests for gni_lib.data: determinism, shapes, and the noise statistics of regression_1d."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gni_lib.data import TARGETS, grid_1d, regression_1d, regression_target

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    ),
]

# Statistical checks use k = 5 standard errors. The seeds are fixed, so each check
# is deterministic; k = 5 means a correct generator would fail for a given seed
# with probability below 6e-7, while the mistakes they guard against (a variance
# used as a standard deviation, a wrong range or offset) are off by tens of SE.
K = 5.0


def test_same_seed_same_data_different_seed_different():
    a = regression_1d(30, seed=4)
    b = regression_1d(30, seed=4)
    c = regression_1d(30, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_shapes_and_default_dtype_device():
    x, y = regression_1d(20)
    assert x.shape == (20, 1) and y.shape == (20, 1)
    assert x.dtype == torch.float64 and y.dtype == torch.float64
    assert x.device.type == "cpu"


@pytest.mark.parametrize("device", DEVICES)
def test_float32_is_rounded_float64_on_any_device(device):
    x64, y64 = regression_1d(25, seed=2)
    x32, y32 = regression_1d(25, seed=2, dtype=torch.float32, device=device)
    assert x32.dtype == torch.float32 and x32.device.type == device
    assert torch.equal(x32.cpu(), x64.float()) and torch.equal(y32.cpu(), y64.float())


def test_x_is_uniform_on_the_range():
    """Uniform on [a, b): mean (a+b)/2 with SE (b-a)/sqrt(12 n), variance (b-a)^2/12."""
    n, (a, b) = 20_000, (-2.0, 3.0)
    x, _ = regression_1d(n, x_range=(a, b), seed=1)
    assert x.min() >= a and x.max() < b
    assert abs(x.mean().item() - (a + b) / 2) < K * (b - a) / math.sqrt(12 * n)
    # Var of a uniform sample variance: (mu4 - sigma^4)/n with mu4 = (b-a)^4/80.
    var, var_se = (b - a) ** 2 / 12, math.sqrt(((b - a) ** 4 / 80 - ((b - a) ** 2 / 12) ** 2) / n)
    assert abs(x.var().item() - var) < K * var_se


@pytest.mark.parametrize("noise_std", [0.1, 0.3, 2.0])
def test_residuals_are_gaussian_with_the_given_std(noise_std):
    """y - g(x) has mean 0 (SE s/sqrt(n)), variance s^2 (SE s^2 sqrt(2/(n-1))), and about
    68.27% of it within one s (binomial SE sqrt(p(1-p)/n))."""
    n = 20_000
    x, y = regression_1d(n, noise_std=noise_std, seed=3)
    r = y - (torch.sin(2.5 * x) + 0.5 * x)
    assert abs(r.mean().item()) < K * noise_std / math.sqrt(n)
    assert abs(r.var().item() - noise_std**2) < K * noise_std**2 * math.sqrt(2 / (n - 1))
    p = math.erf(1 / math.sqrt(2))
    inside = (r.abs() < noise_std).double().mean().item()
    assert abs(inside - p) < K * math.sqrt(p * (1 - p) / n)


def test_zero_noise_gives_the_target():
    x, y = regression_1d(50, noise_std=0.0)
    torch.testing.assert_close(y, regression_target(x), rtol=0, atol=0)


def test_sin_target_values():
    points = [-1.0, -0.3, 0.0, 0.7, 1.0]
    values = regression_target(torch.tensor(points, dtype=torch.float64))
    expected = [math.sin(2.5 * t) + 0.5 * t for t in points]
    assert values.tolist() == pytest.approx(expected, rel=1e-15, abs=1e-15)
    assert set(TARGETS) == {"sin"}


def test_grid():
    g = grid_1d(5, (-1.0, 1.0))
    assert g.shape == (5, 1) and g.dtype == torch.float64
    assert g.squeeze(1).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert grid_1d(3, (0, 2), dtype=torch.float32).dtype == torch.float32


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 200),
    a=st.floats(-100, 100),
    width=st.floats(1e-3, 100),
    seed=st.integers(0, 2**31),
)
def test_property_shapes_and_range(n, a, width, seed):
    b = a + width
    x, y = regression_1d(n, x_range=(a, b), seed=seed)
    assert x.shape == y.shape == (n, 1)
    assert bool((x >= a).all()) and bool((x <= b).all())
    assert bool(torch.isfinite(y).all())


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_n(bad, error):
    with pytest.raises(error, match="n must"):
        regression_1d(bad)


def test_bad_noise_std():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise_std"):
            regression_1d(10, noise_std=bad)
    with pytest.raises(TypeError, match="noise_std"):
        regression_1d(10, noise_std="0.1")


def test_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        regression_1d(10, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        regression_1d(10, seed=0.5)


@pytest.mark.parametrize("bad", [(1.0, -1.0), (0.0, 0.0), (0.0, float("inf")), (0.0,), "ab", None, (0, "1")])
def test_bad_x_range(bad):
    with pytest.raises(ValueError, match="x_range"):
        regression_1d(10, x_range=bad)
    with pytest.raises(ValueError, match="x_range"):
        grid_1d(10, bad)


def test_bad_target():
    with pytest.raises(ValueError, match="target"):
        regression_1d(10, target="cos")
    with pytest.raises(ValueError, match="target"):
        regression_target(torch.zeros(2), "cos")


@pytest.mark.parametrize("bad", [torch.int64, torch.complex64, "float64"])
def test_bad_dtype(bad):
    with pytest.raises(ValueError, match="dtype"):
        regression_1d(10, dtype=bad)
    with pytest.raises(ValueError, match="dtype"):
        grid_1d(10, dtype=bad)


def test_grid_needs_two_points():
    with pytest.raises(ValueError, match="n must"):
        grid_1d(1)

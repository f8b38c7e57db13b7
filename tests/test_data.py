"""Tests for gni_lib.data: determinism, shapes, and the noise statistics of regression_1d."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gni_lib.data import TARGETS, grid_1d, regression_1d, regression_target
from _shared import DEVICES


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


# =================================================================================================
# The problems of chapters 07-17. Oracles: torch.func.hessian traces, Monte Carlo with its
# standard error, the FFT, and direct checks of the documented construction.
# =================================================================================================

from gni_lib.data import (  # noqa: E402
    diagonal_linear_regression,
    diagonal_network_loss,
    load_diabetes_split,
    load_digits_split,
    load_mnist1d_split,
    quadratic_regression_hessian_trace,
    quadratic_regression_loss,
    quadratic_sparse_regression,
    sum_of_sines,
    widening_valley_hessian_trace,
    widening_valley_loss,
)


def _trace_of_hessian(fn, *args):
    """Brute force: the full Hessian of fn over the concatenated arguments, then its trace."""
    sizes = [a.numel() for a in args]
    flat = torch.cat([a.reshape(-1) for a in args])

    def of_flat(v):
        parts = v.split(sizes)
        return fn(*[p.view_as(a) for p, a in zip(parts, args)])

    return torch.trace(torch.autograd.functional.hessian(of_flat, flat))


# --- widening valley -------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 8), seed=st.integers(0, 2**20))
def test_valley_trace_is_the_hessian_trace(d, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    v = torch.randn((), generator=g, dtype=torch.float64)
    assert widening_valley_loss(u, v).item() == pytest.approx(0.5 * v.item() ** 2 * u.pow(2).sum().item(), rel=1e-14)
    brute = _trace_of_hessian(widening_valley_loss, u, v)
    torch.testing.assert_close(widening_valley_hessian_trace(u, v), brute, rtol=1e-12, atol=1e-12)


def test_valley_batched_points():
    u = torch.randn(7, 4, dtype=torch.float64)
    v = torch.randn(7, dtype=torch.float64)
    out = widening_valley_loss(u, v)
    assert out.shape == (7,)
    for i in range(7):
        assert out[i] == widening_valley_loss(u[i], v[i])
    assert widening_valley_hessian_trace(u, v).shape == (7,)


def test_valley_smoothing_is_exact():
    r"""E L(w + xi) = L + (sigma^2/2) Tr + d sigma^4 / 2, by antithetic-free Monte Carlo with its SE."""
    d, sigma, draws = 4, 0.3, 400_000
    g = torch.Generator().manual_seed(0)
    u = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=torch.float64)
    v = torch.tensor(0.7, dtype=torch.float64)
    xi = sigma * torch.randn(draws, d + 1, generator=g, dtype=torch.float64)
    samples = widening_valley_loss(u + xi[:, :d], v + xi[:, d])
    se = samples.std().item() / math.sqrt(draws)
    exact = (widening_valley_loss(u, v) + sigma**2 / 2 * widening_valley_hessian_trace(u, v)
             + d * sigma**4 / 2).item()
    assert abs(samples.mean().item() - exact) < K * se
    # Without the sigma^4 term the identity would be off by many SE here.
    assert abs(samples.mean().item() - (exact - d * sigma**4 / 2)) > K * se


def test_valley_bad_input():
    with pytest.raises(ValueError, match="v must"):
        widening_valley_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(TypeError, match="u must"):
        widening_valley_loss([0.0], torch.zeros(()))
    with pytest.raises(ValueError, match="u must"):
        widening_valley_hessian_trace(torch.zeros(3, dtype=torch.int64), torch.zeros(()))


# --- quadratically parametrised sparse regression ----------------------------------------------------


def test_quadratic_sparse_regression_construction():
    p = quadratic_sparse_regression(seed=3)
    assert p.x.shape == (40, 100) and p.y.shape == (40,) and p.beta_star.shape == (100,)
    assert int((p.beta_star != 0).sum()) == 5 and set(p.beta_star.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(p.y, p.x @ p.beta_star, rtol=0, atol=0)
    # The truth interpolates: w = sqrt(beta*) has zero loss.
    assert quadratic_regression_loss(p.beta_star.sqrt(), p.x, p.y).item() == 0.0
    q = quadratic_sparse_regression(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(p, q))
    r = quadratic_sparse_regression(seed=4)
    assert not torch.equal(p.beta_star, r.beta_star)
    noisy = quadratic_sparse_regression(seed=3, noise_std=0.5)
    assert torch.equal(noisy.x, p.x) and not torch.equal(noisy.y, p.y)


@pytest.mark.parametrize("at_truth", [False, True])
def test_quadratic_trace_is_the_hessian_trace(at_truth):
    p = quadratic_sparse_regression(n=12, d=9, k=3, noise_std=0.1, seed=1)
    w = p.beta_star.sqrt() if at_truth else torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    brute = _trace_of_hessian(lambda q: quadratic_regression_loss(q, p.x, p.y), w)
    torch.testing.assert_close(quadratic_regression_hessian_trace(w, p.x, p.y), brute, rtol=1e-12, atol=1e-12)


def test_quadratic_trace_at_interpolation_is_a_weighted_l1_norm():
    p = quadratic_sparse_regression(n=12, d=9, k=3, seed=1)
    w = p.beta_star.sqrt()
    weighted_l1 = 2 * (p.x.pow(2).mean(dim=0) * p.beta_star).sum()
    torch.testing.assert_close(quadratic_regression_hessian_trace(w, p.x, p.y), weighted_l1, rtol=1e-13, atol=0)


# --- diagonal linear networks --------------------------------------------------------------------------


def test_diagonal_regression_features_are_standardised():
    p = diagonal_linear_regression(n=50, d=30, k=4, noise_std=0.1, seed=5)
    torch.testing.assert_close(p.x.mean(dim=0), torch.zeros(30, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(p.x.pow(2).mean(dim=0), torch.ones(30, dtype=torch.float64), rtol=1e-13, atol=0)
    assert int((p.beta_star != 0).sum()) == 4
    assert set(p.beta_star[p.beta_star != 0].abs().tolist()) == {1.0}
    signs = diagonal_linear_regression(n=10, d=200, k=200, seed=0).beta_star
    assert 60 < int((signs > 0).sum()) < 140  # both signs, binomial(200, 1/2) within 5.7 SE


def diagonal_network_hessian_trace(u, v, x):
    """The closed form sum_j G_jj (u_j^2 + v_j^2), G = x^T x / n, of the trace of the Hessian of
    diagonal_network_loss (it was gni_lib.data's; only this test used it)."""
    return (x.pow(2).sum(dim=0) / x.shape[0] * (u.pow(2) + v.pow(2))).sum()


def test_diagonal_network_trace_is_the_hessian_trace_and_ignores_y():
    p = diagonal_linear_regression(n=15, d=6, k=2, noise_std=0.3, seed=2)
    g = torch.Generator().manual_seed(3)
    u, v = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    brute = _trace_of_hessian(lambda a, b: diagonal_network_loss(a, b, p.x, p.y), u, v)
    torch.testing.assert_close(diagonal_network_hessian_trace(u, v, p.x), brute, rtol=1e-12, atol=1e-12)
    # Balanced |u| = |v| with standardised features: Tr = 2 ||u * v||_1.
    torch.testing.assert_close(diagonal_network_hessian_trace(u, u.abs(), p.x), 2 * (u * u.abs()).abs().sum(),
                               rtol=1e-13, atol=0)


def test_diagonal_network_loss_value():
    p = diagonal_linear_regression(n=15, d=6, k=2, seed=2)
    u = torch.ones(6, dtype=torch.float64)
    assert diagonal_network_loss(u, p.beta_star, p.x, p.y).item() == 0.0
    expected = ((p.x.sum(dim=1) - p.y) ** 2).mean() / 2
    torch.testing.assert_close(diagonal_network_loss(u, u, p.x, p.y), expected, rtol=1e-14, atol=0)


# --- sum of sines ------------------------------------------------------------------------------------


def test_sum_of_sines_spectrum():
    """On the grid j/N, sine k of frequency f_k is FFT bin f_k with |F| = N A_k / 2; nothing else."""
    p = sum_of_sines(seed=7)
    assert p.x.shape == (200, 1) and p.y.shape == (200, 1)
    assert p.x[:, 0].tolist() == [j / 200 for j in range(200)]
    assert p.frequencies.tolist() == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0]
    assert p.amplitudes.tolist() == [1.0] * 10
    assert bool(((p.phases >= 0) & (p.phases < 2 * math.pi)).all())
    spectrum = torch.fft.rfft(p.y[:, 0]).abs()
    expected = torch.zeros_like(spectrum)
    expected[5:55:5] = 100.0
    torch.testing.assert_close(spectrum, expected, rtol=0, atol=1e-10)
    # The phase of bin f_k is phi_k - pi/2 (a sine is a shifted cosine).
    angle = torch.fft.rfft(p.y[:, 0])[10].angle().item()
    assert math.remainder(angle - (p.phases[1].item() - math.pi / 2), 2 * math.pi) == pytest.approx(0, abs=1e-10)


def test_sum_of_sines_options_and_determinism():
    a, b = sum_of_sines(seed=1), sum_of_sines(seed=1)
    assert all(torch.equal(s, t) for s, t in zip(a, b))
    assert not torch.equal(a.phases, sum_of_sines(seed=2).phases)
    p = sum_of_sines(64, frequencies=[3], amplitudes=[2.0], seed=0)
    torch.testing.assert_close(p.y[:, 0], 2 * torch.sin(2 * math.pi * 3 * p.x[:, 0] + p.phases[0]))
    with pytest.raises(ValueError, match="amplitudes"):
        sum_of_sines(frequencies=[1, 2], amplitudes=[1.0])
    with pytest.raises(ValueError, match="frequencies"):
        sum_of_sines(frequencies=[])
    with pytest.raises(ValueError, match="n must"):
        sum_of_sines(1)


# --- scikit-learn data sets --------------------------------------------------------------------------


def test_digits_split():
    s = load_digits_split(seed=0)
    assert s.x_train.shape == (1348, 64) and s.x_test.shape == (449, 64)
    assert s.y_train.dtype == torch.int64 and s.y_train.shape == (1348,)
    assert set(s.y_train.unique().tolist()) == set(range(10))
    # Standardised on the training set: mean 0, population std 1 (or constant 0 pixels).
    torch.testing.assert_close(s.x_train.mean(dim=0), torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-12)
    std = s.x_train.std(dim=0, correction=0)
    assert bool(((std - 1).abs() < 1e-12).logical_or(std == 0).all())
    assert int((std == 0).sum()) >= 1  # border pixels that are always 0
    # Train and test together are the data set: the label counts add up.
    from sklearn.datasets import load_digits

    counts = torch.bincount(torch.as_tensor(load_digits().target), minlength=10)
    assert torch.equal(torch.bincount(s.y_train, minlength=10) + torch.bincount(s.y_test, minlength=10), counts)
    again = load_digits_split(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(s, again))
    assert not torch.equal(load_digits_split(seed=1).y_test, s.y_test)


def test_diabetes_split():
    s = load_diabetes_split(test_fraction=0.2, seed=3)
    assert s.x_train.shape == (354, 10) and s.x_test.shape == (88, 10)
    assert s.y_train.shape == (354, 1) and s.y_test.shape == (88, 1)
    torch.testing.assert_close(s.y_train.mean(), torch.tensor(0.0, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(s.y_train.std(correction=0), torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.x_train.std(dim=0, correction=0), torch.ones(10, dtype=torch.float64), rtol=1e-12, atol=0)
    assert not torch.equal(s.x_test.mean(dim=0), torch.zeros(10, dtype=torch.float64))  # test stats differ


def test_mnist1d_split_is_generated_standardised_and_leaves_global_random_state_alone():
    import random

    import numpy as np

    random.seed(5)
    np.random.seed(5)
    before = random.random(), np.random.rand()
    random.seed(5)
    np.random.seed(5)
    s = load_mnist1d_split(0.2, samples=500, seed=0)
    assert (random.random(), np.random.rand()) == before  # the package reseeds; we restore
    assert s.x_train.shape == (400, 40) and s.x_test.shape == (100, 40)
    assert torch.equal(torch.bincount(s.y_train, minlength=10) + torch.bincount(s.y_test, minlength=10),
                       torch.full((10,), 50))
    torch.testing.assert_close(s.x_train.mean(dim=0), torch.zeros(40, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(s.x_train.std(dim=0, correction=0), torch.ones(40, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    other = load_mnist1d_split(0.2, samples=500, seed=1)
    pooled = lambda t: torch.sort(torch.cat([t.y_train, t.y_test]))[0]  # noqa: E731
    assert torch.equal(pooled(s), pooled(other))  # one data set, ...
    assert not torch.equal(other.y_test, s.y_test)  # ... another split
    with pytest.raises(ValueError, match="samples"):
        load_mnist1d_split(samples=5)
    with pytest.raises(ValueError, match="test_fraction"):
        load_mnist1d_split(1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_problems_float32_are_rounded_float64_on_any_device(device):
    for make in (
        lambda **kw: quadratic_sparse_regression(n=5, d=7, k=2, noise_std=0.1, **kw),
        lambda **kw: diagonal_linear_regression(n=5, d=7, k=2, **kw),
        lambda **kw: sum_of_sines(20, **kw),
        lambda **kw: load_diabetes_split(**kw),
    ):
        ref = make(seed=2)
        low = make(seed=2, dtype=torch.float32, device=device)
        for a, b in zip(ref, low):
            assert b.device.type == device
            assert torch.equal(b.cpu(), a.float())
    digits = load_digits_split(seed=2, dtype=torch.float32, device=device)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.y_train.device.type == device


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: quadratic_sparse_regression(k=101), ValueError, "k must"),
        (lambda: quadratic_sparse_regression(n=0), ValueError, "n must"),
        (lambda: quadratic_sparse_regression(noise_std=-1.0), ValueError, "noise_std"),
        (lambda: quadratic_sparse_regression(seed=-1), ValueError, "seed"),
        (lambda: diagonal_linear_regression(n=1), ValueError, "n must"),
        (lambda: quadratic_regression_loss(torch.zeros(3), torch.zeros(4, 2), torch.zeros(4)), ValueError, "x must"),
        (lambda: quadratic_regression_loss(torch.zeros(3), torch.zeros(4, 3), torch.zeros(5)), ValueError, "y must"),
        (lambda: diagonal_network_loss(torch.zeros(3), torch.zeros(2), torch.zeros(4, 3), torch.zeros(4)),
         ValueError, "v must"),
        (lambda: load_digits_split(test_fraction=1.0), ValueError, "test_fraction"),
        (lambda: load_diabetes_split(test_fraction="0.2"), TypeError, "test_fraction"),
        (lambda: load_digits_split(dtype=torch.int32), ValueError, "dtype"),
        (lambda: load_diabetes_split(seed=-2), ValueError, "seed"),
    ],
)
def test_problem_bad_input(call, error, name):
    with pytest.raises(error, match=name):
        call()

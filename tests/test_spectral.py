"""Tests for gni_lib.spectral: hand-computed sines, Parseval, and exact integrals (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from gni_lib.spectral import fourier_spectrum, sobolev_seminorm_fourier
from _shared import DEVICES, one_thread, seeded_generator  # noqa: F401 (one_thread: autouse)


def _grid(n: int, period: float = 1.0, device: str = "cpu") -> torch.Tensor:
    return torch.arange(n, dtype=torch.float64, device=device) * period / n


def _trig_polynomial(n_terms: int, generator: torch.Generator, device: str = "cpu"):
    """Random real trigonometric polynomial sum_k a_k cos(2 pi k x / P) + b_k sin(2 pi k x / P), k = 0..K."""
    a = torch.randn(n_terms + 1, generator=generator, dtype=torch.float64).to(device)
    b = torch.randn(n_terms + 1, generator=generator, dtype=torch.float64).to(device)
    b[0] = 0.0
    return a, b


def _evaluate(a, b, x, period):
    k = torch.arange(len(a), dtype=torch.float64, device=x.device)
    phase = 2 * math.pi * k * x.unsqueeze(-1) / period
    value = (a * torch.cos(phase) + b * torch.sin(phase)).sum(-1)
    slope = (2 * math.pi * k / period * (-a * torch.sin(phase) + b * torch.cos(phase))).sum(-1)
    return value, slope


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [200, 201])
def test_sine_has_its_amplitude_at_its_frequency(device, n):
    x = _grid(n, device=device)
    values = 1.5 * torch.sin(2 * math.pi * 7 * x + 0.3) - 0.25 * torch.cos(2 * math.pi * 30 * x) + 2.0
    freqs, amps = fourier_spectrum(values)
    assert freqs.shape == (n // 2 + 1,) and amps.shape == (n // 2 + 1,)
    assert amps.device == values.device and amps.dtype == torch.float64
    expected = torch.zeros(n // 2 + 1, dtype=torch.float64, device=device)
    expected[0], expected[7], expected[30] = 2.0, 1.5, 0.25
    torch.testing.assert_close(amps, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(freqs, torch.arange(n // 2 + 1, dtype=torch.float64, device=device))


def test_nyquist_and_period_conventions():
    n, period = 16, 2.5
    x = _grid(n, period)
    values = 0.7 * torch.cos(math.pi * n * x / period)  # (-1)^n times 0.7: the Nyquist bin
    freqs, amps = fourier_spectrum(values, period=period)
    assert math.isclose(freqs[-1].item(), (n / 2) / period, rel_tol=1e-14)
    assert math.isclose(amps[-1].item(), 0.7, rel_tol=1e-12)
    assert amps[:-1].abs().max().item() < 1e-12
    # the interpolant 0.7 cos(pi N x / P) has mean p'^2 = (0.7 pi N / P)^2 / 2
    assert math.isclose(sobolev_seminorm_fourier(values, period=period).item(),
                        0.5 * (0.7 * math.pi * n / period) ** 2, rel_tol=1e-12)


def test_batched_leading_axes():
    x = _grid(64)
    values = torch.stack([torch.sin(2 * math.pi * m * x) for m in (1, 2, 3)]).reshape(3, 1, 64)
    _, amps = fourier_spectrum(values)
    assert amps.shape == (3, 1, 33)
    seminorm = sobolev_seminorm_fourier(values)
    assert seminorm.shape == (3, 1)
    torch.testing.assert_close(seminorm.squeeze(1), torch.tensor([(2 * math.pi * m) ** 2 / 2 for m in (1, 2, 3)],
                                                                    dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, degree, period", [(200, 60, 1.0), (201, 100, 1.0), (64, 20, 3.0)])
def test_parseval_for_trig_polynomials(device, n, degree, period):
    """Grid mean of f'^2 (exact derivative) = Fourier seminorm."""
    a, b = _trig_polynomial(degree, seeded_generator(degree), device)
    x = _grid(n, period, device)
    values, slopes = _evaluate(a, b, x, period)
    k = torch.arange(degree + 1, dtype=torch.float64, device=device)
    exact_integral = ((2 * math.pi * k / period) ** 2 * (a**2 + b**2) / 2).sum()  # hand-computed
    seminorm = sobolev_seminorm_fourier(values, period=period)
    torch.testing.assert_close(seminorm, exact_integral, rtol=1e-11, atol=0)
    torch.testing.assert_close(seminorm, slopes.pow(2).mean(), rtol=1e-11, atol=0)
    # Parseval for the values themselves: mean v^2 = sum |c_k|^2, from the one-sided amplitudes
    _, amps = fourier_spectrum(values, period=period)
    parseval = amps[0] ** 2 + (amps[1:] ** 2).sum() / 2
    if n % 2 == 0:
        parseval = parseval + amps[-1] ** 2 / 2  # the Nyquist amplitude is not doubled
    torch.testing.assert_close(parseval, values.pow(2).mean(), rtol=1e-12, atol=0)


def test_aliasing_breaks_the_grid_identity():
    """Above N/2 the grid no longer sees the frequency: the identity must fail, not pass silently."""
    n = 32
    x = _grid(n)
    values = torch.sin(2 * math.pi * 20 * x)  # aliases to bin 12
    slopes = 2 * math.pi * 20 * torch.cos(2 * math.pi * 20 * x)
    _, amps = fourier_spectrum(values)
    assert math.isclose(amps[12].item(), 1.0, rel_tol=1e-12)
    ratio = sobolev_seminorm_fourier(values).item() / slopes.pow(2).mean().item()
    assert math.isclose(ratio, (12 / 20) ** 2, rel_tol=1e-10)


@pytest.mark.parametrize("fn", [fourier_spectrum, sobolev_seminorm_fourier])
def test_bad_inputs(fn):
    with pytest.raises(TypeError, match="values"):
        fn([1.0, 2.0])
    with pytest.raises(ValueError, match="values"):
        fn(torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="values"):
        fn(torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="values"):
        fn(torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match="period"):
        fn(torch.ones(4), period=0.0)
    with pytest.raises(ValueError, match="period"):
        fn(torch.ones(4), period=float("inf"))
    with pytest.raises(TypeError, match="period"):
        fn(torch.ones(4), period="1")

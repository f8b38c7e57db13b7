r"""Fourier spectra of sampled functions, and the Sobolev seminorm computed from them.

Camuto et al. (2020), Thm. 2 (eq. 15), write the first-order Sobolev seminorm
:math:`\sum_{|\alpha|=1} \lVert D^\alpha f \rVert^2_{L^2_\mu}` as an integral over the
Fourier transform of :math:`f`; eqs. 16-17 turn the explicit regulariser :math:`R`
of a regression network into such integrals. On a periodic grid the statement
becomes a finite one. Take :math:`N` samples :math:`v_n = f(x_n)`,
:math:`x_n = nP/N`, of a function of period :math:`P`, and their discrete Fourier
coefficients

.. math::

    c_k = \frac1N \sum_{n=0}^{N-1} v_n\, e^{-2\pi i k n / N},
    \qquad k = -\lceil N/2 \rceil + 1, \dots, \lfloor N/2 \rfloor .

**Convention.** Frequencies are in cycles per unit length, :math:`\nu_k = k / P`
(so on :math:`[0, 1)` frequency :math:`k` is FFT bin :math:`k`); derivatives bring
down :math:`2\pi i \nu_k`. The coefficients are those of the *symmetric
trigonometric interpolant*

.. math::

    p(x) = \sum_{|k| < N/2} c_k\, e^{2\pi i k x / P}
        \;+\; c_{N/2} \cos(\pi N x / P) \quad (\text{last term for even } N \text{ only}),

the real trigonometric polynomial of lowest degree through the samples.
:func:`fourier_spectrum` gives its one-sided amplitudes, and
:func:`sobolev_seminorm_fourier` the mean of :math:`p'^2` over one period,

.. math::

    \frac1P \int_0^P p'(x)^2\,dx = \sum_{|k| < N/2} \Bigl(\frac{2\pi k}{P}\Bigr)^2 |c_k|^2
        + \frac12 \Bigl(\frac{\pi N}{P}\Bigr)^2 |c_{N/2}|^2 .

If the samples come from a trigonometric polynomial :math:`f` of degree
:math:`K < N/2`, then :math:`p = f`, and since :math:`f'^2` has degree
:math:`2K < N` the grid mean integrates it exactly:
:math:`\frac1N \sum_n f'(x_n)^2 = \frac1P \int_0^P f'^2\,dx`, which is the
seminorm above. For any other :math:`f` the two differ by aliasing (and, if the
periodic extension of :math:`f` jumps, by a Gibbs term that grows with :math:`N`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_real, check_tensor

__all__ = ["fourier_spectrum", "sobolev_seminorm_fourier"]


def _check_args(values: object, period: object) -> tuple[Tensor, float]:
    values = check_tensor(values, "values")
    if values.ndim < 1 or values.shape[-1] < 2:
        raise ValueError(
            f"values must have shape (..., N) with N >= 2 samples on the last axis, "
            f"got shape {tuple(values.shape)}"
        )
    return values, check_real(period, "period", positive=True)


def fourier_spectrum(values: Tensor, *, period: float = 1.0) -> tuple[Tensor, Tensor]:
    r"""Return the frequencies and one-sided amplitudes of samples on a periodic grid.

    .. math::

        \nu_k = \frac{k}{P}, \qquad
        A_k = \begin{cases}
            |c_0| & k = 0, \\
            2 |c_k| & 0 < k < N/2, \\
            |c_{N/2}| & k = N/2 \ (N \text{ even}),
        \end{cases}
        \qquad k = 0, \dots, \lfloor N/2 \rfloor,

    with :math:`c_k` the discrete Fourier coefficients of the module docstring.
    A sine :math:`A \sin(2\pi m x / P + \varphi)` with :math:`0 < m < N/2` has
    amplitude :math:`A` at :math:`\nu_m = m / P` and zero elsewhere. This is the
    spectrum of the learned functions in Rahaman et al. (2019) and Camuto et al.
    (2020), Fig. 4.

    Args:
        values: samples :math:`v_n = f(nP/N)`, shape :math:`(\dots, N)` with
            :math:`N \ge 2` (the last axis is the grid; leading axes are batched).
        period: :math:`P > 0`, the length of the sampled interval.

    Returns:
        ``(frequencies, amplitudes)``: shape :math:`(\lfloor N/2 \rfloor + 1,)` and
        :math:`(\dots, \lfloor N/2 \rfloor + 1)`, real, in ``values``' dtype and device.

    Raises:
        TypeError: if ``values`` is not a tensor or ``period`` not a real number.
        ValueError: if ``values`` has fewer than two samples on its last axis, is
            not real floating point, or not finite; or ``period`` is not positive
            and finite.
    """
    values, period = _check_args(values, period)
    n = values.shape[-1]
    half = n // 2
    coefficients = torch.fft.rfft(values, dim=-1) / n
    weights = torch.full((half + 1,), 2.0, dtype=values.dtype, device=values.device)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[half] = 1.0
    amplitudes = weights * coefficients.abs()
    frequencies = torch.arange(half + 1, dtype=values.dtype, device=values.device) / period
    return frequencies, amplitudes


def sobolev_seminorm_fourier(values: Tensor, *, period: float = 1.0) -> Tensor:
    r"""Return :math:`\frac1P\int_0^P p'(x)^2\,dx` of the trigonometric interpolant, from its spectrum.

    .. math::

        S = \sum_{|k| < N/2} \Bigl(\frac{2\pi k}{P}\Bigr)^2 |c_k|^2
            + \frac12 \Bigl(\frac{\pi N}{P}\Bigr)^2 |c_{N/2}|^2,

    the first-order Sobolev seminorm :math:`\lVert f' \rVert^2_{L^2_\mu}` for the
    uniform probability measure :math:`\mu` on one period, written on the Fourier
    side: the one-dimensional, periodic form of Camuto et al. (2020), Thm. 2 (eq. 15),
    with :math:`\mathcal G(\omega) = \omega\,\mathcal F(\omega)` and
    :math:`\omega = 2\pi k / P`. For samples of a trigonometric polynomial of degree
    :math:`< N/2` it equals the grid mean :math:`\frac1N\sum_n f'(x_n)^2` to
    round-off (Parseval; see the module docstring), so :math:`\frac{\sigma^2}{2} S`
    is then the input-site part of the explicit regulariser :math:`R` (eqs. 11, 16-17).

    Args:
        values: samples, shape :math:`(\dots, N)`, :math:`N \ge 2`.
        period: :math:`P > 0`.

    Returns:
        Tensor: shape :math:`(\dots)`, in ``values``' dtype and device.

    Raises:
        TypeError, ValueError: as :func:`fourier_spectrum`.
    """
    values, period = _check_args(values, period)
    n = values.shape[-1]
    k = torch.fft.fftfreq(n, d=1.0 / n, device=values.device).to(values.dtype)
    weights = (2 * math.pi * k / period) ** 2
    if n % 2 == 0:
        weights[n // 2] = 0.5 * (math.pi * n / period) ** 2
    coefficients = torch.fft.fft(values, dim=-1) / n  # c_k in FFT order (k = 0, 1, ..., -1)
    return (weights * coefficients.abs() ** 2).sum(dim=-1)

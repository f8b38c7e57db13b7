r"""Fourier spectra of sampled functions, and the Sobolev seminorm computed from them.

Camuto et al. (2020), Thm. 2 (eq. 15), write the first-order Sobolev seminorm
:math:`\lVert f' \rVert^2_{L^2_\mu}` as an integral over the Fourier transform of :math:`f`
(eqs. 16-17 turn the explicit regulariser :math:`R` into such integrals); on a periodic grid
it becomes a finite sum, derived in lecture 08 (book/08-fourier-sobolev.md). For :math:`N`
samples :math:`v_n = f(x_n)`, :math:`x_n = nP/N`, of a function of period :math:`P`, with
discrete Fourier coefficients

.. math::

    c_k = \frac1N \sum_{n=0}^{N-1} v_n\, e^{-2\pi i k n / N},
    \qquad k = -\lceil N/2 \rceil + 1, \dots, \lfloor N/2 \rfloor ,

frequencies are in cycles per unit length, :math:`\nu_k = k / P`, and derivatives bring down
:math:`2\pi i \nu_k`. The :math:`c_k` are those of the symmetric trigonometric interpolant
:math:`p(x) = \sum_{|k| < N/2} c_k e^{2\pi i k x / P} + c_{N/2} \cos(\pi N x / P)` (last term
for even :math:`N` only), and by Parseval

.. math::

    \frac1P \int_0^P p'(x)^2\,dx = \sum_{|k| < N/2} \Bigl(\frac{2\pi k}{P}\Bigr)^2 |c_k|^2
        + \frac12 \Bigl(\frac{\pi N}{P}\Bigr)^2 |c_{N/2}|^2 .

For a trigonometric polynomial :math:`f` of degree below :math:`N/2` this equals the grid mean
:math:`\frac1N \sum_n f'(x_n)^2`; otherwise the two differ by aliasing (and by a Gibbs term
that grows with :math:`N` if the periodic extension of :math:`f` jumps).
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
        ValueError: if ``values`` is not a finite real floating tensor with at least two
            samples on its last axis, or ``period`` is not positive and finite.
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
    round-off, so :math:`\frac{\sigma^2}{2} S` is then the input-site part of the
    explicit regulariser :math:`R` (eqs. 11, 16-17).

    Args, Raises: as :func:`fourier_spectrum`.

    Returns:
        Tensor: shape :math:`(\dots)`, in ``values``' dtype and device.
    """
    values, period = _check_args(values, period)
    n = values.shape[-1]
    k = torch.fft.fftfreq(n, d=1.0 / n, device=values.device).to(values.dtype)
    weights = (2 * math.pi * k / period) ** 2
    if n % 2 == 0:
        weights[n // 2] = 0.5 * (math.pi * n / period) ** 2
    coefficients = torch.fft.fft(values, dim=-1) / n  # c_k in FFT order (k = 0, 1, ..., -1)
    return (weights * coefficients.abs() ** 2).sum(dim=-1)

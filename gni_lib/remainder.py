r"""The remainder of the accumulated noise after its first few Taylor orders.

Along a noise direction :math:`z = (z_0, \dots, z_{L-1})` put
:math:`\varepsilon_k = \sigma z_k` at every site. The accumulated output noise
:math:`\mathcal E_L(\sigma z)` (:func:`gni_lib.accumulated.accumulated_noise`) has the
Taylor series :math:`\sum_{m \ge 1} c_m \sigma^m`, with :math:`c_m` the coefficients of
:func:`gni_lib.accumulated.noise_taylor_terms` (Camuto et al. 2020, Prop. 1, regrouped
by total order in the noise). The remainder after :math:`n` orders is

.. math::

    r_n(\sigma) = \Big\lVert \mathcal E_L(\sigma z) - \sum_{m=1}^{n} c_m \sigma^m \Big\rVert_{\mathrm{RMS}}
    = \lVert c_{n+1} \rVert_{\mathrm{RMS}}\, \sigma^{n+1} + O(\sigma^{n+2}),

the norm being the root mean square over the batch and the outputs. Its ratio to the
predicted leading term, :math:`\rho_n(\sigma) = r_n(\sigma) / (\lVert c_{n+1}\rVert\,\sigma^{n+1})`,
tends to 1 as :math:`\sigma \to 0` exactly when :math:`c_1, \dots, c_{n+1}` are the Taylor
coefficients of the exact noisy pass. :func:`taylor_remainders` computes both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import check_int
from .accumulated import accumulated_noise, noise_taylor_terms

__all__ = ["TaylorRemainders", "taylor_remainders"]


@dataclass(frozen=True)
class TaylorRemainders:
    r"""Remainders :math:`r_n(\sigma)` of one network along one noise direction.

    Attributes:
        sigmas: the noise levels :math:`\sigma`, shape ``(S,)``.
        remainders: :math:`r_n(\sigma)` for :math:`n = 1, \dots, N` (rows) and each
            :math:`\sigma` (columns), shape ``(N, S)``.
        leading: :math:`\lVert c_{n+1}\rVert_{\mathrm{RMS}}` for :math:`n = 1, \dots, N`, shape ``(N,)``.
        output_scale: :math:`\max \lvert c_0 \rvert`, the largest clean output (to size round-off).
    """

    sigmas: np.ndarray
    remainders: np.ndarray
    leading: np.ndarray
    output_scale: float

    def ratios(self) -> np.ndarray:
        r""":math:`\rho_n(\sigma) = r_n(\sigma) / (\lVert c_{n+1}\rVert\,\sigma^{n+1})`, shape ``(N, S)``."""
        powers = np.arange(2, len(self.leading) + 2)[:, None]  # n + 1 for n = 1, ..., N
        return self.remainders / (self.sigmas[None, :] ** powers * self.leading[:, None])


def _check_sigmas(sigmas: object) -> np.ndarray:
    try:
        values = np.asarray(sigmas, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"sigmas must be a sequence of real numbers, got {type(sigmas).__name__}") from error
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"sigmas must be a non-empty one-dimensional sequence, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"sigmas must be finite and positive, got {values.tolist()}")
    return values


def taylor_remainders(
    model: nn.Module, x: Tensor, direction: Sequence[Tensor], sigmas: Sequence[float] | np.ndarray,
    max_order: int = 3,
) -> TaylorRemainders:
    r"""The remainders :math:`r_n(\sigma)`, :math:`n = 1, \dots,` ``max_order``, of the accumulated noise.

    For each :math:`\sigma` the exact :math:`\mathcal E_L(\sigma z)` (one noisy and one
    clean forward pass) is compared with the partial sums :math:`\sum_{m \le n} c_m\sigma^m`
    of :func:`~gni_lib.accumulated.noise_taylor_terms`, computed once to order
    ``max_order + 1`` (the last one gives the leading term of :math:`r_N`).

    Args:
        model, x: as for :func:`~gni_lib.accumulated.accumulated_noise`.
        direction: the noise direction :math:`z_k`, one tensor of shape :math:`(B, d_k)` per site.
        sigmas: positive noise levels, shape ``(S,)``.
        max_order: the largest :math:`N \ge 1`.

    Returns:
        TaylorRemainders: with ``remainders`` of shape ``(N, S)``.

    Raises:
        TypeError, ValueError: if ``max_order`` is not an int :math:`\ge 1`, ``sigmas`` not a
            non-empty 1-D sequence of finite positive reals, or as
            :func:`~gni_lib.accumulated.accumulated_noise` for ``model``, ``x``, ``direction``.
    """
    max_order = check_int(max_order, "max_order", minimum=1)
    levels = _check_sigmas(sigmas)
    coefficients = noise_taylor_terms(model, x, direction, max_order + 1)
    remainders = np.zeros((max_order, len(levels)))
    with torch.no_grad():
        for j, s in enumerate(levels.tolist()):
            exact = accumulated_noise(model, x, [s * e for e in direction])
            for n in range(1, max_order + 1):
                prediction = sum(s**m * coefficients[m] for m in range(1, n + 1))
                remainders[n - 1, j] = (exact - prediction).pow(2).mean().sqrt().item()
    leading = np.array([coefficients[n + 1].pow(2).mean().sqrt().item() for n in range(1, max_order + 1)])
    return TaylorRemainders(levels, remainders, leading, coefficients[0].abs().max().item())

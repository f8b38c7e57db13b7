r"""Accumulated noise: how noise injected at every site reaches the network output.

Put perturbations :math:`\varepsilon = (\varepsilon_0, \dots, \varepsilon_{L-1})`
on the noise sites of a network (site :math:`k` returns
:math:`h_k + \varepsilon_k` instead of :math:`h_k`, Camuto et al. 2020, eq. 5).
The *accumulated noise* at the output is the change it causes,

.. math::

    \mathcal E_L(\varepsilon) = h_L(\varepsilon) - h_L(0),

where :math:`h_L(\varepsilon)` is the output of the perturbed forward pass.
Proposition 1 of Camuto et al. (2020) writes :math:`\mathcal E_L` as a
layer-by-layer Taylor recursion. Along the ray :math:`t \mapsto t\varepsilon`
the same quantity has the Taylor series

.. math::

    \mathcal E_L(t\varepsilon) = t \sum_{k} J_k \varepsilon_k
    + \frac{t^2}{2} \sum_{k, l} D^2_{kl} h_L[\varepsilon_k, \varepsilon_l] + O(t^3),

with :math:`J_k = \partial h_L / \partial h_k` the layer Jacobians
(:func:`gni_lib.jacobians.layer_jacobians`) and :math:`D^2_{kl} h_L` the mixed
second derivative of the output with respect to the activations at sites
:math:`k` and :math:`l` (clean pass). This module computes the exact
:math:`\mathcal E_L` (:func:`accumulated_noise`) and the Taylor coefficients
(:func:`noise_taylor_terms`, :func:`first_order_noise`,
:func:`second_order_noise`) by nested forward-mode differentiation
(``torch.func.jvp`` of ``torch.func.jvp``): one directional derivative per order,
no Hessian is ever formed.

``mode="multiplicative"`` makes site :math:`k` return
:math:`h_k \odot (1 + \varepsilon_k)` instead, the multiplicative injection of
Camuto et al. (2020), eq. 6, where ``noises[k]`` is :math:`\sigma_k z_k`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_input
from .jacobians import check_calls, check_model
from .noise import NOISE_MODES, replace_site_outputs

__all__ = [
    "noisy_output",
    "accumulated_noise",
    "noise_taylor_terms",
    "first_order_noise",
    "second_order_noise",
]


# --------------------------------------------------------------------------- checks


def _check_noises(noises: object, count: int, x: Tensor) -> list[Tensor]:
    """``noises`` as a list of ``count`` finite tensors on ``x``'s device and dtype."""
    if isinstance(noises, Tensor) or not isinstance(noises, Sequence):
        raise TypeError(
            f"noises must be a list or tuple of {count} tensors (one per noise site), "
            f"got {type(noises).__name__}"
        )
    if len(noises) != count:
        raise ValueError(
            f"noises must hold one tensor per noise site ({count}), got {len(noises)}"
        )
    checked = []
    for k, noise in enumerate(noises):
        if not isinstance(noise, Tensor):
            raise TypeError(f"noises[{k}] must be a torch.Tensor, got {type(noise).__name__}")
        if noise.dtype != x.dtype or noise.device != x.device:
            raise ValueError(
                f"noises[{k}] must have x's dtype {x.dtype} and device {x.device}, "
                f"got {noise.dtype} on {noise.device}"
            )
        if not bool(torch.isfinite(noise).all()):
            raise ValueError(f"noises[{k}] must be finite, but it holds NaN or infinite entries")
        checked.append(noise)
    return checked


def _check_order(order: object) -> int:
    if isinstance(order, bool) or not isinstance(order, numbers.Integral):
        raise TypeError(f"order must be a non-negative int, got {type(order).__name__}")
    if order < 0:
        raise ValueError(f"order must be a non-negative int, got {order}")
    return int(order)


def _ray_output(
    model: nn.Module, x: Tensor, noises: list[Tensor], mode: str
) -> Callable[[Tensor], Tensor]:
    r"""The map :math:`t \mapsto h_L(t\varepsilon)`, ``t`` a 0-d tensor."""

    def output(t: Tensor) -> Tensor:
        def replace(k: int, h: Tensor) -> Tensor:
            noise = noises[k]
            if noise.shape != h.shape:
                raise ValueError(
                    f"noises[{k}] must have the shape of the activation at noise site {k}, "
                    f"{tuple(h.shape)}, got {tuple(noise.shape)}"
                )
            if mode == "additive":
                return h + t * noise
            return h * (1 + t * noise)

        with replace_site_outputs(model, replace) as calls:
            try:
                out = model(x)
            except RuntimeError as error:
                raise ValueError(
                    f"x of shape {tuple(x.shape)} (dtype {x.dtype}, device {x.device}) does "
                    f"not fit the model: {error}"
                ) from error
        check_calls(calls)
        return out

    return output


def _prepare(
    model: object, x: object, noises: object, mode: object
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    sites = check_model(model)
    x = check_input(x)
    mode = check_choice(mode, "mode", NOISE_MODES)
    checked = _check_noises(noises, len(sites), x)
    return _ray_output(model, x, checked, mode), x  # type: ignore[arg-type]


# --------------------------------------------------------------------------- exact


def noisy_output(
    model: nn.Module, x: Tensor, noises: Sequence[Tensor], *, mode: str = "additive"
) -> Tensor:
    r"""The output :math:`h_L(\varepsilon)` with the given perturbation at every noise site.

    Site :math:`k` returns :math:`\tilde h_k = h_k + \varepsilon_k` (``"additive"``,
    Camuto et al. 2020, eq. 5) or :math:`\tilde h_k = h_k \odot (1 + \varepsilon_k)`
    (``"multiplicative"``, eq. 6), where :math:`h_k` is the activation arriving at
    the site, itself computed from the perturbed upstream layers. The sites' own
    noise is off (their ``sigma`` is ignored); all randomness is in ``noises``.
    Drawing ``noises[k] = sigma_k * torch.randn(h_k.shape, generator=g)`` in site
    order reproduces what the model computes in training mode with the same
    generator ``g``.

    Args:
        model: a module with :class:`gni_lib.noise.GaussianNoise` sites, each used
            once per forward pass (e.g. :func:`gni_lib.models.MLP`).
        x: inputs of shape :math:`(B, d_0)`, finite, floating point.
        noises: one tensor per site, in :func:`gni_lib.noise.noise_sites` order,
            ``noises[k]`` of the shape of the activation at site :math:`k`,
            :math:`(B, d_k)` for an MLP, on ``x``'s device and dtype.
        mode: ``"additive"`` or ``"multiplicative"``.

    Returns:
        Tensor: :math:`h_L(\varepsilon)`, shape :math:`(B, d_L)`.

    Raises:
        TypeError: if ``model`` is not a module, ``x`` not a tensor, ``noises`` not
            a list/tuple of tensors.
        ValueError: if ``model`` has no noise sites (or one is not used exactly
            once), ``x`` is not a finite floating tensor fitting the model,
            ``noises`` has the wrong length, or an entry has the wrong shape, dtype
            or device or is not finite, or ``mode`` is unknown.
    """
    output, x = _prepare(model, x, noises, mode)
    return output(torch.ones((), dtype=x.dtype, device=x.device))


def accumulated_noise(
    model: nn.Module, x: Tensor, noises: Sequence[Tensor], *, mode: str = "additive"
) -> Tensor:
    r"""The accumulated output noise :math:`\mathcal E_L = h_L(\varepsilon) - h_L(0)`, exactly.

    This is the :math:`\mathcal E_L` of Camuto et al. (2020), Prop. 1: the whole
    change of the output caused by the perturbations, with no expansion.

    Args and raises as :func:`noisy_output`.

    Returns:
        Tensor: shape :math:`(B, d_L)`.
    """
    output, x = _prepare(model, x, noises, mode)
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return output(one) - output(torch.zeros_like(one))


# --------------------------------------------------------------------------- Taylor


def _ray_derivatives(output: Callable[[Tensor], Tensor], order: int) -> Callable:
    r"""``t -> (g(t), g'(t), ..., g^{(order)}(t))`` for ``g = output``, by nested jvp."""
    if order == 0:
        return lambda t: (output(t),)
    lower = _ray_derivatives(output, order - 1)

    def derivatives(t: Tensor) -> tuple[Tensor, ...]:
        values, tangents = torch.func.jvp(lower, (t,), (torch.ones_like(t),))
        return (*values, tangents[-1])

    return derivatives


def noise_taylor_terms(
    model: nn.Module,
    x: Tensor,
    noises: Sequence[Tensor],
    order: int = 2,
    *,
    mode: str = "additive",
) -> list[Tensor]:
    r"""Taylor coefficients of the output along the noise direction, up to ``order``.

    With :math:`g(t) = h_L(t\varepsilon)` (the output when every site gets
    :math:`t\,\varepsilon_k`), returns :math:`c_n = g^{(n)}(0)/n!` for
    :math:`n = 0, \dots,` ``order``:

    .. math::

        c_0 = h_L, \quad
        c_1 = \sum_k J_k \varepsilon_k, \quad
        c_2 = \tfrac12 \sum_{k,l} D^2_{kl} h_L[\varepsilon_k, \varepsilon_l], \quad
        c_3 = \tfrac16 \sum_{k,l,m} D^3_{klm} h_L[\varepsilon_k, \varepsilon_l, \varepsilon_m],

    so that :math:`\mathcal E_L(t\varepsilon) = \sum_{n=1}^{N} c_n t^n + O(t^{N+1})`
    (Camuto et al. 2020, Prop. 1, regrouped by total order in the noise rather
    than layer by layer). Each :math:`g^{(n)}(0)` is a directional derivative
    taken by ``order`` nested ``torch.func.jvp`` calls (cost about :math:`2^n`
    forward passes); no Jacobian or Hessian is formed. In ``"multiplicative"``
    mode the direction is :math:`t \mapsto h_k \odot (1 + t\varepsilon_k)`.

    Args:
        model, x, noises, mode: as in :func:`noisy_output`.
        order: the highest order :math:`N \ge 0`.

    Returns:
        list[Tensor]: ``[c_0, ..., c_N]``, each of shape :math:`(B, d_L)`.

    Raises:
        TypeError: as :func:`noisy_output`, or if ``order`` is not an int.
        ValueError: as :func:`noisy_output`, or if ``order`` is negative.
    """
    order = _check_order(order)
    output, x = _prepare(model, x, noises, mode)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    derivatives = _ray_derivatives(output, order)(zero)
    return [d / math.factorial(n) for n, d in enumerate(derivatives)]


def first_order_noise(
    model: nn.Module, x: Tensor, noises: Sequence[Tensor], *, mode: str = "additive"
) -> Tensor:
    r"""The first-order accumulated noise :math:`\sum_k J_k \varepsilon_k` (Camuto et al. 2020, Prop. 1).

    .. math::

        \mathcal E_L^{(1)} = \sum_{k=0}^{L-1} J_k \varepsilon_k,
        \qquad J_k = \frac{\partial h_L}{\partial h_k}\Big|_{\text{clean}},

    per example, computed as one forward-mode directional derivative. In
    ``"multiplicative"`` mode it is :math:`\sum_k J_k (h_k \odot \varepsilon_k)`.

    Args and raises as :func:`noisy_output`.

    Returns:
        Tensor: shape :math:`(B, d_L)`.
    """
    return noise_taylor_terms(model, x, noises, 1, mode=mode)[1]


def second_order_noise(
    model: nn.Module, x: Tensor, noises: Sequence[Tensor], *, mode: str = "additive"
) -> Tensor:
    r"""The second-order accumulated noise, cross-site terms included.

    .. math::

        \mathcal E_L^{(2)} = \frac12 \sum_{k=0}^{L-1} \sum_{l=0}^{L-1}
        D^2_{kl} h_L[\varepsilon_k, \varepsilon_l]
        = \frac12 \frac{d^2}{dt^2} h_L(t\varepsilon)\Big|_{t=0},

    per example and output coordinate (Camuto et al. 2020, Prop. 1, the terms of
    total degree 2 in :math:`\varepsilon`), computed by forward-mode
    differentiation twice (a jvp of a jvp).

    Args and raises as :func:`noisy_output`.

    Returns:
        Tensor: shape :math:`(B, d_L)`.
    """
    return noise_taylor_terms(model, x, noises, 2, mode=mode)[2]

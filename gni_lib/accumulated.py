r"""Accumulated noise: how noise injected at every site reaches the network output.

With perturbations :math:`\varepsilon = (\varepsilon_0, \dots, \varepsilon_{L-1})` on the
noise sites (site :math:`k` returns :math:`h_k + \varepsilon_k`, Camuto et al. 2020, eq. 5;
or :math:`h_k \odot (1 + \varepsilon_k)` with ``mode="multiplicative"``, eq. 6), the
accumulated noise at the output is :math:`\mathcal E_L(\varepsilon) = h_L(\varepsilon) - h_L(0)`.
Prop. 1 of Camuto et al. writes it as a layer-by-layer Taylor recursion; regrouped by total
order along the ray :math:`t \mapsto t\varepsilon` (lecture 03, book/03-accumulated-noise.md,
eq-02-expansion),

.. math::

    \mathcal E_L(t\varepsilon) = t \sum_{k} J_k \varepsilon_k
    + \frac{t^2}{2} \sum_{k, l} D^2_{kl} h_L[\varepsilon_k, \varepsilon_l] + O(t^3),

with :math:`J_k = \partial h_L / \partial h_k` the layer Jacobians
(:func:`gni_lib.jacobians.layer_jacobians`) and :math:`D^2_{kl} h_L` the mixed second
derivatives of the clean pass. :func:`accumulated_noise` computes :math:`\mathcal E_L` exactly,
:func:`noise_taylor_terms` the coefficients by nested ``torch.func.jvp`` (one directional
derivative per order; no Hessian is formed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_input, check_int, check_tensor
from .jacobians import check_calls, check_model
from .noise import NOISE_MODES, replace_site_outputs

__all__ = ["noisy_output", "accumulated_noise", "noise_taylor_terms", "second_order_noise"]


# --------------------------------------------------------------------------- checks


def _check_noises(noises: object, count: int, x: Tensor) -> list[Tensor]:
    """``noises`` as a list of ``count`` finite tensors on ``x``'s device and dtype."""
    if isinstance(noises, Tensor) or not isinstance(noises, Sequence):
        raise TypeError(
            f"noises must be a list or tuple of {count} tensors (one per noise site), "
            f"got {type(noises).__name__}"
        )
    if len(noises) != count:
        raise ValueError(f"noises must hold one tensor per noise site ({count}), got {len(noises)}")
    for k, noise in enumerate(noises):
        if isinstance(noise, Tensor) and (noise.dtype != x.dtype or noise.device != x.device):
            raise ValueError(
                f"noises[{k}] must have x's dtype {x.dtype} and device {x.device}, "
                f"got {noise.dtype} on {noise.device}"
            )
        check_tensor(noise, f"noises[{k}]")
    return list(noises)


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
    (``"multiplicative"``, eq. 6), :math:`h_k` computed from the perturbed upstream
    layers. The sites' own ``sigma`` is ignored: drawing ``noises[k] = sigma_k *
    torch.randn(h_k.shape, generator=g)`` in site order reproduces the model's
    training-mode output with the same generator ``g``.

    Args:
        model: a module with :class:`gni_lib.noise.GaussianNoise` sites, each used
            once per forward pass (e.g. :func:`gni_lib.models.MLP`).
        x: inputs of shape :math:`(B, d_0)`, finite, floating point.
        noises: one tensor per site in :func:`gni_lib.noise.noise_sites` order, of the
            shape of the site's activation (:math:`(B, d_k)` for an MLP), on ``x``'s device and dtype.
        mode: ``"additive"`` or ``"multiplicative"``.

    Returns:
        Tensor: :math:`h_L(\varepsilon)`, shape :math:`(B, d_L)`.

    Raises:
        TypeError: if ``model`` is not a module, ``x`` not a tensor, ``noises`` not a list of tensors.
        ValueError: on a model without noise sites (or one not used exactly once), an ``x``
            that is not finite floating or does not fit, ``noises`` of the wrong length,
            shape, dtype, device or not finite, or an unknown ``mode``.
    """
    output, x = _prepare(model, x, noises, mode)
    return output(torch.ones((), dtype=x.dtype, device=x.device))


def accumulated_noise(
    model: nn.Module, x: Tensor, noises: Sequence[Tensor], *, mode: str = "additive"
) -> Tensor:
    r"""The accumulated output noise :math:`\mathcal E_L = h_L(\varepsilon) - h_L(0)`, exactly.

    The :math:`\mathcal E_L` of Camuto et al. (2020), Prop. 1, with no expansion.
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
    model: nn.Module, x: Tensor, noises: Sequence[Tensor], order: int = 2, *,
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
    (Camuto et al. 2020, Prop. 1, regrouped by total order in the noise). Each
    :math:`g^{(n)}(0)` takes ``order`` nested ``torch.func.jvp`` calls (about :math:`2^n`
    forward passes). In ``"multiplicative"`` mode the ray is
    :math:`t \mapsto h_k \odot (1 + t\varepsilon_k)`; there :math:`c_1 = \sum_k J_k (h_k \odot \varepsilon_k)`.

    Args:
        model, x, noises, mode: as in :func:`noisy_output`.
        order: the highest order :math:`N \ge 0`.

    Returns:
        list[Tensor]: ``[c_0, ..., c_N]``, each of shape :math:`(B, d_L)`.

    Raises:
        TypeError, ValueError: as :func:`noisy_output`, or if ``order`` is not an int :math:`\ge 0`.
    """
    order = check_int(order, "order", 0, expected="a non-negative int")
    output, x = _prepare(model, x, noises, mode)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    derivatives = _ray_derivatives(output, order)(zero)
    return [d / math.factorial(n) for n, d in enumerate(derivatives)]


def second_order_noise(
    model: nn.Module, x: Tensor, noises: Sequence[Tensor], *, mode: str = "additive"
) -> Tensor:
    r"""The second-order accumulated noise, cross-site terms included.

    .. math::

        \mathcal E_L^{(2)} = \frac12 \sum_{k=0}^{L-1} \sum_{l=0}^{L-1}
        D^2_{kl} h_L[\varepsilon_k, \varepsilon_l]
        = \frac12 \frac{d^2}{dt^2} h_L(t\varepsilon)\Big|_{t=0},

    per example and output coordinate (Camuto et al. 2020, Prop. 1, the terms of total
    degree 2 in :math:`\varepsilon`): ``noise_taylor_terms(..., 2)[2]``, shape :math:`(B, d_L)`.
    Args and raises as :func:`noisy_output`.
    """
    return noise_taylor_terms(model, x, noises, 2, mode=mode)[2]

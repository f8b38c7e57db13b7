r"""Independent routes to the explicit regulariser and its remainder (lectures 05 and 06).

Oracles that share nothing with :func:`gni_lib.regularisers.explicit_regularizer`
(vector-Jacobian products) and :func:`gni_lib.gap.noisy_loss_gap` (Monte Carlo):
:func:`brute_force_regulariser` (eq. 9 from ``torch.func.jacrev`` and
``torch.func.hessian``, example by example) and :func:`quadrature_gap`
(Gauss-Hermite quadrature for noise on a one-dimensional input); and the remainder
:math:`\mathbb E[C] = \text{gap} - R` relative to :math:`R`, exactly in the
small-noise limit (:func:`curvature_share`) and by Monte Carlo (:func:`remainder_ratio`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import check_choice, check_input, check_int, check_real, check_target
from .gap import noisy_loss_gap
from .jacobians import check_model
from .losses import LOSSES, per_example_loss
from .noise import GaussianNoise
from .regularisers import explicit_regularizer, second_order_term

__all__ = ["brute_force_regulariser", "curvature_share", "quadrature_gap", "remainder_ratio"]


def _forward_with_perturbations(model: nn.Module, x: Tensor, deltas: tuple[Tensor, ...]) -> Tensor:
    """The clean network with ``deltas[k]`` added at noise site ``k`` (the sites themselves are skipped)."""
    h, k = x, 0
    for child in model:
        if isinstance(child, GaussianNoise):
            h, k = h + deltas[k], k + 1
        else:
            h = child(h)
    return h


def brute_force_regulariser(model: nn.Module, x: Tensor, y: Tensor, *, loss: str = "mse") -> float:
    r"""The explicit regulariser by per-example autograd (Camuto et al. 2020, Thm. 1, eq. 9).

    .. math::

        R = \frac1B\sum_{b=1}^B \frac12\sum_{k=0}^{L-1}\sigma_k^2
        \operatorname{Tr}\big(J_k^\top(x_b)\, H_L(x_b, y_b)\, J_k(x_b)\big),

    with :math:`J_k = \partial h_L/\partial h_k` from ``torch.func.jacrev`` of the
    clean network with a zero perturbation at every site, and :math:`H_L = \nabla^2_{h_L}\ell`
    from ``torch.func.hessian`` of the per-example loss, one example at a time. Slow;
    an oracle for :func:`gni_lib.regularisers.explicit_regularizer`.

    Args:
        model: an ``nn.Sequential`` of ``nn.Linear`` layers, activations and additive
            ``GaussianNoise`` sites, one directly before each linear layer (as :func:`gni_lib.models.MLP`).
        x: inputs, shape :math:`(B, d_0)`.
        y: targets, :math:`(B, d_L)` for ``"mse"``, int64 labels :math:`(B,)` for ``"ce"``.
        loss: ``"mse"`` (½-squared error) or ``"ce"`` (softmax cross-entropy).

    Returns:
        float: :math:`R`.

    Raises:
        TypeError: if ``model`` is not an ``nn.Sequential`` or ``x``, ``y`` are not tensors.
        ValueError: for an unknown ``loss``, a model without noise sites, with a
            multiplicative site or not one site per linear layer, or bad ``x``, ``y``.
    """
    loss = check_choice(loss, "loss", tuple(LOSSES))
    sites = check_model(model)
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential (an MLP from gni_lib.models), got {type(model).__name__}")
    if any(site.mode != "additive" for site in sites):
        raise ValueError("model must have additive noise sites only: the brute force adds a perturbation")
    widths = [m.in_features for m in model if isinstance(m, nn.Linear)]
    if len(widths) != len(sites):
        raise ValueError(f"model must have one noise site before each linear layer, got {len(sites)} sites "
                         f"and {len(widths)} linear layers")
    x = check_input(x)
    with torch.no_grad():
        check_target(y, _forward_with_perturbations(model, x, tuple(0.0 for _ in widths)), loss)
    total = 0.0
    for xb, yb in zip(x, y):
        zeros = tuple(torch.zeros(w, device=x.device, dtype=x.dtype) for w in widths)
        out = _forward_with_perturbations(model, xb[None], zeros)[0]
        jacobians = torch.func.jacrev(lambda *d: _forward_with_perturbations(model, xb[None], d)[0],
                                      argnums=tuple(range(len(widths))))(*zeros)
        hess = torch.func.hessian(lambda o: per_example_loss(o[None], yb[None], loss)[0])(out)
        total += 0.5 * sum(s.sigma**2 * torch.trace(jk.T @ hess @ jk) for s, jk in zip(sites, jacobians))
    return float(total.detach()) / len(x) if isinstance(total, Tensor) else total / len(x)


def quadrature_gap(
    model: nn.Module, x: Tensor, y: Tensor, sigma: float, *, loss: str = "mse", n_nodes: int = 60
) -> float:
    r"""The noisy-loss gap for Gaussian noise on a one-dimensional input, by Gauss-Hermite quadrature.

    .. math::

        \Delta(\sigma) = \frac1B\sum_{b=1}^B \Big(\mathbb E_{z\sim\mathcal N(0,1)}
        \big[\ell(f(x_b + \sigma z), y_b)\big] - \ell(f(x_b), y_b)\Big)
        \approx \frac1B\sum_b \Big(\sum_{i=1}^{n} w_i\, \ell(f(x_b + \sigma z_i), y_b) - \ell(f(x_b), y_b)\Big),

    with the nodes :math:`z_i` and weights :math:`w_i` of the probabilists' Hermite rule
    (``numpy.polynomial.hermite_e.hermegauss``, normalised to sum to 1): exact to
    round-off at the book's :math:`\sigma` with 60 nodes for smooth :math:`f, \ell`
    (compare with more nodes to check). The model runs in ``eval()`` mode (its own
    sites off) and is returned to its mode after.

    Args:
        model: a network with input width 1.
        x: inputs, shape :math:`(B, 1)`.
        y: targets, as for :func:`gni_lib.gap.per_example_loss`.
        sigma: noise standard deviation on the input, ``>= 0``.
        loss: ``"mse"`` or ``"ce"``.
        n_nodes: quadrature nodes, at least 2.

    Returns:
        float: :math:`\Delta(\sigma)`, the batch mean.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for ``x`` not :math:`(B, 1)`, a negative ``sigma``, ``n_nodes < 2``
            or an unknown ``loss``.
    """
    loss = check_choice(loss, "loss", tuple(LOSSES))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = check_input(x)
    if x.ndim != 2 or x.shape[1] != 1:
        raise ValueError(f"x must have shape (B, 1): the quadrature is one-dimensional, got {tuple(x.shape)}")
    sigma = check_real(sigma, "sigma", what=" (a standard deviation)")
    n_nodes = check_int(n_nodes, "n_nodes", minimum=2)
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)  # for the weight exp(-z^2/2)
    nodes = torch.tensor(nodes, device=x.device, dtype=x.dtype)
    weights = torch.tensor(weights / math.sqrt(2 * math.pi), device=x.device, dtype=x.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            shifted = (x[None] + sigma * nodes[:, None, None]).reshape(-1, 1)
            repeated = y.repeat(n_nodes, *([1] * (y.ndim - 1)))
            noisy = per_example_loss(model(shifted), repeated, loss).reshape(n_nodes, -1)
            clean = per_example_loss(model(x), y, loss)
            return ((weights[:, None] * noisy).sum(0) - clean).mean().item()
    finally:
        model.train(was_training)


def _nonzero_regulariser(model: nn.Module, x: Tensor, loss: str, ratio: str) -> float:
    """:math:`R` (eq. 9) as a float; raise if it is 0, as ``ratio`` is then undefined."""
    with torch.no_grad():
        r = explicit_regularizer(model, x, loss=loss).item()
    if r == 0:
        raise ValueError(f"model has R = 0 (every noise site at sigma 0?): {ratio} is undefined")
    return r


def curvature_share(model: nn.Module, x: Tensor, y: Tensor, *, loss: str = "mse") -> float:
    r"""The small-noise limit of :math:`\mathbb E[C]/R`: the network-curvature share :math:`N/R`.

    .. math::

        \frac NR = \frac{T_2 - R}{R}, \qquad
        T_2 = \frac1B\sum_b \frac12\sum_k \sigma_k^2 \operatorname{Tr}\nabla^2_{h_k}\ell,

    with :math:`R` from :func:`gni_lib.regularisers.explicit_regularizer` (Camuto et
    al. 2020, eq. 9) and :math:`T_2` from :func:`gni_lib.regularisers.second_order_term`,
    at the sites' noise levels. Both scale as :math:`\sigma^2`, so the share does not
    depend on a common noise level. Exact; draws no noise.

    Args:
        model: a network with ``GaussianNoise`` sites, not all at zero noise.
        x, y, loss: as :func:`gni_lib.regularisers.second_order_term`.

    Returns:
        float: :math:`N/R`.

    Raises:
        ValueError: where ``explicit_regularizer`` or ``second_order_term`` raise, or
            if :math:`R = 0` (every site at zero noise, or a constant network).
    """
    r = _nonzero_regulariser(model, x, loss, "N/R")
    return (second_order_term(model, x, y, loss=loss).item() - r) / r


def remainder_ratio(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss: str = "mse",
    samples: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    r"""The remainder relative to :math:`R` at the model's noise level, by Monte Carlo.

    .. math::

        \frac{\mathbb E[C]}{R} = \frac{\widehat{\text{gap}} - R}{R}, \qquad
        \frac{\operatorname{SE}}{R},

    with :math:`R` exact (:func:`gni_lib.regularisers.explicit_regularizer`, Camuto et
    al. 2020, Thm. 1) and the gap and its standard error from
    :func:`gni_lib.gap.noisy_loss_gap` with antithetic pairs. Only the gap draws
    noise, from ``generator``.

    Args:
        model, x, y, loss, samples, generator: as :func:`gni_lib.gap.noisy_loss_gap`
            (``samples`` even and at least 4).

    Returns:
        tuple[float, float]: ``(E[C]/R, SE/R)``.

    Raises:
        ValueError: where ``explicit_regularizer`` or ``noisy_loss_gap`` raise, or if
            :math:`R = 0`.
    """
    r = _nonzero_regulariser(model, x, loss, "E[C]/R")
    gap, se = noisy_loss_gap(model, x, y, loss=loss, samples=samples, generator=generator)
    return (gap.item() - r) / r, se.item() / r

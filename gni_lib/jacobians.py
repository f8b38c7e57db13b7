r"""Layer Jacobians: how the network output responds to a perturbation at each noise site.

For noise sites :math:`k = 0, \dots, L-1` (:class:`gni_lib.noise.GaussianNoise`, in
:func:`gni_lib.noise.noise_sites` order) and output :math:`h_L \in \mathbb R^{d_L}`,

.. math::

    J_k(x) = \frac{\partial h_L}{\partial h_k}(x) \in \mathbb R^{d_L \times d_k},

at the clean forward pass, :math:`h_k` the activation entering site :math:`k`: to
first order, noise :math:`\varepsilon_k` moves the output by :math:`J_k \varepsilon_k`
(Camuto et al. 2020, Thm. 1), which gives the explicit regulariser (:mod:`gni_lib.regularisers`).

**How.** One clean pass, then vector-Jacobian products of cotangent rows :math:`C` on
the output at every site together: example :math:`b`'s output depends only on its
own activations, so the cotangent :math:`e_i` on every example gives row :math:`i` of
every example's :math:`J_k`. A plain MLP (:func:`gni_lib.models.mlp_structure`) uses
the backward recursion of :func:`gni_lib.models.mlp_backward`, one matrix product
per layer; any other module adds a zero perturbation :math:`\delta_k` at every site
(:func:`gni_lib.noise.replace_site_outputs`) and takes
:math:`C\, \partial h_L / \partial \delta_k` from :func:`torch.func.vjp`, vmapped over
the rows of :math:`C`. Both are differentiable in the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._checks import check_input
from .models import MLPStructure, mlp_backward, mlp_forward, mlp_structure, mlp_weights
from .noise import GaussianNoise, noise_sites, replace_site_outputs

__all__ = ["layer_jacobians", "site_products"]


# --- model checks shared by the regulariser, the gap and the curvature modules -------


def check_model(model: object) -> list[GaussianNoise]:
    """Return the noise sites of ``model``; raise unless it is a module with at least one."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module with GaussianNoise sites, got {type(model).__name__}"
        )
    sites = noise_sites(model)
    if not sites:
        raise ValueError(
            "model must contain at least one GaussianNoise noise site (e.g. an MLP from "
            "gni_lib.models), but it has none"
        )
    return sites


def _does_not_fit(x: Tensor, error: RuntimeError) -> ValueError:
    return ValueError(
        f"x of shape {tuple(x.shape)} (dtype {x.dtype}, device {x.device}) does not fit the model: {error}"
    )


def run_model(model: nn.Module, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """``model(x)`` (with ``params`` by :func:`torch.func.functional_call`), a shape or dtype
    mismatch reported as a ValueError naming ``x``, and the output checked to be (B, d_L)."""
    try:
        output = model(x) if params is None else functional_call(model, params, (x,))
    except RuntimeError as error:
        raise _does_not_fit(x, error) from error
    if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != x.shape[0]:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"model must map x of shape (B, ...) = {tuple(x.shape)} to an output of shape "
            f"(B, d_L), got {shape}"
        )
    return output


def check_calls(calls: list[int]) -> None:
    """Raise unless every noise site was called exactly once in the forward pass."""
    for k, count in enumerate(calls):
        if count != 1:
            raise ValueError(
                f"model's noise site {k} was called {count} times in one forward pass; "
                "every GaussianNoise site must be used exactly once"
            )


# --- the vector-Jacobian products at the sites ------------------------------------------


def output_basis(output: Tensor) -> Tensor:
    """The cotangents :math:`e_i` on every example: (B, d_L, d_L), the identity per example."""
    batch, d_out = output.shape[-2:]
    eye = torch.eye(d_out, device=output.device, dtype=output.dtype)
    return eye.expand(batch, d_out, d_out)


def _mlp_products(
    structure: MLPStructure, params: Mapping[str, Tensor] | None, x: Tensor, rows: Callable
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    try:
        clean = mlp_forward(structure, x, params)
    except RuntimeError as error:
        raise _does_not_fit(x, error) from error
    layers: list[int] = structure.site_layers  # type: ignore[assignment]
    weights = [w for w, _ in mlp_weights(structure, params)]
    if rows is output_basis:  # C = I: the last layer's product is diag(phi') W itself
        weight, d1 = weights[-1], clean.first[-1]
        g = weight.expand(x.shape[0], *weight.shape) if d1 is None else d1.unsqueeze(-1) * weight
        grads = [*mlp_backward(weights[:-1], clean.first[:-1], g, stop=min(layers)), g]
    else:
        grads = mlp_backward(weights, clean.first, rows(clean.output), stop=min(layers))
    return clean.output, [clean.inputs[m] for m in layers], [grads[m] for m in layers]


def site_pass(
    model: nn.Module, x: Tensor, params: Mapping[str, Tensor] | None = None
) -> tuple[Tensor, list[Tensor]]:
    """The clean pass without a graph, checked: the output and the activations entering the sites.

    Raises:
        ValueError: as :func:`site_products`.
    """
    activations: list[Tensor] = []

    def record(k: int, h: Tensor) -> Tensor:
        activations.append(h)
        return h

    with torch.no_grad(), replace_site_outputs(model, record) as calls:
        output = run_model(model, x, params)
    check_calls(calls)
    for k, h in enumerate(activations):
        if h.shape[0] != x.shape[0]:
            raise ValueError(
                f"model's noise site {k} sees an activation of shape {tuple(h.shape)}; "
                f"it must be batch first, (B, ...) with B = {x.shape[0]}"
            )
    return output, activations


def _generic_products(
    model: nn.Module, params: Mapping[str, Tensor] | None, x: Tensor, rows: Callable
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    _, clean = site_pass(model, x, params)  # for the shapes of the perturbations

    def perturbed(*deltas: Tensor) -> tuple[Tensor, list[Tensor]]:
        activations: list[Tensor] = [x] * len(deltas)

        def add(k: int, h: Tensor) -> Tensor:
            activations[k] = h.reshape(h.shape[0], -1)
            return h + deltas[k]

        with replace_site_outputs(model, add):
            output = model(x) if params is None else functional_call(model, params, (x,))
        return output, activations

    zeros = [torch.zeros_like(h) for h in clean]
    output, vjp, activations = torch.func.vjp(perturbed, *zeros, has_aux=True)
    cotangents = rows(output)  # (B, c, d_L)
    count = cotangents.shape[1]
    products = torch.func.vmap(vjp)(cotangents.transpose(0, 1))  # per site (c, B, ...)
    return output, activations, [p.reshape(count, x.shape[0], -1).transpose(0, 1) for p in products]


def site_products(
    model: nn.Module,
    params: Mapping[str, Tensor] | None,
    x: Tensor,
    rows: Callable[[Tensor], Tensor] = output_basis,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    r"""The clean pass and the products :math:`C_b J_k(x_b)` at every noise site.

    .. math::

        P_k[b] = C_b\, J_k(x_b), \qquad J_k = \frac{\partial h_L}{\partial h_k},

    with the cotangent rows :math:`C` = ``rows(output)``, a function of the clean output
    (the identity gives the :math:`J_k`; the root of the loss Hessian gives the factors of :math:`R`).
    The MLP route when every site feeds a linear layer of a plain MLP, else the generic
    one (module docstring). ``params`` replace the model's parameters, as in
    :func:`torch.func.functional_call` (``None``: its own). No data-dependent checks, so
    it composes with :func:`torch.func.vmap` over stacked ``params``.

    Shapes:
        ``x`` :math:`(B, \dots)`; returns ``(output, activations, products)``:
        :math:`h_L` (B, d_L), the clean :math:`h_k` entering each site flattened
        to (B, d_k), and :math:`P_k` (B, c, d_k), in :func:`gni_lib.noise.noise_sites` order.

    Raises:
        ValueError: if ``x`` does not fit the model, the output is not (B, d_L), or a
            site is not used exactly once or not batch first.
    """
    structure = mlp_structure(model) if x.ndim == 2 else None
    if structure is None or None in structure.site_layers:
        return _generic_products(model, params, x, rows)
    return _mlp_products(structure, params, x, rows)


def layer_jacobians(model: nn.Module, x: Tensor) -> list[Tensor]:
    r"""Return the Jacobians :math:`J_k = \partial h_L / \partial h_k` of every noise site.

    .. math::

        J_k[b, i, a] = \frac{\partial h_{L,i}(x_b)}{\partial h_{k,a}(x_b)},
        \qquad k = 0, \dots, L-1,

    at the clean forward pass, one per :class:`gni_lib.noise.GaussianNoise` site in
    :func:`gni_lib.noise.noise_sites` order (Camuto et al. 2020, Thm. 1). For an
    :func:`gni_lib.models.MLP`, :math:`J_0` is the input-output Jacobian and :math:`J_k`
    the Jacobian with respect to the :math:`k`-th hidden activation.

    Any module works whose sites are used once each in the forward pass, whose output
    is :math:`(B, d_L)` and whose examples do not interact (no batch normalisation in
    training mode); a site that sees :math:`(B, *s)` gets :math:`d_k = \prod s`. Other
    modules run in their current mode (``model.eval()`` first if it has dropout).

    Cost: one forward pass and one batched set of :math:`d_L` vector-Jacobian products;
    a model that is not a plain MLP first runs once more without a graph, for checks
    and the sites' shapes. Differentiable with respect to the parameters when autograd
    is on.

    Args:
        model: an ``nn.Module`` with at least one noise site.
        x: the inputs, shape :math:`(B, d_0)` (or :math:`(B, \dots)`), finite,
            floating point, on the model's device and dtype.

    Returns:
        list[Tensor]: :math:`[J_0, \dots, J_{L-1}]`, :math:`J_k` of shape
        :math:`(B, d_L, d_k)`, on ``x``'s device and dtype.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``x`` not a tensor.
        ValueError: for a model with no noise site or one not used exactly once, bad
            ``x`` or ``x`` that does not fit the model, or an output not (B, d_L).
    """
    check_model(model)
    _, _, jacobians = site_products(model, None, check_input(x))
    return [J if J.is_contiguous() else J.contiguous() for J in jacobians]

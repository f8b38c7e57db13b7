r"""Layer Jacobians: how the network output responds to a perturbation at each noise site.

For a network with noise sites :math:`k = 0, \dots, L-1` (the
:class:`gni_lib.noise.GaussianNoise` modules, in :func:`gni_lib.noise.noise_sites`
order) and output :math:`h_L \in \mathbb R^{d_L}`, the Jacobian of site
:math:`k` is

.. math::

    J_k(x) = \frac{\partial h_L}{\partial h_k}(x) \in \mathbb R^{d_L \times d_k},

evaluated at the clean forward pass (all noise off), with :math:`h_k` the
activation entering site :math:`k`. This is the :math:`J_k` of Camuto et al.
(2020), Thm. 1: to first order, noise :math:`\varepsilon_k` at site :math:`k`
moves the output by :math:`J_k \varepsilon_k`, so the explicit regulariser
(:mod:`gni_lib.regularisers`) is built from these matrices.

**How they are computed.** One clean forward pass, then one batched set of
vector-Jacobian products (VJPs) over the :math:`d_L` output basis vectors:
example :math:`b`'s output depends only on example :math:`b`'s activations, so
the cotangent :math:`e_i` on every example at once gives row :math:`i` of every
example's :math:`J_k`, at all sites together. No loop over examples or sites.

- Any module: a zero perturbation :math:`\delta_k` is added at every site
  (:func:`gni_lib.noise.replace_site_outputs`) and
  :math:`J_k = \partial h_L / \partial \delta_k` comes from
  ``torch.autograd.grad(..., is_grads_batched=True)``.
- A plain MLP (an ``nn.Sequential`` of ``nn.Linear`` layers, elementwise
  activations, and ``GaussianNoise`` sites each directly in front of a linear
  layer, as :func:`gni_lib.models.MLP` builds): the same products written out
  as the backward recursion :math:`G_{k-1} = (G_k \odot \phi'(z_k)) W_k`, with
  :math:`G` of shape :math:`(B, d_L, d_k)`, one matrix product per layer. This
  is the same arithmetic without autograd's per-call overhead, and it stays
  differentiable (with plain autograd) with respect to the parameters.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .noise import GaussianNoise, noise_sites, replace_site_outputs

__all__ = ["layer_jacobians"]


# --- input checks shared by the regulariser, the gap and the curvature modules -------


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


def check_input(x: object) -> Tensor:
    """Raise unless ``x`` is a finite floating tensor of shape (B, ...) with B >= 1."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, d_0), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 1 or x.numel() == 0:
        raise ValueError(
            f"x must have shape (B, d_0) (batch first) with B >= 1, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite, but it holds NaN or infinite entries")
    return x


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int; raise unless it is an int >= ``minimum`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_target(y: object, output: Tensor, loss: str) -> Tensor:
    """Raise unless ``y`` is a valid target for ``output`` under ``loss`` ("mse" or "ce")."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    batch, d_out = output.shape
    if y.device != output.device:
        raise ValueError(f"y must be on the model's device {output.device}, got {y.device}")
    if loss == "mse":
        if y.shape != output.shape:
            raise ValueError(
                f"y must have the model output's shape (B, d_L) = {tuple(output.shape)} "
                f"for loss='mse', got {tuple(y.shape)}"
            )
        if y.dtype != output.dtype:
            raise ValueError(f"y must have the output's dtype {output.dtype}, got {y.dtype}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y must be finite, but it holds NaN or infinite entries")
    else:
        if y.shape != (batch,) or y.dtype != torch.int64:
            raise ValueError(
                f"y must hold int64 class indices of shape (B,) = ({batch},) for loss='ce', "
                f"got shape {tuple(y.shape)} and dtype {y.dtype}"
            )
        if int(y.min()) < 0 or int(y.max()) >= d_out:
            raise ValueError(
                f"y must hold class indices in [0, {d_out - 1}] for loss='ce', got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )
    return y


def run_model(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)``, with a shape or dtype mismatch reported as a ValueError naming ``x``,
    and the output checked to be (B, d_L)."""
    try:
        output = model(x)
    except RuntimeError as error:
        raise ValueError(
            f"x of shape {tuple(x.shape)} (dtype {x.dtype}, device {x.device}) does not fit "
            f"the model: {error}"
        ) from error
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


# --- plain MLPs: the layer structure ------------------------------------------------------

#: Elementwise activations the MLP routes understand (no parameters, one coordinate at a time).
ELEMENTWISE = (
    nn.Identity,
    nn.Tanh,
    nn.ReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Softplus,
    nn.SiLU,
    nn.GELU,
    nn.Mish,
    nn.Softsign,
)


@dataclass
class MLPStructure:
    """A plain MLP split into its layers.

    Attributes:
        prefix: elementwise modules applied to ``x`` before the first linear layer.
        layers: ``(linear, elementwise modules after it)`` for each linear layer.
        site_layers: for each noise site (``noise_sites`` order), the index of the
            linear layer it feeds directly, or ``None`` when something else follows it.
    """

    prefix: list[nn.Module]
    layers: list[tuple[nn.Linear, list[nn.Module]]]
    site_layers: list[int | None]


def mlp_structure(model: nn.Module) -> MLPStructure | None:
    """The layers of ``model`` if it is a plain MLP, else ``None``.

    A plain MLP is an ``nn.Sequential`` (exactly that class) whose children are
    ``nn.Linear`` (exactly that class), ``GaussianNoise`` and the :data:`ELEMENTWISE`
    activations, with at least one linear layer. Its noise sites are the
    identity at the clean pass. The MLP routes read these layers directly, so
    forward hooks a user has put on them are not run.
    """
    if type(model) is not nn.Sequential:  # a subclass may override forward
        return None
    prefix: list[nn.Module] = []
    layers: list[tuple[nn.Linear, list[nn.Module]]] = []
    site_layers: list[int | None] = []
    pending: int | None = None  # a site whose next child has not been seen yet
    for child in model:
        if pending is not None:
            site_layers[pending] = len(layers) if type(child) is nn.Linear else None
            pending = None
        if type(child) is nn.Linear:
            layers.append((child, []))
        elif isinstance(child, GaussianNoise):
            site_layers.append(None)
            pending = len(site_layers) - 1
        elif type(child) in ELEMENTWISE:
            (layers[-1][1] if layers else prefix).append(child)
        else:
            return None
    return MLPStructure(prefix, layers, site_layers) if layers else None


def _closed_form_derivative(module: nn.Module, z: Tensor, a: Tensor) -> Tensor | None:
    r""":math:`\phi'(z)` for the common activations, from :math:`z` and :math:`a = \phi(z)`."""
    kind = type(module)
    if kind is nn.Tanh:
        return 1 - a * a
    if kind is nn.Sigmoid:
        return a * (1 - a)
    if kind is nn.ReLU:
        return (z > 0).to(z.dtype)
    if kind is nn.LeakyReLU:
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, module.negative_slope))
    if kind is nn.ELU:
        return torch.where(z > 0, torch.ones_like(z), a + module.alpha)
    return None


def _autograd_derivative(module: nn.Module, z: Tensor, a: Tensor) -> Tensor:
    r""":math:`\phi'(z)` of an elementwise module by autograd, differentiable if ``z`` is."""
    if torch.is_grad_enabled() and z.requires_grad:
        (d1,) = torch.autograd.grad(a.sum(), z, create_graph=True)
        return d1
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        (d1,) = torch.autograd.grad(module(leaf).sum(), leaf)
    return d1


def apply_elementwise(modules: list[nn.Module], z: Tensor) -> tuple[Tensor, Tensor | None]:
    r"""The composite elementwise map: :math:`a = \phi(z)` and :math:`\phi'(z)`
    (``None`` for the identity), differentiable when autograd is on."""
    a, derivative = z, None
    for module in modules:
        if type(module) is nn.Identity:
            continue
        out = module(a)
        d1 = _closed_form_derivative(module, a, out)
        if d1 is None:
            d1 = _autograd_derivative(module, a, out)
        derivative = d1 if derivative is None else derivative * d1
        a = out
    return a, derivative


def mlp_forward(
    structure: MLPStructure, x: Tensor
) -> tuple[list[Tensor], list[Tensor | None], Tensor]:
    r"""The clean forward pass of a plain MLP.

    Returns:
        ``(inputs, first, output)``: ``inputs[m]`` is the input :math:`a_{m-1}` of
        linear layer ``m``, ``first[m]`` is :math:`\phi_m'(z_m)` (``None`` for the
        identity), and ``output`` is :math:`h_L`.

    Raises:
        ValueError: if ``x`` does not fit the first layer (shape, dtype or device).
    """
    try:
        a = x
        for module in structure.prefix:
            a = module(a)
        inputs, first = [], []
        for linear, modules in structure.layers:
            inputs.append(a)
            a, d1 = apply_elementwise(modules, F.linear(a, linear.weight, linear.bias))
            first.append(d1)
    except RuntimeError as error:
        raise ValueError(
            f"x of shape {tuple(x.shape)} (dtype {x.dtype}, device {x.device}) does not fit "
            f"the model: {error}"
        ) from error
    return inputs, first, a


# --- the clean pass and its vector-Jacobian products at the sites ----------------------


@dataclass
class CleanPass:
    r"""The clean forward pass, ready for vector-Jacobian products at the noise sites.

    Attributes:
        output: :math:`h_L`, shape (B, d_L).
        activations: the clean :math:`h_k` entering each site, flattened to (B, d_k).
        sites: the ``GaussianNoise`` modules, in :func:`noise_sites` order.
        vjp: maps cotangents :math:`C` of shape (B, c, d_L) to the products
            :math:`C_b J_k(x_b)`, one tensor (B, c, d_k) per site; ``None`` stands
            for the identity (:math:`c = d_L`), which gives the :math:`J_k` themselves.
        deltas: the zero perturbations (generic route only, else ``None``).
    """

    output: Tensor
    activations: list[Tensor]
    sites: list[GaussianNoise]
    vjp: Callable[[Tensor], list[Tensor]]
    deltas: list[Tensor] | None = None


def wants_graph(model: nn.Module, x: Tensor) -> bool:
    """True when results should be differentiable: autograd on and something requires grad."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in model.parameters())


def perturbed_pass(model: nn.Module, x: Tensor) -> CleanPass:
    """The generic route: run ``model`` with noise off and a zero leaf added at every site.

    Autograd is switched on for the pass (also under ``torch.no_grad()``), so
    that derivatives with respect to the perturbations can be taken; the
    returned ``vjp`` keeps a graph only when autograd is on at the call.
    """
    sites = check_model(model)
    x = check_input(x)
    deltas: list[Tensor | None] = [None] * len(sites)
    activations: list[Tensor | None] = [None] * len(sites)

    def add_zero(k: int, h: Tensor) -> Tensor:
        delta = torch.zeros_like(h, requires_grad=True)
        deltas[k] = delta
        activations[k] = h.reshape(h.shape[0], -1)
        return h + delta

    with torch.enable_grad(), replace_site_outputs(model, add_zero) as calls:
        output = run_model(model, x)
    check_calls(calls)
    for k, h in enumerate(activations):
        if h.shape[0] != x.shape[0]:
            raise ValueError(
                f"model's noise site {k} sees an activation of shape {tuple(h.shape)}; "
                f"it must be batch first, (B, ...) with B = {x.shape[0]}"
            )
    create_graph = wants_graph(model, x)

    def vjp(cotangents: Tensor | None) -> list[Tensor]:
        if cotangents is None:
            cotangents = output_basis(output)
        batch, count = cotangents.shape[:2]
        if not output.requires_grad:  # the output depends on no site
            return [h.new_zeros((batch, count, h.shape[1])) for h in activations]
        grads = torch.autograd.grad(
            output,
            deltas,
            grad_outputs=cotangents.transpose(0, 1),
            is_grads_batched=True,
            create_graph=create_graph,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        return [g.reshape(count, batch, -1).transpose(0, 1) for g in grads]

    return CleanPass(output, activations, sites, vjp, deltas)  # type: ignore[arg-type]


def clean_pass(model: nn.Module, x: Tensor) -> CleanPass:
    """The clean pass of ``model`` at ``x``: the MLP route when it applies, else the generic one.

    Results are differentiable with respect to the parameters when autograd is
    on (and something requires grad); under ``torch.no_grad()`` no graph is kept.
    """
    sites = check_model(model)
    x = check_input(x)
    structure = mlp_structure(model) if x.ndim == 2 else None
    if structure is None or any(m is None for m in structure.site_layers):
        return perturbed_pass(model, x)
    create_graph = wants_graph(model, x)
    with torch.set_grad_enabled(create_graph):
        inputs, first, output = mlp_forward(structure, x)
    site_layers: list[int] = structure.site_layers  # type: ignore[assignment]
    activations = [inputs[m] for m in site_layers]
    earliest = min(site_layers)
    weights = [linear.weight for linear, _ in structure.layers]

    def vjp(cotangents: Tensor | None) -> list[Tensor]:
        results: list[Tensor | None] = [None] * len(sites)
        with torch.set_grad_enabled(create_graph):
            g = cotangents  # (B, c, d_L), with respect to the output a_M; None: the identity
            for m in range(len(weights) - 1, earliest - 1, -1):
                if g is None:  # the first step from the identity: rows of diag(phi') W
                    weight = weights[m].expand(output.shape[0], *weights[m].shape)
                    g = weight if first[m] is None else first[m].unsqueeze(2) * weight
                else:
                    if first[m] is not None:
                        g = g * first[m].unsqueeze(1)  # with respect to z_m
                    g = g @ weights[m]  # with respect to a_{m-1}, the input of layer m
                for k, layer in enumerate(site_layers):
                    if layer == m:
                        results[k] = g
        return results  # type: ignore[return-value]

    return CleanPass(output, activations, sites, vjp)


def output_basis(output: Tensor) -> Tensor:
    """The cotangents :math:`e_i` on every example: (B, d_L, d_L), the identity per example."""
    batch, d_out = output.shape
    eye = torch.eye(d_out, device=output.device, dtype=output.dtype)
    return eye.expand(batch, d_out, d_out)


def layer_jacobians(model: nn.Module, x: Tensor) -> list[Tensor]:
    r"""Return the Jacobians :math:`J_k = \partial h_L / \partial h_k` of every noise site.

    .. math::

        J_k[b, i, a] = \frac{\partial h_{L,i}(x_b)}{\partial h_{k,a}(x_b)},
        \qquad k = 0, \dots, L-1,

    evaluated at the clean forward pass (every noise site off), one per
    :class:`gni_lib.noise.GaussianNoise` site in :func:`gni_lib.noise.noise_sites`
    order (Camuto et al. 2020, Thm. 1). For an :func:`gni_lib.models.MLP` with
    widths :math:`[d_0, \dots, d_L]`, :math:`J_0` is the input-output Jacobian and
    :math:`J_k` the Jacobian with respect to the :math:`k`-th hidden activation.

    Any module works whose noise sites are ``GaussianNoise`` modules used once
    each in the forward pass, whose output is :math:`(B, d_L)`, and whose
    examples do not interact (no batch normalisation in training mode). A site
    that sees an activation of shape :math:`(B, *s)` gets :math:`d_k = \prod s`
    (the activation is flattened). Modules other than the sites run in their
    current mode: call ``model.eval()`` first if it has dropout.

    Cost: one forward pass and one batched set of :math:`d_L` vector-Jacobian
    products (no loop over examples or sites). The result is differentiable with
    respect to the parameters when autograd is on; under :func:`torch.no_grad`
    it is computed without a graph.

    Args:
        model: an ``nn.Module`` with at least one noise site.
        x: the inputs, shape :math:`(B, d_0)` (or :math:`(B, \dots)`), finite,
            floating point, on the model's device and dtype.

    Returns:
        list[Tensor]: :math:`[J_0, \dots, J_{L-1}]`, :math:`J_k` of shape
        :math:`(B, d_L, d_k)`, on ``x``'s device and dtype.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``x`` not a tensor.
        ValueError: if ``model`` has no noise sites, or one is not used exactly
            once; ``x`` is not a finite floating tensor of shape (B, ...) or does
            not fit the model (shape, dtype or device); or the output is not
            (B, d_L).
    """
    jacobians = clean_pass(model, x).vjp(None)
    return [J if J.is_contiguous() else J.contiguous() for J in jacobians]

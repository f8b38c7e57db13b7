r"""The book's networks: multilayer perceptrons with a noise site before every layer.

For widths :math:`[d_0, \dots, d_L]`, :func:`MLP` builds

.. math::

    h_0 = x, \qquad
    h_{k+1} = \phi\bigl(W_{k+1} \tilde h_k + b_{k+1}\bigr) \ (k < L-1), \qquad
    h_L = W_L \tilde h_{L-1} + b_L,

with :math:`\tilde h_k` the output of noise site :math:`k`
(:class:`gni_lib.noise.GaussianNoise`, standard deviation :math:`\sigma_k`): noise on
the input and every hidden activation, a linear output layer (Camuto et al. 2020, Sec. 2).

**The MLP core**, on tensors, for every route that needs the layers (layer
Jacobians, :math:`R`, the Hessian trace, the ensemble): :func:`mlp_structure`
recognises a plain MLP, :func:`mlp_forward` runs its clean pass with
:math:`\phi'` (and :math:`\phi''`), :func:`mlp_backward` the backward recursion.
They take the weights from a ``params`` mapping (names as in
``model.named_parameters()``), so they compose with :func:`torch.func.vmap` over
stacked parameters (:func:`torch.func.stack_module_state`) and with autograd.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice
from .noise import GaussianNoise, sigma_list

__all__ = [
    "MLP", "ACTIVATIONS", "ELEMENTWISE", "MLPStructure", "MLPPass", "mlp_structure", "mlp_weights",
    "mlp_forward", "mlp_backward", "elementwise",
]

#: The accepted activations and the modules that implement them. ``"linear"``
#: uses :class:`torch.nn.Identity`, so a linear network has the same children
#: (and the same indices) as a nonlinear one.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "linear": nn.Identity,
}

#: The elementwise activations a plain MLP may use (no parameters, one coordinate at
#: a time); :data:`ACTIVATIONS` names the common ones.
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Tanh, nn.ReLU, nn.ELU, nn.CELU, nn.SELU, nn.LeakyReLU, nn.Sigmoid,
    nn.Softplus, nn.SiLU, nn.GELU, nn.Mish, nn.Softsign,
)


def _check_widths(widths: object) -> list[int]:
    message = "widths must be a sequence of at least 2 positive ints [d_0, ..., d_L]"
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise ValueError(f"{message}, got {type(widths).__name__}")
    if len(widths) < 2:
        raise ValueError(f"{message}, got {list(widths)!r}")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1:
            raise ValueError(f"{message}, got {list(widths)!r}")
    return [int(w) for w in widths]


def MLP(
    widths: Sequence[int],
    activation: str = "tanh",
    sigma: float | Sequence[float] = 0.0,
    bias: bool = True,
    mode: str = "additive",
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> nn.Sequential:
    r"""Return a multilayer perceptron with a Gaussian noise site before every layer.

    For ``widths`` :math:`= [d_0, \dots, d_L]` the :math:`3L - 1` children of the
    :class:`torch.nn.Sequential` are

    ``GaussianNoise, Linear, act, GaussianNoise, Linear, act, ..., GaussianNoise, Linear``:

    site :math:`k` (child :math:`3k`) perturbs :math:`h_k`, linear layer :math:`k+1` is
    child :math:`3k + 1` and its activation child :math:`3k + 2`. In training mode site
    :math:`k` computes :math:`h_k + \sigma_k \varepsilon_k` (or
    :math:`h_k \odot (1 + \sigma_k \varepsilon_k)`, Camuto et al. 2020, eq. 6); in
    ``eval()`` mode the sites are the identity (the clean network).

    Parameters get PyTorch's default initialisation, from the global generator, or
    with ``seed`` from a CPU stream seeded with it (the global generator untouched):
    the same seed gives the same weights on every device. Chapters pass seeds through
    :func:`gni_lib.seeding.stream_seed`, so that ``GNI_SEED`` moves them. Built on the
    CPU in float32; move it with ``.to(device, dtype)``.

    Args:
        widths: :math:`[d_0, \dots, d_L]`, at least two positive ints.
        activation: ``"tanh"``, ``"relu"``, ``"elu"`` or ``"linear"`` (identity).
        sigma: the noise standard deviation (not variance): one for all :math:`L`
            sites, or :math:`[\sigma_0, \dots, \sigma_{L-1}]`.
        bias: whether the linear layers have biases.
        mode: ``"additive"`` or ``"multiplicative"``, for every site.
        generator: shared by all sites, drawn in forward order; ``None``: torch's global one.
        seed: a non-negative int that fixes the initial weights, or ``None``.

    Shapes:
        input :math:`(B, d_0)`, output :math:`(B, d_L)`.

    Returns:
        nn.Sequential: the network, in training mode (noise on).

    Raises:
        ValueError: for bad ``widths``, an unknown ``activation`` or ``mode``, a negative
            or non-finite :math:`\sigma_k`, a ``sigma`` sequence not of length :math:`L`,
            or a negative ``seed``.
        TypeError: if ``sigma``, ``bias``, ``generator`` or ``seed`` has the wrong type.
    """
    widths = _check_widths(widths)
    check_choice(activation, "activation", tuple(ACTIVATIONS))
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    n_layers = len(widths) - 1
    sigmas = sigma_list(sigma, n_layers)

    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be a non-negative int or None, got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {seed}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return MLP(widths, activation, sigma, bias, mode, generator)

    children: list[nn.Module] = []
    for k in range(n_layers):
        children.append(GaussianNoise(sigmas[k], mode=mode, generator=generator))
        children.append(nn.Linear(widths[k], widths[k + 1], bias=bias))
        if k < n_layers - 1:
            children.append(ACTIVATIONS[activation]())
    return nn.Sequential(*children)


# --- the MLP core: recognise, forward, backward ------------------------------------------------


@dataclass
class MLPStructure:
    """A plain MLP split into its layers.

    Attributes:
        prefix: elementwise modules applied to ``x`` before the first linear layer.
        layers: ``(linear, elementwise modules after it)`` for each linear layer.
        site_layers: for each noise site (:func:`gni_lib.noise.noise_sites` order), the
            index of the linear layer it feeds directly, or ``None`` when something
            else follows it.
        names: ``(weight name, bias name or None)`` of each linear layer, as keys of
            ``model.named_parameters()`` (and of :func:`torch.func.stack_module_state`).
    """

    prefix: list[nn.Module]
    layers: list[tuple[nn.Linear, list[nn.Module]]]
    site_layers: list[int | None]
    names: list[tuple[str, str | None]]


def mlp_structure(model: nn.Module) -> MLPStructure | None:
    """The layers of ``model`` if it is a plain MLP, else ``None``: the one rule for "plain MLP".

    A plain MLP is an ``nn.Sequential`` (exactly that class: a subclass may override
    ``forward``) whose children are ``nn.Linear`` (exactly that class),
    ``GaussianNoise`` sites and :data:`ELEMENTWISE` activations (exactly those
    classes), with at least one linear layer; :func:`MLP` builds one. At the clean
    pass its noise sites are the identity. The routes that use the structure read
    the layers' weights directly, so forward hooks on the layers are not run.
    """
    if type(model) is not nn.Sequential:
        return None
    prefix: list[nn.Module] = []
    layers: list[tuple[nn.Linear, list[nn.Module]]] = []
    site_layers: list[int | None] = []
    names: list[tuple[str, str | None]] = []
    pending: int | None = None  # a site whose next child has not been seen yet
    for name, child in model.named_children():
        if pending is not None:
            site_layers[pending] = len(layers) if type(child) is nn.Linear else None
            pending = None
        if type(child) is nn.Linear:
            layers.append((child, []))
            names.append((f"{name}.weight", f"{name}.bias" if child.bias is not None else None))
        elif isinstance(child, GaussianNoise):
            site_layers.append(None)
            pending = len(site_layers) - 1
        elif type(child) in ELEMENTWISE:
            (layers[-1][1] if layers else prefix).append(child)
        else:
            return None
    return MLPStructure(prefix, layers, site_layers, names) if layers else None


def _closed_forms(
    module: nn.Module, z: Tensor, a: Tensor, second: bool
) -> tuple[Tensor, Tensor | None] | None:
    r""":math:`\phi'(z)` and (with ``second``) :math:`\phi''(z)` of the common activations,
    from :math:`z` and :math:`a = \phi(z)`; ``None`` for the other activations."""
    kind = type(module)
    if kind is nn.Tanh:
        d1 = 1 - a * a
        return d1, -2 * a * d1 if second else None
    if kind is nn.Sigmoid:
        d1 = a * (1 - a)
        return d1, d1 * (1 - 2 * a) if second else None
    zero = torch.zeros_like(z) if second else None
    if kind is nn.ReLU:
        return (z > 0).to(z.dtype), zero
    if kind is nn.LeakyReLU:
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, module.negative_slope)), zero
    if kind is nn.ELU:
        positive = z > 0
        return torch.where(positive, torch.ones_like(z), a + module.alpha), (
            torch.where(positive, torch.zeros_like(z), a + module.alpha) if second else None
        )
    return None


def elementwise(
    modules: Sequence[nn.Module], z: Tensor, *, second: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""The composite elementwise map :math:`\phi = \phi_n \circ \dots \circ \phi_1` and its derivatives.

    .. math::

        (f \circ g)' = f'(g)\, g', \qquad (f \circ g)'' = f''(g)\, g'^2 + f'(g)\, g''.

    Closed forms for tanh, sigmoid, ReLU, leaky ReLU and ELU; any other module by
    forward-mode autograd (:func:`torch.func.jvp` with a tangent of ones), so the result
    composes with :func:`torch.func.vmap` and is differentiable in ``z``.

    Shapes:
        ``z`` any shape; every result has ``z``'s shape.

    Returns:
        ``(a, d1, d2)``: :math:`\phi(z)`, :math:`\phi'(z)` (``None`` for the identity)
        and, with ``second``, :math:`\phi''(z)` (``None`` when it is zero, or not asked).
    """
    a, d1, d2 = z, None, None
    for module in modules:
        if type(module) is nn.Identity:
            continue
        out = module(a)
        forms = _closed_forms(module, a, out, second)
        if forms is None:  # forward mode: phi' = jvp with a tangent of ones, phi'' = its jvp

            def derivative(u: Tensor, module: nn.Module = module) -> Tensor:
                return torch.func.jvp(module, (u,), (torch.ones_like(u),))[1]

            if second:  # nested forward mode needs grad mode for some kernels (SiLU, Mish)
                with torch.enable_grad():
                    forms = torch.func.jvp(derivative, (a,), (torch.ones_like(a),))
            else:
                forms = (derivative(a), None)
        e1, e2 = forms
        if second:
            d2 = e2 if d1 is None else e2 * d1 * d1 + (0 if d2 is None else e1 * d2)
        d1 = e1 if d1 is None else e1 * d1
        a = out
    return a, d1, d2


@dataclass
class MLPPass:
    r"""The clean forward pass of a plain MLP with :math:`M` linear layers.

    Attributes:
        inputs: ``inputs[m]`` is :math:`a_{m-1}`, the input of linear layer ``m``, (B, d_{m-1}).
        first: ``first[m]`` is :math:`\phi_m'(z_m)`, (B, d_m); ``None`` for the identity.
        second: ``second[m]`` is :math:`\phi_m''(z_m)`; ``None`` when zero or not asked.
        output: :math:`a_M = h_L`, (B, d_L).
    """

    inputs: list[Tensor]
    first: list[Tensor | None]
    second: list[Tensor | None]
    output: Tensor


def mlp_weights(
    structure: MLPStructure, params: Mapping[str, Tensor] | None = None
) -> list[tuple[Tensor, Tensor | None]]:
    """``(W_m, b_m)`` of each linear layer: from ``params`` by name, else from the modules."""
    if params is None:
        return [(linear.weight, linear.bias) for linear, _ in structure.layers]
    return [(params[w], None if b is None else params[b]) for w, b in structure.names]


def mlp_forward(
    structure: MLPStructure,
    x: Tensor,
    params: Mapping[str, Tensor] | None = None,
    *,
    second: bool = False,
) -> MLPPass:
    r"""The clean forward pass of a plain MLP, with :math:`\phi'` (and :math:`\phi''`) at every layer.

    .. math::

        a_0 = \text{prefix}(x), \qquad z_m = W_m a_{m-1} + b_m, \qquad a_m = \phi_m(z_m),

    for :math:`m = 1, \dots, M` (0-based in the lists), the weights from ``params``
    (keys ``MLPStructure.names``) or, if ``None``, from the modules. Pure tensor code:
    differentiable, and under :func:`torch.func.vmap` over stacked ``params`` it runs
    every model at once.

    Shapes:
        ``x`` :math:`(B, d_0)`; see :class:`MLPPass`.

    Raises:
        RuntimeError: (from torch) if ``x`` does not fit the first layer.
    """
    a = x
    for module in structure.prefix:
        a = module(a)
    inputs, first, seconds = [], [], []
    for (weight, bias), (_, modules) in zip(mlp_weights(structure, params), structure.layers):
        inputs.append(a)
        a, d1, d2 = elementwise(modules, F.linear(a, weight, bias), second=second)
        first.append(d1)
        seconds.append(d2)
    return MLPPass(inputs, first, seconds, a)


def mlp_backward(
    weights: Sequence[Tensor], first: Sequence[Tensor | None], g: Tensor, stop: int = 0
) -> list[Tensor | None]:
    r"""The backward recursion of a plain MLP: cotangents of every layer's input.

    .. math::

        G_M = g, \qquad G_{m-1} = \bigl(G_m \odot \phi_m'(z_m)\bigr) W_m,

    so that for cotangent rows :math:`g = C` on the output :math:`G_{m-1} = C\,
    \partial a_M / \partial a_{m-1}` (:math:`C = I`: the Jacobians of :mod:`gni_lib.jacobians`).
    One matrix product per layer, no autograd; composes with :func:`torch.func.vmap`.

    Args:
        weights: :math:`W_m`, shape :math:`(d_m, d_{m-1})`, for each linear layer; or
            :math:`(S, d_m, d_{m-1})` for :math:`S` stacked models, with a leading :math:`S`
            on ``first`` and ``g`` too (one batched product per layer).
        first: :math:`\phi_m'(z_m)`, shape :math:`(B, d_m)` (``None``: identity).
        g: the cotangent rows on the output, :math:`(B, c, d_L)`.
        stop: the first layer whose input cotangent is wanted.

    Returns:
        list: entry ``m`` is :math:`G_{m-1}`, shape :math:`(B, c, d_{m-1})` (:math:`(S, B, c,
        d_{m-1})` when stacked), for
        ``m >= stop``; ``None`` below.
    """
    grads: list[Tensor | None] = [None] * len(weights)
    for m in range(len(weights) - 1, stop - 1, -1):
        if first[m] is not None:
            g = g * first[m].unsqueeze(-2)  # with respect to z_m
        # wrt a_{m-1}: one matrix product over all rows (per model for stacked weights), also under
        # vmap, where g @ W would be one product per example
        g = (g.reshape(*weights[m].shape[:-2], -1, g.shape[-1]) @ weights[m]).view(*g.shape[:-1], -1)
        grads[m] = g
    return grads

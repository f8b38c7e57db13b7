r"""Layer-to-layer Jacobians of an MLP, their norms, and the traces of its square weight matrices.

For the network of :func:`gni_lib.models.MLP`, layer :math:`k = 1, \dots, L` maps
:math:`h_{k-1}` to :math:`h_k = \phi(W_k h_{k-1} + b_k)` (:math:`\phi` the identity for
:math:`k = L`). Its Jacobian, evaluated at the clean forward pass, is

.. math::

    \nabla_{h_{k-1}} h_k = \operatorname{diag}\bigl(\phi'(W_k h_{k-1} + b_k)\bigr)\, W_k
    \in \mathbb R^{d_k \times d_{k-1}} .

For ReLU, :math:`\phi' \in \{0, 1\}`, so this is :math:`\widetilde W_k`: :math:`W_k` with
**row** :math:`i` set to zero whenever neuron :math:`i` of layer :math:`k` is inactive
(Camuto et al. 2020, Sec. 4, "A layer-wise regularisation", say *column*; for
:math:`h_k = \phi(W_k h_{k-1})` it is the row). The chain rule makes
:math:`J_j = \partial h_L / \partial h_j` a product of these factors for
:math:`k = j+1, \dots, L`, so the factor of layer :math:`k` appears in
:math:`J_0, \dots, J_{k-1}`: :math:`k` times in :math:`R`. Camuto et al. expect
its norm to decrease with :math:`k` under noise injection (their Fig. 5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .noise import GaussianNoise

__all__ = ["layer_to_layer_jacobians", "layer_jacobian_norms", "square_layer_traces"]

#: Elementwise activations a layer may end in.
_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.ELU, nn.Identity, nn.Sigmoid, nn.LeakyReLU, nn.Softplus)


def _layers(model: object) -> list[nn.Sequential]:
    """Split an MLP into its layers: one ``Sequential(Linear[, activation])`` per :math:`k`."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model must be an nn.Sequential of GaussianNoise, Linear and activation modules "
            f"(gni_lib.models.MLP), got {type(model).__name__}"
        )
    layers: list[list[nn.Module]] = []
    for index, child in enumerate(model):
        if isinstance(child, GaussianNoise):
            continue  # the clean pass: noise sites are the identity
        if isinstance(child, nn.Linear):
            layers.append([child])
        elif isinstance(child, _ACTIVATIONS) and layers and len(layers[-1]) == 1:
            layers[-1].append(child)
        else:
            raise ValueError(
                f"model must be a sequence of [GaussianNoise,] Linear[, activation] blocks "
                f"(gni_lib.models.MLP); child {index} ({type(child).__name__}) does not fit"
            )
    if not layers:
        raise ValueError("model must contain at least one nn.Linear layer")
    return [nn.Sequential(*parts) for parts in layers]


def _check_input(x: object, d_in: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, d_0), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != d_in:
        raise ValueError(f"x must have shape (B, d_0) = (B, {d_in}) with B >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise ValueError("x must be a finite floating-point tensor")
    return x


def layer_to_layer_jacobians(model: nn.Sequential, x: Tensor) -> list[Tensor]:
    r"""Return :math:`\nabla_{h_{k-1}} h_k` at every example, for every layer :math:`k = 1, \dots, L`.

    .. math::

        G_k[b, i, j] = \frac{\partial h_{k,i}(x_b)}{\partial h_{k-1,j}(x_b)}
        = \phi'(z_{k,i}(x_b))\, (W_k)_{ij}, \qquad z_k = W_k h_{k-1} + b_k,

    at the clean forward pass (noise sites skipped), computed by autograd
    (:func:`torch.func.jacrev` per example, vectorised with :func:`torch.func.vmap`),
    so any elementwise activation works. For ReLU, :math:`G_k = \widetilde W_k`,
    :math:`W_k` with the rows of inactive neurons zeroed (Camuto et al. 2020, Sec. 4).
    Differentiable with respect to the parameters when autograd is on.

    Args:
        model: an :func:`gni_lib.models.MLP` (an ``nn.Sequential`` of
            ``GaussianNoise``, ``Linear`` and activation modules).
        x: inputs, shape :math:`(B, d_0)`, finite, on the model's device and dtype.

    Returns:
        list[Tensor]: :math:`[G_1, \dots, G_L]`, :math:`G_k` of shape :math:`(B, d_k, d_{k-1})`.

    Raises:
        TypeError: if ``model`` is not an ``nn.Sequential`` or ``x`` not a tensor.
        ValueError: if ``model`` has a child other than noise sites, linear layers and
            elementwise activations after them, or ``x`` has the wrong shape or is
            not finite.
    """
    layers = _layers(model)
    h = _check_input(x, layers[0][0].in_features)
    jacobians = []
    for layer in layers:
        jacobians.append(torch.func.vmap(torch.func.jacrev(layer))(h))
        h = layer(h)
    return jacobians


def layer_jacobian_norms(model: nn.Sequential, x: Tensor, *, squared: bool = False) -> Tensor:
    r"""Return the data mean of :math:`\lVert \nabla_{h_{k-1}} h_k \rVert_F` for :math:`k = 1, \dots, L`.

    .. math::

        n_k = \frac1B \sum_{b=1}^{B} \bigl\lVert \nabla_{h_{k-1}} h_k(x_b) \bigr\rVert_F
        \quad\Bigl(\text{or } \frac1B \sum_b \lVert \cdot \rVert_F^2 \text{ if } \texttt{squared}\Bigr).

    Camuto et al. (2020), Fig. 5 (a, b), plot this for the square layers of ReLU
    networks (the paper writes :math:`\lVert \widetilde W_k \rVert_2^2`; the values
    in their notebook, 6.5-13.8 for width 256, are the size of an unsquared
    Frobenius norm).

    Args:
        model, x: as :func:`layer_to_layer_jacobians`.
        squared: average :math:`\lVert\cdot\rVert_F^2` instead of :math:`\lVert\cdot\rVert_F`.

    Returns:
        Tensor: shape :math:`(L,)`, entry :math:`k - 1` for layer :math:`k`.

    Raises:
        TypeError: as :func:`layer_to_layer_jacobians`, or if ``squared`` is not a bool.
        ValueError: as :func:`layer_to_layer_jacobians`.
    """
    if not isinstance(squared, bool):
        raise TypeError(f"squared must be a bool, got {type(squared).__name__}")
    norms = []
    for jacobian in layer_to_layer_jacobians(model, x):
        per_example = jacobian.pow(2).sum(dim=(1, 2))
        norms.append((per_example if squared else per_example.sqrt()).mean())
    return torch.stack(norms)


def square_layer_traces(model: nn.Sequential) -> tuple[list[int], Tensor]:
    r"""Return the indices :math:`k` of the square layers and :math:`\operatorname{Tr} W_k` of each.

    .. math::

        \operatorname{Tr} W_k = \sum_i (W_k)_{ii}, \qquad k \in \{k : d_k = d_{k-1}\}.

    Camuto et al. (2020), Fig. 5 (c, d), read a smaller trace as more negative
    weights, hence more inactive ReLU units and a smaller :math:`\widetilde W_k`.

    Args:
        model: as :func:`layer_to_layer_jacobians`.

    Returns:
        ``(indices, traces)``: the 1-based layer indices :math:`k` (in order) and a
        tensor of shape ``(len(indices),)`` on the weights' device and dtype.

    Raises:
        TypeError, ValueError: as :func:`layer_to_layer_jacobians` for ``model``;
            ValueError if it has no square layer.
    """
    layers = _layers(model)
    indices = [k for k, layer in enumerate(layers, start=1)
               if layer[0].in_features == layer[0].out_features]
    if not indices:
        raise ValueError("model has no square layer (d_k = d_{k-1}) to take the trace of")
    traces = torch.stack([torch.diagonal(layers[k - 1][0].weight).sum() for k in indices])
    return indices, traces

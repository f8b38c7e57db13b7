r"""Layer-to-layer Jacobians of an MLP, their norms, and the traces of its square weight matrices.

Layer :math:`k = 1, \dots, L` of :func:`gni_lib.models.MLP` maps :math:`h_{k-1}` to
:math:`h_k = \phi(W_k h_{k-1} + b_k)` (:math:`\phi` the identity for :math:`k = L`), with
Jacobian, at the clean pass,

.. math::

    \nabla_{h_{k-1}} h_k = \operatorname{diag}\bigl(\phi'(W_k h_{k-1} + b_k)\bigr)\, W_k
    \in \mathbb R^{d_k \times d_{k-1}} .

For ReLU this is :math:`\widetilde W_k`, :math:`W_k` with **row** :math:`i` zeroed when
neuron :math:`i` is inactive (Camuto et al. 2020, Sec. 4, say *column*; for
:math:`h_k = \phi(W_k h_{k-1})` it is the row). :math:`J_j = \partial h_L / \partial h_j`
is the product of these factors for :math:`k > j`, so the factor of layer :math:`k`
appears :math:`k` times in :math:`R`; Camuto et al. expect its norm to decrease with
:math:`k` under noise injection (their Fig. 5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_tensor
from .models import ELEMENTWISE, MLPStructure, mlp_forward, mlp_structure, mlp_weights
from .noise import GaussianNoise

__all__ = ["layer_to_layer_jacobians", "layer_jacobian_norms", "square_layer_traces"]


def _structure(model: object) -> MLPStructure:
    """The layers of a plain MLP (:func:`gni_lib.models.mlp_structure`), with no activation before the first."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model must be an nn.Sequential of GaussianNoise, Linear and activation modules "
            f"(gni_lib.models.MLP), got {type(model).__name__}"
        )
    structure = mlp_structure(model)
    if structure is not None and not structure.prefix:
        return structure
    if not any(type(child) is nn.Linear for child in model):
        raise ValueError("model must contain at least one nn.Linear layer")
    seen_linear = False
    for index, child in enumerate(model):
        seen_linear = seen_linear or type(child) is nn.Linear
        fits = type(child) is nn.Linear or isinstance(child, GaussianNoise) or (
            type(child) in ELEMENTWISE and seen_linear
        )
        if not fits:
            raise ValueError(
                f"model must be a sequence of [GaussianNoise,] Linear[, activation] blocks "
                f"(gni_lib.models.MLP); child {index} ({type(child).__name__}) does not fit"
            )
    raise ValueError(f"model must be exactly an nn.Sequential (gni_lib.models.MLP), got {type(model).__name__}")


def _check_input(x: object, d_in: int) -> Tensor:
    x = check_tensor(x, "x", ndim=2)
    if x.shape[0] < 1 or x.shape[1] != d_in:
        raise ValueError(f"x must have shape (B, d_0) = (B, {d_in}) with B >= 1, got {tuple(x.shape)}")
    return x


def layer_to_layer_jacobians(model: nn.Sequential, x: Tensor) -> list[Tensor]:
    r"""Return :math:`\nabla_{h_{k-1}} h_k` at every example, for every layer :math:`k = 1, \dots, L`.

    .. math::

        G_k[b, i, j] = \frac{\partial h_{k,i}(x_b)}{\partial h_{k-1,j}(x_b)}
        = \phi'(z_{k,i}(x_b))\, (W_k)_{ij}, \qquad z_k = W_k h_{k-1} + b_k,

    at the clean forward pass (noise sites skipped), from :math:`\phi'(z_k)` of
    :func:`gni_lib.models.mlp_forward`, so any elementwise activation works. For ReLU,
    :math:`G_k = \widetilde W_k` (Camuto et al. 2020, Sec. 4). Differentiable with
    respect to the parameters when autograd is on.

    Args:
        model: an :func:`gni_lib.models.MLP` (an ``nn.Sequential`` of
            ``GaussianNoise``, ``Linear`` and activation modules).
        x: inputs, shape :math:`(B, d_0)`, finite, on the model's device and dtype.

    Returns:
        list[Tensor]: :math:`[G_1, \dots, G_L]`, :math:`G_k` of shape :math:`(B, d_k, d_{k-1})`.

    Raises:
        TypeError: if ``model`` is not an ``nn.Sequential`` or ``x`` not a tensor.
        ValueError: for a child other than noise sites, linear layers and elementwise
            activations after them, or bad ``x``.
    """
    structure = _structure(model)
    x = _check_input(x, structure.layers[0][0].in_features)
    first = mlp_forward(structure, x).first
    return [
        weight.expand(x.shape[0], *weight.shape).contiguous() if d1 is None else d1.unsqueeze(-1) * weight
        for (weight, _), d1 in zip(mlp_weights(structure), first)
    ]


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
    linears = [linear for linear, _ in _structure(model).layers]
    indices = [k for k, linear in enumerate(linears, start=1) if linear.in_features == linear.out_features]
    if not indices:
        raise ValueError("model has no square layer (d_k = d_{k-1}) to take the trace of")
    traces = torch.stack([torch.diagonal(linears[k - 1].weight).sum() for k in indices])
    return indices, traces

r"""The trace of the parameter Hessian of the loss, :math:`\operatorname{Tr} \nabla^2_\theta L`.

A proxy for how sharp the minimum a network sits in is (Camuto et al. 2020,
Fig. 3), and the regulariser that anticorrelated and perturbed gradient descent
add, :math:`\tfrac{\sigma^2}{2} \operatorname{Tr} \nabla^2_\theta L` (Orvieto et
al. 2022, 2023). :func:`hessian_trace` computes it three ways:

- ``"exact"``: the exact trace. For a plain MLP (an ``nn.Sequential`` of
  ``nn.Linear`` layers, ``GaussianNoise`` sites and elementwise activations, such
  as :func:`gni_lib.models.MLP`) it uses the layer structure, below, and never
  forms the :math:`P \times P` Hessian. Other models fall back to :math:`P`
  Hessian-vector products with the one-hot basis, vectorised in chunks, which
  is exact but meant for small models only.
- ``"ggn"``: the trace of the generalised Gauss-Newton matrix
  :math:`\frac1B \sum_b J_{\theta,b}^\top H_{L,b} J_{\theta,b}`: the Hessian
  without its network-curvature term :math:`\frac1B \sum_b \sum_i
  (\partial_{\hat y_i} \ell_b)\, \nabla^2_\theta \hat y_{b,i}`. It is positive
  semi-definite, but it is not the positive part of the Hessian (the dropped
  term is indefinite, and the Hessian's positive eigen-directions are not the
  Gauss-Newton matrix's).
- ``"hutchinson"``: :math:`\frac1P \sum_{p} v_p^\top \nabla^2_\theta L\, v_p` with
  a fixed number of Rademacher probes :math:`v_p` and its standard error. The
  parameter Hessian of a network is indefinite and this estimator is poor
  (tens of per cent relative error at 100 probes on a 340k-parameter MLP);
  prefer ``"exact"``. There is no tolerance-based stopping rule.

**The exact trace of an MLP.** Write layer :math:`m` as
:math:`z_m = W_m a_{m-1} + b_m`, :math:`a_m = \phi_m(z_m)` (:math:`\phi_M` the
identity unless the network ends in an activation), :math:`L = \frac1B \sum_b
\ell(a_{M,b}, y_b)`. Since examples do not interact,
:math:`\partial^2 L / \partial W_{m,ij}^2 = \sum_b (H_{z_m,b})_{ii}\, a_{m-1,b,j}^2`,
where :math:`H_{z_m,b} = \partial^2 L / \partial z_{m,b}^2`, so

.. math::

    \operatorname{Tr} \nabla^2_\theta L = \sum_m \sum_b
        \bigl(\lVert a_{m-1,b} \rVert^2 + 1_{\text{bias}}\bigr) \operatorname{Tr} H_{z_m,b},

and the per-example :math:`H_{z_m}` obey the backward recursion

.. math::

    H_{a_M} = \nabla^2_{a_M} L, \qquad
    H_{z_m} = \operatorname{diag}(\phi_m') H_{a_m} \operatorname{diag}(\phi_m')
        + \operatorname{diag}\Bigl(\frac{\partial L}{\partial a_m} \odot \phi_m''\Bigr),
    \qquad H_{a_{m-1}} = W_m^\top H_{z_m} W_m .

The cost is about two :math:`d \times d \times d` matrix products per example
and hidden layer (a few tenths of a GFLOP for the book's 6×256 MLP at batch
32), all batched; the diagonal-only last step saves one of them. The
Gauss-Newton part drops the :math:`\phi''` terms, and then the recursion
factorises: :math:`H_{z_m}^{\mathrm{GGN}} = U_m^\top U_m` with :math:`U_m` the
:math:`d_L` output-basis vector-Jacobian products (times the root of
:math:`H_L`), so ``"ggn"`` costs about as much as :math:`R`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gap import per_example_loss
from .losses import ce_hessian_root
from .jacobians import (
    check_calls,
    check_input,
    check_model,
    check_positive_int,
    check_target,
    mlp_structure,
    run_model,
)
from .noise import replace_site_outputs
from .regularisers import check_loss
from .seeding import check_generator

__all__ = ["hessian_trace", "HESSIAN_METHODS"]

#: The accepted values of ``method`` in :func:`hessian_trace`.
HESSIAN_METHODS = ("exact", "ggn", "hutchinson")

#: Probes per vectorised batch of Hessian-vector products.
PROBES_PER_CHUNK = 25
#: Float entries of the per-example Hessian blocks held at once (exact MLP route).
HESSIAN_ENTRIES_PER_CHUNK = 1 << 24


# --- plain MLPs: the layer-wise recursion ---------------------------------------------------


def _elementwise(modules: list[nn.Module], z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r""":math:`\phi(z)`, :math:`\phi'(z)`, :math:`\phi''(z)` of the composite elementwise map."""
    if not modules:
        return z, torch.ones_like(z), torch.zeros_like(z)
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        a = leaf
        for module in modules:
            a = module(a)
        (d1,) = torch.autograd.grad(a.sum(), leaf, create_graph=True)
        if d1.requires_grad:
            (d2,) = torch.autograd.grad(
                d1.sum(), leaf, allow_unused=True, materialize_grads=True
            )
        else:  # piecewise linear: phi'' = 0 almost everywhere
            d2 = torch.zeros_like(z)
    return a.detach(), d1.detach(), d2.detach()


def _output_derivatives(output: Tensor, y: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    r"""Gradient (B, d_L) and root :math:`S` (B, d_L, d_L) of the Hessian :math:`S S^\top`
    of the batch-mean loss with respect to each example's output."""
    batch, d_out = output.shape
    if loss == "mse":
        grad = (output - y) / batch
        eye = torch.eye(d_out, device=output.device, dtype=output.dtype)
        root = eye.expand(batch, d_out, d_out)
    else:
        p = torch.softmax(output, dim=1)
        grad = (p - F.one_hot(y, d_out).to(output.dtype)) / batch
        root = ce_hessian_root(output).transpose(1, 2)
    return grad, root / math.sqrt(batch)


def _mlp_forward(prefix, layers, x):
    """Inputs a_{m-1}, and phi', phi'' at every layer, and the output."""
    a = x
    for module in prefix:
        a = module(a)
    inputs, first, second = [], [], []
    for linear, modules in layers:
        inputs.append(a)
        z = F.linear(a, linear.weight, linear.bias)
        a, d1, d2 = _elementwise(modules, z)
        first.append(d1)
        second.append(d2)
    return inputs, first, second, a


def _bias_count(linear: nn.Linear) -> float:
    return 1.0 if linear.bias is not None else 0.0


def _exact_trace_mlp(prefix, layers, x: Tensor, y: Tensor, loss: str) -> Tensor:
    inputs, first, second, output = _mlp_forward(prefix, layers, x)
    grad_out, root = _output_derivatives(output, y, loss)
    weights = [
        a.reshape(a.shape[0], -1).pow(2).sum(dim=1) + _bias_count(linear)
        for a, (linear, _) in zip(inputs, layers)
    ]
    # Gradients dL/da_m, by ordinary back-propagation.
    grads_a = [grad_out]
    for m in range(len(layers) - 1, 0, -1):
        grads_a.append((grads_a[-1] * first[m]) @ layers[m][0].weight)
    grads_a.reverse()  # grads_a[m] = dL/da_m

    batch = x.shape[0]
    widest = max(d.shape[1] for d in first)
    chunk = max(1, HESSIAN_ENTRIES_PER_CHUNK // (widest * widest))
    total = output.new_zeros(())
    for start in range(0, batch, chunk):
        rows = slice(start, min(start + chunk, batch))
        hess_a = root[rows] @ root[rows].transpose(1, 2)  # H_{a_M}, (n, d_L, d_L)
        diagonal_only = False
        for m in range(len(layers) - 1, -1, -1):
            d1, residual = first[m][rows], (grads_a[m] * second[m])[rows]
            if diagonal_only:  # hess_a holds diag(H_{a_m}) only
                trace = (d1.pow(2) * hess_a).sum(dim=1) + residual.sum(dim=1)
            else:
                hess_z = d1.unsqueeze(2) * hess_a * d1.unsqueeze(1)
                hess_z.diagonal(dim1=1, dim2=2).add_(residual)
                trace = hess_z.diagonal(dim1=1, dim2=2).sum(dim=1)
            total = total + (weights[m][rows] * trace).sum()
            if m == 0:
                break
            weight = layers[m][0].weight  # (d_m, d_{m-1})
            product = hess_z @ weight  # (n, d_m, d_{m-1})
            if m == 1:  # only diag(W^T H W) is needed for the first layer
                hess_a = (product * weight).sum(dim=1)
                diagonal_only = True
            else:  # W^T H W = (H W)^T W, as H is symmetric
                hess_a = product.transpose(1, 2) @ weight
    return total


def _ggn_trace_mlp(prefix, layers, x: Tensor, y: Tensor, loss: str) -> Tensor:
    inputs, first, _, output = _mlp_forward(prefix, layers, x)
    _, root = _output_derivatives(output, y, loss)
    u = root.transpose(1, 2)  # rows: (S^T)_j d a_M / d a_M, shape (B, d_L, d_L)
    total = output.new_zeros(())
    for m in range(len(layers) - 1, -1, -1):
        linear = layers[m][0]
        u = u * first[m].unsqueeze(1)  # now with respect to z_m
        weight = inputs[m].reshape(x.shape[0], -1).pow(2).sum(dim=1) + _bias_count(linear)
        total = total + (weight * u.pow(2).sum(dim=(1, 2))).sum()
        if m > 0:
            u = u @ linear.weight
    return total


# --- generic routes through torch.func -------------------------------------------------


def _flat_loss(model: nn.Module, x: Tensor, y: Tensor, loss: str):
    """The loss as a function of one flat parameter vector, and that vector."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    theta = torch.cat([p.reshape(-1) for p in params]) if params else x.new_zeros(0)

    def unflatten(flat: Tensor) -> dict[str, Tensor]:
        return {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}

    def outputs(flat: Tensor, inputs: Tensor) -> Tensor:
        return torch.func.functional_call(model, unflatten(flat), (inputs,))

    def loss_of(flat: Tensor) -> Tensor:
        return per_example_loss(outputs(flat, x), y, loss).mean()

    return loss_of, outputs, theta


def _hvp(loss_of, theta: Tensor):
    gradient = torch.func.grad(loss_of)

    def hvp(v: Tensor) -> Tensor:
        return torch.func.jvp(gradient, (theta,), (v,))[1]

    return hvp


def _exact_trace_generic(loss_of, theta: Tensor) -> Tensor:
    hvp = torch.func.vmap(_hvp(loss_of, theta))
    total = theta.new_zeros(())
    count = theta.numel()
    for start in range(0, count, PROBES_PER_CHUNK):
        idx = torch.arange(start, min(start + PROBES_PER_CHUNK, count), device=theta.device)
        basis = torch.zeros((idx.numel(), count), device=theta.device, dtype=theta.dtype)
        basis[torch.arange(idx.numel(), device=theta.device), idx] = 1.0
        total = total + hvp(basis)[torch.arange(idx.numel(), device=theta.device), idx].sum()
    return total


def _ggn_trace_generic(outputs, theta: Tensor, x: Tensor, y: Tensor, loss: str) -> Tensor:
    output = outputs(theta, x)
    _, root = _output_derivatives(output, y, loss)

    def one_example(flat: Tensor, xb: Tensor) -> Tensor:
        return outputs(flat, xb.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(one_example), in_dims=(None, 0))
    total = output.new_zeros(())
    for start in range(0, x.shape[0], 4):
        rows = slice(start, start + 4)
        J = jac(theta, x[rows])  # (n, d_L, P)
        total = total + (root[rows].transpose(1, 2) @ J).pow(2).sum()
    return total


def hessian_trace(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss: str = "mse",
    method: str = "exact",
    probes: int = 100,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Return :math:`\operatorname{Tr} \nabla^2_\theta L`, with a standard error.

    .. math::

        \operatorname{Tr} \nabla^2_\theta L = \sum_{j=1}^{P}
            \frac{\partial^2 L}{\partial \theta_j^2}, \qquad
        L = \frac1B \sum_{b=1}^B \ell(h_L(x_b), y_b),

    at the clean network (noise sites off), over every parameter of ``model``
    (``model.parameters()``). This is the quantity of Camuto et al. (2020),
    Fig. 3(b), and the regulariser :math:`\tfrac{\sigma^2}{2}\operatorname{Tr}\nabla^2 L`
    of Orvieto et al. (2022, 2023).

    ``method``:

    - ``"exact"``: exact. Plain MLPs (see :mod:`gni_lib.curvature`) use the
      layer-wise backward recursion for the per-example Hessians with respect
      to each layer's pre-activations, without forming the parameter Hessian;
      any other model costs :math:`P` vectorised Hessian-vector products.
      Standard error 0.
    - ``"ggn"``: the Gauss-Newton trace
      :math:`\frac1B \sum_b \operatorname{Tr}(J_{\theta,b}^\top H_{L,b} J_{\theta,b})`,
      :math:`J_{\theta,b} = \partial h_L(x_b) / \partial \theta`; the exact trace
      minus the terms with second derivatives of the network. Standard error 0.
    - ``"hutchinson"``: the mean of :math:`v^\top \nabla^2_\theta L\, v` over
      ``probes`` Rademacher vectors, by vectorised Hessian-vector products
      (:func:`torch.func.jvp` of :func:`torch.func.grad`), and its standard
      error :math:`\operatorname{std}/\sqrt{\text{probes}}`. A fixed number of
      probes, never a tolerance. Probes are drawn in chunks of
      ``PROBES_PER_CHUNK``: for each chunk of :math:`n`, one
      ``2 * torch.randint(0, 2, (n, P), generator=generator) - 1`` over the
      parameters flattened in ``model.named_parameters()`` order.

    The examples must not interact (no batch normalisation in training mode).
    The result carries no graph.

    Args:
        model: an ``nn.Module`` with ``GaussianNoise`` sites.
        x: inputs, shape :math:`(B, d_0)`, finite.
        y: targets: shape :math:`(B, d_L)` and the output's dtype for ``"mse"``;
            int64 class indices of shape :math:`(B,)` for ``"ce"``.
        loss: ``"mse"`` (½-squared error) or ``"ce"`` (softmax cross-entropy).
        method: ``"exact"``, ``"ggn"`` or ``"hutchinson"``.
        probes: Hutchinson probes, at least 2 (ignored by the exact methods).
        generator: the source of the probes; ``None`` uses torch's global generator.

    Returns:
        tuple[Tensor, Tensor]: ``(value, standard_error)``, scalars on ``x``'s
        device and dtype.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: for an unknown ``loss`` or ``method``; ``probes < 1`` (or
            ``< 2`` for ``"hutchinson"``); a model with no noise sites; ``x`` or
            ``y`` of the wrong shape, dtype or range, or not finite; a generator on
            another device type.
    """
    check_model(model)
    loss = check_loss(loss)
    if not isinstance(method, str) or method not in HESSIAN_METHODS:
        raise ValueError(f"method must be one of {HESSIAN_METHODS}, got {method!r}")
    probes = check_positive_int(probes, "probes", minimum=2 if method == "hutchinson" else 1)
    x = check_input(x)
    check_generator(generator, x.device)

    with torch.no_grad(), replace_site_outputs(model, lambda k, h: h) as calls:
        output = run_model(model, x)
        check_calls(calls)
        y = check_target(y, output, loss)
        zero = output.new_zeros(())
        structure = mlp_structure(model) if x.ndim == 2 else None
        if method == "exact" and structure is not None:
            return _exact_trace_mlp(structure.prefix, structure.layers, x, y, loss), zero
        if method == "ggn" and structure is not None:
            return _ggn_trace_mlp(structure.prefix, structure.layers, x, y, loss), zero
        loss_of, outputs, theta = _flat_loss(model, x, y, loss)
        if method == "exact":
            return _exact_trace_generic(loss_of, theta), zero
        if method == "ggn":
            return _ggn_trace_generic(outputs, theta, x, y, loss), zero
        hvp = torch.func.vmap(_hvp(loss_of, theta))
        values = []
        for start in range(0, probes, PROBES_PER_CHUNK):
            n = min(PROBES_PER_CHUNK, probes - start)
            signs = torch.randint(0, 2, (n, theta.numel()), generator=generator, device=x.device)
            v = (2 * signs - 1).to(theta.dtype)
            values.append((v * hvp(v)).sum(dim=1))
        values = torch.cat(values)
        return values.mean(), values.std(correction=1) / math.sqrt(probes)

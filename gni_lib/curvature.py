r"""The trace of the parameter Hessian of the loss, :math:`\operatorname{Tr} \nabla^2_\theta L`.

A proxy for the sharpness of a minimum (Camuto et al. 2020, Fig. 3) and the
regulariser :math:`\tfrac{\sigma^2}{2} \operatorname{Tr} \nabla^2_\theta L` that
anticorrelated and perturbed gradient descent add (Orvieto et al. 2022, 2023);
used in lecture 15 (book/15-anti-pgd-sparse-regression.md).
:func:`hessian_trace` computes it exactly, as a Gauss-Newton trace, or by
Hutchinson; on a plain MLP (:func:`gni_lib.models.mlp_structure`) without forming
the :math:`P \times P` Hessian, on the MLP core of :mod:`gni_lib.models`.

**The exact trace of an MLP.** With :math:`z_m = W_m a_{m-1} + b_m`,
:math:`a_m = \phi_m(z_m)` and examples that do not interact,
:math:`\partial^2 L / \partial W_{m,ij}^2 = \sum_b (H_{z_m,b})_{ii}\, a_{m-1,b,j}^2`, so

.. math::

    \operatorname{Tr} \nabla^2_\theta L = \sum_m \sum_b
        \bigl(\lVert a_{m-1,b} \rVert^2 + 1_{\text{bias}}\bigr) \operatorname{Tr} H_{z_m,b},

with the per-example Hessians :math:`H_{z_m} = \partial^2 L / \partial z_m^2` from
the backward recursion

.. math::

    H_{a_M} = \nabla^2_{a_M} L, \qquad
    H_{z_m} = \operatorname{diag}(\phi_m') H_{a_m} \operatorname{diag}(\phi_m')
        + \operatorname{diag}\Bigl(\frac{\partial L}{\partial a_m} \odot \phi_m''\Bigr),
    \qquad H_{a_{m-1}} = W_m^\top H_{z_m} W_m,

at a cost of about two :math:`d \times d \times d` products per example and hidden layer, batched.
The Gauss-Newton trace drops the :math:`\phi''` terms; then
:math:`H_{z_m}^{\mathrm{GGN}} = U_m^\top U_m` with :math:`U_m` the :math:`d_L`
output-basis vector-Jacobian products times the root of :math:`H_L`, at about the cost of :math:`R`.

**Hutchinson on an MLP.** :math:`v^\top \nabla^2_\theta L\, v = \frac{d^2}{dt^2}
L(\theta + t v)\big|_{t=0}` comes from a forward pass that carries the first and
second :math:`t`-derivatives along the probe (:math:`V_m, u_m` the parts of :math:`v`
on :math:`W_m, b_m`; :math:`\dot a_0 = \ddot a_0 = 0`):

.. math::

    \dot z_m = W_m \dot a_{m-1} + V_m a_{m-1} + u_m, \qquad
    \ddot z_m = W_m \ddot a_{m-1} + 2 V_m \dot a_{m-1}, \qquad
    \dot a_m = \phi_m' \odot \dot z_m, \qquad
    \ddot a_m = \phi_m' \odot \ddot z_m + \phi_m'' \odot \dot z_m^2,

and :math:`v^\top \nabla^2_\theta L\, v = \sum_b \dot a_{M,b}^\top H_{a_M,b}\, \dot a_{M,b}
+ \frac{\partial L}{\partial a_{M,b}} \cdot \ddot a_{M,b}`: four matrix products per
layer and probe, a chunk of probes at once, no autograd.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice, check_generator, check_input, check_int, check_target
from .jacobians import check_calls, check_model, run_model
from .losses import LOSSES, ce_hessian_root, per_example_loss
from .models import MLPStructure, mlp_backward, mlp_forward, mlp_structure, mlp_weights
from .noise import replace_site_outputs

__all__ = ["hessian_trace", "HESSIAN_METHODS"]

#: The accepted values of ``method`` in :func:`hessian_trace`.
HESSIAN_METHODS = ("exact", "ggn", "hutchinson")

#: Hutchinson probes drawn by one call of the generator.
PROBES_PER_CHUNK = 25
#: Float entries of the per-example Hessian blocks held at once (exact MLP route).
HESSIAN_ENTRIES_PER_CHUNK = 1 << 24


# --- plain MLPs: the layer-wise recursion on the MLP core of gni_lib.models -----------------


def _output_derivatives(output: Tensor, y: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    r"""Gradient (B, d_L) and root :math:`S` (B, d_L, d_L) of the Hessian :math:`S S^\top`
    of the batch-mean loss with respect to each example's output."""
    batch, d_out = output.shape
    if loss == "mse":
        grad = (output - y) / batch
        root = torch.eye(d_out, device=output.device, dtype=output.dtype).expand(batch, d_out, d_out)
    else:
        grad = (torch.softmax(output, dim=1) - F.one_hot(y, d_out).to(output.dtype)) / batch
        root = ce_hessian_root(output).transpose(1, 2)
    return grad, root / math.sqrt(batch)


def _mlp_pass(structure: MLPStructure, x: Tensor, second: bool):
    r"""The clean pass, the weights :math:`W_m` and :math:`\lVert a_{m-1,b} \rVert^2 + 1_{\text{bias}}` (B,) per layer."""
    net = mlp_forward(structure, x, second=second)
    weights = mlp_weights(structure)
    norms = [a.pow(2).sum(dim=1) + float(b is not None) for a, (_, b) in zip(net.inputs, weights)]
    return net, [w for w, _ in weights], norms


def _only_linear_parameters(model: nn.Module, structure: MLPStructure) -> bool:
    """Whether the linear layers hold every parameter of ``model``."""
    names = {name for pair in structure.names for name in pair if name is not None}
    return names == {name for name, _ in model.named_parameters()}


def _exact_trace_mlp(structure: MLPStructure, x: Tensor, y: Tensor, loss: str) -> Tensor:
    net, weights, norms = _mlp_pass(structure, x, second=True)
    grad_out, root = _output_derivatives(net.output, y, loss)
    # dL/da_m by ordinary back-propagation, then the residuals dL/da_m * phi_m''.
    grads_a = mlp_backward(weights, net.first, grad_out.unsqueeze(1), stop=1)[1:] + [grad_out.unsqueeze(1)]
    residuals = [None if d2 is None else g.squeeze(1) * d2 for g, d2 in zip(grads_a, net.second)]

    batch, last = x.shape[0], len(weights) - 1
    chunk = max(1, HESSIAN_ENTRIES_PER_CHUNK // max(w.shape[0] ** 2 for w in weights))
    total = net.output.new_zeros(())
    for start in range(0, batch, chunk):
        rows = slice(start, min(start + chunk, batch))
        hess_a = root[rows] @ root[rows].transpose(1, 2)  # H_{a_M}, (n, d_L, d_L)
        for m in range(last, -1, -1):
            d1 = None if net.first[m] is None else net.first[m][rows]
            residual = None if residuals[m] is None else residuals[m][rows]
            if m == 0 and last > 0:  # hess_a holds diag(H_{a_0}) only
                trace = (hess_a if d1 is None else d1.pow(2) * hess_a).sum(dim=1)
                trace = trace if residual is None else trace + residual.sum(dim=1)
            else:  # hess_a is a fresh tensor: hess_z may be it, and updated in place
                hess_z = hess_a if d1 is None else d1.unsqueeze(2) * hess_a * d1.unsqueeze(1)
                if residual is not None:
                    hess_z.diagonal(dim1=1, dim2=2).add_(residual)
                trace = hess_z.diagonal(dim1=1, dim2=2).sum(dim=1)
            total = total + (norms[m][rows] * trace).sum()
            if m == 0:
                break
            product = hess_z @ weights[m]  # (n, d_m, d_{m-1})
            if m == 1:  # only diag(W^T H W) is needed for the first layer
                hess_a = (product * weights[m]).sum(dim=1)
            else:  # W^T H W = (H W)^T W, as H is symmetric
                hess_a = product.transpose(1, 2) @ weights[m]
    return total


def _ggn_trace_mlp(structure: MLPStructure, x: Tensor, y: Tensor, loss: str) -> Tensor:
    net, weights, norms = _mlp_pass(structure, x, second=False)
    _, root = _output_derivatives(net.output, y, loss)
    u = root.transpose(1, 2)  # rows: S^T, the cotangents on a_M, (B, d_L, d_L)
    grads_a = mlp_backward(weights, net.first, u, stop=1)[1:] + [u]  # S^T d a_M / d a_m
    total = net.output.new_zeros(())
    for norm, g, d1 in zip(norms, grads_a, net.first):
        g = g if d1 is None else g * d1.unsqueeze(1)  # with respect to z_m
        total = total + (norm * g.pow(2).sum(dim=(1, 2))).sum()
    return total


# --- generic routes through torch.func -------------------------------------------------


def _flat_loss(model: nn.Module, x: Tensor, y: Tensor, loss: str):
    """The loss as a function of one flat parameter vector, the outputs as one, and that vector."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    theta = torch.cat([p.reshape(-1) for p in params.values()]) if params else x.new_zeros(0)

    def outputs(flat: Tensor, inputs: Tensor) -> Tensor:
        pieces = flat.split([p.numel() for p in params.values()])
        named = {name: t.view_as(p) for (name, p), t in zip(params.items(), pieces)}
        return torch.func.functional_call(model, named, (inputs,))

    def loss_of(flat: Tensor) -> Tensor:
        return per_example_loss(outputs(flat, x), y, loss).mean()

    return loss_of, outputs, theta


def _exact_trace_generic(loss_of, theta: Tensor) -> Tensor:
    """The sum of e_j^T H e_j over the one-hot basis, by vmap over forward-over-reverse HVPs."""
    gradient = torch.func.grad(loss_of)
    hvp = torch.func.vmap(lambda v: torch.func.jvp(gradient, (theta,), (v,))[1])
    total = theta.new_zeros(())
    for start in range(0, theta.numel(), PROBES_PER_CHUNK):
        idx = torch.arange(start, min(start + PROBES_PER_CHUNK, theta.numel()), device=theta.device)
        basis = F.one_hot(idx, theta.numel()).to(theta.dtype)
        total = total + hvp(basis).gather(1, idx.unsqueeze(1)).sum()
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


def _probe_chunks(count: int, probes: int, generator, like: Tensor):
    """The documented Rademacher probes, chunk by chunk (n, count), in two reused buffers."""
    shape = (min(PROBES_PER_CHUNK, probes), count)
    signs = torch.empty(shape, dtype=torch.int64, device=like.device)
    chunk = torch.empty(shape, dtype=like.dtype, device=like.device)
    for start in range(0, probes, PROBES_PER_CHUNK):
        n = min(PROBES_PER_CHUNK, probes - start)
        torch.randint(0, 2, (n, count), generator=generator, device=like.device, out=signs[:n])
        yield chunk[:n].copy_(signs[:n]).mul_(2).sub_(1)  # 2 * signs - 1


def _hutchinson_mlp(model, structure: MLPStructure, x: Tensor, y: Tensor, loss: str, chunks) -> Tensor:
    """v^T H v for each probe, by the second-order forward pass (module docstring)."""
    net, weights, _ = _mlp_pass(structure, x, second=True)
    grad_out, root = _output_derivatives(net.output, y, loss)
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        offsets[name], start = slice(start, start + p.numel()), start + p.numel()
    values = []
    for v in chunks:
        a1 = a2 = x.new_zeros(v.shape[0], *net.inputs[0].shape)  # t-derivatives of a_{m-1}
        for m, (w, (w_name, b_name)) in enumerate(zip(weights, structure.names)):
            vw = v[:, offsets[w_name]].view(-1, *w.shape).transpose(1, 2)  # V_m^T, (n, d_{m-1}, d_m)
            z1 = a1 @ w.T + net.inputs[m] @ vw
            z1 = z1 if b_name is None else z1 + v[:, offsets[b_name]].unsqueeze(1)
            z2 = a2 @ w.T + 2 * (a1 @ vw)
            d1, d2 = net.first[m], net.second[m]
            a1, a2 = (z1, z2) if d1 is None else (d1 * z1, d1 * z2)
            a2 = a2 if d2 is None else a2 + d2 * z1.pow(2)
        quad = torch.einsum("nbi,bij->nbj", a1, root).pow(2).sum(dim=(1, 2))
        values.append(quad + (a2 * grad_out).sum(dim=(1, 2)))
    return torch.cat(values)


def _hutchinson_generic(loss_of, theta: Tensor, chunks) -> Tensor:
    """v^T H v for each probe, by double back-propagation through one graph of the gradient."""
    with torch.enable_grad():
        leaf = theta.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss_of(leaf), leaf, create_graph=True)
    values = []
    for v in chunks:
        for row in v:
            (hv,) = torch.autograd.grad(gradient, leaf, row, retain_graph=True)
            values.append(hv @ row)
    return torch.stack(values)


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

    at the clean network (noise sites off), over ``model.parameters()``: the
    quantity of Camuto et al. (2020), Fig. 3(b), and of Orvieto et al. (2022, 2023).
    The examples must not interact (no batch normalisation in training mode).
    The result carries no graph.

    ``method``:

    - ``"exact"``: plain MLPs by the layer-wise recursion of the module docstring;
      any other model by :math:`P` vectorised Hessian-vector products with the
      one-hot basis (small models only). Standard error 0.
    - ``"ggn"``: the Gauss-Newton trace
      :math:`\frac1B \sum_b \operatorname{Tr}(J_{\theta,b}^\top H_{L,b} J_{\theta,b})`,
      :math:`J_{\theta,b} = \partial h_L(x_b) / \partial \theta`: the exact trace
      without the terms with second derivatives of the network. The Gauss-Newton matrix
      is positive semi-definite for both losses (:math:`H_L = I` or
      :math:`\operatorname{diag}(p) - pp^\top`), so this trace is :math:`\ge 0` (the
      dropped term is indefinite). Standard error 0.
    - ``"hutchinson"``: the mean of :math:`v^\top \nabla^2_\theta L\, v` over
      ``probes`` Rademacher vectors, standard error :math:`\operatorname{std}/\sqrt{\text{probes}}`
      (a fixed probe count, never a tolerance). On a plain MLP whose linear layers hold
      every parameter, the second-order forward pass of the module docstring;
      otherwise one double back-propagation per probe. The parameter Hessian is
      indefinite and the estimate is poor (tens of per cent at 100 probes on a
      340k-parameter MLP): prefer ``"exact"``. Draw order: per chunk of
      :math:`n \le` ``PROBES_PER_CHUNK`` probes,
      ``2 * torch.randint(0, 2, (n, P), generator=generator) - 1`` over the
      parameters flattened in ``model.named_parameters()`` order.

    Args:
        model, x, y, loss: as :func:`gni_lib.gap.noisy_loss_gap`.
        method: ``"exact"``, ``"ggn"`` or ``"hutchinson"``.
        probes: Hutchinson probes, at least 2 (ignored by the exact methods).
        generator: the source of the probes; ``None`` uses torch's global generator.

    Returns:
        tuple[Tensor, Tensor]: ``(value, standard_error)``, scalars on ``x``'s
        device and dtype.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: for an unknown ``loss`` or ``method``, too few ``probes``, a model
            with no noise sites, bad ``x`` or ``y``, or a generator on another device type.
    """
    check_model(model)
    loss = check_choice(loss, "loss", tuple(LOSSES))
    method = check_choice(method, "method", HESSIAN_METHODS)
    probes = check_int(probes, "probes", minimum=2 if method == "hutchinson" else 1)
    x = check_input(x)
    check_generator(generator, x.device)

    with torch.no_grad(), replace_site_outputs(model, lambda k, h: h) as calls:
        output = run_model(model, x)
        check_calls(calls)
        y = check_target(y, output, loss)
        zero = output.new_zeros(())
        structure = mlp_structure(model) if x.ndim == 2 else None
        if method == "hutchinson":
            count = sum(p.numel() for p in model.parameters())
            chunks = _probe_chunks(count, probes, generator, output)
            if structure is not None and _only_linear_parameters(model, structure):
                values = _hutchinson_mlp(model, structure, x, y, loss, chunks)
            else:
                loss_of, _, theta = _flat_loss(model, x, y, loss)
                values = _hutchinson_generic(loss_of, theta, chunks)
            return values.mean(), values.std(correction=1) / math.sqrt(probes)
        if method == "exact" and structure is not None:
            return _exact_trace_mlp(structure, x, y, loss), zero
        if method == "ggn" and structure is not None:
            return _ggn_trace_mlp(structure, x, y, loss), zero
        loss_of, outputs, theta = _flat_loss(model, x, y, loss)
        if method == "exact":
            return _exact_trace_generic(loss_of, theta), zero
        return _ggn_trace_generic(outputs, theta, x, y, loss), zero

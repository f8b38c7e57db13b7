r"""The explicit regulariser of Gaussian noise injections, and the full second-order term.

Marginalising the noise out of the loss (Camuto et al. 2020, Thm. 1; derived in
lecture 05, book/05-explicit-regulariser.md) gives
:math:`\mathbb E_\varepsilon[\tilde L] - L = R + \mathbb E_\varepsilon[C]` with

.. math::

    R = \frac{1}{B} \sum_{b=1}^{B} \frac12 \sum_{k=0}^{L-1}
        \sigma_k^2 \operatorname{Tr}\bigl(J_k^\top H_L J_k\bigr)(x_b)
    \quad \text{(eq. 9)},

:math:`J_k` the layer Jacobians (:mod:`gni_lib.jacobians`), :math:`H_L` the Hessian
of the per-example loss in the output (:mod:`gni_lib.losses`). Multiplicative noise
:math:`h_k (1 + \sigma_k z)` is additive noise of variance
:math:`\sigma_k^2 h_k^2` (eq. 6), so it enters as :math:`J_k \operatorname{diag}(\sigma_k h_k)`.

:math:`R` is only the Gauss-Newton part of the order-:math:`\sigma^2` term of the gap,

.. math::

    T_2 = \frac12 \sum_k \sigma_k^2 \operatorname{Tr} \nabla^2_{h_k} L
    = R + \frac12 \sum_k \sigma_k^2 \sum_i \frac{\partial L}{\partial h_{L,i}}
      \operatorname{Tr} \nabla^2_{h_k} h_{L,i};

the network-curvature part sits in Camuto's remainder :math:`C` and vanishes for
linear networks. :func:`second_order_term` computes :math:`T_2` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_input, check_int, check_target
from .jacobians import check_model, output_basis, site_pass, site_products
from .losses import LOSSES, ce_hessian_diag_root, ce_hessian_root, per_example_loss
from .noise import noise_sites, replace_site_outputs, standard_noise
from .seeding import check_generator

__all__ = ["explicit_regularizer", "functional_regularizer", "second_order_term", "REGULARIZER_METHODS"]

#: The accepted values of ``method`` in :func:`explicit_regularizer`.
REGULARIZER_METHODS = ("exact", "diag", "hutchinson")


def _cotangent_rows(
    output: Tensor, loss: str, method: str, probes: int, generator: torch.Generator | None
) -> Tensor:
    r"""The cotangent rows :math:`C` (B, c, d_L) of ``method``, :math:`\mathbb E[C^\top C] = H_L`
    (or the diagonal of :math:`H_L` for ``"diag"``), so that :math:`\operatorname{Tr}(J^\top H_L J) = \mathbb E\lVert C J \rVert_F^2`."""
    if method == "hutchinson":
        shape = (output.shape[0], probes, output.shape[1])
        v = standard_noise(shape, generator, dtype=output.dtype, device=output.device, distribution="rademacher")
        v = v / math.sqrt(probes)
        return v if loss == "mse" else v @ ce_hessian_root(output)
    if loss == "mse":
        return output_basis(output)
    if method == "diag":
        return torch.diag_embed(ce_hessian_diag_root(output))
    return ce_hessian_root(output)


def _squared_norm(t: Tensor) -> Tensor:
    r""":math:`\lVert t \rVert_F^2`: as fast as a dot product on one model, and, unlike
    ``torch.dot``, with a backward pass that batches well under :func:`torch.func.vmap`."""
    return torch.linalg.vector_norm(t).square()


def functional_regularizer(
    model: nn.Module,
    params: Mapping[str, Tensor] | None,
    x: Tensor,
    *,
    sigmas: Tensor | Sequence[float] | None = None,
    loss: str = "mse",
    method: str = "exact",
    probes: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r""":math:`R` of :func:`explicit_regularizer` as a function of the parameters, for :func:`torch.func.vmap`.

    .. math::

        R(\theta) = \frac{1}{2B} \sum_{b=1}^{B} \sum_{k=0}^{L-1}
            \bigl\lVert C_b\, J_k(x_b; \theta) \operatorname{diag}(s_{k,b}) \bigr\rVert_F^2,
        \qquad \mathbb E[C_b^\top C_b] = H_L(x_b),

    with :math:`s_{k,b} = \sigma_k` (additive) or :math:`\sigma_k h_k(x_b)`
    (multiplicative, eq. 6) and the rows :math:`C` of ``method`` (see
    :func:`explicit_regularizer`, which is this function after its argument checks).
    No data-dependent checks: for :math:`M` stacked models of one architecture
    (:func:`torch.func.stack_module_state`) and :math:`\sigma` of shape :math:`(M, L)`,
    ``vmap(lambda p, s: functional_regularizer(model, p, x, sigmas=s))(params, sigmas)``
    gives the :math:`M` values, differentiable in the parameters. ``"hutchinson"``
    draws its probes inside (under ``vmap``: ``randomness="different"`` or ``"same"``).

    Args:
        model: the architecture; its noise sites give the modes and the default :math:`\sigma_k`.
        params: replace the model's parameters, names as in ``model.named_parameters()``
            (as :func:`torch.func.functional_call`); ``None``: the model's own.
        x: inputs, shape :math:`(B, d_0)`.
        sigmas: :math:`\sigma_k` per site, a tensor of shape :math:`(L,)` or floats
            (float zeros are skipped); ``None`` reads them from the sites.
        loss, method, probes, generator: as :func:`explicit_regularizer`.

    Returns:
        Tensor: a scalar (per model under ``vmap``).

    Raises:
        ValueError: as :func:`gni_lib.jacobians.site_products` (inputs that do not fit).
    """
    sites = noise_sites(model)
    if sigmas is None:
        sigmas = [site.sigma for site in sites]

    def rows(output: Tensor) -> Tensor:
        return _cotangent_rows(output, loss, method, probes, generator)

    _, activations, products = site_products(model, params, x, rows)
    total = x.new_zeros(())
    for k, (site, h, product) in enumerate(zip(sites, activations, products)):
        sigma = sigmas[k]
        if not isinstance(sigma, Tensor) and sigma == 0.0:
            continue
        if site.mode == "multiplicative":  # columns times sigma_k h_k (eq. 6)
            total = total + _squared_norm(product * (sigma * h).unsqueeze(1))
        else:
            total = total + sigma**2 * _squared_norm(product)
    return 0.5 * total / x.shape[0]


def explicit_regularizer(
    model: nn.Module,
    x: Tensor,
    *,
    loss: str = "mse",
    method: str = "exact",
    probes: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Return the explicit regulariser :math:`R` of Camuto et al. (2020), eq. 9.

    .. math::

        R = \frac{1}{B} \sum_{b=1}^{B} \frac12 \sum_{k=0}^{L-1} \sigma_k^2
            \operatorname{Tr}\bigl(J_k(x_b)^\top H_L(x_b) J_k(x_b)\bigr)
          = \frac{1}{2B} \sum_{b,k} \sigma_k^2 \lVert C_b J_k(x_b) \rVert_F^2,

    with :math:`\sigma_k` from the model's noise sites (:func:`gni_lib.noise.noise_sites`
    order; a multiplicative site scales column :math:`a` by :math:`h_{k,a}`, eq. 6),
    :math:`J_k` as :func:`gni_lib.jacobians.layer_jacobians`, and :math:`\lVert C J_k \rVert_F^2`
    by vector-Jacobian products with the rows of :math:`C` as cotangents. ``method``:

    - ``"exact"``: :math:`C^\top C = H_L`. MSE: :math:`C = I`, :math:`R = \tfrac12 \sum_k
      \sigma_k^2 \lVert J_k \rVert_F^2` (eq. 11). CE (eq. 13): rows :math:`\sqrt{p_j}(e_j - p)`
      (:func:`gni_lib.losses.ce_hessian_root`), so :math:`\operatorname{Tr}(J^\top H_L J)
      = \sum_a \operatorname{Var}_{i \sim p}(J_{ia})`, at the cost of MSE; independent of
      the labels and of a common shift of the output weights' rows.
    - ``"diag"`` (``loss="ce"`` only): eq. 14, :math:`C = \operatorname{diag}(\sqrt{p(1-p)})`,
      so :math:`\sum_i p_i (1 - p_i) \lVert J_{k,i} \rVert^2`. **An approximation**: it drops
      :math:`-\sum_{i \ne j} p_i p_j \langle J_{k,i}, J_{k,j} \rangle` (eq. 13 prints the
      diagonal as :math:`p_i (1 - p_j)`; :math:`p_i(1 - p_i)` is meant). For measuring how
      far eq. 14 is from eq. 9.
    - ``"hutchinson"``: unbiased, rows :math:`v_n^\top M / \sqrt N` with :math:`M = I`
      (MSE) or the root :math:`C` of :func:`gni_lib.losses.ce_hessian_root` (CE),
      :math:`M^\top M = H_L`, :math:`N` = ``probes`` Rademacher :math:`v_n \in \{\pm 1\}^{d_L}` per
      example: :math:`N` vector-Jacobian products instead of :math:`d_L`. For a fixed draw
      the estimate is smooth in the parameters, so its gradient is unbiased for
      :math:`\nabla_\theta R`. Draws ``2 * torch.randint(0, 2, (B, probes, d_L),
      generator=generator) - 1`` on ``x``'s device.

    Differentiable with respect to the parameters when autograd is on (train on
    ``loss + R``); under :func:`torch.no_grad`, about the cost of a forward and
    backward pass. The sites' own noise is off; other modules run in their current mode.

    Args:
        model: an ``nn.Module`` with ``GaussianNoise`` sites (e.g. :func:`gni_lib.models.MLP`;
            see :func:`gni_lib.jacobians.layer_jacobians` for what else works).
        x: inputs, shape :math:`(B, d_0)`, finite, on the model's device and dtype.
        loss: ``"mse"`` (½-squared error) or ``"ce"`` (softmax cross-entropy on the logits).
        method: ``"exact"``, ``"diag"`` or ``"hutchinson"``.
        probes: Hutchinson probes per example.
        generator: the source of the probes, on ``x``'s device type; ``None``: torch's global one.

    Returns:
        Tensor: a scalar on ``x``'s device and dtype.

    Raises:
        TypeError: if ``model``, ``x``, ``probes`` or ``generator`` has the wrong type.
        ValueError: for an unknown ``loss`` or ``method``, ``"diag"`` with ``"mse"``,
            ``probes < 1``, a model with no noise sites, bad ``x``, or a generator on
            another device type.
    """
    check_model(model)
    loss = check_choice(loss, "loss", tuple(LOSSES))
    method = check_choice(method, "method", REGULARIZER_METHODS)
    if method == "diag" and loss != "ce":
        raise ValueError(
            "method='diag' is the diagonal-H_L approximation of eq. 14 and needs loss='ce'; "
            "with loss='mse' H_L = I is already diagonal: use method='exact'"
        )
    probes = check_int(probes, "probes")
    x = check_input(x)
    check_generator(generator, x.device)

    return functional_regularizer(
        model, None, x, loss=loss, method=method, probes=probes, generator=generator
    )


def second_order_term(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss: str = "mse",
    chunk_size: int = 256,
) -> Tensor:
    r"""Return the full second-order term :math:`T_2` of the noisy loss: the order-σ² part of the gap.

    .. math::

        T_2 = \frac12 \sum_{k=0}^{L-1} \sum_{b=1}^{B} \sum_{a=1}^{d_k} s_{k,b,a}^2\,
              \frac{\partial^2 L}{\partial h_{k,b,a}^2},
        \qquad L = \frac1B \sum_b \ell(h_L(x_b), y_b),

    with :math:`s_{k,b,a} = \sigma_k` (additive) or :math:`\sigma_k h_{k,b,a}`
    (multiplicative, eq. 6), derivatives in a perturbation of the clean activation at
    site :math:`k`. :math:`\mathbb E_\varepsilon[\tilde L] - L = T_2 + O(\sigma^4)` for
    smooth networks; :math:`T_2 - R` is the network-curvature part (module docstring).

    Exact, by :math:`\sum_k d_k` Hessian-vector products with the one-hot :math:`e_a`
    (the same on every example: examples do not interact), vectorised in chunks of
    ``chunk_size``; for the book's small and medium networks. A diagnostic: no graph.

    Args:
        model, x, y, loss: as :func:`gni_lib.gap.noisy_loss_gap`.
        chunk_size: Hessian-vector products per vectorised batch.

    Returns:
        Tensor: a scalar on ``x``'s device and dtype.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: for an unknown ``loss``, a model with no noise sites, bad ``x`` or
            ``y``, or ``chunk_size < 1``.
    """
    sites = check_model(model)
    loss = check_choice(loss, "loss", tuple(LOSSES))
    chunk_size = check_int(chunk_size, "chunk_size")
    x = check_input(x)
    output, activations = site_pass(model, x)
    y = check_target(y, output, loss)
    zeros = [torch.zeros_like(h) for h in activations]

    def loss_at(*deltas: Tensor) -> Tensor:
        with replace_site_outputs(model, lambda k, h: h + deltas[k]):
            return per_example_loss(model(x), y, loss).mean()

    total = output.new_zeros(())
    for k, (site, h) in enumerate(zip(sites, activations)):
        if site.sigma == 0.0:
            continue
        gradient = torch.func.grad(
            lambda delta, k=k: loss_at(*zeros[:k], delta, *zeros[k + 1 :])
        )

        def hvp(v: Tensor, gradient=gradient, k=k) -> Tensor:
            return torch.func.jvp(gradient, (zeros[k],), (v,))[1]

        batch, width = h.shape[0], h[0].numel()
        diag = h.new_empty((batch, width))
        for start in range(0, width, chunk_size):
            count = min(chunk_size, width - start)
            basis = h.new_zeros((count, batch, width))
            basis[:, :, start : start + count] = torch.eye(count, device=h.device, dtype=h.dtype)[:, None]
            with torch.no_grad():  # no graph to the parameters
                hv = torch.func.vmap(hvp)(basis.reshape(count, *h.shape)).reshape(count, batch, width)
            diag[:, start : start + count] = hv.diagonal(offset=start, dim1=0, dim2=2)
        scale = site.sigma * h.reshape(batch, width) if site.mode == "multiplicative" else site.sigma
        total = total + (diag * scale**2).sum()
    return 0.5 * total.detach()


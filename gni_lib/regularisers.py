r"""The explicit regulariser of Gaussian noise injections, and the full second-order term.

Marginalising the noise out of the loss (Camuto et al. 2020, Thm. 1) gives

.. math::

    \mathbb E_\varepsilon[\tilde L] - L = R + \mathbb E_\varepsilon[C], \qquad
    R = \frac{1}{B} \sum_{b=1}^{B} \frac12 \sum_{k=0}^{L-1}
        \sigma_k^2 \operatorname{Tr}\bigl(J_k^\top H_L J_k\bigr)(x_b)
    \quad \text{(eq. 9)},

with :math:`J_k` the layer Jacobians (:mod:`gni_lib.jacobians`) and :math:`H_L`
the Hessian of the per-example loss with respect to the network output:
:math:`H_L = I` for the ½-squared error, so :math:`R = \tfrac12 \sum_k \sigma_k^2
\lVert J_k \rVert_F^2` (eq. 11), and :math:`H_L = \operatorname{diag}(p) - p p^\top`
for softmax cross-entropy (eq. 13). Multiplicative noise
:math:`h_k (1 + \sigma_k z)` is additive noise of variance :math:`\sigma_k^2 h_k^2`
per coordinate (eq. 6), so it enters as :math:`J_k \operatorname{diag}(\sigma_k h_k)`.

**R is not the whole order-σ² term.** The coefficient of the order-:math:`\sigma^2`
part of the gap is the *full* second-order term

.. math::

    \frac12 \sum_k \sigma_k^2 \operatorname{Tr} \nabla^2_{h_k} L
    = R + \frac12 \sum_k \sigma_k^2 \sum_i \frac{\partial L}{\partial h_{L,i}}
      \operatorname{Tr} \nabla^2_{h_k} h_{L,i},

of which :math:`R` is the Gauss-Newton part; the second, network-curvature, part
sits in Camuto's remainder :math:`C` and is of the same order in :math:`\sigma`.
It vanishes for linear networks. :func:`second_order_term` computes the full
term exactly, so that a chapter can split the gap into :math:`R` and the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_input, check_int, check_target
from .jacobians import check_model, output_basis, site_pass, site_products
from .losses import ce_hessian_diag_root, ce_hessian_root, get_loss, per_example_loss
from .noise import noise_sites, replace_site_outputs
from .seeding import check_generator

__all__ = ["explicit_regularizer", "functional_regularizer", "second_order_term", "REGULARIZER_METHODS"]

#: The accepted values of ``method`` in :func:`explicit_regularizer`.
REGULARIZER_METHODS = ("exact", "diag", "hutchinson")


def check_loss(loss: object) -> str:
    """Return ``loss`` if it names a known loss ("mse" or "ce"), else raise naming ``loss``."""
    get_loss(loss)  # type: ignore[arg-type]
    return loss  # type: ignore[return-value]


def _cotangent_rows(
    output: Tensor, loss: str, method: str, probes: int, generator: torch.Generator | None
) -> Tensor:
    r"""Cotangent rows :math:`C` (B, c, d_L) with :math:`\mathbb E[C^\top C] = H_L` (or equal).

    Then :math:`\operatorname{Tr}(J^\top H_L J) = \lVert C J \rVert_F^2`, exactly or in
    expectation: exact, :math:`C = I` (MSE) or :math:`C = S^\top`, the rows
    :math:`\sqrt{p_j}(e_j - p)` of :func:`gni_lib.losses.ce_hessian_root` (CE);
    diag, CE: :math:`C = \operatorname{diag}(\sqrt{p(1-p)})`; hutchinson: rows
    :math:`v_n^\top / \sqrt N` (MSE) or :math:`v_n^\top S^\top / \sqrt N` (CE), with
    Rademacher :math:`v_n`, so :math:`\mathbb E[C^\top C] = H_L`.
    """
    if method == "hutchinson":
        shape = (output.shape[0], probes, output.shape[1])
        signs = torch.randint(0, 2, shape, generator=generator, device=output.device)
        v = (2 * signs - 1).to(output.dtype) / math.sqrt(probes)
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
    r""":math:`R` of :func:`explicit_regularizer` as a function of the parameters: it composes with :func:`torch.func.vmap`.

    .. math::

        R(\theta) = \frac{1}{2B} \sum_{b=1}^{B} \sum_{k=0}^{L-1}
            \bigl\lVert C_b\, J_k(x_b; \theta) \operatorname{diag}(s_{k,b}) \bigr\rVert_F^2,
        \qquad C_b^\top C_b = H_L(x_b),

    with :math:`s_{k,b} = \sigma_k` (additive) or :math:`\sigma_k h_k(x_b)`
    (multiplicative, Camuto et al. 2020, eq. 6), the rows :math:`C` as in
    :func:`explicit_regularizer` (eqs. 9, 11, 13, 14). The same computation as
    :func:`explicit_regularizer`, without its argument checks, with the model's
    parameters replaced by ``params`` (names as in ``model.named_parameters()``,
    as :func:`torch.func.functional_call` takes them; ``None``: the model's own)
    and the sites' :math:`\sigma_k` by ``sigmas``. For a stack of :math:`M` models of
    one architecture (:func:`torch.func.stack_module_state`) and their
    :math:`\sigma` of shape :math:`(M, L)`,
    ``vmap(lambda p, s: functional_regularizer(model, p, x, sigmas=s))(params, sigmas)``
    gives the :math:`M` values at once, differentiable in the parameters.
    ``method="hutchinson"`` draws its probes inside (under ``vmap`` that needs
    ``randomness="different"`` or ``"same"``).

    Args:
        model: the architecture (its noise sites give the modes, and the default
            :math:`\sigma_k`).
        params: the parameters, or ``None``.
        x: inputs, shape :math:`(B, d_0)`.
        sigmas: :math:`\sigma_k` per site, a tensor of shape :math:`(L,)` or floats
            (sites with :math:`\sigma_k = 0` given as floats are skipped); ``None``
            reads them from the sites.
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
            \operatorname{Tr}\bigl(J_k(x_b)^\top H_L(x_b) J_k(x_b)\bigr),

    with :math:`\sigma_k` read from the model's noise sites
    (:func:`gni_lib.noise.noise_sites` order), :math:`J_k` from
    :func:`gni_lib.jacobians.layer_jacobians`, and for a multiplicative site
    :math:`\sigma_k^2` replaced by :math:`\sigma_k^2 h_{k,a}^2` on coordinate
    :math:`a` (eq. 6).

    ``method``:

    - ``"exact"``. ``loss="mse"``: :math:`H_L = I`, :math:`R = \tfrac12 \sum_k
      \sigma_k^2 \lVert J_k \rVert_F^2` (eq. 11). ``loss="ce"``:
      :math:`H_L = \operatorname{diag}(p) - pp^\top = S S^\top` with
      :math:`S = \operatorname{diag}(\sqrt p) - p \sqrt p^\top`, so
      :math:`\operatorname{Tr}(J^\top H_L J) = \lVert S^\top J \rVert_F^2
      = \sum_a \operatorname{Var}_{i \sim p}(J_{ia})`, at the same cost as MSE:
      :math:`d_L` vector-Jacobian products with the cotangents
      :math:`\sqrt{p_j}(e_j - p)`, the rows of :math:`S^\top`, in place of
      the basis vectors :math:`e_j`. It does
      not depend on the labels, and adding the same vector to every row of the
      output weights leaves it unchanged.
    - ``"diag"`` (``loss="ce"`` only): eq. 14, which keeps only the diagonal of
      :math:`H_L`: :math:`\sum_i p_i (1 - p_i) \lVert J_{k,i} \rVert^2`, with
      :math:`J_{k,i}` row :math:`i` of :math:`J_k` (cotangents
      :math:`\sqrt{p_i(1-p_i)}\, e_i`). **An
      approximation, not an identity**: it drops
      :math:`-\sum_{i \ne j} p_i p_j \langle J_{k,i}, J_{k,j} \rangle`. (Eq. 13 of
      the paper prints the diagonal entry as :math:`p_i (1 - p_j)`; :math:`p_i(1 - p_i)`
      is meant.) Provided to measure how far eq. 14 is from eq. 9.
    - ``"hutchinson"``: unbiased, :math:`\mathbb E_v \lVert (M v)^\top J_k \rVert^2 =
      \operatorname{Tr}(J_k^\top M M^\top J_k)` with :math:`M = I` (MSE) or :math:`S`
      (CE) and ``probes`` Rademacher probes :math:`v \in \{\pm 1\}^{d_L}` per
      example: ``probes`` vector-Jacobian products instead of :math:`d_L`. For
      a fixed draw the estimate is a smooth function of the parameters, so its
      gradient is an unbiased estimate of :math:`\nabla_\theta R`. The probes are
      ``2 * torch.randint(0, 2, (B, probes, d_L), generator=generator) - 1``,
      drawn on ``x``'s device.

    The value is differentiable with respect to the parameters when autograd is
    on, so ``loss + R`` can be trained on. Under :func:`torch.no_grad` it is
    computed without a graph, at about the cost of a forward and backward pass.
    The noise sites' own noise is off during the computation (the clean pass);
    other modules run in their current mode.

    Args:
        model: an ``nn.Module`` whose noise sites are ``GaussianNoise`` modules
            (e.g. :func:`gni_lib.models.MLP`); see
            :func:`gni_lib.jacobians.layer_jacobians` for what else works.
        x: inputs, shape :math:`(B, d_0)`, finite, on the model's device and dtype.
        loss: ``"mse"`` (½-squared error, :math:`H_L = I`) or ``"ce"``
            (softmax cross-entropy on the logits :math:`h_L`).
        method: ``"exact"``, ``"diag"`` or ``"hutchinson"``.
        probes: the number of Hutchinson probes per example (``method="hutchinson"``).
        generator: the source of the Hutchinson probes; ``None`` uses torch's
            global generator. Must draw on ``x``'s device type.

    Returns:
        Tensor: a scalar on ``x``'s device and dtype.

    Raises:
        TypeError: if ``model``, ``x``, ``probes`` or ``generator`` has the wrong type.
        ValueError: for an unknown ``loss`` or ``method``; ``method="diag"`` with
            ``loss="mse"``; ``probes < 1``; a model with no noise sites; ``x`` not
            finite, not (B, ...), or not fitting the model; a generator on another
            device type.
    """
    check_model(model)
    loss = check_loss(loss)
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
    r"""Return the full second-order term of the noisy loss: the order-σ² part of the gap.

    .. math::

        T_2 = \frac12 \sum_{k=0}^{L-1} \sum_{b=1}^{B} \sum_{a=1}^{d_k} s_{k,b,a}^2\,
              \frac{\partial^2 L}{\partial h_{k,b,a}^2},
        \qquad L = \frac1B \sum_b \ell(h_L(x_b), y_b),

    with :math:`s_{k,b,a} = \sigma_k` (additive) or :math:`\sigma_k h_{k,b,a}`
    (multiplicative, eq. 6), the derivatives taken with respect to a
    perturbation of the clean activation at site :math:`k` (all noise off). By
    Taylor's theorem :math:`\mathbb E_\varepsilon[\tilde L] - L = T_2 + O(\sigma^4)`
    for smooth networks, since odd moments of the noise vanish and the noise of
    different sites and examples is independent. The Gauss-Newton part of
    :math:`T_2` is :math:`R` (:func:`explicit_regularizer`, ``method="exact"``);
    :math:`T_2 - R = \tfrac12 \sum_k \sigma_k^2 \sum_i (\partial L/\partial h_{L,i})
    \operatorname{Tr} \nabla^2_{h_k} h_{L,i}` is the network-curvature part, which
    Camuto et al. (2020) leave in the remainder :math:`C` although it is of the
    same order in :math:`\sigma`. It is zero for a linear network.

    Exact, by Hessian-vector products: for each site, the one-hot vectors
    :math:`e_a` (the same on every example) give the diagonal entries
    :math:`\partial^2 L / \partial h_{k,b,a}^2` of all examples at once, since
    examples do not interact. The cost is :math:`\sum_k d_k` Hessian-vector
    products, vectorised in chunks of ``chunk_size``; meant for the book's small
    and medium networks. The value is not differentiable (it is a diagnostic).

    Args:
        model: an ``nn.Module`` with ``GaussianNoise`` sites (see
            :func:`gni_lib.jacobians.layer_jacobians`).
        x: inputs, shape :math:`(B, d_0)`, finite.
        y: targets: shape :math:`(B, d_L)` and ``x``'s dtype for ``"mse"``;
            int64 class indices of shape :math:`(B,)` for ``"ce"``.
        loss: ``"mse"`` or ``"ce"``.
        chunk_size: Hessian-vector products per vectorised batch.

    Returns:
        Tensor: a scalar on ``x``'s device and dtype (no graph).

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: for an unknown ``loss``, a model with no noise sites, ``x`` or
            ``y`` of the wrong shape, dtype or range, non-finite input, or
            ``chunk_size < 1``.
    """
    sites = check_model(model)
    loss = check_loss(loss)
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


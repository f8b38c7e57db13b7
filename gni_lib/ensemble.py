r"""Many seeds at once: train :math:`M` copies of a network side by side.

The figures of chapters 04, 07, 08 and 09 show intervals over seeds, noise levels
or step sizes. :func:`train_ensemble` stacks the copies' parameters as the rows of
one flat :math:`(M, P)` tensor and steps them all at once with the pure updates of
:mod:`gni_lib.optim`:

.. math::

    w^{(m)}_{n+1} = w^{(m)}_n - \eta_m \nabla L\bigl(w^{(m)}_n [+ \xi^{(m)}_n]\bigr)
        [+ \xi^{(m)}_{n+1}] [- \xi^{(m)}_n], \qquad m = 1, \dots, M,

each model with its own :math:`\eta_m`, :math:`\sigma_m` and generators. The
gradients come from :func:`torch.func.vmap` over :func:`torch.func.grad`, or, for a
plain MLP (:func:`gni_lib.models.mlp_structure`), from the MLP core run with batched
matmuls (``torch.baddbmm``; 1.3-2x faster than ``vmap`` in ``benchmarks/RESULTS.md``).
Noise, in the optimiser or at the noise sites (Camuto et al. 2020), is drawn row by
row from each model's generator as :func:`gni_lib.train.train` draws it, and the
penalty :math:`R` is :func:`gni_lib.regularisers.explicit_regularizer` batched over
the models, so **the ensemble equals training the models one by one**, up to the
round-off of batched products (tested: 1e-6 in float32, 1e-12 in float64).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from ._checks import check_choice, check_flag, check_real, check_values
from .losses import ce_hessian_root, get_loss, per_example_loss
from .models import MLPPass, MLPStructure, elementwise, mlp_backward, mlp_structure, mlp_weights
from .noise import GaussianNoise, noise_sites, replace_site_outputs
from .optim import _adam_update, _check_sigma, _draw_rows, anti_pgd_update, gd_update, perturb, pgd_update
from .regularisers import functional_regularizer
from .seeding import check_generator
from .train import History, _batches, _check_run, _clean_metrics, _record, _refuse_non_finite, _run_steps

__all__ = ["train_ensemble", "EnsembleResult", "METHODS"]

#: The update rules :func:`train_ensemble` accepts and the optimiser each one matches.
METHODS: dict[str, str] = {
    "gd": "torch.optim.SGD(params, lr) (plain: no momentum, no weight decay)",
    "adam": "torch.optim.Adam(params, lr) (default betas (0.9, 0.999) and eps 1e-8, no weight decay)",
    "pgd": "gni_lib.optim.PGD(params, lr, sigma, generator=g)",
    "anti_pgd": "gni_lib.optim.AntiPGD(params, lr, sigma, generator=g)",
    "perturbed_gd": "gni_lib.optim.PerturbedGD(params, lr, sigma, layerwise=..., generator=g)",
}


@dataclass
class EnsembleResult:
    """What :func:`train_ensemble` returns.

    Attributes:
        histories: one :class:`gni_lib.train.History` per model, as
            :func:`gni_lib.train.train` would have recorded it.
        params: the final parameters, stacked: ``params[name]`` has shape
            :math:`(M, *s)`. The models passed in hold the same values.
        fast_path: whether the batched-matmul path was used (else ``vmap``).
    """

    histories: list[History]
    params: dict[str, Tensor] = field(repr=False)
    fast_path: bool


# --- the batched-matmul route: the MLP core of gni_lib.models with a leading model axis ----------


def _stacked_forward(
    structure: MLPStructure,
    params: Mapping[str, Tensor],
    x: Tensor,
    perturb: Callable[[int, Tensor], Tensor] | None = None,
    derivatives: bool = False,
) -> MLPPass:
    r""":func:`gni_lib.models.mlp_forward` for :math:`M` stacked MLPs (``params`` :math:`(M, \dots)`,
    ``x`` :math:`(B, d_0)` or :math:`(M, B, d_0)`), one ``baddbmm`` per layer; ``perturb(k, h)``
    replaces the input of the layer site :math:`k` feeds. ``first`` only with ``derivatives``."""
    count = next(iter(params.values())).shape[0]
    a = x if x.ndim == 3 else x.expand(count, *x.shape)
    for module in structure.prefix:
        a = module(a)
    feeds = {layer: k for k, layer in enumerate(structure.site_layers)}
    inputs, first = [], []
    for m, ((weight, bias), (_, modules)) in enumerate(zip(mlp_weights(structure, params), structure.layers)):
        if perturb is not None and m in feeds:
            a = perturb(feeds[m], a)
        inputs.append(a)
        weight = weight.transpose(1, 2)
        z = torch.bmm(a, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), a, weight)
        if derivatives:
            a, d1, _ = elementwise(modules, z)
            first.append(d1)
        else:
            a = z
            for module in modules:
                a = module(a)
    return MLPPass(inputs, first, [], a)


def _stacked_regularizer(
    structure: MLPStructure, params: Mapping[str, Tensor], clean: MLPPass, loss: str, sites: _Sites
) -> Tensor:
    r"""Per-model :math:`R_m = \frac{1}{2B} \sum_{b,k} \lVert C_{m,b} J_{m,k}(x_b) \operatorname{diag}(s_{m,k,b})
    \rVert_F^2` (Camuto et al. 2020, eq. 9), (M,): :func:`gni_lib.models.mlp_backward` on stacked
    weights, one batched product per layer, on the ``clean`` :func:`_stacked_forward` with derivatives."""
    output = clean.output
    count, batch, d_out = output.shape
    if loss == "mse":
        g = torch.eye(d_out, dtype=output.dtype, device=output.device).expand(count, batch, d_out, d_out)
    else:
        g = ce_hessian_root(output)
    weights = [w for w, _ in mlp_weights(structure, params)]
    site_of = {structure.site_layers[k]: k for k in sites.active}
    grads = mlp_backward(weights, clean.first, g, stop=min(site_of, default=len(weights)))
    total = output.new_zeros(count)
    for m in sorted(site_of, reverse=True):
        k, g = site_of[m], grads[m]
        sigma = sites.sigmas[:, k]
        if sites.modes[k] == "multiplicative":  # columns times sigma_k h_k (eq. 6)
            total = total + (g * (sigma.view(count, 1, 1) * clean.inputs[m]).unsqueeze(2)).pow(2).sum(dim=(1, 2, 3))
        else:
            total = total + sigma.pow(2) * g.pow(2).sum(dim=(1, 2, 3))
    return 0.5 * total / batch


# --- validation ---------------------------------------------------------------------------------


def _check_models(models: object, allow_noise: bool = False) -> list[nn.Module]:
    if isinstance(models, nn.Module) or not isinstance(models, Sequence) or not models:
        raise TypeError(
            "models must be a non-empty list of torch.nn.Module copies of one architecture, "
            f"got {type(models).__name__}"
        )
    models = list(models)
    for m, model in enumerate(models):
        if not isinstance(model, nn.Module):
            raise TypeError(f"models[{m}] must be a torch.nn.Module, got {type(model).__name__}")
    reference = [(k, v.shape, v.dtype, v.device) for k, v in models[0].named_parameters()]
    if not reference:
        raise ValueError("models[0] has no parameters to train")
    reference_types = [type(module) for module in models[0].modules()]
    modes = [site.mode for site in noise_sites(models[0])]
    for m, model in enumerate(models):
        mine = [(k, v.shape, v.dtype, v.device) for k, v in model.named_parameters()]
        if mine != reference:
            raise ValueError(
                f"models[{m}] must have the parameter names, shapes, dtypes and devices of models[0]"
            )
        if [type(module) for module in model.modules()] != reference_types:
            raise ValueError(
                f"models[{m}] must have the module types of models[0] (the same activations "
                "and noise sites): all models are trained as models[0]'s architecture"
            )
        if not all(p.requires_grad for p in model.parameters()):
            raise ValueError(f"models[{m}] has parameters with requires_grad=False; all are trained")
        for site in model.modules():
            if isinstance(site, GaussianNoise) and site.sigma > 0.0 and not allow_noise:
                raise ValueError(
                    f"models[{m}] has a noise site with sigma={site.sigma}; say what to do with it: "
                    "inject_noise=True (the sites inject noise in training, drawn from "
                    "site_generators) or inject_noise=False (sites off, e.g. for "
                    "penalty='explicit_regularizer'), or set the sites' sigma to 0 "
                    "(gni_lib.noise.set_noise)"
                )
        if [site.mode for site in noise_sites(model)] != modes:
            raise ValueError(f"models[{m}] must have the noise sites (number and modes) of models[0]")
    if len({id(model) for model in models}) != len(models):
        raise ValueError("models must be distinct module objects (copy.deepcopy each one)")
    return models


def _check_generators(
    value: object, count: int, name: str, device: torch.device | None = None, needed_when: str | None = None,
    shared_ok: bool = False,
) -> list[torch.Generator] | None:
    """``count`` torch.Generators, one per model; with ``device``, distinct and on it. ``None`` is
    refused when ``needed_when`` (the condition, for the message) is given; ``shared_ok``: the
    messages say that one shared generator is accepted too (the caller takes that case)."""
    if value is None:
        if needed_when:
            raise ValueError(
                f"{name} must be given (one torch.Generator per model, e.g. "
                f"gni_lib.spawn_generators(seed, {count})) when {needed_when}"
            )
        return None
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        kinds = "None, a torch.Generator or a sequence of them" if shared_ok else f"a sequence of {count} torch.Generators"
        raise TypeError(f"{name} must be {kinds}, got {type(value).__name__}")
    if len(value) != count:
        kinds = "be one generator (shared batches) or one per model" if shared_ok else "have one generator per model"
        raise ValueError(f"{name} must {kinds} ({count}), got {len(value)}")
    for m, g in enumerate(value):
        if not isinstance(g, torch.Generator):
            raise TypeError(f"{name}[{m}] must be a torch.Generator, got {type(g).__name__}")
        try:
            check_generator(g, device)
        except ValueError as error:
            raise ValueError(f"{name}[{m}]: {error}") from None
    if device is not None and len({id(g) for g in value}) != count:
        raise ValueError(f"{name} must be distinct objects, one per model")
    return list(value)


class _Method(NamedTuple):
    name: str
    lrs: list[float]
    sigmas: list[float]
    layerwise: bool
    generators: list[torch.Generator] | None
    noisy: bool


def _check_method(
    method: object, lr: object, sigma: object, layerwise: object, generators: object, count: int,
    device: torch.device,
) -> _Method:
    """The update rule: ``method``, per-model ``lr`` and ``sigma``, ``layerwise``, ``generators``."""
    lrs = check_values(lr, count, "lr", lambda v, name: check_real(v, name, positive=True), per="model")
    check_choice(method, "method", tuple(METHODS))
    sigmas = check_values(sigma, count, "sigma", _check_sigma, per="model")
    if check_flag(layerwise, "layerwise") and method != "perturbed_gd":
        raise ValueError(f"layerwise=True needs method='perturbed_gd', got method={method!r}")
    if method in ("gd", "adam") and any(s > 0 for s in sigmas):
        raise ValueError(f"sigma must be 0 with method={method!r} (pick 'pgd', 'anti_pgd' or 'perturbed_gd')")
    noisy = method not in ("gd", "adam") and any(s > 0 for s in sigmas)
    generators = _check_generators(generators, count, "generators", device, "sigma > 0" if noisy else None)
    return _Method(method, lrs, sigmas, layerwise, generators, noisy)


class _Sites(NamedTuple):
    sigmas: Tensor  # (M, K): sigma_{m,k}, read from each model's own sites
    rows: list[list[float]]  # site k -> [sigma_{0,k}, ..., sigma_{M-1,k}]
    modes: list[str]
    active: set[int]  # the sites with sigma_{m,k} > 0 for some model
    noise_on: bool
    generators: list[torch.Generator] | None


def _check_sites(
    models: list[nn.Module], inject_noise: bool | None, site_generators: object, dtype: torch.dtype,
    device: torch.device,
) -> _Sites:
    """The noise sites of the models, and ``site_generators``."""
    count = len(models)
    sigmas = torch.tensor(
        [[site.sigma for site in noise_sites(model)] for model in models], dtype=dtype, device=device
    ).reshape(count, -1)
    rows = sigmas.T.tolist()
    active = {k for k, row in enumerate(rows) if any(s > 0 for s in row)}
    noise_on = bool(inject_noise) and bool(active)
    needed = "inject_noise=True and a site has sigma > 0" if noise_on else None
    site_generators = _check_generators(site_generators, count, "site_generators", device, needed)
    if site_generators is not None and not inject_noise:
        raise ValueError("site_generators is only used with inject_noise=True")
    modes = [site.mode for site in noise_sites(models[0])]
    return _Sites(sigmas, rows, modes, active, noise_on, site_generators)


def _check_penalty(
    penalty: object, penalty_weight: object, sites: _Sites, count: int
) -> tuple[str | None, list[float]]:
    """``penalty``: its kind (``None``, ``"explicit_regularizer"``, ``"callable"``) and the weights."""
    expected = "penalty must be None, 'explicit_regularizer' or a callable (model, x) -> scalar, got"
    if penalty is None:
        kind = None
    elif isinstance(penalty, str):
        if penalty != "explicit_regularizer":
            raise ValueError(f"{expected} {penalty!r}")
        if not sites.modes:
            raise ValueError("penalty='explicit_regularizer' needs models with GaussianNoise sites; they have none")
        kind = "explicit_regularizer"
    elif callable(penalty):
        kind = "callable"
    else:
        raise TypeError(f"{expected} {type(penalty).__name__}")
    weights = check_values(penalty_weight, count, "penalty_weight", check_real, per="model")
    return kind, weights


def _check_fast_path(fast_path: object, model: nn.Module, sites_matter: bool) -> bool:
    """The route: an MLP, whose noise sites (when they inject noise or enter R) each feed a linear layer."""
    structure = mlp_structure(model)
    can_fast = structure is not None and not (sites_matter and None in structure.site_layers)
    if check_flag(fast_path, "fast_path", none=True) is None:
        return can_fast
    if fast_path and not can_fast:
        raise ValueError(
            "fast_path=True needs a Sequential of Linear layers and elementwise activations; "
            "use fast_path=None or False for this model"
        )
    return fast_path


def _site_call_shapes(model: nn.Module, x: Tensor) -> list[tuple[int, tuple[int, ...]]]:
    """The noise sites in the order a forward pass calls them, with each activation's
    shape after the batch dimension: one clean probe pass on ``x[:1]`` (vmap path)."""
    calls: list[tuple[int, tuple[int, ...]]] = []

    def record(k: int, h: Tensor) -> Tensor:
        calls.append((k, tuple(h.shape[1:])))
        return h

    with torch.no_grad(), replace_site_outputs(model, record) as counts:
        model(x[:1])
    for k, number in enumerate(counts):
        if number != 1:
            raise ValueError(
                f"models[0]'s noise site {k} was called {number} times in one forward pass; "
                "inject_noise=True needs every GaussianNoise site used exactly once"
            )
    return calls


# --- the trainer ---------------------------------------------------------------------------------


class _Stack:
    """The :math:`M` models as the rows of a flat :math:`(M, P)` tensor (parameter order: the layout
    of the optimisers' noise buffer, so a step is one update per row), and the routes that
    evaluate each model's objective, gradient, outputs and penalty at given rows."""

    def __init__(
        self, models: list[nn.Module], x: Tensor, loss: str, use_fast: bool, sites: _Sites,
        penalty_kind: str | None, penalty: Callable | None, weights: list[float],
    ) -> None:
        for model in models:
            model.eval()
        stacked, self.buffers = stack_module_state(models)
        self.models, self.count, self.loss, self.use_fast = models, len(models), loss, use_fast
        self.names = list(stacked)
        self.shapes = {k: tuple(v.shape[1:]) for k, v in stacked.items()}
        self.sizes = [math.prod(self.shapes[k]) for k in self.names]
        self.offsets = dict(zip(self.names, itertools.accumulate([0] + self.sizes[:-1])))
        self.flat = torch.cat([stacked[k].detach().reshape(self.count, -1) for k in self.names], dim=1)
        self.x, self.sites, self.penalty_kind, self.penalty = x, sites, penalty_kind, penalty
        self.weight_column = torch.tensor(weights, dtype=x.dtype, device=x.device)
        # R: batched over the models on either route; a callable penalty: a loop over them.
        self.fast_penalty = penalty_kind == "explicit_regularizer" and use_fast
        self.vmap_penalty = penalty_kind == "explicit_regularizer" and not use_fast
        self.loop_penalty = penalty_kind == "callable"
        self.structure = mlp_structure(models[0]) if use_fast else None
        self.skeleton = copy.deepcopy(models[0]).to("meta")
        self.site_calls = _site_call_shapes(models[0], x) if sites.noise_on and not use_fast else None

    def unflatten(self, rows: Tensor) -> dict[str, Tensor]:
        lead = rows.shape[:-1]
        return {k: rows[..., self.offsets[k] : self.offsets[k] + size].view(*lead, *self.shapes[k])
                for k, size in zip(self.names, self.sizes)}

    def write_back(self, rows: Tensor) -> None:
        values = self.unflatten(rows)
        with torch.no_grad():
            for m, model in enumerate(self.models):
                for k, v in model.named_parameters():
                    v.copy_(values[k][m])

    def draw_site(self, k: int, shape: tuple[int, ...]) -> Tensor:
        """Site k's noise sigma_{m,k} z for every model, (M, *shape); row m from site_generators[m]."""
        x = self.x
        return _draw_rows(
            math.prod(shape), self.sites.rows[k], self.sites.generators, x.dtype, x.device
        ).view(self.count, *shape)

    def perturb_site(self, k: int, h: Tensor) -> Tensor:
        """The fast path's noise site: h is (M, B, d); draws in forward order, as GaussianNoise does."""
        return self.apply_site(k, h, self.draw_site(k, tuple(h.shape[1:])))

    def apply_site(self, k: int, h: Tensor, noise: Tensor) -> Tensor:
        """Site k's output: h + noise, or h (1 + noise) (multiplicative, eq. 6)."""
        return h + noise if self.sites.modes[k] == "additive" else h * (1.0 + noise)

    def single_objective(
        self, row: Tensor, b: dict[str, Tensor], noise: list[Tensor] | None, sigma: Tensor, weight: Tensor,
        xb: Tensor, yb: Tensor,
    ) -> Tensor:
        """The ``vmap`` route, one model: L (at the sites' ``noise``, if given) [+ weight R]."""
        params = self.unflatten(row)

        def replace(k: int, h: Tensor) -> Tensor:
            return self.apply_site(k, h, noise[k])

        with replace_site_outputs(self.skeleton, replace) if noise is not None else contextlib.nullcontext():
            out = functional_call(self.skeleton, (params, b), (xb,))
        objective = per_example_loss(out, yb, self.loss).mean(dim=-1)
        if self.vmap_penalty:
            r = functional_regularizer(self.skeleton, {**params, **b}, xb, sigmas=sigma, loss=self.loss)
            objective = objective + weight * r
        return objective

    def regularizer(self, params: Mapping[str, Tensor], xs: Tensor) -> Tensor:
        """R of every model on ``xs`` (shared or per model), (M,), differentiable."""
        if self.use_fast:
            clean = _stacked_forward(self.structure, params, xs, derivatives=True)
            return _stacked_regularizer(self.structure, params, clean, self.loss, self.sites)
        in_x = None if xs.ndim == self.x.ndim else 0
        return vmap(
            lambda p, b, s, x_: functional_regularizer(self.skeleton, {**p, **b}, x_, sigmas=s, loss=self.loss),
            in_dims=(0, 0, 0, in_x),
        )(params, self.buffers, self.sites.sigmas, xs)

    def looped_penalty(self, rows: Tensor, xb: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
        """The fallback: the penalty (and its gradient) of each model in turn, (M,) and (M, P)."""
        self.write_back(rows)
        shared = xb.ndim == self.x.ndim
        values, grads = [], []
        for m, model in enumerate(self.models):
            inputs = xb if shared else xb[m]
            with torch.enable_grad():
                value = self.penalty(model, inputs)
                if not isinstance(value, Tensor) or value.numel() != 1:
                    raise TypeError(f"penalty must return a scalar tensor, got {type(value).__name__}")
                value = value.reshape(())
                if with_grad and value.requires_grad:
                    parts = torch.autograd.grad(value, list(model.parameters()), allow_unused=True,
                                                materialize_grads=True)
                    grads.append(torch.cat([g.reshape(-1) for g in parts]))
                elif with_grad:  # a constant: no gradient
                    grads.append(rows.new_zeros(rows.shape[1]))
            values.append(value.detach())
        return torch.stack(values), (torch.stack(grads) if with_grad else None)

    def fast_objective(self, rows: Tensor, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """The batched-matmul route: the per-model objective (M,) and its gradient (M, P)."""
        # One leaf per tensor (a gradient through slices of a single flat leaf
        # would allocate a zero (M, P) tensor per slice), then one cat.
        leaves = {k: v.detach().requires_grad_() for k, v in self.unflatten(rows.detach()).items()}
        noise_on = self.sites.noise_on
        with torch.enable_grad():
            # R needs the clean pass with phi': shared with the loss when noise is off.
            shared_pass = self.fast_penalty and not noise_on
            forward = _stacked_forward(self.structure, leaves, xb, self.perturb_site if noise_on else None,
                                       derivatives=shared_pass)
            objective = per_example_loss(forward.output, yb, self.loss).mean(dim=-1)
            if self.fast_penalty:
                clean = forward if shared_pass else _stacked_forward(self.structure, leaves, xb, derivatives=True)
                r = _stacked_regularizer(self.structure, leaves, clean, self.loss, self.sites)
                objective = objective + self.weight_column * r
            grads = torch.autograd.grad(objective.sum(), list(leaves.values()))
        return objective.detach(), torch.cat([g.reshape(self.count, -1) for g in grads], dim=1)

    def objective_and_grads(self, rows: Tensor, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """Per model: the objective L + lambda_m P at ``rows`` on the batch, and its gradient."""
        if self.use_fast:
            objective, grads = self.fast_objective(rows, xb, yb)
        else:
            in_x = None if xb.ndim == self.x.ndim else 0
            noise = None
            if self.sites.noise_on:
                batch = xb.shape[0] if in_x is None else xb.shape[1]
                noise = [None] * len(self.sites.modes)  # every site's (M, batch, *shape), in call order
                for k, shape in self.site_calls:
                    noise[k] = self.draw_site(k, (batch, *shape))
            grads, objective = vmap(
                grad_and_value(self.single_objective),
                in_dims=(0, 0, None if noise is None else 0, 0, 0, in_x, in_x),
            )(rows, self.buffers, noise, self.sites.sigmas, self.weight_column, xb, yb)
        if self.loop_penalty:
            values, penalty_grads = self.looped_penalty(rows, xb, with_grad=True)
            objective = objective + self.weight_column * values
            grads = grads + self.weight_column.unsqueeze(1) * penalty_grads
        return objective, grads

    def outputs(self, rows: Tensor, xs: Tensor) -> Tensor:
        if self.use_fast:
            return _stacked_forward(self.structure, self.unflatten(rows), xs).output
        return vmap(lambda r, b: functional_call(self.skeleton, (self.unflatten(r), b), (xs,)))(rows, self.buffers)

    def penalty_values(self, rows: Tensor) -> list[float]:
        """The unweighted penalty of each model on the whole training set (recorded)."""
        if self.loop_penalty:
            return self.looped_penalty(rows, self.x, with_grad=False)[0].tolist()
        return self.regularizer(self.unflatten(rows), self.x).detach().tolist()


class _StackedOptimizer:
    """The update rule of :data:`METHODS` on the flat :math:`(M, P)` parameters ``stack.flat``."""

    def __init__(self, stack: _Stack, method: _Method) -> None:
        self.stack, self.method = stack, method
        x = stack.x
        self.lr_column = torch.tensor(method.lrs, dtype=x.dtype, device=x.device).unsqueeze(1)
        self.xi: Tensor | None = None  # Anti-PGD's previous noise
        self.adam_moments: tuple[Tensor, Tensor] | None = None

    def draw(self, step: int) -> Tensor:
        """The step's noise as an (M, P) buffer (zeros outside the perturbed tensor, layer-wise)."""
        stack, method, flat = self.stack, self.method, self.stack.flat
        if not method.noisy:
            return torch.zeros_like(flat)
        if not method.layerwise:
            return _draw_rows(flat.shape[1], method.sigmas, method.generators, flat.dtype, flat.device)
        buffer = torch.zeros_like(flat)
        key = stack.names[(step - 1) % len(stack.names)]
        start, size = stack.offsets[key], math.prod(stack.shapes[key])
        buffer[:, start : start + size] = _draw_rows(size, method.sigmas, method.generators, flat.dtype, flat.device)
        return buffer

    def step(self, step: int, steps: int, xb: Tensor, yb: Tensor) -> None:
        """One update of every model; refuses (before any model moves) a non-finite loss or gradient."""
        name, flat = self.method.name, self.stack.flat
        noise = self.draw(step) if name not in ("gd", "adam") else None
        at = perturb({"w": flat}, {"w": noise})["w"] if name == "perturbed_gd" else flat
        losses, grads = self.stack.objective_and_grads(at, xb, yb)
        # amax propagates NaN and inf, and is ten times cheaper than isfinite().all().
        _refuse_non_finite(torch.isfinite(losses) & torch.isfinite(grads.abs().amax(dim=1)), step, steps)
        w, g = {"w": flat}, {"w": grads}
        if name in ("gd", "perturbed_gd"):
            flat = gd_update(w, g, self.lr_column)["w"]
        elif name == "adam":
            flat, self.adam_moments = _adam_update(flat, grads, self.adam_moments, step, self.lr_column)
        elif name == "pgd":
            flat = pgd_update(w, g, {"w": noise}, self.lr_column)["w"]
        else:
            new, xi = anti_pgd_update(w, g, {"w": noise}, None if self.xi is None else {"w": self.xi},
                                      self.lr_column)
            flat, self.xi = new["w"], xi["w"]
        self.stack.flat = flat


def train_ensemble(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float | Sequence[float],
    method: str = "gd",
    sigma: float | Sequence[float] = 0.0,
    layerwise: bool = False,
    generators: Sequence[torch.Generator] | None = None,
    loss: str = "mse",
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    record_every: int = 100,
    batch_size: int | None = None,
    batch_generator: torch.Generator | Sequence[torch.Generator] | None = None,
    record_extra: Mapping[str, Callable[[nn.Module], float]] | None = None,
    fast_path: bool | None = None,
    progress: bool | None = None,
    inject_noise: bool | None = None,
    site_generators: Sequence[torch.Generator] | None = None,
    penalty: str | Callable[[nn.Module, Tensor], Tensor] | None = None,
    penalty_weight: float | Sequence[float] = 1.0,
) -> EnsembleResult:
    r"""Train :math:`M` copies of one architecture at once; each equals its own sequential run.

    For model :math:`m` at step :math:`n`, with :math:`L` the loss on the step's batch
    and :math:`\xi^{(m)}_n \sim \mathcal N(0, \sigma_m^2 I)` (Orvieto et al. 2022, 2023):

    - ``"gd"``: :math:`w \leftarrow w - \eta_m \nabla L(w)`;
    - ``"adam"``: Adam's elementwise update (PyTorch's default :math:`\beta_1, \beta_2, \epsilon`);
    - ``"pgd"``: :math:`w \leftarrow w - \eta_m \nabla L(w) + \xi_{n+1}`;
    - ``"anti_pgd"``: :math:`w \leftarrow w - \eta_m \nabla L(w) + \xi_{n+1} - \xi_n`, :math:`\xi_0 = 0`;
    - ``"perturbed_gd"``: :math:`w \leftarrow w - \eta_m \nabla L(w + \xi_n)`, all tensors
      perturbed, or (``layerwise=True``) only tensor :math:`n \bmod G`.

    Model :math:`m` ends where this sequential run ends, and records the same history
    (up to the round-off of batched products: 1e-6 in float32, 1e-12 in float64)::

        train(models[m], x, y, steps=steps, optimizer=OPT, loss=loss, batch_size=batch_size,
              generator=G_m, x_test=x_test, y_test=y_test, record_every=record_every,
              record_extra=record_extra)

    with ``OPT`` the optimiser of :data:`METHODS` on ``models[m].parameters()`` with
    ``lr[m]``, ``sigma[m]`` and ``generators[m]``, and ``G_m`` a generator in the
    starting state of ``batch_generator`` (or ``batch_generator[m]``).

    **Noise sites and penalties** (Camuto et al. 2020, Sec. 3). A model with a
    site of :math:`\sigma > 0` needs ``inject_noise``. With ``True`` site :math:`k`
    of model :math:`m` computes :math:`h_k + \sigma_{m,k} z` (or :math:`h_k (1 +
    \sigma_{m,k} z)`, eq. 6) with :math:`\sigma_{m,k}` read from ``models[m]``'s own
    sites and :math:`z` drawn from ``site_generators[m]`` site by site in forward
    order, nothing for :math:`\sigma_{m,k} = 0`: the draws of a
    :class:`~gni_lib.noise.GaussianNoise` with a copy of that generator. With
    ``False`` the sites are off, but the penalty reads their :math:`\sigma_{m,k}`.
    The objective of model :math:`m` is :math:`L + \lambda_m P`, as in
    :func:`~gni_lib.train.train` with ``penalty=P, penalty_weight=lambda_m``:

    - ``"explicit_regularizer"``: :math:`P = R`, eq. 9, as ``explicit_regularizer(model,
      x_batch, loss=loss)``, batched over the models (one ``bmm`` per layer on the
      fast path, ``vmap`` over :func:`~gni_lib.regularisers.functional_regularizer` else);
    - a callable ``penalty(model, x_batch) -> scalar``: a loop over the models, each
      loaded with its current parameters, in ``eval()`` mode (noise off; unlike
      :func:`~gni_lib.train.train` with ``inject_noise=True``, where a penalty that runs
      the model sees noise).

    The penalty is taken on the step's batch where the loss is (the perturbed weights
    for ``"perturbed_gd"``), and recorded unweighted on the whole training set in
    ``histories[m].penalty``. Recorded losses are clean. Training otherwise runs in
    ``eval()`` mode; the final parameters are written back into ``models``.

    Args:
        models: :math:`M \ge 1` distinct modules with the same module types and
            parameter names, shapes, dtype and device.
        x, y, steps, loss, x_test, y_test, record_every, batch_size: as in :func:`gni_lib.train.train`.
        progress, record_extra: as in :func:`gni_lib.train.train`; ``fn(models[m])`` sees
            model :math:`m`'s current parameters.
        lr, sigma, penalty_weight: :math:`\eta > 0`, :math:`\sigma \ge 0` (0 for
            ``"gd"`` and ``"adam"``), :math:`\lambda \ge 0`: one for all or :math:`M`.
        method: a key of :data:`METHODS`; ``layerwise`` only with ``"perturbed_gd"``.
        generators, site_generators: :math:`M` distinct generators on the models'
            device, for the optimiser's noise (needed when a :math:`\sigma_m > 0`) and
            the sites' (needed when ``inject_noise=True`` and a site has :math:`\sigma > 0`).
        batch_generator: ``None`` (global generator), one generator (the same batches
            for every model) or :math:`M` (an order per model).
        fast_path: ``None`` picks the batched-matmul route for a plain MLP (with
            noise or R, each site must feed a linear layer), ``True`` demands it,
            ``False`` uses ``vmap``.
        inject_noise: ``None`` (no site may have :math:`\sigma > 0`), ``True`` or ``False``.
        penalty: ``None``, ``"explicit_regularizer"`` or a callable ``(model, x) -> scalar``.

    Returns:
        EnsembleResult: the per-model histories and the stacked final parameters.

    Raises:
        TypeError: on an argument of the wrong type.
        ValueError: on a bad value, naming the argument (models that differ, a site
            with :math:`\sigma > 0` and no ``inject_noise``, a wrong length, a missing
            generator, ``fast_path=True`` for a model it does not fit, ...).
        FloatingPointError: if a model's loss or gradient is NaN or infinite; the
            message names the models and the step, which no model takes.
    """
    check_flag(inject_noise, "inject_noise", none=True)
    models = _check_models(models, allow_noise=inject_noise is not None)
    count = len(models)
    run = _check_run(x, y, steps, x_test, y_test, record_every, batch_size, progress, record_extra)
    device = next(models[0].parameters()).device
    dtype = next(models[0].parameters()).dtype
    rule = _check_method(method, lr, sigma, layerwise, generators, count, device)
    loss_fn = get_loss(loss)
    sites = _check_sites(models, inject_noise, site_generators, dtype, device)
    penalty_kind, weights = _check_penalty(penalty, penalty_weight, sites, count)
    for value, name in ((run.x, "x"), (run.x_test, "x_test")):
        if value is not None and (value.device != device or value.dtype != dtype):
            raise ValueError(
                f"{name} must be {dtype} on {device} like the models' parameters, "
                f"got {value.dtype} on {value.device}"
            )
    sites_matter = sites.noise_on or penalty_kind == "explicit_regularizer"
    use_fast = _check_fast_path(fast_path, models[0], sites_matter)
    full_batch = run.batch_size in (None, run.x.shape[0])
    batch_generators = batch_generator
    if not full_batch and not (batch_generator is None or isinstance(batch_generator, torch.Generator)):
        batch_generators = _check_generators(batch_generator, count, "batch_generator", shared_ok=True)
    # The library losses validate the targets once, on model 0's outputs (shapes,
    # dtypes, class range); the vectorised loss used below does no data-dependent checks.
    with torch.no_grad():
        models[0].eval()
        loss_fn(models[0](run.x), run.y)
        if run.x_test is not None:
            loss_fn(models[0](run.x_test), run.y_test)

    stack = _Stack(models, run.x, loss, use_fast, sites, penalty_kind, penalty, weights)
    optimizer = _StackedOptimizer(stack, rule)
    histories = [History() for _ in range(count)]
    batches = _batches(run.x, run.y, run.batch_size, batch_generators)

    def record(step: int) -> float:
        metrics = _clean_metrics(
            lambda xs: stack.outputs(stack.flat, xs),
            lambda out, target: per_example_loss(out, target, loss).mean(dim=-1),
            run, dtype if loss == "ce" else None,  # accuracies: a mean in the models' dtype
        )
        penalties = stack.penalty_values(stack.flat) if penalty_kind is not None else None
        if run.extras:
            stack.write_back(stack.flat)
        _record(histories, models, step, metrics, penalties, run.extras)
        return sum(h.train_loss[-1] for h in histories) / count

    def take_step(step: int) -> None:
        optimizer.step(step, run.steps, *next(batches))

    _run_steps(run, "train_ensemble", take_step, record, lambda: stack.write_back(stack.flat))
    return EnsembleResult(histories=histories, params=stack.unflatten(stack.flat), fast_path=use_fast)

r"""Noise-injected gradient descent: PGD, Anti-PGD and gradients at a perturbed point.

Three ways of adding :math:`\xi \sim \mathcal N(0, \sigma^2 I)` (``sigma`` is a
**standard deviation**) to gradient descent with step size :math:`\eta`, each as a
pure update on parameter dicts (usable under :func:`torch.func.vmap`) and as a
:class:`torch.optim.Optimizer` that calls it:

.. math::

    \text{PGD:} \quad & w_{n+1} = w_n - \eta \nabla L(w_n) + \xi_{n+1}, \\
    \text{Anti-PGD:} \quad & w_{n+1} = w_n - \eta \nabla L(w_n) + (\xi_{n+1} - \xi_n),
        \quad \xi_0 = 0, \\
    \text{perturbed GD:} \quad & w_{n+1} = w_n - \eta \nabla L(w_n + \xi_n).

PGD and Anti-PGD are Orvieto et al. (2022), eqs. (PGD) and (Anti-PGD); the perturbed
gradient, and its layer-wise variant, Orvieto et al. (2023). With :math:`z_n = w_n -
\xi_n`, Anti-PGD is exactly :math:`z_{n+1} = z_n - \eta \nabla L(z_n + \xi_n)`, which in
expectation descends :math:`L + \tfrac{\sigma^2}{2} \operatorname{Tr} \nabla^2 L +
O(\sigma^4)`.

**Draw order** (the optimisers, :func:`draw_noise` and the ensemble trainer share
it, so a run is reproduced number for number): each step draws one flat buffer
:func:`gni_lib.noise.standard_noise` ``(P, generator)`` over the :math:`P`
coordinates that receive noise, cuts it in parameter order into one piece per
tensor and multiplies each by its :math:`\sigma` (one buffer per device and dtype,
in order of first appearance; nothing for :math:`\sigma = 0`).
``distribution="rademacher"`` draws :math:`\pm\sigma` instead (Orvieto et al. 2022, Thm. 3.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import check_choice, check_flag, check_generator, check_real, check_tensor_dict
from .noise import NOISE_DISTRIBUTIONS, standard_noise

__all__ = [
    "PGD",
    "AntiPGD",
    "PerturbedGD",
    "NonFiniteGradientError",
    "draw_noise",
    "gd_update",
    "pgd_update",
    "anti_pgd_update",
    "perturb",
]

Params = Mapping[str, Tensor]


class NonFiniteGradientError(ValueError, FloatingPointError):
    """A gradient holds NaN or infinite entries; the step was not applied.

    Both a :class:`ValueError` (bad input to the optimiser) and a :class:`FloatingPointError`
    (what :func:`gni_lib.train.train` raises for a non-finite objective).
    """


def _check_sigma(value: object, name: str = "sigma") -> float:
    return check_real(value, name, what=" (a standard deviation, not a variance)")


# --- noise -------------------------------------------------------------------------------------


def _noise_for(
    tensors: Sequence[Tensor], sigmas: Sequence[float], generator: torch.Generator | None, distribution: str
) -> list[Tensor]:
    """sigma_j z_j shaped like tensors[j]: one standard_noise buffer per (device, dtype), cut in order."""
    noise: list[Tensor] = [None] * len(tensors)  # type: ignore[list-item]
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for j, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(j)
    for (device, dtype), members in groups.items():
        check_generator(generator, device)
        sizes = [tensors[j].numel() for j in members]
        flat = standard_noise(sum(sizes), generator, dtype=dtype, device=device, distribution=distribution)
        for j, chunk in zip(members, flat.split(sizes)):
            noise[j] = chunk.view(tensors[j].shape) * sigmas[j]
    return noise


def draw_noise(
    params: Params,
    sigma: float,
    generator: torch.Generator | None,
    keys: Sequence[str] | None = None,
    *,
    distribution: str = "gaussian",
) -> dict[str, Tensor]:
    r"""Draw :math:`\xi = \sigma z`, :math:`z \sim \mathcal N(0, I)`, shaped like ``params``.

    One flat buffer in the draw order of the module docstring, cut in the order of
    ``keys`` (default: that of ``params``). Call it *outside* :func:`torch.func.vmap`
    and pass the result in.

    Args:
        params: tensors by name, all of one dtype and device (only shapes are used).
        sigma: the standard deviation :math:`\sigma \ge 0`; for 0 the result is
            zeros and nothing is drawn.
        generator: on the parameters' device; ``None`` uses torch's global generator.
        keys: the tensors to draw for (e.g. one key for a layer-wise step).
        distribution: ``"gaussian"`` or ``"rademacher"`` (:math:`\xi_i = \pm\sigma`).

    Returns:
        dict[str, Tensor]: :math:`\xi` for each key, shaped as in ``params``.

    Raises:
        TypeError: on a wrong type of ``params``, ``sigma`` or ``generator``.
        ValueError: on a negative or non-finite ``sigma``, an unknown key or
            ``distribution``, tensors of mixed dtype or device, or ``generator`` on
            another device.
    """
    params = check_tensor_dict(params, "params")
    sigma = _check_sigma(sigma)
    distribution = check_choice(distribution, "distribution", NOISE_DISTRIBUTIONS)
    keys = list(params) if keys is None else list(keys)
    for key in keys:
        if key not in params:
            raise ValueError(f"keys must name entries of params, got unknown key {key!r}")
    if not keys:
        return {}
    first = params[keys[0]]
    for key in keys:
        if params[key].dtype != first.dtype or params[key].device != first.device:
            raise ValueError(
                f"params must share one dtype and device to draw one buffer; params[{key!r}] is "
                f"{params[key].dtype} on {params[key].device}, params[{keys[0]!r}] is "
                f"{first.dtype} on {first.device}"
            )
    check_generator(generator, first.device)
    if sigma == 0.0:
        return {k: torch.zeros_like(params[k]) for k in keys}
    noise = _noise_for([params[k] for k in keys], [sigma] * len(keys), generator, distribution)
    return dict(zip(keys, noise))


def _draw_rows(
    size: int,
    sigmas: Sequence[float],
    generators: Sequence[torch.Generator],
    dtype: torch.dtype,
    device: torch.device,
    distribution: str = "gaussian",
) -> Tensor:
    """The ensemble's drawer: row m of the (M, size) buffer is sigma_m * standard_noise(size, generators[m]),
    zeros (nothing drawn) for sigma_m = 0; arguments are not validated."""
    buffer = torch.zeros(len(sigmas), size, dtype=dtype, device=device)
    for row, (sigma, generator) in enumerate(zip(sigmas, generators)):
        if sigma > 0.0:
            z = standard_noise(size, generator, dtype=dtype, device=device, distribution=distribution)
            torch.mul(z, sigma, out=buffer[row])
    return buffer


# --- functional updates ------------------------------------------------------------------------


def gd_update(params: Params, grads: Params, lr: float | Tensor) -> dict[str, Tensor]:
    r"""One gradient-descent step, :math:`w \leftarrow w - \eta g`, on a parameter dict.

    Pure (returns new tensors); works under :func:`torch.func.vmap`.

    Args:
        params: :math:`w`, tensors by name.
        grads: :math:`g = \nabla L(\cdot)`, the same keys and shapes.
        lr: :math:`\eta`, a number or a tensor that broadcasts against every tensor
            (e.g. an :math:`(M, 1)` column against flat :math:`(M, P)` rows, or under
            :func:`torch.func.vmap` a per-model tensor mapped to a scalar).

    Raises:
        TypeError, ValueError: if the dicts are not dicts of tensors with the same
            keys and shapes.
    """
    params = check_tensor_dict(params, "params")
    grads = check_tensor_dict(grads, "grads", params)
    return {k: params[k] - lr * grads[k] for k in params}


def pgd_update(
    params: Params, grads: Params, noise: Params, lr: float | Tensor
) -> dict[str, Tensor]:
    r"""One PGD step, :math:`w_{n+1} = w_n - \eta \nabla L(w_n) + \xi_{n+1}` (Orvieto et al. 2022).

    Args:
        params, grads, noise: :math:`w_n`, :math:`\nabla L(w_n)` and :math:`\xi_{n+1}` (e.g. from
            :func:`draw_noise`), dicts with the same keys and shapes.
        lr: :math:`\eta`.

    Returns:
        dict[str, Tensor]: :math:`w_{n+1}`.

    Raises:
        TypeError, ValueError: on mismatched dicts, as :func:`gd_update`.
    """
    params = check_tensor_dict(params, "params")
    grads = check_tensor_dict(grads, "grads", params)
    noise = check_tensor_dict(noise, "noise", params)
    return {k: params[k] - lr * grads[k] + noise[k] for k in params}


def anti_pgd_update(
    params: Params,
    grads: Params,
    noise: Params,
    prev_noise: Params | None,
    lr: float | Tensor,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    r"""One Anti-PGD step, :math:`w_{n+1} = w_n - \eta \nabla L(w_n) + (\xi_{n+1} - \xi_n)`.

    Orvieto et al. (2022), eq. (Anti-PGD). The state :math:`\xi_n` is threaded through:
    ``params, xi = anti_pgd_update(params, grads, noise, xi, lr)``; the increment
    :math:`\xi_{n+1} - \xi_n` is formed first, then added.

    Args:
        params, grads, noise, lr: :math:`w_n`, :math:`\nabla L(w_n)`, :math:`\xi_{n+1}`, :math:`\eta`.
        prev_noise: :math:`\xi_n`, or ``None`` for :math:`\xi_0 = 0`.

    Returns:
        tuple: :math:`w_{n+1}` and the new state :math:`\xi_{n+1}` (``noise`` itself).

    Raises:
        TypeError, ValueError: on mismatched dicts, as :func:`gd_update`.
    """
    params = check_tensor_dict(params, "params")
    grads = check_tensor_dict(grads, "grads", params)
    noise = check_tensor_dict(noise, "noise", params)
    if prev_noise is None:
        return pgd_update(params, grads, noise, lr), dict(noise)
    prev_noise = check_tensor_dict(prev_noise, "prev_noise", params)
    new = {k: params[k] - lr * grads[k] + (noise[k] - prev_noise[k]) for k in params}
    return new, dict(noise)


def _adam_update(
    w: Tensor, g: Tensor, moments: tuple[Tensor, Tensor] | None, step: int, lr: Tensor
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    r"""Step ``step`` (from 1) of ``torch.optim.Adam``, default betas and eps, elementwise on ``w``:
    :math:`m \leftarrow \beta_1 m + (1 - \beta_1) g`, :math:`v \leftarrow \beta_2 v + (1 - \beta_2) g^2`,
    :math:`w \leftarrow w - \frac{\eta}{1 - \beta_1^n} m / (\sqrt{v / (1 - \beta_2^n)} + \epsilon)`.
    Pure; ``moments`` is ``(m, v)``, ``None`` at the first step."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    if moments is None:
        moments = (torch.zeros_like(w), torch.zeros_like(w))
    first = moments[0].lerp(g, 1 - beta1)
    second = moments[1].mul(beta2).addcmul(g, g, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denominator = (second.sqrt() / math.sqrt(1 - beta2**step)).add(eps)
    return w - step_size * first / denominator, (first, second)


def perturb(params: Params, noise: Params) -> dict[str, Tensor]:
    r"""Return :math:`w + \xi`; tensors missing from ``noise`` are left as they are.

    Layer-wise perturbation passes a ``noise`` dict with one key. Perturbed gradient
    descent (Orvieto et al. 2023) is ``gd_update(w, grad(L)(perturb(w, xi)), lr)``.

    Raises:
        TypeError, ValueError: if ``noise`` has a key that ``params`` lacks, or a
            shape differs.
    """
    params = check_tensor_dict(params, "params")
    noise = check_tensor_dict(noise, "noise", params, subset=True)
    return {k: params[k] + noise[k] if k in noise else params[k] for k in params}


# --- optimisers --------------------------------------------------------------------------------

Chosen = list[tuple[dict[str, Any], dict[int, Tensor]]]  # (param group, its tensors by index)


class _NoisyOptimizer(torch.optim.Optimizer):
    """What the three optimisers share: validation, the gradient check, the draw and the step direction."""

    _pickled = ("generator", "distribution")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        sigma: float,
        *,
        generator: torch.Generator | None = None,
        distribution: str = "gaussian",
        momentum: float = 0.0,
    ) -> None:
        expected = "params must be an iterable of tensors or of param-group dicts, got"
        if isinstance(params, Tensor):
            raise TypeError(f"{expected} a single Tensor; pass [tensor] or model.parameters()")
        if not isinstance(params, Iterable):
            raise TypeError(f"{expected} {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError(
                "params must be a non-empty iterable of tensors (e.g. model.parameters()), "
                "got an empty list"
            )
        defaults = dict(
            lr=check_real(lr, "lr"), sigma=_check_sigma(sigma), momentum=check_real(momentum, "momentum")
        )
        self.distribution = check_choice(distribution, "distribution", NOISE_DISTRIBUTIONS)
        self.generator = check_generator(generator)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, as :class:`torch.optim.Optimizer` does, checking its settings."""
        super().add_param_group(param_group)
        i, group = len(self.param_groups) - 1, self.param_groups[-1]
        try:
            if not group["params"]:
                raise ValueError(f"params: param group {i} has no tensors")
            check_real(group["lr"], f"lr (param group {i})")
            _check_sigma(group["sigma"], f"sigma (param group {i})")
            check_real(group["momentum"], f"momentum (param group {i})")
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in self._pickled}}

    def _with_grads(self) -> Chosen:
        """Each param group with its tensors that have a gradient (torch optimisers skip the others).

        Raises :class:`NonFiniteGradientError`, naming the tensor, if a gradient has NaN or inf.
        """
        chosen = [(group, {i: p for i, p in enumerate(group["params"]) if p.grad is not None})
                  for group in self.param_groups]
        chosen = [(group, params) for group, params in chosen if params]
        by_device: dict[torch.device, list[Tensor]] = {}
        for _, params in chosen:
            for p in params.values():
                by_device.setdefault(p.grad.device, []).append(p.grad.reshape(-1))
        # amax propagates NaN and inf: one host sync per device, which the error needs.
        if all(bool(torch.cat(grads).abs().amax().isfinite()) for grads in by_device.values()):
            return chosen
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p.grad is not None and not bool(p.grad.isfinite().all()):
                    raise NonFiniteGradientError(
                        f"the gradient (p.grad) of parameter {i} in param group {g} has NaN or "
                        f"infinite entries; the step was not applied. Lower lr or sigma, or "
                        f"check the loss"
                    )

    def _draw(self, chosen: Chosen) -> list[dict[int, Tensor]]:
        """:math:`\\xi` for the tensors of each group with sigma > 0 (an empty dict for the others)."""
        noisy = [(p, g["sigma"]) for g, params in chosen if g["sigma"] > 0.0 for p in params.values()]
        drawn = iter(_noise_for([p for p, _ in noisy], [s for _, s in noisy], self.generator, self.distribution))
        return [{k: next(drawn) for k in params} if group["sigma"] > 0.0 else {} for group, params in chosen]

    def _directions(self, group: dict[str, Any], params: dict[int, Tensor]) -> dict[int, Tensor]:
        """The gradients, or with momentum :math:`\\mu > 0` the buffers :math:`b \\leftarrow \\mu b + g`."""
        mu = group["momentum"]
        if mu == 0.0:
            return {k: p.grad for k, p in params.items()}
        out = {}
        for k, p in params.items():
            state = self.state[p]
            buffer = state.get("momentum_buffer")
            out[k] = state["momentum_buffer"] = p.grad.clone() if buffer is None else mu * buffer + p.grad
        return out

    def _evaluate(self, closure: Callable[[], Tensor] | None) -> Tensor | None:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


def _assign(params: dict[int, Tensor], new: Mapping[int, Tensor]) -> None:
    for k, p in params.items():
        p.copy_(new[k])


_ARGS_DOC = r"""
    Args:
        params: the tensors to optimise (e.g. ``model.parameters()``) or param-group
            dicts, which may set their own ``lr``, ``sigma`` and ``momentum``.
        lr: the step size :math:`\eta \ge 0`.
        sigma: the noise standard deviation :math:`\sigma \ge 0` (not a variance).
        generator: the noise source, on the parameters' device; ``None``: torch's global one.
        distribution: ``"gaussian"`` (default) or ``"rademacher"`` (:math:`\pm\sigma`,
            Orvieto et al. 2022, Thm. 3.1); draw order as in the module docstring.
        momentum: :math:`\mu \ge 0`; the default 0 is the papers' plain descent,
            :math:`\mu > 0` steps along the heavy-ball buffer :math:`b_n = \mu b_{n-1} +
            \nabla L` (:math:`b_1 = \nabla L`, in ``self.state[p]["momentum_buffer"]``)
            instead of :math:`\nabla L`, as :class:`torch.optim.SGD` does.

    Raises:
        TypeError: on a wrong type of ``params``, ``lr``, ``sigma``, ``momentum`` or ``generator``.
        ValueError: on empty ``params``, a negative or non-finite ``lr``, ``sigma`` or
            ``momentum`` (default or group), an unknown ``distribution``, or (at
            :meth:`step`) ``generator`` on another device than a parameter.
        NonFiniteGradientError: at :meth:`step`, if a gradient has NaN or infinite
            entries; nothing is changed then.
"""


class PGD(_NoisyOptimizer):
    r"""Perturbed gradient descent: a gradient step, then fresh Gaussian noise.

    .. math::

        w_{n+1} = w_n - \eta \nabla L(w_n) + \xi_{n+1}, \qquad
        \xi_{n+1} \sim \mathcal N(0, \sigma^2 I) \text{ independent of the past}

    (Orvieto et al. 2022, eq. PGD); :meth:`step` is :func:`pgd_update` in place,
    with the group's :math:`\sigma`. Parameters whose ``grad`` is ``None`` are
    skipped, as torch optimisers skip them. With :math:`\sigma = 0` nothing is
    drawn and the trajectory is :func:`gd_update`'s, bit for bit.
    """ + _ARGS_DOC

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one step; ``closure`` (optional) re-evaluates the loss and its gradient."""
        loss = self._evaluate(closure)
        chosen = self._with_grads()
        for (group, params), noise in zip(chosen, self._draw(chosen)):
            grads, lr = self._directions(group, params), group["lr"]
            _assign(params, pgd_update(params, grads, noise, lr) if noise else gd_update(params, grads, lr))
        return loss


class AntiPGD(_NoisyOptimizer):
    r"""Anti-correlated perturbed gradient descent: the noise *increment* is added.

    .. math::

        w_{n+1} = w_n - \eta \nabla L(w_n) + (\xi_{n+1} - \xi_n), \qquad
        \xi_0 = 0, \quad \xi_{n} \sim \mathcal N(0, \sigma^2 I) \text{ i.i.d.}

    (Orvieto et al. 2022, eq. Anti-PGD); :meth:`step` is :func:`anti_pgd_update`
    in place. The increments have variance :math:`2\sigma^2` per coordinate and
    lag-1 autocorrelation :math:`-\tfrac12`.

    :math:`\xi_n` is kept in ``self.state[p]["xi"]`` (absent: :math:`\xi_0 = 0`),
    replaced, never changed in place, and survives :meth:`state_dict`. Parameters
    whose ``grad`` is ``None`` are skipped (no step, :math:`\xi` kept). With
    :math:`\sigma = 0` nothing is drawn, :math:`\xi_{n+1} = 0`, and the trajectory
    is :func:`gd_update`'s, bit for bit (once an earlier :math:`\xi_n` is paid back).
    """ + _ARGS_DOC

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one step; ``closure`` (optional) re-evaluates the loss and its gradient."""
        loss = self._evaluate(closure)
        chosen = self._with_grads()
        for (group, params), noise in zip(chosen, self._draw(chosen)):
            grads = self._directions(group, params)
            states = {k: self.state[p] for k, p in params.items()}
            prev = {k: s["xi"] for k, s in states.items() if "xi" in s}
            if not noise and not prev:
                _assign(params, gd_update(params, grads, group["lr"]))
                continue
            noise = noise or {k: torch.zeros_like(p) for k, p in params.items()}
            prev = {k: prev.get(k, torch.zeros_like(p)) for k, p in params.items()} if prev else None
            new, xi = anti_pgd_update(params, grads, noise, prev, group["lr"])
            _assign(params, new)
            for k, s in states.items():
                s["xi"] = xi[k]  # replaced, never changed in place
        return loss


class PerturbedGD(_NoisyOptimizer):
    r"""Gradient descent with the gradient taken at a randomly perturbed point.

    .. math::

        w_{n+1} = w_n - \eta\, \nabla L(w_n + \xi_n)

    (Orvieto et al. 2023). :meth:`step` draws :math:`\xi_n`, sets the weights to
    :func:`perturb` ``(w, xi)``, calls ``closure()`` (which must zero the gradients,
    recompute the loss and call ``backward``), restores the saved weights exactly
    (copied, not :math:`(w + \xi) - \xi`) and applies :func:`gd_update` with the
    gradient from the perturbed point.

    - ``layerwise=False``: :math:`\xi \sim \mathcal N(0, \sigma^2 I_P)` over all
      :math:`P` weights, not rescaled; the smoothed objective is :math:`L +
      \tfrac{\sigma^2}{2} \operatorname{Tr} \nabla^2 L + O(\sigma^4)`, but
      :math:`\lVert \xi \rVert \approx \sigma \sqrt P` grows with width, and so does
      the gradient's variance (Orvieto et al. 2023's variance explosion).
    - ``layerwise=True``: at step :math:`n` only tensor :math:`n \bmod G` of the
      :math:`G` tensors (parameter order across groups, weights and biases counted
      separately) is perturbed, with the same :math:`\sigma`; averaged over a cycle
      the regulariser is :math:`\tfrac{\sigma^2}{2G} \operatorname{Tr} \nabla^2 L`.

    The step counter (the layer-wise cursor) is ``self.state[p]["step"]`` and
    survives :meth:`state_dict`. With :math:`\sigma = 0` nothing is drawn and the
    trajectory is :func:`gd_update`'s, bit for bit.
    """ + _ARGS_DOC + r"""
    Further:
        layerwise: perturb one tensor per step, cycling, as above.
        ``step()`` without a closure raises :class:`TypeError`.
    """

    _pickled = ("generator", "distribution", "layerwise")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        sigma: float,
        *,
        layerwise: bool = False,
        generator: torch.Generator | None = None,
        distribution: str = "gaussian",
        momentum: float = 0.0,
    ) -> None:
        check_flag(layerwise, "layerwise")
        super().__init__(params, lr, sigma, generator=generator, distribution=distribution, momentum=momentum)
        self.layerwise = layerwise

    @property
    def steps_taken(self) -> int:
        """The number of steps taken so far (the layer-wise cursor is this mod the tensor count)."""
        return int(self.state[self.param_groups[0]["params"][0]].get("step", 0))

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """Take one step; ``closure`` is required and is evaluated at the perturbed point.

        Raises:
            TypeError: if ``closure`` is missing or not callable.
        """
        if closure is None or not callable(closure):
            raise TypeError(
                "closure is required: PerturbedGD.step(closure) evaluates the loss at the "
                "perturbed weights; closure must zero the gradients, compute the loss, call "
                "loss.backward() and return the loss"
            )
        sigma_of = {p: group["sigma"] for group in self.param_groups for p in group["params"]}
        everything, n = list(sigma_of), self.steps_taken
        candidates = [everything[n % len(everything)]] if self.layerwise else everything
        perturbed = dict(enumerate(p for p in candidates if sigma_of[p] > 0.0))
        noise = _noise_for(list(perturbed.values()), [sigma_of[p] for p in perturbed.values()],
                           self.generator, self.distribution)
        with torch.no_grad():
            saved = {k: p.detach().clone() for k, p in perturbed.items()}
            _assign(perturbed, perturb(saved, dict(enumerate(noise))))
        try:
            loss = self._evaluate(closure)
        finally:
            with torch.no_grad():  # copied back, not (w + xi) - xi, so no round-off remains
                _assign(perturbed, saved)
        chosen = self._with_grads()  # after the closure: the gradients at the perturbed point
        with torch.no_grad():
            for group, params in chosen:
                _assign(params, gd_update(params, self._directions(group, params), group["lr"]))
        for p in everything:
            self.state[p]["step"] = n + 1
        return loss

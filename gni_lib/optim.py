r"""Noise-injected gradient descent: PGD, Anti-PGD and gradients at a perturbed point.

Three ways of adding Gaussian noise :math:`\xi \sim \mathcal N(0, \sigma^2 I)` to
gradient descent with step size :math:`\eta`, each as a pure function on parameter
dicts (the functional core, usable under :func:`torch.func.vmap`) and as a
:class:`torch.optim.Optimizer` a reader can drop into their own loop:

.. math::

    \text{PGD:} \quad & w_{n+1} = w_n - \eta \nabla L(w_n) + \xi_{n+1}, \\
    \text{Anti-PGD:} \quad & w_{n+1} = w_n - \eta \nabla L(w_n) + (\xi_{n+1} - \xi_n),
        \quad \xi_0 = 0, \\
    \text{perturbed GD:} \quad & w_{n+1} = w_n - \eta \nabla L(w_n + \xi_n).

PGD and Anti-PGD are Orvieto et al. (2022), eqs. (PGD) and (Anti-PGD); the
perturbed gradient is Orvieto et al. (2023), with its layer-wise variant. With
:math:`z_n = w_n - \xi_n`, Anti-PGD is *exactly* :math:`z_{n+1} = z_n - \eta \nabla
L(z_n + \xi_n)`: gradient descent evaluated at a perturbed point, which in
expectation descends :math:`L + \tfrac{\sigma^2}{2} \operatorname{Tr} \nabla^2 L`
up to :math:`O(\sigma^4)`.

``sigma`` is always a **standard deviation**: every coordinate of :math:`\xi` has
variance :math:`\sigma^2`.

**Draw order** (the same in the optimisers, :func:`draw_noise` and the ensemble
trainer, so that a run can be reproduced number for number): at each step one
flat buffer ``torch.randn(P, generator=generator, dtype=..., device=...)`` is
drawn, where :math:`P` counts the coordinates that receive noise this step, and it
is cut, in parameter order, into one view per parameter tensor and multiplied by
that tensor's :math:`\sigma`. Nothing is drawn when :math:`\sigma = 0`.

**Noise distribution.** ``distribution="gaussian"`` (the default, all of the above)
or ``"rademacher"``: every coordinate is :math:`\pm\sigma` with probability
:math:`\tfrac12` each, the noise of Orvieto et al. (2022), Thm. 3.1. It has the same
mean and variance as the Gaussian (:math:`0` and :math:`\sigma^2`) but fourth moment
:math:`\sigma^4` instead of :math:`3\sigma^4`. Its buffer is
``2 * torch.randint(0, 2, (P,), generator=generator, device=...) - 1``, cast to the
parameters' dtype, in place of the ``randn`` buffer; the cutting and scaling are
the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import check_real

from .seeding import check_generator

__all__ = [
    "PGD",
    "AntiPGD",
    "PerturbedGD",
    "NonFiniteGradientError",
    "draw_noise",
    "draw_stacked_noise",
    "gd_update",
    "pgd_update",
    "anti_pgd_update",
    "perturb",
    "perturbed_gd_update",
    "NOISE_DISTRIBUTIONS",
]

#: The accepted values of ``distribution``: standard normal draws, or signs :math:`\pm 1`.
NOISE_DISTRIBUTIONS = ("gaussian", "rademacher")

Params = Mapping[str, Tensor]


class NonFiniteGradientError(ValueError, FloatingPointError):
    """A gradient holds NaN or infinite entries; the step was not applied.

    It is both a :class:`ValueError` (bad input to the optimiser, as the design
    asks) and a :class:`FloatingPointError` (what :func:`gni_lib.train.train`
    raises for a non-finite objective), so either ``except`` clause catches it.
    """


# --- validation --------------------------------------------------------------------------------


def _check_sigma(value: object, name: str = "sigma") -> float:
    return check_real(value, name, what=" (a standard deviation, not a variance)")


def _check_lr(value: object, name: str = "lr") -> float:
    return check_real(value, name)


def _check_distribution(value: object, name: str = "distribution") -> str:
    if not isinstance(value, str) or value not in NOISE_DISTRIBUTIONS:
        raise ValueError(f"{name} must be one of {NOISE_DISTRIBUTIONS}, got {value!r}")
    return value


def _standard_draw(
    size: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
    distribution: str = "gaussian",
) -> Tensor:
    """``size`` draws with mean 0 and variance 1: ``randn``, or signs 2 * randint(0, 2) - 1.

    Arguments are not validated.
    """
    if distribution == "gaussian":
        return torch.randn(size, generator=generator, dtype=dtype, device=device)
    signs = torch.randint(0, 2, (size,), generator=generator, device=device)
    return signs.to(dtype).mul_(2).sub_(1)


def _check_params_dict(params: object, name: str) -> Params:
    if not isinstance(params, Mapping):
        raise TypeError(f"{name} must be a dict of tensors by parameter name, got {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
    return params


def _check_same_keys(params: Params, other: Params, name: str, subset: bool = False) -> None:
    keys, other_keys = set(params), set(other)
    if subset and other_keys <= keys:
        return
    if not subset and keys == other_keys:
        return
    relation = "a subset of" if subset else "exactly"
    missing = sorted(keys - other_keys) if not subset else []
    extra = sorted(other_keys - keys)
    raise ValueError(
        f"{name} must have {relation} the keys of params; missing {missing}, unexpected {extra}"
    )


def _check_shapes(params: Params, other: Params, name: str) -> None:
    for key, value in other.items():
        if value.shape != params[key].shape:
            raise ValueError(
                f"{name}[{key!r}] must have the shape of params[{key!r}] "
                f"{tuple(params[key].shape)}, got {tuple(value.shape)}"
            )


# --- noise -------------------------------------------------------------------------------------


def draw_noise(
    params: Params,
    sigma: float,
    generator: torch.Generator | None,
    keys: Sequence[str] | None = None,
    *,
    distribution: str = "gaussian",
) -> dict[str, Tensor]:
    r"""Draw :math:`\xi = \sigma z`, :math:`z \sim \mathcal N(0, I)`, shaped like ``params``.

    One flat buffer ``torch.randn(P, generator=generator)`` in the parameters'
    dtype and on their device, cut in the order of ``keys`` (default: the order of
    ``params``) into views of each tensor's shape, times :math:`\sigma`. Call it
    *outside* :func:`torch.func.vmap`; pass the result in.

    With ``distribution="rademacher"`` the coordinates of :math:`z` are independent
    signs, :math:`P(z_i = 1) = P(z_i = -1) = \tfrac12`, so :math:`\xi_i = \pm\sigma`
    (Orvieto et al. 2022, Thm. 3.1); the buffer is ``2 * torch.randint(0, 2, (P,),
    generator=generator) - 1``.

    Args:
        params: parameter tensors by name (only shapes, dtype and device are used);
            all on one device with one dtype.
        sigma: the standard deviation :math:`\sigma \ge 0`. For :math:`\sigma = 0`
            the result is zeros and nothing is drawn.
        generator: the source of the noise, on the parameters' device; ``None``
            uses torch's global generator.
        keys: the tensors to draw for (e.g. one key for a layer-wise step).
        distribution: ``"gaussian"`` or ``"rademacher"`` (see above).

    Returns:
        dict[str, Tensor]: :math:`\xi` for each key, shapes as in ``params``.

    Raises:
        TypeError: if ``params`` is not a dict of tensors, ``sigma`` is not a real
            number or ``generator`` is not a generator.
        ValueError: if ``sigma`` is negative or not finite, a key is unknown, the
            tensors differ in dtype or device, ``generator`` is on another device,
            or ``distribution`` is not one of :data:`NOISE_DISTRIBUTIONS`.
    """
    params = _check_params_dict(params, "params")
    sigma = _check_sigma(sigma)
    distribution = _check_distribution(distribution)
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
    sizes = [params[k].numel() for k in keys]
    if sigma == 0.0:
        return {k: torch.zeros_like(params[k]) for k in keys}
    flat = _standard_draw(sum(sizes), generator, first.dtype, first.device, distribution)
    flat = flat * sigma
    return {k: v.view(params[k].shape) for k, v in zip(keys, flat.split(sizes))}


def draw_stacked_noise(
    stacked: Params,
    sigma: Sequence[float] | Tensor,
    generators: Sequence[torch.Generator],
    keys: Sequence[str] | None = None,
    *,
    distribution: str = "gaussian",
) -> dict[str, Tensor]:
    r"""Draw noise for :math:`M` stacked models at once: model :math:`m` from ``generators[m]``.

    ``stacked[k]`` has shape :math:`(M, *s_k)`. Row :math:`m` of the result is
    exactly what :func:`draw_noise` returns for model :math:`m` alone with
    ``sigma[m]``, ``generators[m]`` and ``distribution``, so an ensemble sees the same noise as
    :math:`M` separate runs. The :math:`M` draws go into one :math:`(M, P)` buffer,
    scaled by :math:`\sigma` in one multiplication; models with :math:`\sigma_m = 0`
    draw nothing.

    Returns:
        dict[str, Tensor]: shapes :math:`(M, *s_k)` for each key.

    Raises:
        ValueError: if ``sigma`` or ``generators`` does not have :math:`M` entries, a
            :math:`\sigma_m` is negative or not finite, or as :func:`draw_noise`
            (an unknown ``distribution`` included).
        TypeError: as :func:`draw_noise`.
    """
    stacked = _check_params_dict(stacked, "stacked")
    distribution = _check_distribution(distribution)
    keys = list(stacked) if keys is None else list(keys)
    for key in keys:
        if key not in stacked:
            raise ValueError(f"keys must name entries of stacked, got unknown key {key!r}")
    if not keys:
        return {}
    first = stacked[keys[0]]
    count = first.shape[0] if first.ndim else 0
    sigmas = sigma.tolist() if isinstance(sigma, Tensor) else list(sigma)
    if len(sigmas) != count:
        raise ValueError(f"sigma must have one entry per model ({count}), got {len(sigmas)}")
    sigmas = [_check_sigma(s, f"sigma[{m}]") for m, s in enumerate(sigmas)]
    if len(generators) != count:
        raise ValueError(f"generators must have one generator per model ({count}), got {len(generators)}")
    for m, g in enumerate(generators):
        if not isinstance(g, torch.Generator):
            raise TypeError(f"generators[{m}] must be a torch.Generator, got {type(g).__name__}")
        check_generator(g, first.device)
    sizes = [stacked[k][0].numel() for k in keys]
    buffer = _draw_rows(sum(sizes), sigmas, generators, first.dtype, first.device, distribution)
    return {
        k: v.reshape(stacked[k].shape) for k, v in zip(keys, buffer.split(sizes, dim=1))
    }


def _draw_rows(
    size: int,
    sigmas: Sequence[float],
    generators: Sequence[torch.Generator],
    dtype: torch.dtype,
    device: torch.device,
    distribution: str = "gaussian",
) -> Tensor:
    """An (M, size) buffer whose row m is sigma_m * torch.randn(size, generator=generators[m]).

    (Or sigma_m times signs, for ``distribution="rademacher"``.) Rows with
    sigma_m = 0 are zeros and draw nothing. Arguments are not validated.
    """
    any_zero = any(s == 0.0 for s in sigmas)
    buffer = (torch.zeros if any_zero else torch.empty)(len(sigmas), size, dtype=dtype, device=device)
    for row, (sigma, generator) in enumerate(zip(sigmas, generators)):
        if sigma > 0.0 and distribution == "gaussian":
            torch.randn(size, generator=generator, dtype=dtype, device=device, out=buffer[row])
        elif sigma > 0.0:
            buffer[row].copy_(_standard_draw(size, generator, dtype, device, distribution))
    scale = torch.tensor(list(sigmas), dtype=dtype, device=device).unsqueeze(1)
    return buffer.mul_(scale)


# --- functional updates ------------------------------------------------------------------------


def gd_update(params: Params, grads: Params, lr: float | Tensor) -> dict[str, Tensor]:
    r"""One gradient-descent step, :math:`w \leftarrow w - \eta g`, on a parameter dict.

    Pure: returns new tensors and changes nothing. Works under
    :func:`torch.func.vmap` with ``lr`` a per-model tensor mapped to a scalar.

    Args:
        params: :math:`w`, tensors by name.
        grads: :math:`g = \nabla L(\cdot)`, the same keys and shapes.
        lr: :math:`\eta`, a number or a tensor that broadcasts against every tensor.

    Raises:
        TypeError, ValueError: if the dicts are not dicts of tensors with the same
            keys and shapes.
    """
    params = _check_params_dict(params, "params")
    grads = _check_params_dict(grads, "grads")
    _check_same_keys(params, grads, "grads")
    _check_shapes(params, grads, "grads")
    return {k: params[k] - lr * grads[k] for k in params}


def pgd_update(
    params: Params, grads: Params, noise: Params, lr: float | Tensor
) -> dict[str, Tensor]:
    r"""One PGD step, :math:`w_{n+1} = w_n - \eta \nabla L(w_n) + \xi_{n+1}` (Orvieto et al. 2022).

    Args:
        params: :math:`w_n`.
        grads: :math:`\nabla L(w_n)`, the same keys and shapes.
        noise: :math:`\xi_{n+1}` (e.g. from :func:`draw_noise`), the same keys and shapes.
        lr: :math:`\eta`.

    Returns:
        dict[str, Tensor]: :math:`w_{n+1}`.

    Raises:
        TypeError, ValueError: on mismatched dicts, as :func:`gd_update`.
    """
    params = _check_params_dict(params, "params")
    for other, name in ((grads, "grads"), (noise, "noise")):
        _check_params_dict(other, name)
        _check_same_keys(params, other, name)
        _check_shapes(params, other, name)
    return {k: params[k] - lr * grads[k] + noise[k] for k in params}


def anti_pgd_update(
    params: Params,
    grads: Params,
    noise: Params,
    prev_noise: Params | None,
    lr: float | Tensor,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    r"""One Anti-PGD step, :math:`w_{n+1} = w_n - \eta \nabla L(w_n) + (\xi_{n+1} - \xi_n)`.

    Orvieto et al. (2022), eq. (Anti-PGD). The state is :math:`\xi_n`, threaded
    through explicitly: ``params, xi = anti_pgd_update(params, grads, noise, xi, lr)``.
    The increment :math:`\xi_{n+1} - \xi_n` is formed first and then added.

    Args:
        params: :math:`w_n`.
        grads: :math:`\nabla L(w_n)`.
        noise: :math:`\xi_{n+1}`.
        prev_noise: :math:`\xi_n`, or ``None`` for :math:`\xi_0 = 0`.
        lr: :math:`\eta`.

    Returns:
        tuple: :math:`w_{n+1}` and the new state :math:`\xi_{n+1}` (``noise`` itself).

    Raises:
        TypeError, ValueError: on mismatched dicts, as :func:`gd_update`.
    """
    params = _check_params_dict(params, "params")
    others = [(grads, "grads"), (noise, "noise")]
    if prev_noise is not None:
        others.append((prev_noise, "prev_noise"))
    for other, name in others:
        _check_params_dict(other, name)
        _check_same_keys(params, other, name)
        _check_shapes(params, other, name)
    if prev_noise is None:
        new = {k: params[k] - lr * grads[k] + noise[k] for k in params}
    else:
        new = {k: params[k] - lr * grads[k] + (noise[k] - prev_noise[k]) for k in params}
    return new, dict(noise)


def perturb(params: Params, noise: Params) -> dict[str, Tensor]:
    r"""Return :math:`w + \xi`; tensors missing from ``noise`` are left as they are.

    Layer-wise perturbation passes a ``noise`` dict with one key.

    Raises:
        TypeError, ValueError: if ``noise`` has a key that ``params`` lacks, or a
            shape differs.
    """
    params = _check_params_dict(params, "params")
    noise = _check_params_dict(noise, "noise")
    _check_same_keys(params, noise, "noise", subset=True)
    _check_shapes(params, noise, "noise")
    return {k: params[k] + noise[k] if k in noise else params[k] for k in params}


def perturbed_gd_update(
    params: Params,
    grad_fn: Callable[[dict[str, Tensor]], Mapping[str, Tensor]],
    noise: Params,
    lr: float | Tensor,
) -> dict[str, Tensor]:
    r"""One step of gradient descent with the gradient taken at a perturbed point.

    .. math::

        w_{n+1} = w_n - \eta\, \nabla L(w_n + \xi_n)

    (Orvieto et al. 2023). In expectation over :math:`\xi_n \sim \mathcal N(0,
    \sigma^2 I)` this descends the smoothed loss :math:`\mathbb E_\xi L(w + \xi)
    = L + \tfrac{\sigma^2}{2} \operatorname{Tr} \nabla^2 L + O(\sigma^4)`. The
    weights themselves are not perturbed: only the point where the gradient is taken.

    Args:
        params: :math:`w_n`.
        grad_fn: maps a parameter dict to its gradient dict, e.g.
            ``torch.func.grad(loss_of_params)`` with the data bound.
        noise: :math:`\xi_n`, for all tensors or (layer-wise) for some of them.
        lr: :math:`\eta`.

    Returns:
        dict[str, Tensor]: :math:`w_{n+1}`.

    Raises:
        TypeError: if ``grad_fn`` is not callable, or as :func:`perturb`.
        ValueError: as :func:`perturb` and :func:`gd_update`.
    """
    if not callable(grad_fn):
        raise TypeError(f"grad_fn must be callable (params dict -> grads dict), got {type(grad_fn).__name__}")
    grads = grad_fn(perturb(params, noise))
    return gd_update(params, grads, lr)


# --- optimisers --------------------------------------------------------------------------------


class _NoisyOptimizer(torch.optim.Optimizer):
    """Shared machinery: the base-optimiser wrapper, validation, noise drawing, state_dict.

    The wrapper pattern of sharpness-aware optimisers: this optimiser and its base
    share ``param_groups`` (so ``lr``, ``sigma`` and the base's own settings live in
    one place, and learning-rate schedulers work on either), while each keeps its
    own ``state``; :meth:`state_dict` carries both.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        sigma: float,
        generator: torch.Generator | None,
        base: type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer],
        base_kwargs: dict[str, Any],
        distribution: str = "gaussian",
    ) -> None:
        if isinstance(params, Tensor):
            raise TypeError(
                "params must be an iterable of tensors or of param-group dicts, got a single "
                "Tensor; pass [tensor] or model.parameters()"
            )
        try:
            params = list(params)
        except TypeError:
            raise TypeError(
                f"params must be an iterable of tensors or of param-group dicts, "
                f"got {type(params).__name__}"
            ) from None
        if not params:
            raise ValueError(
                "params must be a non-empty iterable of tensors (e.g. model.parameters()), "
                "got an empty list"
            )
        lr = _check_lr(lr)
        sigma = _check_sigma(sigma)
        self.distribution = _check_distribution(distribution)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        if not callable(base):
            raise TypeError(
                f"base must be a torch.optim.Optimizer class (e.g. torch.optim.SGD), "
                f"got {type(base).__name__}"
            )
        if "lr" in base_kwargs:
            raise TypeError("lr is given twice: pass it as lr=..., not among the base optimiser's kwargs")
        super().__init__(params, dict(lr=lr, sigma=sigma))
        for i, group in enumerate(self.param_groups):
            if not group["params"]:
                raise ValueError(f"params: param group {i} has no tensors")
            _check_lr(group["lr"], f"lr (param group {i})")
            _check_sigma(group["sigma"], f"sigma (param group {i})")
        self.generator = generator
        base_optimizer = base(self.param_groups, lr=lr, **base_kwargs)
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"base must build a torch.optim.Optimizer, got {type(base_optimizer).__name__}"
            )
        self.base = base_optimizer
        self.param_groups = self.base.param_groups
        self.defaults.update({k: v for k, v in self.base.defaults.items() if k not in self.defaults})

    # The base does not exist yet while torch.optim.Optimizer.__init__ adds the
    # first groups; afterwards a new group goes through the base, which fills in
    # its own defaults, and so lands in the shared list.
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "base" not in self.__dict__:
            super().add_param_group(param_group)
            return
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        param_group.setdefault("sigma", self.defaults["sigma"])
        _check_sigma(param_group["sigma"], "sigma (new param group)")
        if "lr" in param_group:
            _check_lr(param_group["lr"], "lr (new param group)")
        self.base.add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["base"] = self.base
        state["generator"] = self.generator
        state["distribution"] = self.distribution
        return state

    def state_dict(self) -> dict[str, Any]:
        """This optimiser's state and param groups, with the base's state under ``"base_state"``.

        The generator's state is **not** included: save it with
        ``generator.get_state()`` and restore it with ``set_state`` to resume a
        run bit for bit. As with every torch optimiser, the returned tensors are
        the live ones; ``copy.deepcopy`` it (or ``torch.save`` it) to keep a snapshot.
        """
        state = super().state_dict()
        state["base_state"] = self.base.state_dict()["state"]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (this optimiser's state and the base's)."""
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict:
            raise TypeError("state_dict must be a dict returned by state_dict()")
        state_dict = dict(state_dict)
        base_state = state_dict.pop("base_state", {})
        super().load_state_dict(state_dict)
        self.base.load_state_dict({"state": base_state, "param_groups": state_dict["param_groups"]})
        self.base.param_groups = self.param_groups  # re-link: both loads made new group dicts

    # -- helpers for the subclasses

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _check_gradients(self) -> None:
        by_device: dict[torch.device, list[Tensor]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    by_device.setdefault(p.grad.device, []).append(p.grad.reshape(-1))
        # amax propagates NaN and inf; one concatenation and one host sync per device.
        if all(bool(torch.isfinite(torch.cat(grads).abs().amax())) for grads in by_device.values()):
            return
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    raise NonFiniteGradientError(
                        f"the gradient (p.grad) of parameter {i} in param group {g} has NaN or "
                        f"infinite entries; the step was not applied. Lower lr or sigma, or "
                        f"check the loss"
                    )

    def _draw(self, targets: list[tuple[Tensor, float]]) -> list[Tensor]:
        """Noise for each (parameter, sigma): one flat buffer per (device, dtype), in order."""
        noise: list[Tensor | None] = [None] * len(targets)
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for j, (p, sigma) in enumerate(targets):
            groups.setdefault((p.device, p.dtype), []).append(j)
        for (device, dtype), members in groups.items():
            check_generator(self.generator, device)
            sizes = [targets[j][0].numel() for j in members]
            flat = _standard_draw(sum(sizes), self.generator, dtype, device, self.distribution)
            sigmas = {targets[j][1] for j in members}
            if len(sigmas) == 1:  # the common case: one multiplication for the whole buffer
                flat.mul_(sigmas.pop())
                for j, chunk in zip(members, flat.split(sizes)):
                    noise[j] = chunk.view(targets[j][0].shape)
            else:
                for j, chunk in zip(members, flat.split(sizes)):
                    p, sigma = targets[j]
                    noise[j] = chunk.view(p.shape) * sigma
        return noise  # type: ignore[return-value]

    def _gradient_step(self, closure: Callable[[], Tensor] | None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_gradients()
        self.base.step()
        return loss


_BASE_DOC = r"""
    Args:
        params: the tensors to optimise (e.g. ``model.parameters()``) or param-group
            dicts, which may set their own ``lr`` and ``sigma``.
        lr: the step size :math:`\eta \ge 0`, handed to the base optimiser.
        sigma: the noise standard deviation :math:`\sigma \ge 0` (not a variance).
        generator: where the noise is drawn from, on the parameters' device;
            ``None`` uses torch's global generator.
        distribution: ``"gaussian"`` (default), :math:`\xi \sim \mathcal N(0,
            \sigma^2 I)`, or ``"rademacher"``, every coordinate :math:`\pm\sigma` with
            probability :math:`\tfrac12` (the noise of Orvieto et al. 2022, Thm. 3.1);
            draw order as in the module docstring.
        base: the optimiser that takes the gradient step, called as
            ``base(param_groups, lr=lr, **base_kwargs)``. The default,
            :class:`torch.optim.SGD` with no momentum and no weight decay, is plain
            gradient descent :math:`w \leftarrow w - \eta g`, as in the papers'
            theory; pass e.g. ``momentum=0.9`` to add momentum.
        **base_kwargs: further settings of the base optimiser.

    Raises:
        TypeError: if ``params`` is not an iterable of tensors or dicts, ``lr`` or
            ``sigma`` is not a real number, ``generator`` is not a generator,
            ``base`` does not build an optimiser, or ``lr`` is also in ``base_kwargs``.
        ValueError: if ``params`` is empty, ``lr`` or ``sigma`` (of the
            defaults or of a group) is negative or not finite, or ``distribution``
            is not one of :data:`NOISE_DISTRIBUTIONS`.
        NonFiniteGradientError: at :meth:`step`, a :class:`ValueError` (and
            :class:`FloatingPointError`) if a gradient has NaN or infinite entries;
            nothing is changed then.
        ValueError: at :meth:`step`, if ``generator`` is on another device than a
            parameter.
"""


class PGD(_NoisyOptimizer):
    r"""Perturbed gradient descent: a gradient step, then fresh Gaussian noise.

    .. math::

        w_{n+1} = w_n - \eta \nabla L(w_n) + \xi_{n+1}, \qquad
        \xi_{n+1} \sim \mathcal N(0, \sigma^2 I) \text{ independent of the past}

    (Orvieto et al. 2022, eq. PGD). With a base other than plain SGD, the gradient
    step is the base's step and :math:`\xi_{n+1}` is added after it.

    Every coordinate of every parameter with a gradient gets its own
    :math:`\mathcal N(0, \sigma^2)` draw (the group's :math:`\sigma`; or a draw of
    :math:`\pm\sigma` with ``distribution="rademacher"``); parameters
    whose ``grad`` is ``None`` are skipped, as torch optimisers skip them. The draw
    order is that of the module docstring. With :math:`\sigma = 0` nothing is
    drawn and the trajectory is the base optimiser's, bit for bit.
    """ + _BASE_DOC

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        sigma: float,
        *,
        generator: torch.Generator | None = None,
        distribution: str = "gaussian",
        base: type[torch.optim.Optimizer] = torch.optim.SGD,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(params, lr, sigma, generator, base, base_kwargs, distribution)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one step; ``closure`` (optional) re-evaluates the loss and its gradient."""
        loss = self._gradient_step(closure)
        targets = [
            (p, group["sigma"])
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None and group["sigma"] > 0.0
        ]
        if targets:
            torch._foreach_add_([p for p, _ in targets], self._draw(targets))
        return loss


class AntiPGD(_NoisyOptimizer):
    r"""Anti-correlated perturbed gradient descent: the noise *increment* is added.

    .. math::

        w_{n+1} = w_n - \eta \nabla L(w_n) + (\xi_{n+1} - \xi_n), \qquad
        \xi_0 = 0, \quad \xi_{n} \sim \mathcal N(0, \sigma^2 I) \text{ i.i.d.}

    (Orvieto et al. 2022, eq. Anti-PGD). The increments have variance
    :math:`2\sigma^2` per coordinate and lag-1 autocorrelation :math:`-\tfrac12`.
    With :math:`z_n = w_n - \xi_n` the update is exactly
    :math:`z_{n+1} = z_n - \eta \nabla L(z_n + \xi_n)`.

    :math:`\xi_n` is kept per parameter in ``self.state[p]["xi"]`` (absent means
    :math:`\xi_0 = 0`) and survives :meth:`state_dict` / :meth:`load_state_dict`.
    It is replaced, never changed in place. Parameters whose ``grad`` is ``None``
    are skipped (no step, :math:`\xi` kept). With :math:`\sigma = 0` nothing is
    drawn, :math:`\xi_{n+1} = 0`, and the trajectory is the base optimiser's, bit
    for bit (once any earlier :math:`\xi_n` has been paid back).
    """ + _BASE_DOC

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        sigma: float,
        *,
        generator: torch.Generator | None = None,
        distribution: str = "gaussian",
        base: type[torch.optim.Optimizer] = torch.optim.SGD,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(params, lr, sigma, generator, base, base_kwargs, distribution)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one step; ``closure`` (optional) re-evaluates the loss and its gradient."""
        loss = self._gradient_step(closure)
        stepped = [
            (p, group["sigma"]) for group in self.param_groups for p in group["params"]
            if p.grad is not None
        ]
        targets = [(p, sigma) for p, sigma in stepped if sigma > 0.0]
        drawn = dict(zip((id(p) for p, _ in targets), self._draw(targets)))
        moved, nexts, prevs = [], [], []
        for p, _ in stepped:
            state = self.state[p]
            xi_next = drawn.get(id(p))
            xi_prev = state.get("xi")
            if xi_next is None and xi_prev is None:
                continue
            if xi_next is None:
                xi_next = torch.zeros_like(p)
            moved.append(p)
            nexts.append(xi_next)
            prevs.append(torch.zeros_like(p) if xi_prev is None else xi_prev)
            state["xi"] = xi_next  # replaced, never changed in place
        if moved:
            # w <- w + (xi_{n+1} - xi_n): the increment first, then one add per tensor.
            torch._foreach_add_(moved, torch._foreach_sub(nexts, prevs))
        return loss


class PerturbedGD(_NoisyOptimizer):
    r"""Gradient descent with the gradient taken at a randomly perturbed point.

    .. math::

        w_{n+1} = w_n - \eta\, \nabla L(w_n + \xi_n)

    (Orvieto et al. 2023). :meth:`step` draws :math:`\xi_n`, adds it to the
    weights, calls ``closure()`` (which must zero the gradients, recompute the loss
    and call ``backward``), puts the saved weights back exactly (copied, not
    :math:`(w + \xi) - \xi`) and lets the base optimiser step with the gradient
    from the perturbed point. The weights after :meth:`step` carry no noise.

    **How** :math:`\sigma` **is split.**

    - ``layerwise=False`` (all parameters): every coordinate of every parameter
      tensor gets its own independent :math:`\mathcal N(0, \sigma^2)`, i.e.
      :math:`\xi \sim \mathcal N(0, \sigma^2 I_P)` over all :math:`P` weights, with
      no rescaling by the number of tensors or of weights. The smoothed objective is
      :math:`L + \tfrac{\sigma^2}{2} \operatorname{Tr} \nabla^2 L + O(\sigma^4)`,
      but :math:`\lVert \xi \rVert \approx \sigma \sqrt P` grows with width and so
      does the variance of the gradient (Orvieto et al. 2023's variance explosion).
    - ``layerwise=True``: at step :math:`n` only tensor :math:`k = n \bmod G` (of the
      :math:`G` tensors in parameter order, across param groups, counting weights
      and biases separately) is perturbed, each of its coordinates by
      :math:`\mathcal N(0, \sigma^2)` with the same :math:`\sigma`; the others are
      left exact. Averaged over a cycle the regulariser is
      :math:`\tfrac{\sigma^2}{2G} \operatorname{Tr} \nabla^2 L`.

    The step counter (which sets the layer-wise cursor) is ``self.state[p]["step"]``
    for every parameter and survives :meth:`state_dict`. With :math:`\sigma = 0`
    nothing is drawn or perturbed and the trajectory is the base optimiser's, bit
    for bit.
    """ + _BASE_DOC + r"""
    Further:
        layerwise: perturb one tensor per step, cycling, as above.
        ``step()`` without a closure raises :class:`TypeError`.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        sigma: float,
        *,
        layerwise: bool = False,
        generator: torch.Generator | None = None,
        distribution: str = "gaussian",
        base: type[torch.optim.Optimizer] = torch.optim.SGD,
        **base_kwargs: Any,
    ) -> None:
        if not isinstance(layerwise, bool):
            raise TypeError(f"layerwise must be True or False, got {type(layerwise).__name__}")
        super().__init__(params, lr, sigma, generator, base, base_kwargs, distribution)
        self.layerwise = layerwise

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["layerwise"] = self.layerwise
        return state

    @property
    def steps_taken(self) -> int:
        """The number of steps taken so far (the layer-wise cursor is this mod the tensor count)."""
        return int(self.state[self._all_params()[0]].get("step", 0))

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
        all_params = self._all_params()
        sigma_of = {id(p): group["sigma"] for group in self.param_groups for p in group["params"]}
        n = self.steps_taken
        if self.layerwise:
            chosen = [all_params[n % len(all_params)]]
        else:
            chosen = all_params
        targets = [(p, sigma_of[id(p)]) for p in chosen if sigma_of[id(p)] > 0.0]
        perturbed = [p for p, _ in targets]
        with torch.no_grad():
            saved = [p.detach().clone() for p in perturbed]
            if perturbed:
                torch._foreach_add_(perturbed, self._draw(targets))
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            with torch.no_grad():  # copied back, not (w + xi) - xi, so no round-off remains
                for p, w in zip(perturbed, saved):
                    p.copy_(w)
        self._check_gradients()
        with torch.no_grad():
            self.base.step()
        for p in all_params:
            self.state[p]["step"] = n + 1
        return loss

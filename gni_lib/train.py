r"""A small training loop: noisy training, penalised training, and the clean curves.

:func:`train` minimises, by full-batch or minibatch steps,

.. math::

    \mathcal J(\theta) = L\bigl(F_\theta(x_\mathcal B), y_\mathcal B\bigr)
        + \lambda\, P(F_\theta, x_\mathcal B),

in training mode, so the :class:`gni_lib.noise.GaussianNoise` sites inject noise
and a step follows the gradient of the noisy loss at one draw (Camuto et al. 2020,
Sec. 5); :math:`P` is an optional penalty (e.g. the explicit regulariser). It records
the *clean* losses in a :class:`History`. The three ways of regularising with noise
that the book compares all fit in: noise in the network (``MLP(..., sigma=s)``),
in the optimiser (``optimizer="anti_pgd"``, :mod:`gni_lib.optim`), and the explicit
regulariser in its place (``penalty=R, inject_noise=False``). Many seeds at once:
:func:`gni_lib.ensemble.train_ensemble`.
"""

from __future__ import annotations

import itertools
import numbers
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._checks import check_flag, check_generator, check_int, check_pair, check_positive_int, check_real
from .losses import get_loss
from .optim import PGD, AntiPGD, PerturbedGD

__all__ = ["History", "train", "OPTIMIZERS"]

#: The optimisers ``train`` accepts, by name: a factory ``(parameters, lr, **kwargs) -> Optimizer``,
#: the keyword arguments coming from ``train(..., optimizer_kwargs=...)``.
#: ``"sgd"`` is :math:`\theta \leftarrow \theta - \eta \nabla \mathcal J` (no momentum, no
#: weight decay unless given), ``"adam"`` is :class:`torch.optim.Adam` with its defaults;
#: ``"pgd"``, ``"anti_pgd"`` and ``"perturbed_gd"`` are :class:`gni_lib.optim.PGD`,
#: :class:`~gni_lib.optim.AntiPGD` and :class:`~gni_lib.optim.PerturbedGD`, which need
#: ``optimizer_kwargs={"sigma": s}`` and take ``generator``, ``distribution``, ``momentum`` and
#: ``layerwise`` (perturbed GD).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr, **kwargs: torch.optim.Adam(params, lr=lr, **kwargs),
    "sgd": lambda params, lr, **kwargs: torch.optim.SGD(params, lr=lr, **kwargs),
    "pgd": lambda params, lr, **kwargs: PGD(params, lr=lr, **kwargs),
    "anti_pgd": lambda params, lr, **kwargs: AntiPGD(params, lr=lr, **kwargs),
    "perturbed_gd": lambda params, lr, **kwargs: PerturbedGD(params, lr=lr, **kwargs),
}

#: History fields that ``record_extra`` names may not shadow.
_RESERVED = ("steps", "train_loss", "test_loss", "penalty", "train_accuracy", "test_accuracy")


@dataclass
class History:
    r"""What :func:`train` recorded, one entry per recorded step.

    Attributes:
        steps: the number of optimiser updates done when the entry was recorded
            (0 is the initial model).
        train_loss: the clean loss :math:`L(F_\theta(x), y)` on the whole training set
            (noise sites off, no penalty).
        test_loss: the same on the test set; empty when no test set was given.
        penalty: :math:`P(F_\theta, x)` on the whole training set, without the
            weight :math:`\lambda`; empty when no penalty was given.
        train_accuracy: for ``loss="ce"``, the fraction of the training set whose
            largest logit is the label (clean network); empty for ``"mse"``.
        test_accuracy: the same on the test set.
        extra: ``{name: values}`` from ``record_extra`` (e.g. a Hessian trace or the
            explicit regulariser :math:`R`), one value per recorded step.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, list]:
        """The history as a dict of (copied) lists, e.g. for ``pandas.DataFrame``: ``steps``, ``train_loss``,
        ``test_loss`` and ``penalty`` always (possibly empty), the accuracies and each name of ``extra``
        only when something was recorded under them."""
        out = {key: list(getattr(self, key)) for key in ("steps", "train_loss", "test_loss", "penalty")}
        out.update({key: list(getattr(self, key)) for key in ("train_accuracy", "test_accuracy") if getattr(self, key)})
        out.update({name: list(values) for name, values in self.extra.items()})
        return out


def _show_progress(progress: bool | None) -> bool:
    if check_flag(progress, "progress", none=True) is None:
        return sys.stderr.isatty() and "CI" not in os.environ
    return progress


# --- the trainer core, shared with gni_lib.ensemble.train_ensemble -----------------------------


class _Run(NamedTuple):
    """The checked arguments that :func:`train` and ``train_ensemble`` have in common."""

    x: Tensor
    y: Tensor
    steps: int
    x_test: Tensor | None
    y_test: Tensor | None
    record_every: int
    batch_size: int | None
    show: bool
    extras: dict[str, Callable]


def _check_run(
    x: object, y: object, steps: object, x_test: object, y_test: object, record_every: object,
    batch_size: object, progress: object, record_extra: object,
) -> _Run:
    """Check the data, the schedule and the recording arguments of a training run."""
    x, y = check_pair(x, y, "x", "y")
    steps = check_positive_int(steps, "steps")
    if (x_test is None) != (y_test is None):
        missing = "y_test" if y_test is None else "x_test"
        raise ValueError(f"x_test and y_test must be given together; {missing} is missing")
    if x_test is not None:
        x_test, y_test = check_pair(x_test, y_test, "x_test", "y_test")
    record_every = check_positive_int(record_every, "record_every")
    n = x.shape[0]
    if batch_size is not None:
        expected = f"None or an int in [1, {n}]"
        batch_size = check_int(batch_size, "batch_size", expected=expected)
        if batch_size > n:
            raise ValueError(f"batch_size must be {expected}, got {batch_size}")
    show = _show_progress(progress)
    if record_extra is not None and not isinstance(record_extra, Mapping):
        raise TypeError(
            f"record_extra must be a dict name -> callable(model), got {type(record_extra).__name__}"
        )
    extras = dict(record_extra or {})
    for name, fn in extras.items():
        if not isinstance(name, str) or name in _RESERVED:
            raise ValueError(f"record_extra names must be strings other than {_RESERVED}, got {name!r}")
        if not callable(fn):
            raise TypeError(f"record_extra[{name!r}] must be callable fn(model) -> float")
    return _Run(x, y, steps, x_test, y_test, record_every, batch_size, show, extras)


def _minibatches(
    n: int, batch_size: int, generator: torch.Generator | None, device: torch.device
) -> Iterator[Tensor]:
    """Yield index tensors: one permutation per epoch, cut into batches (the last may be short)."""
    draw_on = generator.device if generator is not None else device
    while True:
        order = torch.randperm(n, generator=generator, device=draw_on).to(device)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def _batches(
    x: Tensor, y: Tensor, batch_size: int | None,
    generator: torch.Generator | None | list[torch.Generator],
) -> Iterator[tuple[Tensor, Tensor]]:
    r"""The batch ``(x_B, y_B)`` of each step, drawn lazily: the whole set (no draws) for ``batch_size``
    ``None`` or :math:`n`, else :func:`_minibatches` from ``generator`` (a list of :math:`M`: one
    order per model, stacked :math:`(M, B, \dots)`)."""
    n = x.shape[0]
    if batch_size is None or batch_size == n:
        return itertools.repeat((x, y))
    if not isinstance(generator, list):
        orders = _minibatches(n, batch_size, generator, x.device)
    else:
        streams = [_minibatches(n, batch_size, g, x.device) for g in generator]
        orders = (torch.stack([next(s) for s in streams]) for _ in itertools.count())
    return ((x[index], y[index]) for index in orders)


def _clean_metrics(
    forward: Callable[[Tensor], Tensor], loss_of: Callable[[Tensor, Tensor], Tensor], run: _Run,
    accuracy_dtype: torch.dtype | None,
) -> dict[str, list[float]]:
    """The clean losses of each model on the training and test sets, and, unless
    ``accuracy_dtype`` is ``None``, the fraction of rows whose largest logit is the label
    (a mean in that dtype)."""
    metrics: dict[str, list[float]] = {}
    with torch.no_grad():
        for part, xs, ys in (("train", run.x, run.y), ("test", run.x_test, run.y_test)):
            if xs is None:
                continue
            out = forward(xs)
            metrics[f"{part}_loss"] = loss_of(out, ys).reshape(-1).tolist()
            if accuracy_dtype is not None:
                hits = (out.argmax(dim=-1) == ys).to(accuracy_dtype)
                metrics[f"{part}_accuracy"] = hits.mean(dim=-1).reshape(-1).tolist()
    return metrics


def _record(
    histories: list[History], models: Sequence[nn.Module], step: int,
    metrics: dict[str, list[float]], penalties: list[float] | None, extras: dict[str, Callable],
) -> None:
    """Append one record step to each model's history; ``record_extra`` is called per model."""
    for m, (history, model) in enumerate(zip(histories, models)):
        history.steps.append(step)
        for key, values in metrics.items():
            getattr(history, key).append(values[m])
        if penalties is not None:
            history.penalty.append(penalties[m])
        for name, fn in extras.items():
            value = fn(model)
            if isinstance(value, Tensor) and value.numel() == 1:
                value = value.detach().item()
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(
                    f"record_extra[{name!r}] must return a real number, got {type(value).__name__}"
                )
            history.extra.setdefault(name, []).append(float(value))


def _refuse_non_finite(finite: Tensor, step: int, steps: int, objective: Tensor | None = None) -> None:
    """Raise ``FloatingPointError`` unless ``finite`` (a scalar for :func:`train`, whose message shows
    the ``objective``, or one entry per model, named in the message) is all true; one host sync."""
    if bool(finite.all()):
        return
    if objective is not None:
        raise FloatingPointError(
            f"the training objective is {float(objective)} at step {step} of {steps}; "
            "lower lr or the noise sigma"
        )
    bad = torch.nonzero(~finite).flatten().tolist()
    raise FloatingPointError(
        f"the loss or its gradient is NaN or infinite for models {bad} at step {step} "
        f"of {steps}; no model took that step. Lower lr or sigma"
    )


def _run_steps(
    run: _Run, desc: str, take_step: Callable[[int], None], record: Callable[[int], float],
    finish: Callable[[], None],
) -> None:
    r"""Record at step 0, then ``take_step(t)`` for :math:`t = 1, \dots, T`, recording after
    every ``record_every``-th and the last; ``record`` returns the (mean) train loss for the
    progress bar. ``finish()`` runs at the end, also when an error stops training."""
    bar = tqdm(total=run.steps, desc=desc, disable=not run.show, leave=False)
    try:
        record(0)
        for step in range(1, run.steps + 1):
            take_step(step)
            bar.update(1)
            if step % run.record_every == 0 or step == run.steps:
                bar.set_postfix({"train_loss" if desc == "train" else "mean_train_loss":
                                 f"{record(step):.4g}"})
    finally:
        bar.close()
        finish()


def _build_optimizer(
    model: nn.Module, optimizer: object, lr: object, optimizer_kwargs: object
) -> torch.optim.Optimizer:
    """Check :func:`train`'s optimizer arguments and return the optimiser to step with."""
    if isinstance(optimizer, torch.optim.Optimizer):
        if lr is not None:
            raise ValueError(
                "lr must be None when optimizer is a torch.optim.Optimizer instance "
                "(its param groups hold the step size)"
            )
        if optimizer_kwargs is not None:
            raise ValueError("optimizer_kwargs must be None when optimizer is an instance")
        owned = {id(p) for p in model.parameters()}
        if any(id(p) not in owned for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                "optimizer holds a tensor that is not a parameter of model; build it on "
                "model.parameters()"
            )
        return optimizer
    if not isinstance(optimizer, str):
        raise TypeError(
            f"optimizer must be a name in {tuple(OPTIMIZERS)} or a torch.optim.Optimizer "
            f"instance, got {type(optimizer).__name__}"
        )
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    if lr is None:
        raise ValueError(f"lr must be given (a finite real number > 0) with optimizer={optimizer!r}")
    lr = check_real(lr, "lr", positive=True)
    if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, dict):
        raise TypeError(
            f"optimizer_kwargs must be a dict or None, got {type(optimizer_kwargs).__name__}"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
    return OPTIMIZERS[optimizer](params, lr, **(optimizer_kwargs or {}))


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float | None = None,
    loss: str = "mse",
    optimizer: str | torch.optim.Optimizer = "adam",
    optimizer_kwargs: dict | None = None,
    penalty: Callable[[nn.Module, Tensor], Tensor] | None = None,
    penalty_weight: float = 1.0,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    record_every: int = 100,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    inject_noise: bool = True,
    record_extra: dict[str, Callable[[nn.Module], float]] | None = None,
) -> History:
    r"""Train ``model`` in place for ``steps`` optimiser updates and return what was recorded.

    Update :math:`t = 1, \dots, T` takes a batch :math:`\mathcal B_t` and steps on

    .. math::

        \mathcal J_t(\theta) = L\bigl(F_\theta(x_{\mathcal B_t}), y_{\mathcal B_t}\bigr)
            + \lambda\, P(F_\theta, x_{\mathcal B_t})

    (:math:`\theta \leftarrow \theta - \eta \nabla_\theta \mathcal J_t` for ``"sgd"``),
    computed in ``train()`` mode, so noise sites draw fresh noise at every update
    (``inject_noise=False``: in ``eval()`` mode, sites off). The update is
    ``opt.step(closure)``, the closure zeroing the gradients and computing and
    back-propagating :math:`\mathcal J_t`, so optimisers that re-evaluate the
    objective fit in (:class:`gni_lib.optim.PerturbedGD` calls it at the perturbed
    weights). To train on :math:`L + \lambda R` with the explicit regulariser in
    place of the noise, keep the sites' :math:`\sigma_k` (:math:`R` reads them) and
    turn the injection off::

        train(model, x, y, steps=..., lr=..., penalty=R, inject_noise=False,
              record_extra={"hessian_trace": trace_of})

    **Batches.** ``batch_size=None`` (or :math:`n`) uses the whole set in its order
    and draws nothing; otherwise each epoch draws ``torch.randperm(n,
    generator=generator)`` (on the generator's device) and cuts it into consecutive
    batches, the last one shorter when ``batch_size`` does not divide :math:`n`.

    **Recording.** After :math:`t \in \{0, r, 2r, \dots\} \cup \{T\}` updates
    (:math:`r` = ``record_every``), in ``eval()`` mode: the clean losses on the
    training and test sets (and, for ``"ce"``, the accuracies), the unweighted
    penalty :math:`P(F_\theta, x)` on the whole training set (autograd on, then
    detached), then ``fn(model)`` for each ``record_extra`` entry (autograd on), stored in
    ``history.extra[name]``. A penalty or extra that draws random numbers draws them
    when recording too. **On return the model is in** ``eval()`` **mode**, also
    when an error stops training.

    Args:
        model: the network, e.g. an :func:`gni_lib.models.MLP`; changed in place.
        x: training inputs :math:`(n, d_\text{in})`, on the model's device.
        y: targets, :math:`(n, d_\text{out})` for ``"mse"``, :math:`(n,)` int64 class
            indices for ``"ce"``.
        steps: :math:`T \ge 1`, the number of updates.
        lr: :math:`\eta > 0`; required with an optimizer name, ``None`` with an instance.
        loss: ``"mse"`` or ``"ce"`` (:mod:`gni_lib.losses`).
        optimizer: a name in :data:`OPTIMIZERS`, or a :class:`torch.optim.Optimizer`
            over (some of) the model's parameters, e.g. ``AntiPGD(model.parameters(),
            lr, sigma, generator=g)``, which keeps its state, so a second call continues.
        optimizer_kwargs: keyword arguments for the named optimizer, e.g.
            ``{"sigma": 0.1, "generator": g}``; ``None`` with an instance.
        penalty: :math:`P`, ``penalty(model, x_batch)`` returning a differentiable scalar.
        penalty_weight: :math:`\lambda \ge 0`.
        x_test, y_test: an optional test set (both or neither).
        record_every: :math:`r \ge 1`.
        batch_size: ``None`` for full batch, else :math:`1 \le` ``batch_size`` :math:`\le n`.
        generator: draws the batch permutations (not the sites' noise: they carry their own).
        progress: a tqdm bar; ``None`` shows one only when stderr is a terminal and
            ``CI`` is unset.
        inject_noise: ``True``: steps in ``train()`` mode (sites on); ``False``: ``eval()``.
        record_extra: ``{name: fn}``, ``fn(model)`` returning a real number (or a
            one-element tensor); names may not be :class:`History` fields.

    Returns:
        History: the recorded steps and losses.

    Raises:
        TypeError: on an argument of the wrong type.
        ValueError: on a bad value, naming the argument (``steps``, ``lr``,
            ``penalty_weight``, ``loss``, ``optimizer`` (also an instance holding tensors
            that are not the model's parameters), mismatched or half-given
            data, ``record_every``, ``batch_size``, targets that do not suit the loss).
        FloatingPointError: if the objective becomes NaN or infinite; the message
            names the update, which is not applied. (The noisy optimisers refuse a
            non-finite gradient with :class:`gni_lib.optim.NonFiniteGradientError`,
            both a ``ValueError`` and a ``FloatingPointError``.)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    run = _check_run(x, y, steps, x_test, y_test, record_every, batch_size, progress, record_extra)
    opt = _build_optimizer(model, optimizer, lr, optimizer_kwargs)
    loss_fn = get_loss(loss)
    if penalty is not None and not callable(penalty):
        raise TypeError(
            f"penalty must be callable (model, x) -> scalar tensor, or None, "
            f"got {type(penalty).__name__}"
        )
    penalty_weight = check_real(penalty_weight, "penalty_weight")
    check_generator(generator)
    check_flag(inject_noise, "inject_noise")

    history = History()
    batches = _batches(run.x, run.y, run.batch_size, generator)

    def record(step: int) -> float:
        model.eval()
        metrics = _clean_metrics(model, loss_fn, run, torch.float64 if loss == "ce" else None)
        penalties = None if penalty is None else [float(penalty(model, run.x).detach())]
        _record([history], [model], step, metrics, penalties, run.extras)
        model.train(inject_noise)
        return history.train_loss[-1]

    def take_step(step: int) -> None:
        x_batch, y_batch = next(batches)
        model.train(inject_noise)

        def closure() -> Tensor:
            model.zero_grad(set_to_none=True)
            objective = loss_fn(model(x_batch), y_batch)
            if penalty is not None:
                objective = objective + penalty_weight * penalty(model, x_batch)
            # One host sync per step: the contract is that the failing update is not applied.
            _refuse_non_finite(torch.isfinite(objective.detach()), step, run.steps, objective.detach())
            objective.backward()
            return objective

        opt.step(closure)

    _run_steps(run, "train", take_step, record, model.eval)
    return history

r"""A small training loop: noisy training, penalised training, and the clean curves.

:func:`train` minimises, by full-batch or minibatch steps,

.. math::

    \mathcal J(\theta) = L\bigl(F_\theta(x_\mathcal B), y_\mathcal B\bigr)
        + \lambda\, P(F_\theta, x_\mathcal B),

with the model in training mode, so its :class:`gni_lib.noise.GaussianNoise`
sites inject noise: the gradient of one step is then the gradient of the noisy
loss at one noise draw, as in Camuto et al. (2020), Sec. 5. :math:`P` is an
optional penalty, for example :func:`gni_lib.penalties.jacobian_penalty`
or the explicit regulariser. It records the *clean* losses (noise off) on the
whole training and test sets as it goes, in a :class:`History`.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .losses import get_loss

__all__ = ["History", "train", "OPTIMIZERS"]

#: The optimisers ``train`` accepts, by name: a factory ``(parameters, lr) -> Optimizer``.
#: Plain updates only: ``"sgd"`` is :math:`\theta \leftarrow \theta - \eta \nabla \mathcal J`
#: (no momentum, no weight decay), ``"adam"`` is :class:`torch.optim.Adam` with its defaults.
OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], float], torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
}


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
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        """Return the history as a dict of (copied) lists, e.g. for ``pandas.DataFrame``."""
        return {
            "steps": list(self.steps),
            "train_loss": list(self.train_loss),
            "test_loss": list(self.test_loss),
            "penalty": list(self.penalty),
        }


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def _check_real(value: object, name: str, *, positive: bool) -> float:
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite real number {bound}, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite real number {bound}, got {value!r}")
    return value


def _check_pair(x: object, y: object, x_name: str, y_name: str) -> tuple[Tensor, Tensor]:
    for value, name in ((x, x_name), (y, y_name)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{x_name} must have shape (n, ...) with n >= 1, got {tuple(x.shape)}")
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{y_name} must have as many rows as {x_name} ({x.shape[0]}), "
            f"got shape {tuple(y.shape)}"
        )
    return x, y


def _minibatches(
    n: int, batch_size: int, generator: torch.Generator | None, device: torch.device
) -> Iterator[Tensor]:
    """Yield index tensors: one permutation per epoch, cut into batches (the last may be short)."""
    draw_on = generator.device if generator is not None else device
    while True:
        order = torch.randperm(n, generator=generator, device=draw_on).to(device)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def _show_progress(progress: bool | None) -> bool:
    if progress is None:
        return sys.stderr.isatty() and "CI" not in os.environ
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")
    return progress


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float,
    loss: str = "mse",
    optimizer: str = "adam",
    penalty: Callable[[nn.Module, Tensor], Tensor] | None = None,
    penalty_weight: float = 1.0,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    record_every: int = 100,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> History:
    r"""Train ``model`` in place for ``steps`` optimiser updates and return what was recorded.

    Each update :math:`t = 1, \dots, T` takes a batch :math:`\mathcal B_t` and steps on

    .. math::

        \mathcal J_t(\theta) = L\bigl(F_\theta(x_{\mathcal B_t}), y_{\mathcal B_t}\bigr)
            + \lambda\, P(F_\theta, x_{\mathcal B_t})

    (the penalty term only when ``penalty`` is given), computed with the model in
    ``train()`` mode, so noise sites draw fresh noise at every update. For
    ``optimizer="sgd"`` the update is :math:`\theta \leftarrow \theta - \eta
    \nabla_\theta \mathcal J_t`. The update is taken as ``opt.step(closure)``, the
    closure zeroing the gradients and computing and back-propagating
    :math:`\mathcal J_t`, so optimisers that re-evaluate the objective fit in.

    **Batches.** ``batch_size=None`` (or equal to :math:`n`) uses the whole
    training set at every update, in its given order, and draws no random
    numbers. Otherwise each epoch draws ``torch.randperm(n, generator=generator)``
    (on the generator's device) and cuts it into consecutive batches of
    ``batch_size``; the last batch of an epoch is smaller when ``batch_size``
    does not divide :math:`n`.

    **Recording.** After :math:`t` updates for :math:`t \in \{0, r, 2r, \dots\}
    \cup \{T\}` (:math:`r` = ``record_every``), the model is put in ``eval()``
    mode and :func:`train` records :math:`t`, the clean loss on the whole
    training set and, if given, on the test set (under :func:`torch.no_grad`),
    and the unweighted penalty :math:`P(F_\theta, x)` on the whole training set
    (with autograd enabled, since penalties differentiate, then detached); then
    ``train()`` mode is restored. A penalty that draws random numbers therefore
    also draws them when recording.

    **On return the model is in** ``eval()`` **mode** (noise off), also when an
    error stops training.

    Args:
        model: the network, e.g. an :func:`gni_lib.models.MLP`; changed in place.
        x: training inputs, shape :math:`(n, d_\text{in})`, on the model's device.
        y: training targets, :math:`(n, d_\text{out})` for ``"mse"``, :math:`(n,)`
            int64 class indices for ``"ce"``.
        steps: :math:`T \ge 1`, the number of optimiser updates.
        lr: the step size :math:`\eta > 0`.
        loss: ``"mse"`` or ``"ce"`` (:mod:`gni_lib.losses`).
        optimizer: ``"adam"`` or ``"sgd"`` (plain, no momentum); see :data:`OPTIMIZERS`.
        penalty: :math:`P`, called as ``penalty(model, x_batch)`` and returning a
            differentiable scalar.
        penalty_weight: :math:`\lambda \ge 0`.
        x_test, y_test: an optional test set (both or neither).
        record_every: :math:`r \ge 1`.
        batch_size: ``None`` for full batch, else :math:`1 \le` ``batch_size`` :math:`\le n`.
        generator: draws the minibatch permutations (not the model's noise: the
            noise sites carry their own generators).
        progress: show a tqdm bar; ``None`` shows one only when stderr is a
            terminal and the environment variable ``CI`` is unset.

    Returns:
        History: the recorded steps and losses.

    Raises:
        TypeError: if an argument has the wrong type (``model`` not a module,
            ``x``/``y`` not tensors, ``penalty`` not callable, ...).
        ValueError: if ``steps < 1``, ``lr`` is not a finite positive number,
            ``penalty_weight`` is negative or not finite, ``loss`` or ``optimizer``
            is unknown, ``x`` and ``y`` (or ``x_test`` and ``y_test``) differ in
            batch size, only one of ``x_test``/``y_test`` is given,
            ``record_every < 1``, ``batch_size`` is outside :math:`[1, n]`, or the
            targets do not suit the loss (:mod:`gni_lib.losses`).
        FloatingPointError: if the training objective becomes NaN or infinite;
            the message names the update. The failing update is not applied.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x, y = _check_pair(x, y, "x", "y")
    steps = _check_positive_int(steps, "steps")
    lr = _check_real(lr, "lr", positive=True)
    loss_fn = get_loss(loss)
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    if penalty is not None and not callable(penalty):
        raise TypeError(
            f"penalty must be callable (model, x) -> scalar tensor, or None, "
            f"got {type(penalty).__name__}"
        )
    penalty_weight = _check_real(penalty_weight, "penalty_weight", positive=False)
    if (x_test is None) != (y_test is None):
        missing = "y_test" if y_test is None else "x_test"
        raise ValueError(f"x_test and y_test must be given together; {missing} is missing")
    if x_test is not None:
        x_test, y_test = _check_pair(x_test, y_test, "x_test", "y_test")
    record_every = _check_positive_int(record_every, "record_every")
    n = x.shape[0]
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise TypeError(
                f"batch_size must be None or an int in [1, {n}], got {type(batch_size).__name__}"
            )
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be None or an int in [1, {n}], got {batch_size}")
        batch_size = int(batch_size)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    show = _show_progress(progress)

    history = History()

    def record(step: int) -> None:
        model.eval()
        with torch.no_grad():
            history.train_loss.append(float(loss_fn(model(x), y)))
            if x_test is not None:
                history.test_loss.append(float(loss_fn(model(x_test), y_test)))
        if penalty is not None:
            history.penalty.append(float(penalty(model, x).detach()))
        history.steps.append(step)
        model.train()

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
    opt = OPTIMIZERS[optimizer](params, lr)
    full_batch = batch_size is None or batch_size == n
    batches = None if full_batch else _minibatches(n, batch_size, generator, x.device)

    bar = tqdm(total=steps, desc="train", disable=not show, leave=False)
    try:
        record(0)
        for step in range(1, steps + 1):
            if batches is None:
                x_batch, y_batch = x, y
            else:
                index = next(batches)
                x_batch, y_batch = x[index], y[index]
            model.train()

            def closure() -> Tensor:
                opt.zero_grad(set_to_none=True)
                objective = loss_fn(model(x_batch), y_batch)
                if penalty is not None:
                    objective = objective + penalty_weight * penalty(model, x_batch)
                if not bool(torch.isfinite(objective.detach())):
                    raise FloatingPointError(
                        f"the training objective is {float(objective.detach())} at step "
                        f"{step} of {steps}; lower lr or the noise sigma"
                    )
                objective.backward()
                return objective

            opt.step(closure)
            bar.update(1)
            if step % record_every == 0 or step == steps:
                record(step)
                bar.set_postfix(train_loss=f"{history.train_loss[-1]:.4g}")
    finally:
        bar.close()
        model.eval()
    return history

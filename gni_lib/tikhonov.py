r"""Input noise against the Tikhonov penalty on 1-D regression (Bishop, 1995): the book's lectures 01 and 02.

* :func:`antithetic_pairs`: antithetic Monte Carlo estimates of the gap that input
  noise adds to the ½-MSE, in which every odd power of :math:`\varepsilon` cancels
  (Bishop, 1995, §2, gives its :math:`\sigma^2` term);
* many small tanh networks of one input trained at once, as a stack: their
  weights are stacked along a first axis, one batched matrix product
  (``torch.baddbmm``) runs a layer of every network, and the slope
  :math:`f'(x)` the Tikhonov penalty :math:`\lambda\,\tfrac1N\sum_n f'(x_n)^2`
  needs is carried through the same pass by the chain rule
  (:func:`stacked_mlp`, :func:`stacked_forward`, :func:`train_stacked`), to
  compare training with input noise against training with that penalty
  (Bishop, 1995, §3).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_int, check_real, check_tensor
from .models import MLP

__all__ = ["antithetic_pairs", "stacked_mlp", "stacked_forward", "train_stacked"]

Params = list[tuple[Tensor, Tensor]]
KINDS = ("plain", "noise", "tikhonov")


def antithetic_pairs(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    noise_std: float,
    draws: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    r"""Antithetic estimates of :math:`\mathbb E_\varepsilon[g_n(x_n+\varepsilon)] - g_n(x_n)`, per draw and example.

    With :math:`g_n(u) = \tfrac12\lVert f(u) - y_n\rVert^2` and
    :math:`\varepsilon\sim\mathcal N(0, \sigma^2 I)`, draw :math:`d` holds
    :math:`\tfrac12\bigl(g_n(x_n+\varepsilon_{dn}) + g_n(x_n-\varepsilon_{dn})\bigr) - g_n(x_n)`.
    All draws go through the model in one batch, without gradients.

    Args:
        model: maps :math:`(B, d_\text{in})` to :math:`(B, d_\text{out})` (a network in ``eval()`` mode).
        inputs: :math:`x`, shape :math:`(N, d_\text{in})`.
        targets: :math:`y`, shape :math:`(N, d_\text{out})`.
        noise_std: :math:`\sigma \ge 0`, a standard deviation.
        draws: the number of noise draws :math:`D \ge 1`.
        generator: the source of the noise, on the device of ``inputs``.

    Returns:
        ``(pairs, noise)``: the estimates, shape :math:`(D, N)`, and the noise
        :math:`\varepsilon`, shape :math:`(D, N, d_\text{in})`.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``inputs`` or ``targets`` is not 2-D and finite, their row
            counts differ, ``noise_std < 0`` or ``draws < 1``.
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    inputs = check_tensor(inputs, "inputs", ndim=2)
    targets = check_tensor(targets, "targets", ndim=2)
    if len(targets) != len(inputs):
        raise ValueError(f"targets must have one row per row of inputs ({len(inputs)}), got {len(targets)}")
    noise_std = check_real(noise_std, "noise_std", what=" (a standard deviation)")
    draws = check_int(draws, "draws")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    noise = noise_std * torch.randn((draws, *inputs.shape), generator=generator, device=inputs.device, dtype=inputs.dtype)
    with torch.no_grad():

        def loss_per_example(shifted: Tensor) -> Tensor:
            pred = model(shifted.reshape(-1, inputs.shape[1])).reshape(draws, *targets.shape)
            return 0.5 * (pred - targets).pow(2).sum(-1)

        clean = 0.5 * (model(inputs) - targets).pow(2).sum(-1)
        pairs = 0.5 * (loss_per_example(inputs + noise) + loss_per_example(inputs - noise)) - clean
    return pairs, noise


def _check_seeds(seeds: object) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, range)) or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty sequence of non-negative ints, got {seeds!r}")
    if not all(not isinstance(s, bool) and isinstance(s, numbers.Integral) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty sequence of non-negative ints, got {list(seeds)!r}")
    return [int(s) for s in seeds]


def stacked_mlp(
    seeds: Sequence[int],
    widths: Sequence[int] = (1, 32, 32, 1),
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Params:
    r"""The weights of ``gni_lib.MLP(widths, seed=s)`` for every ``s`` in ``seeds``, stacked, ready to train.

    Layer :math:`k` becomes :math:`(W_k, b_k)` with :math:`W_k` of shape
    :math:`(S, d_k, d_{k-1})` and :math:`b_k` of shape :math:`(S, 1, d_k)`, for
    :math:`S` = ``len(seeds)``; both are leaves with ``requires_grad=True``.
    The seeds are used as given: a chapter passes them through
    :func:`gni_lib.seeding.stream_seed`.

    Args:
        seeds: one non-negative int per network (the ``seed`` of :func:`gni_lib.models.MLP`).
        widths: :math:`[d_0, \dots, d_L]`, as for :func:`gni_lib.models.MLP`.
        device: where the weights live (``None``: the CPU).
        dtype: their floating-point type (float32 by default: ample for these fits, and fast).

    Raises:
        ValueError: if ``seeds`` is not a non-empty sequence of non-negative ints, or
            ``widths`` is not valid for :func:`gni_lib.models.MLP`.
    """
    seeds = _check_seeds(seeds)
    nets = [MLP(list(widths), seed=s) for s in seeds]
    layers = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
    return [
        (
            torch.stack([net[k].weight for net in layers]).detach().to(dtype).to(device).requires_grad_(),
            torch.stack([net[k].bias for net in layers]).detach().to(dtype).to(device)[:, None].requires_grad_(),
        )
        for k in range(len(layers[0]))
    ]


def _check_params(params: object) -> Params:
    message = "params must be a non-empty list of (weight, bias) pairs from stacked_mlp"
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise ValueError(f"{message}, got {type(params).__name__}")
    for layer in params:
        if not (isinstance(layer, (list, tuple)) and len(layer) == 2 and all(isinstance(t, Tensor) for t in layer)):
            raise ValueError(f"{message}, got an entry of type {type(layer).__name__}")
    return list(params)


def stacked_forward(params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
    r"""Outputs :math:`f` and slopes :math:`f' = \partial f/\partial x` of stacked tanh networks of one input.

    Every hidden layer is :math:`h_{k} = \tanh(h_{k-1} W_k^\top + b_k)`, the last
    one is linear; the slope follows by the chain rule,
    :math:`f'_k = \tanh'(u_k)\,(f'_{k-1} W_k^\top)` with :math:`\tanh' = 1 - h_k^2`.

    Args:
        params: the stacked layers of :func:`stacked_mlp`, :math:`S` networks with :math:`d_0 = 1`.
        x: inputs of shape :math:`(S, N, 1)` (one row of points per network; ``expand`` a shared grid).

    Returns:
        ``(f, slope)``, each of shape :math:`(S, N, d_L)`, differentiable in ``params``.

    Raises:
        ValueError: if ``params`` is not a list of (weight, bias) pairs, or ``x`` is not a
            floating-point tensor of shape :math:`(S, N, 1)` matching ``params``.
        TypeError: if ``x`` is not a tensor.
    """
    params = _check_params(params)
    x = check_tensor(x, "x", ndim=3, finite=False)
    if x.shape[0] != params[0][0].shape[0] or x.shape[2] != 1:
        raise ValueError(
            f"x must have shape (S, N, 1) with S = {params[0][0].shape[0]} networks and one input, got {tuple(x.shape)}"
        )
    h, slope = x, torch.ones_like(x)
    for k, (weight, bias) in enumerate(params):
        h, slope = torch.baddbmm(bias, h, weight.transpose(1, 2)), slope @ weight.transpose(1, 2)
        if k < len(params) - 1:
            h = torch.tanh(h)
            slope = (1 - h**2) * slope
    return h, slope


def train_stacked(
    params: Params,
    kind: str,
    inputs: Tensor,
    targets: Tensor,
    *,
    noise_std: float,
    steps: int,
    settle_steps: int = 0,
    lr: float = 1e-2,
    repeats: int = 1,
    penalty_weight: float | None = None,
    generator: torch.Generator | None = None,
) -> Params:
    r"""Train stacked networks in place with Adam on ``"plain"``, ``"noise"`` or ``"tikhonov"``; return ``params``.

    ``steps`` full-batch Adam steps at rate ``lr``, then ``settle_steps`` with a fresh
    Adam at ``lr / 30``, so that a noisy fit settles near the minimiser of its
    *expected* loss. The objective of each network is its own ½-MSE (the networks
    share nothing, so the sum of their objectives gives each its own gradient):

    * ``"plain"``: :math:`\tfrac1{2N}\sum_n (f(x_n) - y_n)^2`;
    * ``"noise"``: the same at :math:`x_n + \varepsilon_n`, :math:`\varepsilon_n\sim\mathcal N(0, \sigma^2)`
      drawn afresh at every step from ``generator``; the data are repeated
      ``repeats`` times first, so that a step averages that many draws per point;
    * ``"tikhonov"``: the plain ½-MSE plus :math:`\lambda\,\tfrac1N\sum_n f'(x_n)^2`,
      :math:`\lambda` = ``penalty_weight``, by default :math:`\sigma^2/2` (Bishop, 1995, §3).

    Args:
        params: stacked layers from :func:`stacked_mlp` (:math:`S` networks), updated in place.
        inputs, targets: :math:`x` and :math:`y`, shape :math:`(S, N, 1)`, one data set per network.
        noise_std: :math:`\sigma`, the input noise standard deviation (``"noise"``), and the default penalty weight's.
        steps, settle_steps: the steps of the two phases, ``>= 1`` and ``>= 0``.
        repeats: noise draws per point and step (``"noise"`` only), ``>= 1``.
        generator: the noise source (required for ``"noise"``), on the device of ``inputs``.

    Raises:
        ValueError: if ``kind`` is unknown, ``inputs``/``targets`` do not have the shape
            :math:`(S, N, 1)` of the stack, or a number is out of range.
        TypeError: if an argument has the wrong type (``generator`` for ``kind="noise"``).
    """
    params = _check_params(params)
    check_choice(kind, "kind", KINDS)
    inputs = check_tensor(inputs, "inputs", ndim=3)
    targets = check_tensor(targets, "targets", ndim=3)
    count = params[0][0].shape[0]
    for name, value in (("inputs", inputs), ("targets", targets)):
        if value.shape[0] != count or value.shape[2] != 1 or value.shape[1] != inputs.shape[1]:
            raise ValueError(f"{name} must have shape (S, N, 1) with S = {count} networks, got {tuple(value.shape)}")
    noise_std = check_real(noise_std, "noise_std", what=" (a standard deviation)")
    steps = check_int(steps, "steps")
    settle_steps = check_int(settle_steps, "settle_steps", minimum=0)
    lr = check_real(lr, "lr", positive=True)
    repeats = check_int(repeats, "repeats")
    weight = noise_std**2 / 2 if penalty_weight is None else check_real(penalty_weight, "penalty_weight")
    if kind == "noise":
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator for kind='noise', got {type(generator).__name__}")
        inputs, targets = inputs.repeat(1, repeats, 1), targets.repeat(1, repeats, 1)
    leaves = [t for layer in params for t in layer]
    for phase_steps, phase_lr in ((steps, lr), (settle_steps, lr / 30)):
        optimiser = torch.optim.Adam(leaves, lr=phase_lr)
        for _ in range(phase_steps):
            xb = inputs
            if kind == "noise":
                xb = inputs + noise_std * torch.randn(
                    inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype
                )
            out, slope = stacked_forward(params, xb)
            objective = 0.5 * (out - targets).pow(2).mean(dim=(1, 2))  # one ½-MSE per network
            if kind == "tikhonov":
                objective = objective + weight * slope.pow(2).mean(dim=(1, 2))
            optimiser.zero_grad()
            objective.sum().backward()
            optimiser.step()
    return params

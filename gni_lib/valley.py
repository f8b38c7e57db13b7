r"""Anti-PGD's two test problems, many runs at once: the widening valley and sparse regression.

Orvieto et al. (2022) compare PGD and Anti-PGD (:mod:`gni_lib.optim`) on two
problems whose Hessian trace is known in closed form, the widening valley
(Sec. 3, Thm. 3.1; lecture 14) and quadratically parametrised regression (Sec. 4;
lecture 15). This module holds their gradients for a batch of points, one run a
row, and the simulation and figure of Thm. 3.1; the single-point losses and traces
live in :mod:`gni_lib.data`, and the tests check these gradients against autograd
on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int, check_real, check_tensor
from .device import get_device
from .optim import NOISE_DISTRIBUTIONS, anti_pgd_update, draw_noise, pgd_update
from .seeding import make_generator

__all__ = ["valley_grads", "simulate_valley", "plot_valley_paths", "quadratic_regression_grads"]


def valley_grads(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    r"""The gradient of the widening valley :math:`\tfrac12 v^2 \lVert u \rVert^2` at a batch of points.

    .. math::

        \nabla_u L = v^2 u, \qquad \partial_v L = v \lVert u \rVert^2

    (Orvieto et al. 2022, Sec. 3), row by row.

    Shapes:
        ``params["u"]``: :math:`(R, d)`; ``params["v"]``: :math:`(R,)`; the result has
        the same keys and shapes.

    Raises:
        TypeError: if ``params`` is not a mapping or an entry is not a tensor.
        ValueError: if a key is missing or an entry is not floating point or of its shape.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict with keys 'u' and 'v', got {type(params).__name__}")
    for key in ("u", "v"):
        if key not in params:
            raise ValueError(f"params must have keys 'u' and 'v', missing {key!r}")
    u = check_tensor(params["u"], "params['u']", ndim=2, finite=False)
    v = check_tensor(params["v"], "params['v']", ndim=1, finite=False)
    if v.shape[0] != u.shape[0]:
        raise ValueError(f"params['v'] must have shape ({u.shape[0]},) to match params['u'], got {tuple(v.shape)}")
    return {"u": v.pow(2).unsqueeze(1) * u, "v": v * u.pow(2).sum(1)}


def _per_row(values: dict[str, Tensor], column: Tensor) -> dict[str, Tensor]:
    """Row :math:`r` of ``values["u"]`` :math:`(R, d)` and ``values["v"]`` :math:`(R,)` times ``column[r]``."""
    return {"u": values["u"] * column.unsqueeze(1), "v": values["v"] * column}


def _check_settings(settings: object) -> list[tuple[str, float]]:
    if not isinstance(settings, Sequence) or isinstance(settings, str) or not settings:
        raise TypeError("settings must be a non-empty sequence of (distribution, variance) pairs")
    checked = []
    for item in settings:
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
            raise TypeError(f"settings must hold (distribution, variance) pairs, got {item!r}")
        dist, var = item
        if dist not in NOISE_DISTRIBUTIONS:
            raise ValueError(f"settings: distribution must be one of {NOISE_DISTRIBUTIONS}, got {dist!r}")
        checked.append((dist, check_real(var, "settings: variance", positive=True)))
    return checked


def simulate_valley(
    settings: Sequence[tuple[str, float]],
    runs: int,
    steps: int,
    *,
    seed: int,
    d: int = 10,
    D: float = 100.0,
    alpha: float = 0.5,
    record_every: int = 20,
    blow_up: float = 1e12,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, object]:
    r"""PGD and Anti-PGD on the widening valley, every setting and run at once (Orvieto et al. 2022, Thm. 3.1).

    The set-up of Thm. 3.1: :math:`v_0 = 0`, :math:`u_0` with equal coordinates and
    :math:`\lVert u_0 \rVert^2 = D`, step size :math:`\eta = \alpha / (2D)`, and

    .. math::

        \text{PGD: } w_{n+1} = w_n - \eta\nabla L(w_n) + \xi_{n+1}, \qquad
        \text{Anti-PGD: } w_{n+1} = w_n - \eta\nabla L(w_n) + \xi_{n+1} - \xi_n .

    Rows :math:`[0, R)` of one tensor are PGD and :math:`[R, 2R)` Anti-PGD,
    :math:`R` = ``len(settings) * runs``; within each, block :math:`b` of ``runs``
    rows has the noise ``settings[b]``. PGD is Anti-PGD with :math:`\xi_n` replaced
    by zero, so one :func:`~gni_lib.optim.anti_pgd_update` (its state zeroed on the
    PGD rows) takes both steps; the first step is checked against
    :func:`~gni_lib.optim.pgd_update`. Each step draws one standard Gaussian and one
    sign buffer with :func:`~gni_lib.optim.draw_noise` (in that order) from a
    generator seeded with ``seed``; each row keeps the one its setting names and
    scales it by its :math:`\sigma`. A run whose :math:`\lVert u\rVert^2 + v^2`
    reaches ``blow_up`` is counted as diverged: it is recorded as :math:`+\infty`
    from then on (and its parameters set to zero to stay finite).

    Args:
        settings: ``(distribution, variance)`` pairs, distribution ``"gaussian"`` or
            ``"rademacher"``, variance :math:`\sigma^2 > 0`.
        runs: independent runs per setting and method.
        steps: the horizon :math:`N`.
        seed: the noise generator's seed.
        d, D, alpha: the valley's dimension, :math:`\lVert u_0\rVert^2` and :math:`\alpha`.
        record_every: record every this many steps (and step 0).
        blow_up: the divergence threshold on :math:`\lVert u\rVert^2 + v^2`.
        device, dtype: where (default :func:`~gni_lib.device.get_device`) and in which
            precision to run.

    Returns:
        dict: ``"pgd"`` and ``"anti_pgd"``: ``(steps, u2, trace)`` with ``steps`` the
        recorded steps :math:`(T,)` and ``u2`` (:math:`\lVert u_n\rVert^2`) and
        ``trace`` (:math:`d v_n^2 + \lVert u_n\rVert^2`) NumPy arrays of shape
        ``(T, len(settings), runs)``; ``"anti_pgd_shifted"``: ``(a2, b2)``, the
        :math:`\lVert a_n\rVert^2` and :math:`b_n^2` of Anti-PGD's shifted iterate
        :math:`z_n = w_n - \xi_n = (a_n, b_n)`, same shape; ``"v"``: :math:`v_n`,
        shape ``(T, 2, len(settings), runs)`` (PGD first).

    Raises:
        TypeError: if ``settings`` is not a sequence of pairs, or a count is not an int.
        ValueError: if a distribution is unknown, or a number is not positive.
        RuntimeError: if the first step differs from :func:`~gni_lib.optim.pgd_update`.
    """
    settings = _check_settings(settings)
    runs, steps = check_int(runs, "runs"), check_int(steps, "steps")
    d, record_every = check_int(d, "d"), check_int(record_every, "record_every")
    seed = check_int(seed, "seed", minimum=0)
    D, alpha = check_real(D, "D", positive=True), check_real(alpha, "alpha", positive=True)
    blow_up = check_real(blow_up, "blow_up", positive=True)
    eta = alpha / (2 * D)
    device = get_device() if device is None else torch.device(device)
    per_method = len(settings) * runs
    rows = 2 * per_method
    sigma_col = torch.tensor([math.sqrt(var) for _, var in settings], dtype=dtype, device=device)
    sigma_col = sigma_col.repeat_interleave(runs).repeat(2)
    is_anti = torch.arange(rows, device=device) >= per_method
    params = {"u": torch.full((rows, d), math.sqrt(D / d), dtype=dtype, device=device),
              "v": torch.zeros(rows, dtype=dtype, device=device)}
    noise_gen = make_generator(seed, device=device)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    block_rows = torch.arange(rows, device=device) % per_method // runs  # which setting a row uses
    is_sign = torch.tensor([dist == "rademacher" for dist, _ in settings], device=device)[block_rows]
    state = None
    logs: dict[str, list[Tensor]] = {"u2": [], "trace": [], "a2": [], "b2": [], "v": []}
    recorded = []

    def record(n: int) -> None:
        u2 = params["u"].pow(2).sum(1)
        # the shifted iterate z_n = w_n - xi_n = (a_n, b_n); on PGD rows the state is zero, so there z_n = w_n
        a_n = params["u"] - (state["u"] if state is not None else 0)
        b_n = params["v"] - (state["v"] if state is not None else 0)
        for key, value in (("u2", u2), ("trace", d * params["v"].pow(2) + u2), ("a2", a_n.pow(2).sum(1)),
                           ("b2", b_n.pow(2)), ("v", params["v"])):
            logs[key].append(torch.where(alive, value, math.inf))
        recorded.append(n)

    record(0)
    for n in range(1, steps + 1):
        grads = valley_grads(params)
        gauss, signs = (draw_noise(params, 1.0, noise_gen, distribution=dist) for dist in ("gaussian", "rademacher"))
        chosen = {"u": torch.where(is_sign.unsqueeze(1), signs["u"], gauss["u"]),
                  "v": torch.where(is_sign, signs["v"], gauss["v"])}
        noise = _per_row(chosen, sigma_col)
        new, state = anti_pgd_update(params, grads, noise, state, eta)
        if n == 1:  # xi_0 = 0: the first step is the PGD step for every row
            reference = pgd_update(params, grads, noise, eta)
            if not all(torch.equal(new[k], reference[k]) for k in new):
                raise RuntimeError("simulate_valley: the first Anti-PGD step differs from the PGD step")
        params = new
        state = _per_row(state, is_anti)  # PGD rows: no xi_n
        # a diverged run is zeroed, without a host sync: on a live row the mask multiplies by 1 exactly
        alive &= params["u"].pow(2).sum(1) + params["v"].pow(2) < blow_up
        params, state = _per_row(params, alive), _per_row(state, alive)
        if n % record_every == 0:
            record(n)
    shape = (len(recorded), 2, len(settings), runs)
    u2, tr, a2, b2, v = (torch.stack(logs[k]).view(shape).cpu().numpy() for k in ("u2", "trace", "a2", "b2", "v"))
    steps_arr = np.array(recorded)
    return {"pgd": (steps_arr, u2[:, 0], tr[:, 0]), "anti_pgd": (steps_arr, u2[:, 1], tr[:, 1]),
            "anti_pgd_shifted": (a2[:, 1], b2[:, 1]), "v": v}


def quadratic_regression_grads(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    r"""The gradient of :math:`\frac{1}{4n}\lVert X(w\odot w) - y\rVert^2` for a batch of problems.

    .. math::

        \nabla_w L = \tfrac1n (X^\top r) \odot w, \qquad r = X(w \odot w) - y

    (Orvieto et al. 2022, Sec. 4), row :math:`b` with its own :math:`X_b, y_b`.

    Shapes:
        ``w``: :math:`(B, d)`; ``x``: :math:`(B, n, d)`; ``y``: :math:`(B, n)`; result
        :math:`(B, d)`.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if one is not floating point or of its shape, or ``x`` or ``y`` is not finite.
    """
    w = check_tensor(w, "w", ndim=2, finite=False)
    x = check_tensor(x, "x", ndim=3)
    y = check_tensor(y, "y", ndim=2)
    if x.shape[0] != w.shape[0] or x.shape[2] != w.shape[1]:
        raise ValueError(f"x must have shape ({w.shape[0]}, n, {w.shape[1]}) to match w, got {tuple(x.shape)}")
    if y.shape != x.shape[:2]:
        raise ValueError(f"y must have shape {tuple(x.shape[:2])} to match x, got {tuple(y.shape)}")
    residual = torch.bmm(x, (w * w).unsqueeze(2)).squeeze(2) - y
    return torch.bmm(x.transpose(1, 2), residual.unsqueeze(2)).squeeze(2) / x.shape[1] * w


def plot_valley_paths(
    runs: Mapping[str, object],
    settings: Sequence[tuple[str, float]],
    *,
    d: int = 10,
    D: float = 100.0,
    alpha: float = 0.5,
):
    r"""Mean paths of :func:`simulate_valley` runs, with 95 % bands, against the bounds of Thm. 3.1.

    A 2 x (number of variances) grid: :math:`\mathbb E \min(\lVert u_n\rVert^2, C)` (top)
    and :math:`\mathbb E \min(\operatorname{Tr}\nabla^2 L, C)` (bottom), with
    :math:`C = 2/\eta = 4D/\alpha` the stability edge (a diverged run counts as
    :math:`C`), one column per variance; Anti-PGD solid, PGD dashed, :math:`\pm\sigma`
    noise blue, Gaussian orange. Horizontal lines: :math:`\alpha D` (dotted),
    :math:`D/\alpha` (dash-dotted) and :math:`d\sigma^2` (green).

    Args:
        runs: the result of :func:`simulate_valley` for ``settings``.
        settings: the ``(distribution, variance)`` pairs it was run with.
        d, D, alpha: as in :func:`simulate_valley`.

    Returns:
        matplotlib.figure.Figure: the figure (not shown, not closed).

    Raises:
        ValueError: if ``runs`` lacks the keys of :func:`simulate_valley` or does not
            have one block per setting.
        TypeError: if ``settings`` is not a sequence of pairs.
    """
    import matplotlib.pyplot as plt

    settings = _check_settings(settings)
    for key in ("pgd", "anti_pgd"):
        if key not in runs:
            raise ValueError(f"runs must be a result of simulate_valley, missing {key!r}")
        if np.shape(runs[key][1])[1] != len(settings):
            raise ValueError(f"runs[{key!r}] has {np.shape(runs[key][1])[1]} settings, settings has {len(settings)}")
    cap = 4 * D / alpha
    steps = runs["pgd"][0]
    variances = sorted({var for _, var in settings})
    colors = {"rademacher": "tab:blue", "gaussian": "tab:orange"}
    fig, axes = plt.subplots(2, len(variances), figsize=(11, 7), sharex=True, squeeze=False)
    for b, (dist, var) in enumerate(settings):
        col = variances.index(var)
        for method, style in (("anti_pgd", "-"), ("pgd", "--")):
            for row, data in enumerate((runs[method][1], runs[method][2])):
                values = np.minimum(data[:, b], cap)  # diverged runs count at the cap C
                mean = values.mean(axis=1)
                half = 1.96 * values.std(axis=1, ddof=1) / math.sqrt(values.shape[1])
                label = f"{'Anti-PGD' if method == 'anti_pgd' else 'PGD'}, {'±σ' if dist == 'rademacher' else 'Gaussian'}"
                axes[row, col].plot(steps, mean, style, color=colors[dist], label=label)
                axes[row, col].fill_between(steps, mean - half, mean + half, color=colors[dist], alpha=0.25, lw=0)
    names = (r"$\mathbb{E}\,\min(\|u_n\|^2, C)$", r"$\mathbb{E}\,\min(\mathrm{Tr}\,\nabla^2 L, C)$")
    for col, var in enumerate(variances):
        for row, name in enumerate(names):
            for level, style, color in ((alpha * D, ":", "k"), (D / alpha, "-.", "k"), (d * var, "-", "tab:green")):
                axes[row, col].axhline(level, color=color, lw=0.8, ls=style)
            axes[row, col].set(yscale="log", ylabel=name, title=rf"$\sigma^2 = {var}$")
        axes[1, col].set_xlabel("step $n$")
    for level, text, color in ((alpha * D, r"$\alpha D$", "k"), (D / alpha, r"$D/\alpha$", "k"),
                               (d * variances[0], r"$d\sigma^2$", "tab:green")):
        axes[0, 0].text(steps[-1], level * 1.1, text, ha="right", va="bottom", color=color)
    axes[0, -1].legend(fontsize=8, loc="center right")
    fig.tight_layout()
    return fig

"""Tests for gni_lib.valley: the batched gradients against autograd, and the valley simulation.

Oracles: autograd on the single-point losses of gni_lib.data, the optimisers' own
update functions run one row at a time, and the two bounds of Orvieto et al. (2022),
Thm. 3.1, whose predicted values (about d sigma^2 = 5 for Anti-PGD, about 720 for
PGD) lie a factor of four or more from the bounds (50 and 200).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import grad

from _shared import DEVICES, one_thread, seeded_generator  # noqa: F401 (one_thread is an autouse fixture)
from gni_lib.data import quadratic_regression_loss, widening_valley_loss
from gni_lib.optim import anti_pgd_update, draw_noise, pgd_update
from gni_lib.valley import plot_valley_paths, quadratic_regression_grads, simulate_valley, valley_grads


@pytest.mark.parametrize("device", DEVICES)
def test_valley_grads_match_autograd(device):
    gen = seeded_generator(0, device)
    u = torch.randn(7, 5, generator=gen, dtype=torch.float64, device=device)
    v = torch.randn(7, generator=gen, dtype=torch.float64, device=device)
    auto_u, auto_v = grad(lambda a, b: widening_valley_loss(a, b).sum(), argnums=(0, 1))(u, v)
    analytic = valley_grads({"u": u, "v": v})
    torch.testing.assert_close(analytic["u"], auto_u, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(analytic["v"], auto_v, rtol=1e-12, atol=1e-14)


def test_valley_grads_bad_input_names_the_argument():
    u, v = torch.ones(3, 2, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="'v'"):
        valley_grads({"u": u})
    with pytest.raises(ValueError, match=r"params\['v'\]"):
        valley_grads({"u": u, "v": torch.ones(4, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"params\['u'\]"):
        valley_grads({"u": torch.ones(3, dtype=torch.float64), "v": v})
    with pytest.raises(TypeError, match="params"):
        valley_grads([u, v])


@pytest.mark.parametrize("device", DEVICES)
def test_quadratic_regression_grads_match_autograd_row_by_row(device):
    gen = seeded_generator(1, device)
    x = torch.randn(4, 6, 9, generator=gen, dtype=torch.float64, device=device)
    y = torch.randn(4, 6, generator=gen, dtype=torch.float64, device=device)
    w = torch.randn(4, 9, generator=gen, dtype=torch.float64, device=device)
    batched = quadratic_regression_grads(w, x, y)
    for b in range(4):
        torch.testing.assert_close(batched[b], grad(quadratic_regression_loss)(w[b], x[b], y[b]), rtol=1e-12, atol=1e-14)


def test_quadratic_regression_grads_bad_shapes_name_the_argument():
    w, x, y = torch.ones(2, 3), torch.ones(2, 4, 3), torch.ones(2, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        quadratic_regression_grads(w, torch.ones(2, 4, 5), y)
    with pytest.raises(ValueError, match="y must have shape"):
        quadratic_regression_grads(w, x, torch.ones(2, 5))
    with pytest.raises(ValueError, match="w must have 2 dimensions"):
        quadratic_regression_grads(torch.ones(3), x, y)
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        quadratic_regression_grads(w, x, [1.0])


SETTINGS = [("rademacher", 0.5), ("gaussian", 0.5)]


def test_simulate_valley_shapes_and_determinism():
    first = simulate_valley(SETTINGS, 5, 40, seed=3, record_every=10, device="cpu")
    again = simulate_valley(SETTINGS, 5, 40, seed=3, record_every=10, device="cpu")
    other = simulate_valley(SETTINGS, 5, 40, seed=4, record_every=10, device="cpu")
    steps, u2, trace = first["pgd"]
    assert list(steps) == [0, 10, 20, 30, 40]
    assert u2.shape == trace.shape == (5, 2, 5) and first["v"].shape == (5, 2, 2, 5)
    assert np.array_equal(first["anti_pgd"][1], again["anti_pgd"][1])
    assert not np.array_equal(first["anti_pgd"][1], other["anti_pgd"][1])
    np.testing.assert_allclose(u2[0], 100.0)  # ||u_0||^2 = D
    d = 10
    np.testing.assert_allclose(trace, d * first["v"][:, 0] ** 2 + u2, rtol=1e-12)


def test_simulate_valley_rows_follow_the_update_rules():
    """One PGD and one Anti-PGD row, replayed with the optimisers' update functions."""
    d, D, alpha, steps = 4, 16.0, 0.5, 6
    eta = alpha / (2 * D)
    out = simulate_valley([("gaussian", 0.3)], 1, steps, seed=9, d=d, D=D, alpha=alpha, record_every=1, device="cpu")
    gen = seeded_generator(9)
    params = {"u": torch.full((2, d), math.sqrt(D / d), dtype=torch.float64), "v": torch.zeros(2, dtype=torch.float64)}
    pgd = {k: t[:1] for k, t in params.items()}
    anti, state = {k: t[1:] for k, t in params.items()}, None
    for n in range(1, steps + 1):
        gauss = draw_noise(params, 1.0, gen, distribution="gaussian")
        draw_noise(params, 1.0, gen, distribution="rademacher")  # drawn, and unused by a Gaussian row
        noise = {k: t * math.sqrt(0.3) for k, t in gauss.items()}
        pgd = pgd_update(pgd, valley_grads(pgd), {k: t[:1] for k, t in noise.items()}, eta)
        anti, state = anti_pgd_update(anti, valley_grads(anti), {k: t[1:] for k, t in noise.items()}, state, eta)
        params = {k: torch.cat([pgd[k], anti[k]]) for k in params}
        assert out["pgd"][1][n, 0, 0] == pytest.approx(pgd["u"].pow(2).sum().item(), rel=1e-13)
        assert out["anti_pgd"][1][n, 0, 0] == pytest.approx(anti["u"].pow(2).sum().item(), rel=1e-13)
        shifted = (anti["u"] - state["u"]).pow(2).sum().item()
        assert out["anti_pgd_shifted"][0][n, 0, 0] == pytest.approx(shifted, rel=1e-12)


def test_simulate_valley_reproduces_the_two_bounds():
    """Anti-PGD ends below alpha D, PGD above D / alpha (capped at the stability edge 2 / eta)."""
    out = simulate_valley(SETTINGS, 40, 1000, seed=0, record_every=100, device="cpu")
    cap = 2 / (0.5 / 200)
    anti = np.minimum(out["anti_pgd"][1][-1], cap).mean(axis=1)
    pgd = np.minimum(out["pgd"][1][-1], cap).mean(axis=1)
    assert (anti < 0.5 * 100).all() and (anti > 0.5 * 10 * 0.5).all()  # between d sigma^2 / 2 and alpha D
    assert (pgd > 100 / 0.5).all()


def test_simulate_valley_diverged_runs_are_infinite():
    out = simulate_valley([("rademacher", 2.5)], 20, 400, seed=1, record_every=400, blow_up=1e3, device="cpu")
    final = out["pgd"][1][-1, 0]
    assert np.isinf(final).any() and np.isfinite(out["anti_pgd"][1][-1, 0]).all()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"settings": [("uniform", 0.5)]}, ValueError, "settings: distribution"),
        ({"settings": [("gaussian", -1.0)]}, ValueError, "settings: variance"),
        ({"settings": []}, TypeError, "settings"),
        ({"runs": 0}, ValueError, "runs"),
        ({"steps": 2.5}, TypeError, "steps"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_simulate_valley_bad_arguments_name_themselves(kwargs, error, message):
    arguments = {"settings": SETTINGS, "runs": 2, "steps": 3, "seed": 0, "device": "cpu"} | kwargs
    with pytest.raises(error, match=message):
        simulate_valley(**arguments)


def test_plot_valley_paths_draws_one_column_per_variance():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [("rademacher", 0.5), ("gaussian", 0.5), ("rademacher", 2.5)]
    out = simulate_valley(settings, 4, 20, seed=0, record_every=10, device="cpu")
    fig = plot_valley_paths(out, settings)
    axes = fig.get_axes()
    assert len(axes) == 4  # 2 rows x 2 variances
    assert len(axes[0].get_lines()) == 2 * 2 + 3  # two settings x two methods, plus three bounds
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata()[0], 100.0)  # ||u_0||^2 = D
    plt.close(fig)
    with pytest.raises(ValueError, match="settings"):
        plot_valley_paths(out, settings[:2])
    with pytest.raises(ValueError, match="'pgd'"):
        plot_valley_paths({"anti_pgd": out["anti_pgd"]}, settings)

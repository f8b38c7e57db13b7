"""Tests of gni_lib.tikhonov against independent routes: gni_lib.MLP with autograd, one network at a time, exact gaps."""

from __future__ import annotations

import pytest
import torch

import gni_lib
from gni_lib.penalties import input_derivatives
from gni_lib.tikhonov import antithetic_pairs, stacked_forward, stacked_mlp, train_stacked


def _data(count: int, points: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [gni_lib.regression_1d(points, noise_std=0.1, seed=s, device="cpu") for s in range(count)]
    return tuple(torch.stack([p[i] for p in pairs]).float() for i in (0, 1))


# --- antithetic_pairs ---------------------------------------------------------------------


def test_antithetic_pairs_are_exact_for_a_linear_model() -> None:
    # For f(x) = w x + b the pair is ½ w² ε² exactly: the odd powers cancel, no higher ones exist.
    model = torch.nn.Linear(1, 1).double()
    x = torch.linspace(-1, 1, 9, dtype=torch.float64)[:, None]
    y = torch.sin(3 * x)
    pairs, noise = antithetic_pairs(model, x, y, 0.3, 50, torch.Generator().manual_seed(0))
    assert pairs.shape == (50, 9) and noise.shape == (50, 9, 1)
    w = model.weight.item()
    torch.testing.assert_close(pairs, 0.5 * w**2 * noise.squeeze(-1) ** 2, rtol=1e-10, atol=1e-12)
    assert noise.std().item() == pytest.approx(0.3, rel=0.1)


def test_antithetic_pairs_mean_matches_the_sigma2_term() -> None:
    # Small sigma: the mean pair per example is g''σ²/2 to O(σ⁴), g = ½(f - y)².
    net = gni_lib.MLP([1, 8, 1], seed=3).double().eval()
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    y = torch.zeros_like(x)
    sigma = 1e-3
    pairs, _ = antithetic_pairs(net, x, y, sigma, 20_000, torch.Generator().manual_seed(1))
    g2 = input_derivatives(lambda z: 0.5 * (net(z) - y) ** 2, x, 2)[2].squeeze(1)
    torch.testing.assert_close(pairs.mean(0), 0.5 * g2 * sigma**2, rtol=0.05, atol=1e-9)


@pytest.mark.parametrize(
    "change, name, error",
    [
        ({"model": 3}, "model", TypeError),
        ({"inputs": torch.zeros(4)}, "inputs", ValueError),
        ({"targets": torch.zeros(3, 1)}, "targets", ValueError),
        ({"noise_std": -0.1}, "noise_std", ValueError),
        ({"draws": 0}, "draws", ValueError),
        ({"generator": 0}, "generator", TypeError),
    ],
)
def test_antithetic_pairs_rejects_bad_arguments(change: dict, name: str, error: type) -> None:
    arguments = {"model": torch.nn.Linear(1, 1), "inputs": torch.zeros(4, 1), "targets": torch.zeros(4, 1),
                 "noise_std": 0.1, "draws": 2, "generator": torch.Generator()}
    arguments.update(change)
    with pytest.raises(error, match=name):
        antithetic_pairs(**arguments)


# --- stacked networks -------------------------------------------------------------------


def test_stacked_forward_matches_each_mlp_and_autograd() -> None:
    seeds = [5, 11, 7]
    params = stacked_mlp(seeds, (1, 6, 4, 1), dtype=torch.float64)
    assert [tuple(w.shape) for w, _ in params] == [(3, 6, 1), (3, 4, 6), (3, 1, 4)]
    x = torch.linspace(-1.5, 1.5, 13, dtype=torch.float64)[:, None]
    f, slope = stacked_forward(params, x.expand(3, -1, -1))
    for i, seed in enumerate(seeds):
        net = gni_lib.MLP([1, 6, 4, 1], seed=seed).double().eval()
        value, derivative = input_derivatives(net, x, 1)
        torch.testing.assert_close(f[i], value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(slope[i], derivative, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["plain", "noise", "tikhonov"])
def test_a_stack_trains_like_its_networks_one_by_one(kind: str) -> None:
    # Networks in a stack share nothing: network 1 of a stack of two ends where it ends alone.
    x, y = _data(2)
    options = {"noise_std": 0.1, "steps": 15, "settle_steps": 5, "repeats": 2}
    both = train_stacked(stacked_mlp([1, 2], dtype=torch.float64), kind, x.double(), y.double(),
                         generator=torch.Generator().manual_seed(0), **options)
    alone = train_stacked(stacked_mlp([2], dtype=torch.float64), kind, x[1:].double(), y[1:].double(),
                          generator=torch.Generator().manual_seed(0), **options)
    if kind == "noise":  # the noise differs (one draw for two networks), so only the clean kinds agree exactly
        assert not torch.allclose(both[0][0][1], alone[0][0][0])
        return
    for (w2, b2), (w1, b1) in zip(both, alone):
        torch.testing.assert_close(w2[1], w1[0], rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(b2[1], b1[0], rtol=1e-9, atol=1e-11)


def test_the_penalty_flattens_the_fit_at_the_training_inputs() -> None:
    x, y = _data(3)
    slopes = {}
    for kind, weight in (("plain", None), ("tikhonov", 1.0)):
        params = train_stacked(stacked_mlp([0, 1, 2]), kind, x, y, noise_std=0.1, steps=200, penalty_weight=weight)
        slopes[kind] = stacked_forward(params, x)[1].pow(2).mean().item()  # the penalised mean
    assert slopes["tikhonov"] < 0.5 * slopes["plain"]


def test_noise_training_draws_from_its_generator() -> None:
    x, y = _data(1)
    runs = [train_stacked(stacked_mlp([0]), "noise", x, y, noise_std=0.2, steps=5,
                          generator=torch.Generator().manual_seed(s))[0][0] for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("seeds", [[], [-1], "ab", [1.5]])
def test_stacked_mlp_rejects_bad_seeds(seeds: object) -> None:
    with pytest.raises(ValueError, match="seeds"):
        stacked_mlp(seeds)


def test_stacked_forward_rejects_bad_arguments() -> None:
    params = stacked_mlp([0, 1])
    with pytest.raises(ValueError, match="x must have shape"):
        stacked_forward(params, torch.zeros(3, 5, 1))
    with pytest.raises(ValueError, match="x must have 3"):
        stacked_forward(params, torch.zeros(5, 1))
    with pytest.raises(ValueError, match="params"):
        stacked_forward([], torch.zeros(2, 5, 1))


@pytest.mark.parametrize(
    "change, name, error",
    [
        ({"kind": "ridge"}, "kind", ValueError),
        ({"inputs": torch.zeros(3, 16, 1)}, "inputs", ValueError),
        ({"targets": torch.zeros(2, 15, 1)}, "targets", ValueError),
        ({"noise_std": -1.0}, "noise_std", ValueError),
        ({"steps": 0}, "steps", ValueError),
        ({"settle_steps": -1}, "settle_steps", ValueError),
        ({"lr": 0.0}, "lr", ValueError),
        ({"repeats": 0}, "repeats", ValueError),
        ({"penalty_weight": -1.0}, "penalty_weight", ValueError),
        ({"kind": "noise", "generator": None}, "generator", TypeError),
    ],
)
def test_train_stacked_rejects_bad_arguments(change: dict, name: str, error: type) -> None:
    x, y = _data(2)
    arguments = {"params": stacked_mlp([0, 1]), "kind": "tikhonov", "inputs": x, "targets": y,
                 "noise_std": 0.1, "steps": 1}
    arguments.update(change)
    with pytest.raises(error, match=name):
        train_stacked(**arguments)

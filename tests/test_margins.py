"""gni_lib.margins: the breast-cancer split, one arm of the experiment, the ECE of outcomes, the walk."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _shared import one_thread  # noqa: F401  (one_thread is autouse)

import gni_lib
from gni_lib.calibration import expected_calibration_error, input_margin
from gni_lib.noise import GaussianNoise
from gni_lib.margins import (
    ARMS,
    calibrated_ece_draws,
    ece_of_outcomes,
    load_breast_cancer_split,
    train_noise_arm,
    walk_ratios,
)

# --- the breast-cancer split ------------------------------------------------------------------


def test_breast_cancer_split_is_stratified_and_standardised() -> None:
    x_tr, y_tr, x_te, y_te = load_breast_cancer_split(seed=3)
    assert x_tr.shape == (426, 30) and x_te.shape == (143, 30)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    # stratified: the share of class 1 (357 of 569) is the same in both parts to one example
    assert abs(y_te.float().mean().item() - 357 / 569) < 1 / 143
    assert torch.allclose(x_tr.double().mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x_tr.double().std(0, correction=0), torch.ones(30, dtype=torch.float64), atol=1e-5)


def test_breast_cancer_split_depends_on_the_seed_only() -> None:
    a, b, c = (load_breast_cancer_split(seed=s) for s in (5, 5, 6))
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_test, c.x_test)
    # a stream seed beyond 32 bits is reduced modulo 2**32, as scikit-learn needs
    assert torch.equal(load_breast_cancer_split(seed=5 + 2**32).x_test, a.x_test)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [({"test_fraction": 1.5}, ValueError, "test_fraction"), ({"test_fraction": True}, TypeError, "test_fraction"),
     ({"seed": -1}, ValueError, "seed"), ({"dtype": torch.int64}, TypeError, "dtype")],
)
def test_breast_cancer_split_rejects_bad_arguments(kwargs, error, name) -> None:
    with pytest.raises(error, match=name):
        load_breast_cancer_split(**kwargs)


# --- one arm of the experiment -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_split():
    x_tr, y_tr, x_te, y_te = load_breast_cancer_split(seed=0)
    return x_tr[:96], y_tr[:96], x_te[:40], y_te[:40]


def test_train_noise_arm_records_and_pairs_the_arms(small_split) -> None:
    kwargs = dict(steps=5, hidden=8, batch_size=32)
    base = train_noise_arm("baseline", small_split, [0, 1], **kwargs)
    again = train_noise_arm("baseline", small_split, [0, 1], **kwargs)
    noise = train_noise_arm("noise", small_split, [0], **kwargs)
    assert len(base) == 2 and set(base[0]) >= {"model", "logits", "ece", "gamma", "logit_margin", "diagram"}
    assert base[0]["logits"].shape == (40, 2) and base[0]["gamma"].shape == (40,)
    assert torch.equal(base[0]["logits"], again[0]["logits"])  # deterministic per seed
    assert not torch.equal(base[0]["logits"], base[1]["logits"])  # seeds differ
    assert not torch.equal(base[0]["logits"], noise[0]["logits"])  # the noise acts
    assert base[0]["ece"] == pytest.approx(expected_calibration_error(base[0]["logits"], small_split[3]).item())
    z, y = base[0]["logits"], small_split[3]
    assert np.all((base[0]["gamma"] > 0) == (z.argmax(1) == y).numpy())


def test_the_R_arm_trains_a_clean_network_on_the_penalty(small_split) -> None:
    kwargs = dict(steps=5, hidden=8, batch_size=32)
    base = train_noise_arm("baseline", small_split, [2], **kwargs)[0]
    penalised = train_noise_arm("R", small_split, [2], **kwargs)[0]
    assert not torch.equal(base["logits"], penalised["logits"])
    assert train_noise_arm("R", small_split, [2], variance=0.0, **kwargs)[0]["logits"].allclose(base["logits"])


@pytest.mark.parametrize(
    "arm, seeds, kwargs, error, name",
    [("dropout", [0], {}, ValueError, "arm"), ("noise", [], {}, ValueError, "seeds"),
     ("noise", [-1], {}, ValueError, "seeds"), ("noise", [0], {"steps": 0}, ValueError, "steps"),
     ("noise", [0], {"variance": -0.1}, ValueError, "variance"), ("noise", [0], {"lr": 0.0}, ValueError, "lr")],
)
def test_train_noise_arm_rejects_bad_arguments(small_split, arm, seeds, kwargs, error, name) -> None:
    with pytest.raises(error, match=name):
        train_noise_arm(arm, small_split, seeds, **{"steps": 2, **kwargs})


def test_train_noise_arm_rejects_a_malformed_split(small_split) -> None:
    with pytest.raises(TypeError, match="data"):
        train_noise_arm("noise", small_split[:3], [0], steps=2)
    with pytest.raises(ValueError, match="data.y_test"):
        train_noise_arm("noise", (*small_split[:3], small_split[3].float()), [0], steps=2)


def test_arms_are_the_four_of_the_pages() -> None:
    assert ARMS == ("baseline", "noise", "hidden", "R")


# --- the ECE of outcomes ----------------------------------------------------------------------


def test_ece_of_outcomes_equals_the_library_ece() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(300, 4, generator=generator, dtype=torch.float64)
    confidence, prediction = torch.softmax(logits, 1).max(1)
    right = torch.rand(5, 300, generator=generator, dtype=torch.float64) < confidence
    for m in (1, 5, 10, 15):
        for d in range(5):
            labels = torch.where(right[d], prediction, (prediction + 1) % 4)
            expected = expected_calibration_error(logits, labels, bins=m).item()
            assert abs(ece_of_outcomes(confidence, right[d], m).item() - expected) < 1e-12
        assert ece_of_outcomes(confidence, right, m).shape == (5,)


def test_ece_of_outcomes_by_hand() -> None:
    confidence = torch.tensor([0.95, 0.85, 0.70, 0.65, 0.75, 0.55], dtype=torch.float64)
    right = torch.tensor([True, False, True, True, False, True])
    assert ece_of_outcomes(confidence, right, 5).item() == pytest.approx(0.225, abs=1e-12)
    assert ece_of_outcomes(confidence, right, 1).item() == pytest.approx(abs(4 / 6 - confidence.mean().item()))


def test_ece_of_outcomes_rejects_bad_arguments() -> None:
    confidence = torch.tensor([0.5, 0.9], dtype=torch.float64)
    with pytest.raises(ValueError, match="right"):
        ece_of_outcomes(confidence, torch.tensor([True, False, True]), 10)
    with pytest.raises(TypeError, match="right"):
        ece_of_outcomes(confidence, [True, False], 10)
    with pytest.raises(ValueError, match="bins"):
        ece_of_outcomes(confidence, torch.tensor([True, False]), 0)


def test_calibrated_ece_draws_is_the_bias_of_a_calibrated_model() -> None:
    confidence = torch.full((400,), 0.8, dtype=torch.float64)
    draws = calibrated_ece_draws(confidence, [1, 10], 4000, torch.Generator().manual_seed(0))
    assert draws.shape == (2, 4000)
    assert torch.allclose(draws[0], draws[1], rtol=0, atol=1e-12)  # one confidence value: one filled bin
    # |mean of 400 Bernoulli(0.8) - 0.8|: mean sqrt(2/pi) * sqrt(0.16 / 400); 4000 draws, 5 standard errors
    expected = math.sqrt(2 / math.pi) * math.sqrt(0.16 / 400)
    assert abs(draws[0].mean().item() - expected) < 5 * draws[0].std().item() / math.sqrt(4000)


def test_calibrated_ece_draws_rejects_bad_arguments() -> None:
    confidence = torch.full((10,), 0.8, dtype=torch.float64)
    with pytest.raises(TypeError, match="generator"):
        calibrated_ece_draws(confidence, [10], 5, 0)
    with pytest.raises(ValueError, match="bin_counts"):
        calibrated_ece_draws(confidence, [], 5, torch.Generator())
    with pytest.raises(ValueError, match="draws"):
        calibrated_ece_draws(confidence, [10], 0, torch.Generator())


# --- the walk to the boundary -----------------------------------------------------------------


class _Quadratic(torch.nn.Module):
    """Two logits (0, 2 - x_1^2 - x_2), with a noise site at the input: a boundary that curves."""

    def __init__(self) -> None:
        super().__init__()
        self.site = GaussianNoise(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.site(x)
        return torch.stack([torch.zeros_like(x[:, 0]), 2 - x[:, 0] ** 2 - x[:, 1]], dim=1)


def test_walk_ratio_of_an_affine_classifier_is_one() -> None:
    model = gni_lib.MLP([3, 5, 4], activation="linear", seed=0).double()
    x = 2 * torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    walk = walk_ratios(model, x, y)
    assert walk.shape == (200,)
    # the linearisation is exact: the class changes at gamma_lin, i.e. at step 20 or (on a tie) 21
    assert bool(((walk == 1.0) | (walk == 21 / 20)).all()), walk.unique()


def test_walk_ratio_sees_a_bending_boundary() -> None:
    model = _Quadratic()
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1])
    walk = walk_ratios(model, x, y)
    # z_1 - z_0 = 2 - x_1^2 - x_2 = 1 at (1, 0), gradient (-2, -1): gamma_lin = 1 / sqrt(5); along the
    # normal (2, 1) / sqrt(5) the gap is 1 - t - 0.16 t^2 (t in units of gamma_lin), zero at t = 0.877:
    # the boundary curves towards the point, so the class changes before gamma_lin, at step 18 of 20
    z = model(x)
    jacobian = gni_lib.jacobians.layer_jacobians(model, x)[0]
    gamma = input_margin(z, jacobian, y).item()
    assert gamma == pytest.approx(1 / math.sqrt(5))
    assert walk.item() == pytest.approx(18 / 20)


def test_walk_ratios_rejects_bad_arguments() -> None:
    model = gni_lib.MLP([2, 2], activation="linear", seed=0).double()
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="y"):
        walk_ratios(model, x, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="resolution"):
        walk_ratios(model, x, torch.zeros(3, dtype=torch.int64), resolution=0)
    with pytest.raises(TypeError, match="x"):
        walk_ratios(model, [[0.0, 0.0]], torch.zeros(1, dtype=torch.int64))

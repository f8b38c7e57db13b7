"""Tests for gni_lib.layerwise: chain-batched perturbed GD, the reference verdict, variance by width."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _shared import DEVICES, one_thread, seeded_generator  # noqa: F401
from scipy import stats

from gni_lib.layerwise import (
    chain_time_averages,
    judge_against_reference,
    loglog_slope_with_se,
    stationary_covariance_scale,
    variance_by_width,
)

F64 = torch.float64


def _quadratic(target):
    return lambda w: 0.5 * (w - target).pow(2).sum()


@pytest.mark.parametrize("device", DEVICES)
def test_time_average_without_noise_is_the_gradient_descent_average(device):
    target = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64, device=device)
    start = torch.zeros(2, 2, dtype=F64, device=device)
    got = chain_time_averages([start], _quadratic(target), lambda w: 2 * w, sigma=0.0, lr=0.3, steps=7, burn_in=3)
    w, total = start.clone(), torch.zeros_like(start)
    for step in range(7):  # the oracle: w <- w - lr (w - target), averaging 2 w after the burn-in
        w = w - 0.3 * (w - target)
        if step >= 3:
            total += 2 * w
    assert torch.allclose(got, total / 4, rtol=0, atol=1e-14)
    assert torch.equal(start, torch.zeros(2, 2, dtype=F64, device=device))  # the start is not changed


def test_time_average_with_noise_is_unbiased_on_a_quadratic():
    # w <- w - lr (w + xi - a): stationary mean a, variance lr sigma^2 / (2 - lr) per coordinate
    chains, target = 400, torch.tensor([0.7, -0.4], dtype=F64)
    start = target.expand(chains, 2).clone()
    averages = chain_time_averages([start], _quadratic(target), lambda w: w, sigma=0.5, lr=0.2, steps=300,
                                   burn_in=50, generator=seeded_generator(0))
    mean, se = averages.mean(dim=0), averages.std(dim=0) / math.sqrt(chains)
    assert ((mean - target).abs() < 5 * se).all()  # false alarm about 1e-6 per coordinate
    # the noise moves the chains: a time average over 250 correlated steps keeps a spread
    assert (averages.std(dim=0) > 1e-3).all()


def test_chain_time_averages_rejects_bad_arguments():
    w = torch.zeros(3, 2, dtype=F64)
    good = dict(sigma=0.1, lr=0.1, steps=5, burn_in=1)
    with pytest.raises(TypeError, match="params"):
        chain_time_averages(w, _quadratic(w), lambda w: w, **good)
    with pytest.raises(TypeError, match="loss_of"):
        chain_time_averages([w], None, lambda w: w, **good)
    with pytest.raises(ValueError, match="sigma"):
        chain_time_averages([w], _quadratic(w), lambda w: w, **{**good, "sigma": -1.0})
    with pytest.raises(ValueError, match="lr"):
        chain_time_averages([w], _quadratic(w), lambda w: w, **{**good, "lr": 0.0})
    with pytest.raises(ValueError, match="burn_in"):
        chain_time_averages([w], _quadratic(w), lambda w: w, **{**good, "burn_in": 5})


def test_stationary_covariance_scale_of_a_diagonal_quadratic():
    curvatures = torch.tensor([0.5, 4.0, 2.0], dtype=F64)

    def loss_at(a, b):
        return 0.5 * (curvatures[:2] * a.pow(2)).sum() + 0.5 * curvatures[2] * b.pow(2).sum()

    scale, lam_max = stationary_covariance_scale(loss_at, torch.ones(3, dtype=F64), lambda w: (w[:2], w[2:]),
                                                 lr=0.1, sigma=0.3)
    assert lam_max == pytest.approx(4.0, abs=1e-12)
    assert scale == pytest.approx(0.1 * 0.09 * 4.0 / 2, rel=1e-12)
    with pytest.raises(ValueError, match="point"):
        stationary_covariance_scale(loss_at, torch.ones(3, 1, dtype=F64), lambda w: (w[:2], w[2:]), lr=0.1, sigma=0.3)
    with pytest.raises(TypeError, match="unflatten"):
        stationary_covariance_scale(loss_at, torch.ones(3, dtype=F64), None, lr=0.1, sigma=0.3)


def test_judge_against_reference_matches_a_hand_computed_bonferroni_interval():
    rows = torch.tensor([[1.0, 0.0, 2.0], [1.2, 0.1, 2.1], [0.9, -0.1, 1.9], [1.1, 0.0, 2.2]], dtype=F64)
    stated = torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    wrong = torch.tensor([1.0, 0.0, 4.0], dtype=F64)  # gap 2
    check = judge_against_reference(rows, stated, wrong, claim=(-math.inf, 0.05), approx=(-math.inf, 1.0))
    mean = rows.numpy().mean(axis=0)
    se = rows.numpy().std(axis=0, ddof=1) / 2
    k = stats.t.ppf(1 - 0.05 / 2 / 3, 3)
    err = np.abs(mean - stated.numpy())
    assert check.gap == pytest.approx(2.0)
    assert check.t == pytest.approx(err.max() / 2, rel=1e-12)
    assert check.low == pytest.approx(np.clip(err - k * se, 0, None).max() / 2, rel=1e-12)
    assert check.high == pytest.approx((err + k * se).max() / 2, rel=1e-12)
    assert check.verdict == "holds approximately"  # the upper end lies between 0.05 and 1
    assert 0.05 < check.high < 1


def test_judge_against_reference_verdicts_at_both_ends():
    gen = seeded_generator(1)
    stated, wrong = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
    near = 1e-3 * torch.randn(30, 4, generator=gen, dtype=F64)
    far = 2.0 + 1e-3 * torch.randn(30, 4, generator=gen, dtype=F64)
    regions = dict(claim=(-math.inf, 0.05), approx=(-math.inf, 1.0))
    assert judge_against_reference(near, stated, wrong, **regions).verdict == "holds"
    assert judge_against_reference(far, stated, wrong, **regions).verdict == "did not reproduce"


def test_judge_against_reference_rejects_bad_arguments():
    rows, v = torch.zeros(3, 2, dtype=F64), torch.zeros(2, dtype=F64)
    regions = dict(claim=(-math.inf, 0.05))
    with pytest.raises(ValueError, match="gap"):
        judge_against_reference(rows, v, v, **regions)
    with pytest.raises(ValueError, match="stated and wrong"):
        judge_against_reference(rows, torch.zeros(3, dtype=F64), v + 1, **regions)
    with pytest.raises(ValueError, match="at least 2 chains"):
        judge_against_reference(rows[:1], v, v + 1, **regions)
    with pytest.raises(ValueError, match="level"):
        judge_against_reference(rows, v, v + 1, level=1.5, **regions)
    with pytest.raises(TypeError, match="chain_values"):
        judge_against_reference(rows.numpy(), v, v + 1, **regions)


def test_variance_by_width_on_a_quadratic_against_its_closed_form():
    # L = 1/2 ||w||^2: the perturbed gradient is w + xi, so Tr Cov = sigma^2 P (all) and
    # sigma^2 P_t for tensor t alone; averaged over the G = 2 tensors, per parameter sigma^2 / 2
    def loss(p):
        return 0.5 * (p["a"].pow(2).sum() + p["b"].pow(2).sum())

    def weights_at(m):
        return {"a": torch.ones(m, 3, dtype=F64), "b": torch.ones(2, m, dtype=F64)}

    values, errors = variance_by_width(loss, weights_at, [4, 16], 0.3, samples=400, generator=seeded_generator(2))
    for i in range(2):
        assert abs(values["all"][i] - 0.09) < 5 * errors["all"][i]
        assert abs(values["layer"][i] - 0.045) < 5 * errors["layer"][i]
        assert errors["all"][i] < 0.05 * values["all"][i] and errors["layer"][i] < 0.05 * values["layer"][i]
    assert len(values["all"]) == len(errors["layer"]) == 2


def test_variance_by_width_rejects_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        variance_by_width(lambda p: p["a"].sum(), lambda m: {"a": torch.ones(m, dtype=F64)}, [], 0.1, samples=4)
    with pytest.raises(TypeError, match="weights_at"):
        variance_by_width(lambda p: p["a"].sum(), 3, [2], 0.1, samples=4)
    with pytest.raises(ValueError, match="widths"):
        variance_by_width(lambda p: p["a"].sum(), lambda m: {"a": torch.ones(m, dtype=F64)}, [0], 0.1, samples=4)


def test_loglog_slope_with_se_against_finite_differences():
    x, v = np.array([8.0, 16.0, 64.0, 256.0]), np.array([3.0, 5.5, 13.0, 40.0])
    slope, _ = loglog_slope_with_se(x, v, [0, 0, 0, 0])
    assert slope == pytest.approx(np.polyfit(np.log(x), np.log(v), 1)[0], rel=1e-12)
    for i in range(4):  # one value with SE s alone: the slope moves by d slope / d v_i * s
        eps = 1e-7
        bumped = v.copy()
        bumped[i] *= 1 + eps
        moved = (np.polyfit(np.log(x), np.log(bumped), 1)[0] - slope) / eps
        ses = np.zeros(4)
        ses[i] = v[i]
        assert loglog_slope_with_se(x, v, ses)[1] == pytest.approx(abs(moved), rel=1e-5)
    assert loglog_slope_with_se([1, 2, 4], [1, 2, 4], [0, 0, 0])[0] == pytest.approx(1.0)


def test_loglog_slope_with_se_rejects_bad_arguments():
    with pytest.raises(ValueError, match="one length"):
        loglog_slope_with_se([1, 2], [1, 2, 3], [0, 0])
    with pytest.raises(ValueError, match="x must"):
        loglog_slope_with_se([2, 2], [1, 2], [0, 0])
    with pytest.raises(ValueError, match="values"):
        loglog_slope_with_se([1, 2], [1, -2], [0, 0])
    with pytest.raises(ValueError, match="ses"):
        loglog_slope_with_se([1, 2], [1, 2], [0, -1])

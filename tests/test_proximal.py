"""Tests for gni_lib.proximal: closed-form cases, scikit-learn's lasso, and optimality conditions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _shared import DEVICES, one_thread, seeded_generator  # noqa: F401
from sklearn.linear_model import Lasso

from gni_lib.proximal import (
    group_index,
    group_lasso,
    group_lasso_kkt_violation,
    group_soft_threshold,
    nuclear_norm_kkt_violation,
    nuclear_norm_regression,
    singular_value_threshold,
    soft_threshold,
)

F64 = torch.float64


def test_soft_threshold_by_hand():
    z = torch.tensor([3.0, -0.5, 1.0, -2.0], dtype=F64)
    assert torch.equal(soft_threshold(z, 1.0), torch.tensor([2.0, 0.0, 0.0, -1.0], dtype=F64))


def test_group_soft_threshold_by_hand():
    # group 0 = (3, 4), norm 5, tau 1 -> scaled by 4/5; group 1 = (0.5,), tau 1 -> 0
    z = torch.tensor([3.0, 4.0, 0.5], dtype=F64)
    out = group_soft_threshold(z, [2, 1], [1.0, 1.0])
    assert torch.allclose(out, torch.tensor([2.4, 3.2, 0.0], dtype=F64), atol=1e-15)
    # zero group stays zero (no 0/0)
    assert torch.equal(group_soft_threshold(torch.zeros(3, dtype=F64), [2, 1], [1.0, 1.0]), torch.zeros(3, dtype=F64))


def test_group_index():
    assert group_index([2, 1, 3]).tolist() == [0, 0, 1, 2, 2, 2]


def test_singular_value_threshold_by_hand():
    m = torch.diag(torch.tensor([3.0, 1.0, 0.2], dtype=F64))
    assert torch.allclose(singular_value_threshold(m, 0.5), torch.diag(torch.tensor([2.5, 0.5, 0.0], dtype=F64)),
                          atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_svt_is_the_prox_of_the_nuclear_norm(device):
    """SVT(M) minimises 1/2||B - M||^2 + tau ||B||_*: no random nearby matrix does better."""
    g = seeded_generator(0, device)
    m = torch.randn(5, 4, generator=g, dtype=F64, device=device)
    tau = 0.7

    def objective(b):
        return 0.5 * (b - m).pow(2).sum() + tau * torch.linalg.matrix_norm(b, ord="nuc")

    best = singular_value_threshold(m, tau)
    value = objective(best)
    for _ in range(50):
        other = best + 1e-3 * torch.randn(5, 4, generator=g, dtype=F64, device=device)
        assert objective(other) >= value - 1e-12


def _problem(n, d, seed, device="cpu"):
    g = seeded_generator(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    beta = torch.zeros(d, dtype=F64)
    beta[: min(3, d)] = torch.tensor([1.5, -1.0, 0.5], dtype=F64)[: min(3, d)]
    y = x @ beta + 0.3 * torch.randn(n, generator=g, dtype=F64)
    return x.to(device), y.to(device)


@pytest.mark.parametrize("n, d", [(40, 10), (20, 30)])
def test_singleton_groups_match_sklearn_lasso(n, d):
    x, y = _problem(n, d, seed=1)
    lam = 0.05
    ours = group_lasso(x, y, [1] * d, lam, weights=[1.0] * d)
    theirs = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=200_000).fit(x.numpy(), y.numpy()).coef_
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-8)
    assert group_lasso_kkt_violation(x, y, ours, [1] * d, lam, weights=[1.0] * d) < 1e-8


@pytest.mark.parametrize("device", DEVICES)
def test_group_lasso_orthonormal_design_is_block_soft_threshold(device):
    """With X^T X / n = I the solution is the block soft threshold of X^T y / n at lam * w_g."""
    g = seeded_generator(3)
    n, sizes = 30, [3, 2, 1]
    q, _ = torch.linalg.qr(torch.randn(n, 6, generator=g, dtype=F64))
    x = (q * math.sqrt(n)).to(device)
    y = (x @ torch.tensor([1.0, 0.5, -0.5, 0.1, 0.05, 2.0], dtype=F64, device=device)
         + 0.1 * torch.randn(n, generator=g, dtype=F64).to(device))
    lam = 0.2
    expected = group_soft_threshold(x.T @ y / n, sizes, [lam * math.sqrt(s) for s in sizes])
    got = group_lasso(x, y, sizes, lam)
    assert torch.allclose(got, expected, atol=1e-10)
    assert (got[3:5] == 0).all()  # the weak group is switched off


def test_group_lasso_kkt_on_correlated_design():
    x, y = _problem(25, 12, seed=4)
    sizes = [4, 4, 2, 2]
    lam = 0.1
    beta = group_lasso(x, y, sizes, lam)
    assert group_lasso_kkt_violation(x, y, beta, sizes, lam) < 1e-8
    # the check can fail: a perturbed solution violates the conditions
    assert group_lasso_kkt_violation(x, y, beta + 0.01, sizes, lam) > 1e-3


def test_nuclear_norm_whitened_is_svt_and_kkt():
    g = seeded_generator(5)
    n, d, k = 40, 6, 4
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=F64))
    x = q * math.sqrt(n)
    y = torch.randn(n, k, generator=g, dtype=F64)
    lam = 0.15
    b = nuclear_norm_regression(x, y, lam)
    assert torch.allclose(b, singular_value_threshold(y.T @ x / n, lam), atol=1e-10)
    assert nuclear_norm_kkt_violation(x, y, b, lam) < 1e-8


def test_nuclear_norm_general_design_kkt_and_objective():
    g = seeded_generator(6)
    n, d, k = 30, 5, 4
    x = torch.randn(n, d, generator=g, dtype=F64)
    truth = torch.outer(torch.randn(d, generator=g, dtype=F64), torch.randn(k, generator=g, dtype=F64))  # rank 1
    y = x @ truth + 0.5 * torch.randn(n, k, generator=g, dtype=F64)
    lam = 0.6
    b = nuclear_norm_regression(x, y, lam)
    assert nuclear_norm_kkt_violation(x, y, b, lam) < 1e-7
    assert nuclear_norm_kkt_violation(x, y, 1.1 * b, lam) > 1e-3

    def objective(m):
        return (y - x @ m.T).pow(2).sum() / (2 * n) + lam * torch.linalg.matrix_norm(m, ord="nuc")

    assert torch.linalg.matrix_rank(b) < min(d, k)  # the penalty cuts the rank
    for _ in range(20):
        assert objective(b + 1e-3 * torch.randn(k, d, generator=g, dtype=F64)) >= objective(b) - 1e-12


def test_zero_penalty_is_least_squares():
    x, y = _problem(40, 5, seed=7)
    ols = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(group_lasso(x, y, [5], 0.0), ols, atol=1e-8)


def test_bad_inputs_name_the_argument():
    x, y = _problem(10, 4, seed=0)
    with pytest.raises(ValueError, match="tau"):
        soft_threshold(x, -1.0)
    with pytest.raises(TypeError, match="z"):
        soft_threshold([1.0], 1.0)
    with pytest.raises(ValueError, match="group_sizes"):
        group_lasso(x, y, [2, 1], 0.1)
    with pytest.raises(ValueError, match="group_sizes"):
        group_lasso(x, y, [2, 0, 2], 0.1)
    with pytest.raises(ValueError, match="lam"):
        group_lasso(x, y, [4], -0.1)
    with pytest.raises(ValueError, match="weights"):
        group_lasso(x, y, [2, 2], 0.1, weights=[1.0])
    with pytest.raises(ValueError, match="y"):
        group_lasso(x, y[:5], [4], 0.1)
    with pytest.raises(ValueError, match="x"):
        group_lasso(x.clone().fill_(float("nan")), y, [4], 0.1)
    with pytest.raises(ValueError, match="m"):
        singular_value_threshold(torch.ones(3, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="y"):
        nuclear_norm_regression(x, y, 0.1)  # y must be (n, k)
    with pytest.raises(ValueError, match="b"):
        nuclear_norm_kkt_violation(x, y.unsqueeze(1), torch.zeros(2, 2, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="beta"):
        group_lasso_kkt_violation(x, y, torch.zeros(3, dtype=F64), [4], 0.1)

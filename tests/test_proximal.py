"""Tests for gni_lib.proximal: closed-form cases, scikit-learn's lasso, and optimality conditions.

The optimality (KKT) checks and the block soft threshold below are test oracles,
written here independently of the solver.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _shared import DEVICES, one_thread, seeded_generator  # noqa: F401
from sklearn.linear_model import Lasso

import gni_lib.proximal as proximal
from gni_lib.proximal import group_index, group_lasso, singular_value_threshold

F64 = torch.float64


def group_soft_threshold(z, sizes, thresholds):
    """(1 - tau_g / ||z_g||)_+ z_g, group by group (a zero group stays zero)."""
    parts = []
    for zg, tau in zip(z.split(sizes), thresholds):
        norm = torch.linalg.vector_norm(zg).item()
        parts.append(zg * max(1 - tau / norm, 0.0) if norm > 0 else zg)
    return torch.cat(parts)


def group_lasso_kkt_violation(x, y, beta, sizes, lam, weights=None):
    """The largest violation of the group lasso's optimality conditions, in the units of c = X^T (y - X beta) / n.

    beta is optimal iff c_g = lam w_g beta_g / ||beta_g|| where beta_g != 0 and ||c_g|| <= lam w_g where beta_g = 0.
    """
    weights = [math.sqrt(s) for s in sizes] if weights is None else weights
    c = x.T @ (y - x @ beta) / x.shape[0]
    worst = 0.0
    for cg, bg, w in zip(c.split(sizes), beta.split(sizes), weights):
        norm = torch.linalg.vector_norm(bg).item()
        if norm > 0:
            worst = max(worst, torch.linalg.vector_norm(cg - lam * w * bg / norm).item())
        else:
            worst = max(worst, torch.linalg.vector_norm(cg).item() - lam * w)
    return worst


def nuclear_norm_kkt_violation(x, y, b, lam, rank_tol=1e-9):
    """The largest violation of the optimality conditions of min_B ||Y - X B^T||^2 / 2n + lam ||B||_*.

    With C = (Y - X B^T)^T X / n and the compact SVD B = U_r S V_r^T, B is optimal iff
    C = lam (U_r V_r^T + W) with U_r^T W = 0, W V_r = 0 and ||W||_2 <= 1.
    """
    c = (y - x @ b.T).T @ x / x.shape[0]
    u, s, vh = torch.linalg.svd(b, full_matrices=False)
    r = int((s > rank_tol * max(s.max().item(), 1e-300)).sum().item())
    ur, vr = u[:, :r], vh[:r].T
    first = torch.linalg.matrix_norm(c @ vr - lam * ur).item() if r else 0.0
    second = torch.linalg.matrix_norm(ur.T @ c - lam * vr.T).item() if r else 0.0
    pu = torch.eye(c.shape[0], dtype=c.dtype) - ur @ ur.T
    pv = torch.eye(c.shape[1], dtype=c.dtype) - vr @ vr.T
    return max(first, second, torch.linalg.matrix_norm(pu @ c @ pv, ord=2).item() - lam, 0.0)


def test_block_soft_threshold_by_hand():
    # group 0 = (3, 4), norm 5, tau 1 -> scaled by 4/5; group 1 = (0.5,), tau 1 -> 0; a zero group stays 0 (no 0/0)
    index, tau = group_index([2, 1, 2]), torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    out = proximal._block_shrink(torch.tensor([3.0, 4.0, 0.5, 0.0, 0.0], dtype=F64), index, tau)
    assert torch.allclose(out, torch.tensor([2.4, 3.2, 0.0, 0.0, 0.0], dtype=F64), atol=1e-15)


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


def test_svt_solves_nuclear_norm_regression_for_whitened_inputs():
    """Lecture 17's reference: for X^T X / n = I, SVT(Y^T X / n, lam) satisfies the optimality conditions."""
    g = seeded_generator(5)
    n, d, k = 40, 6, 4
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=F64))
    x = q * math.sqrt(n)
    y = torch.randn(n, k, generator=g, dtype=F64)
    lam = torch.linalg.svdvals(y.T @ x / n).median().item()  # half the singular values are cut
    b = singular_value_threshold(y.T @ x / n, lam)
    assert torch.linalg.matrix_rank(b) < min(d, k)  # the threshold cuts the rank
    assert nuclear_norm_kkt_violation(x, y, b, lam) < 1e-10
    assert nuclear_norm_kkt_violation(x, y, 1.1 * b, lam) > 1e-3  # the check can fail


def test_zero_penalty_is_least_squares():
    x, y = _problem(40, 5, seed=7)
    ols = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(group_lasso(x, y, [5], 0.0), ols, atol=1e-8)


def test_bad_inputs_name_the_argument():
    x, y = _problem(10, 4, seed=0)
    with pytest.raises(ValueError, match="tau"):
        singular_value_threshold(x, -1.0)
    with pytest.raises(TypeError, match="m"):
        singular_value_threshold([[1.0]], 1.0)
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
    with pytest.raises(ValueError, match="group_sizes"):
        group_index([])
    with pytest.raises(TypeError, match="group_sizes"):
        group_index("21")


@pytest.mark.parametrize("tol, max_iter", [(1e-6, 20_000), (1e-12, 20_000), (0.0, 137)])
def test_fista_stops_where_a_check_after_every_iteration_would(monkeypatch, tol, max_iter):
    """Checking the stopping rule once per block returns the iterate of a check after every iteration."""
    x, y = _problem(25, 12, seed=4)
    sizes, lam = [4, 4, 2, 2], 0.1
    n = x.shape[0]
    gram, xty = x.T @ x / n, x.T @ y / n
    step = n / torch.linalg.matrix_norm(x, ord=2).item() ** 2
    tau = step * lam * torch.tensor([math.sqrt(s) for s in sizes], dtype=F64)
    beta = point = torch.zeros(12, dtype=F64)
    t = 1.0
    for _ in range(max_iter):  # the reference: FISTA with a check after every iteration
        new = group_soft_threshold(point - step * (gram @ point - xty), sizes, tau.tolist())
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        point = new + ((t - 1) / t_next) * (new - beta)
        change = (new - beta).abs().max().item()
        beta, t = new, t_next
        if change <= tol:
            break
    for every in (1, 7, 50):
        monkeypatch.setattr(proximal, "_CHECK_EVERY", every)
        torch.testing.assert_close(group_lasso(x, y, sizes, lam, max_iter=max_iter, tol=tol), beta,
                                   rtol=0, atol=1e-14)

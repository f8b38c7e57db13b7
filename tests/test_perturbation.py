"""Tests for gni_lib.perturbation: losses, Hessian traces, balanced factors and the gradient variance."""

from __future__ import annotations

import math

import pytest
import torch
from _shared import DEVICES, one_thread, seeded_generator  # noqa: F401

from gni_lib.perturbation import (
    balanced_factors,
    factorised_hessian_trace,
    factorised_loss,
    group_network_hessian_trace,
    orthonormal_design,
    perturbed_gradient_variance,
)

F64 = torch.float64


def group_network_loss(u, v, x, y, sizes):
    """Least squares for the group diagonal network beta_g = v_g u_g: the loss whose trace is checked."""
    beta = u * v.repeat_interleave(torch.tensor(sizes, device=v.device))
    return (x @ beta - y).pow(2).sum() / (2 * x.shape[0])


def _hessian_trace(fn, flat):
    return torch.trace(torch.func.hessian(fn)(flat))


def test_orthonormal_design_whole_and_grouped():
    x = orthonormal_design(30, 6, seed=1)
    assert torch.allclose(x.T @ x / 30, torch.eye(6, dtype=F64), atol=1e-12)
    assert x.mean(dim=0).abs().max() < 1e-12
    sizes = [3, 2, 1]
    xg = orthonormal_design(30, 6, group_sizes=sizes, seed=1)
    gram = xg.T @ xg / 30
    start = 0
    for s in sizes:
        assert torch.allclose(gram[start:start + s, start:start + s], torch.eye(s, dtype=F64), atol=1e-12)
        start += s
    assert gram[0, 3].abs() > 1e-3  # groups stay correlated with each other
    assert torch.equal(orthonormal_design(30, 6, seed=1), x)  # same seed, same matrix


@pytest.mark.parametrize("device", DEVICES)
def test_group_network_trace_matches_autograd(device):
    g = seeded_generator(0)
    sizes = [2, 3, 1]
    x = torch.randn(7, 6, generator=g, dtype=F64).to(device)
    y = torch.randn(7, generator=g, dtype=F64).to(device)
    u = torch.randn(6, generator=g, dtype=F64).to(device)
    v = torch.randn(3, generator=g, dtype=F64).to(device)
    # the loss by hand
    beta = torch.cat([v[0] * u[:2], v[1] * u[2:5], v[2] * u[5:]])
    assert torch.allclose(group_network_loss(u, v, x, y, sizes), (x @ beta - y).pow(2).sum() / 14)
    brute = _hessian_trace(lambda w: group_network_loss(w[:6], w[6:], x, y, sizes), torch.cat([u, v]))
    assert torch.allclose(group_network_hessian_trace(u, v, x, sizes), brute, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_factorised_trace_matches_autograd(device):
    g = seeded_generator(1)
    n, d, k, m = 9, 4, 3, 5
    x = torch.randn(n, d, generator=g, dtype=F64).to(device)
    y = torch.randn(n, k, generator=g, dtype=F64).to(device)
    w1 = torch.randn(m, d, generator=g, dtype=F64).to(device)
    w2 = torch.randn(k, m, generator=g, dtype=F64).to(device)

    def flat_loss(w):
        return factorised_loss(w[: m * d].reshape(m, d), w[m * d:].reshape(k, m), x, y)

    brute = _hessian_trace(flat_loss, torch.cat([w1.reshape(-1), w2.reshape(-1)]))
    assert torch.allclose(factorised_hessian_trace(w1, w2, x), brute, rtol=1e-12)
    by_hand = sum(((w2 @ w1 @ x[i] - y[i]) ** 2).sum() for i in range(n)) / (2 * n)
    assert torch.allclose(factorised_loss(w1, w2, x, y), by_hand)


@pytest.mark.parametrize("device", DEVICES)
def test_balanced_factors_attain_the_nuclear_bound(device):
    g = seeded_generator(2, device)
    k, d, m = 3, 5, 7
    b = torch.randn(k, d, generator=g, dtype=F64, device=device)
    w1, w2 = balanced_factors(b, m, generator=g)
    assert w1.shape == (m, d) and w2.shape == (k, m)
    assert torch.allclose(w2 @ w1, b, atol=1e-12)
    nuclear = torch.linalg.matrix_norm(b, ord="nuc")
    assert torch.allclose(d * w2.pow(2).sum(), math.sqrt(d * k) * nuclear, rtol=1e-12)
    assert torch.allclose(k * w1.pow(2).sum(), math.sqrt(d * k) * nuclear, rtol=1e-12)
    # any other factorisation costs more: W2 A, A^{-1} W1 for a random invertible A
    a = torch.eye(m, dtype=F64, device=device) + 0.3 * torch.randn(m, m, generator=g, dtype=F64, device=device)
    other = d * (w2 @ a).pow(2).sum() + k * (torch.linalg.solve(a, w1)).pow(2).sum()
    assert other > 2 * math.sqrt(d * k) * nuclear


def test_variance_of_a_quadratic_is_exact():
    """For L = 1/2 w^T A w the perturbed gradient is A(w + xi): its total variance is sigma^2 ||A||_F^2."""
    g = seeded_generator(3)
    a1 = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    a2 = torch.tensor([[3.0]], dtype=F64)

    def loss(p):
        return 0.5 * (p["a"] @ a1 @ p["a"]) + 0.5 * (p["b"] @ a2 @ p["b"])

    params = {"a": torch.tensor([0.3, -0.2], dtype=F64), "b": torch.tensor([1.0], dtype=F64)}
    sigma = 0.5
    exact_all = sigma**2 * (a1.pow(2).sum() + a2.pow(2).sum()).item()
    value, se = perturbed_gradient_variance(loss, params, sigma, samples=4000, generator=g)
    assert abs(value - exact_all) < 4 * se
    # layer-wise: the mean over the two tensors of each one's variance
    exact_layer = sigma**2 * (a1.pow(2).sum() + a2.pow(2).sum()).item() / 2
    value_l, se_l = perturbed_gradient_variance(loss, params, sigma, layerwise=True, samples=4000, generator=g)
    assert abs(value_l - exact_layer) < 4 * se_l
    assert abs(value_l - exact_all) > 10 * se_l  # the two schemes differ, and the test can tell


def test_cross_layer_term_of_a_product():
    """L = 1/2 (ab - c)^2: all-parameter noise adds E-cross terms that layer-wise noise lacks.

    grad_a = (a + xa)((a + xa)(b + xb) - c) ... the exact variance is a polynomial in sigma;
    compare Monte Carlo with a big brute-force sample instead of an algebraic formula.
    """
    g = seeded_generator(4)
    params = {"a": torch.tensor([0.7], dtype=F64), "b": torch.tensor([-1.2], dtype=F64)}

    def loss(p):
        return 0.5 * ((p["a"] * p["b"]).sum() - 0.3) ** 2

    sigma = 0.4
    value, se = perturbed_gradient_variance(loss, params, sigma, samples=3000, generator=g)
    z = torch.randn(200_000, 2, generator=seeded_generator(9), dtype=F64) * sigma
    a, b = 0.7 + z[:, 0], -1.2 + z[:, 1]
    r = a * b - 0.3
    grads = torch.stack([b * r, a * r], dim=1)
    brute = grads.var(dim=0).sum().item()
    assert abs(value - brute) < 4 * se + 0.01 * brute


def test_zero_sigma_has_zero_variance():
    params = {"w": torch.tensor([1.0, 2.0], dtype=F64)}
    value, se = perturbed_gradient_variance(lambda p: (p["w"] ** 4).sum(), params, 0.0, samples=10)
    assert value == 0.0 and se == 0.0


def test_bad_inputs_name_the_argument():
    params = {"w": torch.zeros(2, dtype=F64)}

    def loss(p):
        return p["w"].sum()

    with pytest.raises(ValueError, match="sigma"):
        perturbed_gradient_variance(loss, params, -0.1)
    with pytest.raises(TypeError, match="loss_fn"):
        perturbed_gradient_variance(None, params, 0.1)
    with pytest.raises(ValueError, match="params"):
        perturbed_gradient_variance(loss, {}, 0.1)
    with pytest.raises(ValueError, match="samples"):
        perturbed_gradient_variance(loss, params, 0.1, samples=1)
    with pytest.raises(TypeError, match="layerwise"):
        perturbed_gradient_variance(loss, params, 0.1, layerwise="yes")
    with pytest.raises(TypeError, match="generator"):
        perturbed_gradient_variance(loss, params, 0.1, generator=3)
    x = torch.zeros(5, 4, dtype=F64)
    with pytest.raises(ValueError, match="group_sizes"):
        group_network_hessian_trace(torch.zeros(4, dtype=F64), torch.zeros(2, dtype=F64), x, [3, 2])
    with pytest.raises(ValueError, match="v"):
        group_network_hessian_trace(torch.zeros(4, dtype=F64), torch.zeros(3, dtype=F64), x, [2, 2])
    with pytest.raises(ValueError, match="w2"):
        factorised_loss(torch.zeros(3, 4, dtype=F64), torch.zeros(2, 2, dtype=F64), x, torch.zeros(5, 2, dtype=F64))
    with pytest.raises(ValueError, match="y"):
        factorised_loss(torch.zeros(3, 4, dtype=F64), torch.zeros(2, 3, dtype=F64), x, torch.zeros(5, 3, dtype=F64))
    with pytest.raises(ValueError, match="width"):
        balanced_factors(torch.zeros(3, 4, dtype=F64), 2)
    with pytest.raises(ValueError, match="n"):
        orthonormal_design(4, 6)

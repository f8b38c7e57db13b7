"""Tests for gni_lib.gap.noisy_loss_gap: draw order, linear nets (gap = R exactly), and the
small-sigma limit on smooth nets (gap -> the full second-order term, not R), in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gni_lib.gap import noisy_loss_gap
from gni_lib.models import MLP
from gni_lib.noise import GaussianNoise, set_noise
from gni_lib.regularisers import explicit_regularizer, second_order_term
from _shared import DEVICES, seeded_generator as _generator

# second_order_term's test oracle is in test_regularisers.py; here it is used as the reference.

F64 = torch.float64


def _mlp(widths, activation="tanh", sigma=0.3, mode="additive", device="cpu", seed=0):
    torch.manual_seed(seed)
    return MLP(widths, activation=activation, sigma=sigma, mode=mode).to(device=device, dtype=F64)


def _targets(loss, batch, d_out, device="cpu", seed=0):
    g = _generator(seed, device)
    if loss == "mse":
        return torch.randn(batch, d_out, dtype=F64, device=device, generator=g)
    return torch.randint(0, d_out, (batch,), device=device, generator=g)


def _loss(out, y, loss):
    if loss == "mse":
        return 0.5 * (out - y).pow(2).sum(dim=1).mean()
    return F.cross_entropy(out, y)


def _noisy_forward(model: nn.Sequential, x, noises):
    """The network with noise site k replaced by h + sigma_k * noise_k (or h (1 + sigma_k noise_k))."""
    k = 0
    h = x
    for child in model:
        if isinstance(child, GaussianNoise):
            z = noises[k]
            h = h + child.sigma * z if child.mode == "additive" else h * (1 + child.sigma * z)
            k += 1
        else:
            h = child(h)
    return h


# --- the estimator, draw by draw ---------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("antithetic", [True, False])
def test_estimate_reproduces_documented_draws(device, mode, loss, antithetic):
    """Two chunks' worth of draws, reproduced from the documented draw order."""
    import gni_lib.gap as gap

    model = _mlp([3, 5, 4, 3], "elu", sigma=[0.3, 0.0, 0.5], mode=mode, device=device)
    x = torch.randn(4, 3, dtype=F64, device=device)
    y = _targets(loss, 4, 3, device)
    samples = 6
    old = gap.ROWS_PER_CHUNK
    gap.ROWS_PER_CHUNK = 2 * 4 * (2 if antithetic else 1)  # two draws per chunk: several chunks
    try:
        estimate, se = noisy_loss_gap(
            model, x, y, loss=loss, samples=samples, antithetic=antithetic,
            generator=_generator(3, device),
        )  # fmt: skip
    finally:
        gap.ROWS_PER_CHUNK = old
    assert estimate.device == x.device and estimate.dtype == F64
    g = _generator(3, device)
    model.eval()
    clean = _loss(model(x), y, loss)
    draws = samples // 2 if antithetic else samples
    values = []
    for start in range(0, draws, 2):
        n = min(2, draws - start)
        # sites 0 and 2 draw (site 1 has sigma 0): shapes (n*B, d_k), in forward order
        z0 = torch.randn((n * 4, 3), generator=g, device=device, dtype=F64)
        z2 = torch.randn((n * 4, 4), generator=g, device=device, dtype=F64)
        for s in range(n):
            rows = slice(s * 4, (s + 1) * 4)
            zero = torch.zeros(4, 5, dtype=F64, device=device)
            plus = _loss(_noisy_forward(model, x, [z0[rows], zero, z2[rows]]), y, loss)
            if antithetic:
                minus = _loss(_noisy_forward(model, x, [-z0[rows], zero, -z2[rows]]), y, loss)
                values.append(0.5 * (plus + minus) - clean)
            else:
                values.append(plus - clean)
    values = torch.stack(values)
    torch.testing.assert_close(estimate, values.mean(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(se, values.std() / len(values) ** 0.5, rtol=1e-8, atol=1e-13)


def test_noise_comes_from_generator_not_from_the_sites():
    site_generator = _generator(0)
    torch.manual_seed(0)
    model = MLP([3, 4, 2], sigma=0.5, generator=site_generator).double()
    state = site_generator.get_state()
    x, y = torch.randn(3, 3, dtype=F64), torch.randn(3, 2, dtype=F64)
    a = noisy_loss_gap(model, x, y, samples=10, generator=_generator(1))
    b = noisy_loss_gap(model, x, y, samples=10, generator=_generator(1))
    c = noisy_loss_gap(model, x, y, samples=10, generator=_generator(2))
    assert torch.equal(site_generator.get_state(), state)
    assert all(m.training for m in model.modules())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_zero_noise_gives_zero_gap():
    model = _mlp([3, 4, 2], sigma=0.0)
    x, y = torch.randn(3, 3, dtype=F64), torch.randn(3, 2, dtype=F64)
    estimate, se = noisy_loss_gap(model, x, y, samples=4, generator=_generator(0))
    assert estimate.item() == 0.0 and se.item() == 0.0


# --- what the gap converges to -------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_linear_network_mse_gap_equals_R(device):
    """Output noise is exactly sum_k J_k eps_k, so E[gap] = R with no remainder, at any sigma."""
    model = _mlp([3, 5, 4, 3], "linear", sigma=[0.8, 0.5, 1.2], device=device)
    x = torch.randn(6, 3, dtype=F64, device=device)
    y = _targets("mse", 6, 3, device)
    estimate, se = noisy_loss_gap(
        model, x, y, samples=4000, antithetic=False, generator=_generator(0, device)
    )
    R = explicit_regularizer(model, x)
    assert se > 0 and abs(estimate - R) <= 4 * se
    # the antithetic estimator too; a wrong R (off by 5%) would be caught
    estimate, se = noisy_loss_gap(model, x, y, samples=4000, generator=_generator(1, device))
    assert abs(estimate - R) <= 4 * se
    assert 0.05 * R > 4 * se


@pytest.mark.parametrize("activation", ["tanh", "elu"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_small_sigma_gap_tends_to_full_second_order_term(activation, loss, mode):
    """gap / sigma^2 -> (1/2 sum_k Tr Hess_{h_k} L) / sigma^2 as sigma -> 0: within 4 SE at
    small sigma, where the O(sigma^4) rest is far below the Monte Carlo error. The
    reference is not R (see the next test)."""
    model = _mlp([3, 6, 5, 3], activation, mode=mode, seed=11)
    x = torch.randn(5, 3, dtype=F64)
    y = _targets(loss, 5, 3)
    for sigma in (0.03, 0.01):
        set_noise(model, sigma)
        estimate, se = noisy_loss_gap(model, x, y, loss=loss, samples=20000, generator=_generator(0))
        term = second_order_term(model, x, y, loss=loss)
        assert abs(estimate - term) <= 4 * se, (sigma, estimate, term, se)
        # resolution: 4 SE is a fraction of the size of the effect, so the check means something
        assert 4 * se < 0.5 * explicit_regularizer(model, x, loss=loss)


@pytest.mark.parametrize(
    "activation, loss", [("tanh", "mse"), ("tanh", "ce"), ("elu", "ce")]
)
def test_gap_separates_full_term_from_R(activation, loss):
    """The network-curvature part T2 - R is of order sigma^2 too: at sigma = 0.01 the gap is
    many SE away from R on these nets (and within 4 SE of T2, checked above)."""
    model = _mlp([3, 6, 5, 3], activation, sigma=0.01, seed=11)
    x = torch.randn(5, 3, dtype=F64)
    y = _targets(loss, 5, 3)
    estimate, se = noisy_loss_gap(model, x, y, loss=loss, samples=20000, generator=_generator(0))
    R = explicit_regularizer(model, x, loss=loss)
    assert abs(estimate - R) > 4 * se
    assert abs(estimate - second_order_term(model, x, y, loss=loss)) <= 4 * se


def test_antithetic_and_plain_agree_and_antithetic_is_tighter_at_small_sigma():
    model = _mlp([3, 6, 3], "tanh", sigma=0.02, seed=12)
    x, y = torch.randn(5, 3, dtype=F64), _targets("mse", 5, 3)
    a, a_se = noisy_loss_gap(model, x, y, samples=4000, generator=_generator(0))
    p, p_se = noisy_loss_gap(model, x, y, samples=4000, antithetic=False, generator=_generator(1))
    assert abs(a - p) <= 4 * (a_se**2 + p_se**2) ** 0.5
    assert p_se > 5 * a_se


def test_float32_stays_float32_and_batch_of_one():
    torch.manual_seed(0)
    model = MLP([3, 4, 2], sigma=0.1)
    x, y = torch.randn(1, 3), torch.randn(1, 2)
    estimate, se = noisy_loss_gap(model, x, y, samples=8, generator=_generator(0))
    assert estimate.dtype == torch.float32 and se.dtype == torch.float32


# --- errors ---------------------------------------------------------------------------------


def _model_x_y():
    return _mlp([3, 4, 2]), torch.randn(2, 3, dtype=F64), torch.randn(2, 2, dtype=F64)


def test_bad_samples():
    model, x, y = _model_x_y()
    for bad in (0, 1, -4):
        with pytest.raises(ValueError, match="samples"):
            noisy_loss_gap(model, x, y, samples=bad)
    with pytest.raises(ValueError, match="samples must be even"):
        noisy_loss_gap(model, x, y, samples=7)
    noisy_loss_gap(model, x, y, samples=7, antithetic=False)  # fine without pairs


def test_one_antithetic_pair_is_refused_not_a_nan_standard_error():
    """samples=2 with antithetic=True is one pair: its standard error was NaN, silently."""
    model, x, y = _model_x_y()
    with pytest.raises(ValueError, match="samples must be at least 4"):
        noisy_loss_gap(model, x, y, samples=2)
    estimate, se = noisy_loss_gap(model, x, y, samples=4, generator=_generator(0))
    assert torch.isfinite(se) and se > 0
    for bad in (2.0, True, "10"):
        with pytest.raises(TypeError, match="samples"):
            noisy_loss_gap(model, x, y, samples=bad)


def test_bad_antithetic_and_generator():
    model, x, y = _model_x_y()
    with pytest.raises(TypeError, match="antithetic"):
        noisy_loss_gap(model, x, y, antithetic=1)
    with pytest.raises(TypeError, match="generator"):
        noisy_loss_gap(model, x, y, generator=0)


@pytest.mark.parametrize(
    "loss, bad",
    [
        ("mse", torch.randn(2, 3, dtype=F64)),
        ("mse", torch.randn(2, 2, dtype=torch.float32)),
        ("mse", torch.tensor([[0.0, float("nan")], [0.0, 0.0]], dtype=F64)),
        ("ce", torch.tensor([0, 2])),
        ("ce", torch.tensor([0.0, 1.0], dtype=F64)),
        ("ce", torch.tensor([[0], [1]])),
    ],
)
def test_bad_y(loss, bad):
    model, x, _ = _model_x_y()
    with pytest.raises(ValueError, match="y"):
        noisy_loss_gap(model, x, bad, loss=loss, samples=4)


def test_bad_x_loss_and_model():
    model, x, y = _model_x_y()
    with pytest.raises(ValueError, match="x"):
        noisy_loss_gap(model, torch.randn(2, 4, dtype=F64), y, samples=4)
    with pytest.raises(ValueError, match="x"):
        noisy_loss_gap(model, torch.full((2, 3), float("inf"), dtype=F64), y, samples=4)
    with pytest.raises(ValueError, match="loss"):
        noisy_loss_gap(model, x, y, loss="l1")
    with pytest.raises(ValueError, match="model"):
        noisy_loss_gap(nn.Sequential(nn.Linear(3, 2)).double(), x, y)


def test_any_module_same_draws_as_the_sequential():
    """Noise enters through the sites' hooks, so a wrapped MLP sees exactly the same draws."""

    class Wrapped(nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.mlp = mlp

        def forward(self, x):
            return self.mlp(x)

    model = _mlp([3, 5, 2], "tanh", mode="multiplicative")
    x, y = torch.randn(4, 3, dtype=F64), _targets("ce", 4, 2)
    a = noisy_loss_gap(model, x, y, loss="ce", samples=20, generator=_generator(5))
    b = noisy_loss_gap(Wrapped(model), x, y, loss="ce", samples=20, generator=_generator(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

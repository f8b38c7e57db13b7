"""Tests for gni_lib.explicit: the brute-force regulariser and the quadrature gap, in float64.

Oracles: explicit_regularizer (which shares no code with the per-example autograd route),
the closed form of R and of the gap for a linear network under the squared error
(where the gap is R at every sigma), and second_order_term for the small-sigma limit.
"""

from __future__ import annotations

import math

import pytest
import torch

from gni_lib.explicit import brute_force_regulariser, curvature_share, quadrature_gap, remainder_ratio
from gni_lib.gap import noisy_loss_gap
from gni_lib.models import MLP
from gni_lib.noise import set_noise
from gni_lib.regularisers import explicit_regularizer, second_order_term
from _shared import one_thread, seeded_generator  # noqa: F401  (one_thread is an autouse fixture)

F64 = torch.float64


def _net(widths, activation="tanh", sigma=0.3, mode="additive", seed=0):
    return MLP(widths, activation=activation, sigma=sigma, mode=mode, seed=seed).to(dtype=F64)


def _batch(d_in, d_out, loss, batch=4, seed=0):
    g = seeded_generator(seed)
    x = torch.randn(batch, d_in, dtype=F64, generator=g)
    if loss == "mse":
        return x, torch.randn(batch, d_out, dtype=F64, generator=g)
    return x, torch.randint(0, d_out, (batch,), generator=g)


@pytest.mark.parametrize("loss, d_out", [("mse", 2), ("ce", 4)])
def test_brute_force_matches_explicit_regularizer(loss, d_out):
    net = _net([3, 5, 5, d_out], sigma=[0.3, 0.2, 0.1]).eval()
    x, y = _batch(3, d_out, loss)
    with torch.no_grad():
        fast = explicit_regularizer(net, x, loss=loss).item()
    assert brute_force_regulariser(net, x, y, loss=loss) == pytest.approx(fast, rel=1e-10)


def test_brute_force_on_a_linear_net_is_the_closed_form():
    # f(x) = W2 W1 x: J_0 = W2 W1, J_1 = W2, and R = 1/2 (s0^2 |W2 W1|_F^2 + s1^2 |W2|_F^2)
    net = _net([3, 4, 2], activation="linear", sigma=[0.5, 0.25]).eval()
    w1, w2 = (m.weight for m in net if isinstance(m, torch.nn.Linear))
    x, y = _batch(3, 2, "mse")
    expected = 0.5 * (0.25 * (w2 @ w1).pow(2).sum() + 0.0625 * w2.pow(2).sum()).item()
    assert brute_force_regulariser(net, x, y) == pytest.approx(expected, rel=1e-12)


def test_quadrature_gap_is_R_on_a_linear_net_at_every_sigma():
    net = _net([1, 4, 1], activation="linear", sigma=[1.0, 0.0])
    x, y = _batch(1, 1, "mse", batch=6)
    with torch.no_grad():
        r_unit = explicit_regularizer(net, x).item()
    for sigma in (0.1, 1.0, 3.0):
        assert quadrature_gap(net, x, y, sigma) == pytest.approx(sigma**2 * r_unit, rel=1e-12)
    assert net.training  # the mode is restored


def test_quadrature_gap_tends_to_the_second_order_term_on_a_smooth_net():
    net = _net([1, 8, 8, 1], sigma=[1.0, 0.0, 0.0]).eval()
    x, y = _batch(1, 1, "mse", batch=8)
    t2_unit = second_order_term(net, x, y).item()
    with torch.no_grad():
        r_unit = explicit_regularizer(net, x).item()
    sigma = 0.01
    gap = quadrature_gap(net, x, y, sigma)
    assert abs(gap - sigma**2 * t2_unit) < 1e-3 * abs(sigma**2 * t2_unit)
    assert abs(gap - sigma**2 * r_unit) > 10 * abs(gap - sigma**2 * t2_unit)  # T2 is not R here
    assert not net.training


def test_quadrature_gap_converges_in_the_nodes():
    net = _net([1, 8, 1], sigma=[1.0, 0.0]).eval()
    x, y = _batch(1, 1, "mse", batch=5)
    assert quadrature_gap(net, x, y, 0.2, n_nodes=90) == pytest.approx(quadrature_gap(net, x, y, 0.2), rel=1e-12)
    assert quadrature_gap(net, x, y, 0.0) == pytest.approx(0.0, abs=1e-14)


def test_quadrature_gap_cross_entropy_is_finite_and_positive_for_a_linear_net():
    net = _net([1, 3], activation="linear", sigma=[1.0])
    x, y = _batch(1, 3, "ce", batch=5)
    # log-sum-exp is convex in the logits, so Jensen makes the gap positive
    assert quadrature_gap(net, x, y, 0.5, loss="ce") > 0


def test_curvature_share_is_zero_on_a_linear_net_and_not_on_a_smooth_one():
    x, y = _batch(3, 2, "mse", batch=6)
    assert abs(curvature_share(_net([3, 4, 2], activation="linear"), x, y)) < 1e-12
    smooth = _net([3, 6, 6, 2])
    share = curvature_share(smooth, x, y)
    with torch.no_grad():
        r = explicit_regularizer(smooth, x).item()
    assert share == pytest.approx((second_order_term(smooth, x, y).item() - r) / r, rel=1e-12)
    assert abs(share) > 1e-3


def test_curvature_share_does_not_depend_on_a_common_noise_level():
    x, y = _batch(3, 4, "ce", batch=6)
    net = _net([3, 6, 4], sigma=0.1)
    small = curvature_share(net, x, y, loss="ce")
    set_noise(net, 0.7)
    assert curvature_share(net, x, y, loss="ce") == pytest.approx(small, rel=1e-9)


def test_remainder_ratio_is_the_monte_carlo_gap_relative_to_R():
    x, y = _batch(3, 2, "mse", batch=6)
    net = _net([3, 6, 2], sigma=0.2)
    ratio, se = remainder_ratio(net, x, y, samples=200, generator=seeded_generator(1))
    gap, gap_se = noisy_loss_gap(net, x, y, samples=200, generator=seeded_generator(1))
    with torch.no_grad():
        r = explicit_regularizer(net, x).item()
    assert ratio == pytest.approx((gap.item() - r) / r, rel=1e-12)
    assert se == pytest.approx(gap_se.item() / r, rel=1e-12)
    # on a linear net the remainder is zero: the ratio is within 4 SE of 0
    linear = _net([3, 6, 2], activation="linear", sigma=0.5)
    ratio, se = remainder_ratio(linear, x, y, samples=400, generator=seeded_generator(2))
    assert abs(ratio) <= 4 * se


def test_zero_noise_raises():
    x, y = _batch(3, 2, "mse")
    net = _net([3, 4, 2], sigma=0.0)
    with pytest.raises(ValueError, match="model"):
        curvature_share(net, x, y)
    with pytest.raises(ValueError, match="model"):
        remainder_ratio(net, x, y, samples=4)


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda net, x, y: brute_force_regulariser(net, x, y, loss="l1"), ValueError, "loss"),
        (lambda net, x, y: brute_force_regulariser("net", x, y), TypeError, "model"),
        (lambda net, x, y: brute_force_regulariser(net, x[:, 0], y), ValueError, "x"),
        (lambda net, x, y: brute_force_regulariser(net, x, y[:, :1]), ValueError, "y"),
        (lambda net, x, y: brute_force_regulariser(_net([2, 3, 2], mode="multiplicative"), x, y), ValueError, "model"),
        (lambda net, x, y: quadrature_gap(net, x, y, 0.1), ValueError, "x"),
        (lambda net, x, y: quadrature_gap(_net([1, 2]), x[:, :1], y, -0.1), ValueError, "sigma"),
        (lambda net, x, y: quadrature_gap(_net([1, 2]), x[:, :1], y, 0.1, n_nodes=1), ValueError, "n_nodes"),
        (lambda net, x, y: quadrature_gap(_net([1, 2]), x[:, :1], y, "a"), TypeError, "sigma"),
        (lambda net, x, y: quadrature_gap(None, x[:, :1], y, 0.1), TypeError, "model"),
        (lambda net, x, y: curvature_share(net, x, y, loss="l1"), ValueError, "loss"),
        (lambda net, x, y: remainder_ratio(net, x, y, samples=3), ValueError, "samples"),
    ],
)
def test_bad_arguments_raise_and_name_the_argument(call, error, name):
    net = _net([2, 3, 2])
    x, y = _batch(2, 2, "mse")
    with pytest.raises(error, match=name):
        call(net, x, y)

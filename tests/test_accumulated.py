"""Tests for gni_lib.accumulated: the accumulated output noise and its Taylor terms.

Oracles, all float64: the model's own noise sites (same generator), a hand-written
functional forward pass differentiated by torch.autograd.functional.jacobian and
.hessian, central finite differences, and exact identities (linear nets, homogeneity).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gni_lib.accumulated import (
    accumulated_noise,
    noise_taylor_terms,
    noisy_output,
    second_order_noise,
)
from gni_lib.jacobians import layer_jacobians
from gni_lib.models import MLP
from gni_lib.noise import GaussianNoise, noise_sites, replace_site_outputs
from gni_lib.stats import loglog_slope
from _shared import DEVICES, one_thread, seeded_generator  # noqa: F401  (one_thread: autouse)

F64 = torch.float64
WIDTHS = [3, 5, 4, 2]


def first_order_noise(model, x, noises, *, mode="additive"):
    """The first-order term c_1 = sum_k J_k eps_k (Prop. 1), as noise_taylor_terms gives it."""
    return noise_taylor_terms(model, x, noises, 1, mode=mode)[1]


def _mlp(widths=WIDTHS, activation="tanh", device="cpu", seed=0, **kwargs):
    torch.manual_seed(seed)
    return MLP(widths, activation=activation, **kwargs).to(device=device, dtype=F64)


def _noises(widths, batch, seed, device="cpu", scale=1.0):
    g = seeded_generator(seed, device)
    return [scale * torch.randn(batch, d, generator=g, device=device, dtype=F64) for d in widths[:-1]]


def _x(batch, d, seed=10, device="cpu"):
    return torch.randn(batch, d, generator=seeded_generator(seed, device), device=device, dtype=F64)


def _manual_forward(model, x, deltas, activation=torch.tanh):
    """An independent forward pass of an MLP from its weights: h_k + delta_k before every layer."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    h = x
    for k, linear in enumerate(linears):
        h = (h + deltas[k]) @ linear.weight.T + linear.bias
        if k < len(linears) - 1:
            h = activation(h)
    return h


def _clean_activations(model, x):
    seen = {}

    def record(k, h):
        seen[k] = h
        return h

    with replace_site_outputs(model, record):
        model(x)
    return [seen[k] for k in range(len(seen))]


# --- the exact noisy pass ------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_noisy_output_reproduces_the_models_own_noise_sites(device, mode):
    sigmas = [0.3, 0.2, 0.1]
    model = _mlp(device=device, sigma=sigmas, mode=mode, generator=seeded_generator(5, device))
    x = _x(7, 3, device=device)
    sampled = model(x)  # training mode: the sites draw from the generator, in site order
    g = seeded_generator(5, device)
    noises = [s * torch.randn(7, d, generator=g, device=device, dtype=F64) for s, d in zip(sigmas, WIDTHS)]
    torch.testing.assert_close(noisy_output(model, x, noises, mode=mode), sampled, rtol=1e-15, atol=0)
    assert model.training and all(site.training for site in noise_sites(model))


@pytest.mark.parametrize("device", DEVICES)
def test_noisy_output_matches_manual_forward(device):
    model = _mlp(device=device)
    x, noises = _x(6, 3, device=device), _noises(WIDTHS, 6, 1, device, scale=0.4)
    torch.testing.assert_close(
        noisy_output(model, x, noises), _manual_forward(model, x, noises), rtol=1e-13, atol=1e-15
    )


def test_accumulated_noise_is_zero_without_noise_and_noisy_minus_clean_otherwise():
    model = _mlp()
    x = _x(4, 3)
    zeros = [torch.zeros(4, d, dtype=F64) for d in WIDTHS[:-1]]
    assert torch.equal(accumulated_noise(model, x, zeros), torch.zeros(4, 2, dtype=F64))
    noises = _noises(WIDTHS, 4, 2, scale=0.5)
    clean = _manual_forward(model, x, zeros)
    torch.testing.assert_close(
        accumulated_noise(model, x, noises), _manual_forward(model, x, noises) - clean,
        rtol=1e-12, atol=1e-15,
    )


# --- the Taylor terms against brute-force autograd ---------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_first_order_is_sum_of_layer_jacobians_times_noise(device):
    model = _mlp([4, 6, 6, 5, 3], device=device, seed=3)
    x, noises = _x(8, 4, device=device), _noises([4, 6, 6, 5, 3], 8, 4, device)
    jacobians = layer_jacobians(model, x)
    expected = sum(torch.einsum("bij,bj->bi", J, e) for J, e in zip(jacobians, noises))
    torch.testing.assert_close(first_order_noise(model, x, noises), expected, rtol=1e-12, atol=1e-14)


def test_first_and_second_order_against_full_autograd_jacobian_and_hessian():
    model = _mlp(seed=1)
    x, noises = _x(5, 3), _noises(WIDTHS, 5, 6)
    first, second = first_order_noise(model, x, noises), second_order_noise(model, x, noises)
    sizes = WIDTHS[:-1]
    for b in range(x.shape[0]):
        direction = torch.cat([e[b] for e in noises])

        def output(flat, b=b):
            deltas = list(torch.split(flat.unsqueeze(0), sizes, dim=1))
            return _manual_forward(model, x[b : b + 1], deltas)[0]

        zero = torch.zeros(sum(sizes), dtype=F64)
        jacobian = torch.autograd.functional.jacobian(output, zero)  # (d_L, sum d_k)
        torch.testing.assert_close(first[b], jacobian @ direction, rtol=1e-12, atol=1e-14)
        for i in range(WIDTHS[-1]):
            hessian = torch.autograd.functional.hessian(lambda f, i=i: output(f)[i], zero)
            torch.testing.assert_close(
                second[b, i], 0.5 * direction @ hessian @ direction, rtol=1e-11, atol=1e-14
            )


def test_second_order_has_cross_site_terms():
    """Prop. 1 regrouped: the second-order term is not the sum of the one-site terms."""
    model = _mlp(seed=2)
    x, noises = _x(6, 3), _noises(WIDTHS, 6, 7)
    together = second_order_noise(model, x, noises)
    alone = []
    for k in range(len(noises)):
        only_k = [e if j == k else torch.zeros_like(e) for j, e in enumerate(noises)]
        alone.append(second_order_noise(model, x, only_k))
    cross = together - sum(alone)
    assert cross.abs().max() > 1e-3 * together.abs().max()


def test_terms_against_central_finite_differences():
    model = _mlp(seed=4)
    x, noises = _x(6, 3), _noises(WIDTHS, 6, 8)
    c = noise_taylor_terms(model, x, noises, 3)

    def along(t):
        return accumulated_noise(model, x, [t * e for e in noises])

    def first(h):
        return (along(h) - along(-h)) / (2 * h)

    def second(h):
        return (along(h) + along(-h)) / h**2  # along(0) = 0

    def third(h):
        return (along(2 * h) - 2 * along(h) + 2 * along(-h) - along(-2 * h)) / (2 * h**3)

    def richardson(difference, h):
        """Central differences have error a h^2 + O(h^4); (4 D(h/2) - D(h)) / 3 cancels a h^2."""
        return (4 * difference(h / 2) - difference(h)) / 3

    # h = 1e-2: the remaining truncation is O(h^4) ~ 1e-8 times a higher coefficient, and
    # round-off is ~1e-16 / h^n <= 1e-10 (n = 3 for the third difference); so a tolerance of
    # 1e-6 of the largest entry (absolute) leaves a margin of 100 over both.
    h = 1e-2
    for n, difference in [(1, first), (2, second), (3, third)]:
        expected = richardson(difference, h) / math.factorial(n)
        scale = expected.abs().max().item()
        torch.testing.assert_close(c[n], expected, rtol=0, atol=1e-6 * scale)


def test_residual_after_second_order_shrinks_like_sigma_cubed():
    model = _mlp([4, 16, 16, 2], seed=5)
    x, noises = _x(10, 4), _noises([4, 16, 16, 2], 10, 9)
    _, c1, c2 = noise_taylor_terms(model, x, noises, 2)
    sigmas = [1e-3, 2e-3, 4e-3, 8e-3]
    first_residual, second_residual = [], []
    for s in sigmas:
        exact = accumulated_noise(model, x, [s * e for e in noises])
        first_residual.append((exact - s * c1).norm().item())
        second_residual.append((exact - s * c1 - s**2 * c2).norm().item())
    assert abs(loglog_slope(sigmas, first_residual) - 2) < 0.1
    assert abs(loglog_slope(sigmas, second_residual) - 3) < 0.1


def test_linear_network_is_exactly_first_order():
    model = _mlp(activation="linear", seed=6)
    x, noises = _x(5, 3), _noises(WIDTHS, 5, 10, scale=2.0)
    c = noise_taylor_terms(model, x, noises, 3)
    assert c[2].abs().max() < 1e-13 and c[3].abs().max() < 1e-13
    torch.testing.assert_close(accumulated_noise(model, x, noises), c[1], rtol=1e-12, atol=1e-13)


def test_homogeneity_in_the_noise():
    model = _mlp(seed=7)
    x, noises = _x(4, 3), _noises(WIDTHS, 4, 11)
    scaled = [-2.5 * e for e in noises]
    torch.testing.assert_close(first_order_noise(model, x, scaled), -2.5 * first_order_noise(model, x, noises))
    torch.testing.assert_close(second_order_noise(model, x, scaled), 6.25 * second_order_noise(model, x, noises))


def test_order_zero_is_clean_output_and_lengths():
    model = _mlp(seed=8)
    x, noises = _x(3, 3), _noises(WIDTHS, 3, 12)
    terms = noise_taylor_terms(model, x, noises, 0)
    assert len(terms) == 1
    torch.testing.assert_close(terms[0], _manual_forward(model, x, [0 * e for e in noises]))
    assert len(noise_taylor_terms(model, x, noises, 3)) == 4


def test_multiplicative_first_order_is_activation_scaled_additive_eq6():
    model = _mlp(seed=9)
    x, noises = _x(6, 3), _noises(WIDTHS, 6, 13)
    scaled = [h * e for h, e in zip(_clean_activations(model, x), noises)]
    torch.testing.assert_close(
        first_order_noise(model, x, noises, mode="multiplicative"),
        first_order_noise(model, x, scaled), rtol=1e-12, atol=1e-14,
    )
    # At second order the two differ: eq. 6 scales by the *noisy* activation.
    difference = second_order_noise(model, x, noises, mode="multiplicative") - second_order_noise(
        model, x, scaled
    )
    assert difference.abs().max() > 1e-3


class _Wrapped(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(x)


def test_works_for_a_non_sequential_module():
    model = _mlp(seed=10)
    x, noises = _x(4, 3), _noises(WIDTHS, 4, 14)
    torch.testing.assert_close(
        second_order_noise(_Wrapped(model), x, noises), second_order_noise(model, x, noises)
    )


# --- bad input ----------------------------------------------------------------------------


@pytest.fixture
def setup():
    return _mlp(), _x(4, 3), _noises(WIDTHS, 4, 0)


def test_rejects_noises_that_are_not_a_list(setup):
    model, x, noises = setup
    with pytest.raises(TypeError, match="noises"):
        first_order_noise(model, x, noises[0])
    with pytest.raises(TypeError, match=r"noises\[1\]"):
        first_order_noise(model, x, [noises[0], 1.0, noises[2]])


def test_rejects_wrong_number_of_noises(setup):
    model, x, noises = setup
    with pytest.raises(ValueError, match="noises"):
        accumulated_noise(model, x, noises[:2])


def test_rejects_wrong_shape_dtype_or_non_finite(setup):
    model, x, noises = setup
    with pytest.raises(ValueError, match=r"noises\[1\]"):
        noisy_output(model, x, [noises[0], noises[1][:, :3], noises[2]])
    with pytest.raises(ValueError, match=r"noises\[2\]"):
        noisy_output(model, x, [noises[0], noises[1], noises[2].float()])
    bad = noises[0].clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"noises\[0\]"):
        second_order_noise(model, x, [bad, noises[1], noises[2]])


def test_rejects_bad_mode_and_order(setup):
    model, x, noises = setup
    with pytest.raises(ValueError, match="mode"):
        noisy_output(model, x, noises, mode="dropout")
    with pytest.raises(ValueError, match="order"):
        noise_taylor_terms(model, x, noises, -1)
    with pytest.raises(TypeError, match="order"):
        noise_taylor_terms(model, x, noises, 2.0)


def test_rejects_bad_model_and_x(setup):
    model, x, noises = setup
    with pytest.raises(TypeError, match="model"):
        noisy_output(lambda v: v, x, noises)
    with pytest.raises(ValueError, match="model"):
        noisy_output(nn.Linear(3, 2).double(), x, [])
    bad_x = x.clone()
    bad_x[0, 0] = math.inf
    with pytest.raises(ValueError, match="x"):
        noisy_output(model, bad_x, noises)
    with pytest.raises(ValueError, match="x of shape"):  # the noise fits, the first layer does not
        noisy_output(model, x[:, :2], [noises[0][:, :2], noises[1], noises[2]])


def test_rejects_a_site_used_twice():
    site = GaussianNoise(0.1)
    model = nn.Sequential(site, nn.Linear(3, 3), site).double()
    x = _x(2, 3)
    with pytest.raises(ValueError, match="model"):
        noisy_output(model, x, [torch.zeros(2, 3, dtype=F64)])

"""Tests for gni_lib.remainder: the remainder of the accumulated noise after n Taylor orders.

Oracles, float64: a linear network (its output is linear in the noise, so r_1 = 0),
a hand-written partial sum from noise_taylor_terms and accumulated_noise on a tanh
net, the limit rho_n -> 1 and the log-log slopes n + 1 as sigma -> 0, and a ratio
computed by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gni_lib.accumulated import accumulated_noise, noise_taylor_terms
from gni_lib.models import MLP
from gni_lib.remainder import TaylorRemainders, taylor_remainders
from _shared import DEVICES, one_thread, seeded_generator  # noqa: F401  (one_thread: autouse)

F64 = torch.float64
WIDTHS = [3, 6, 5, 2]


def _setup(activation="tanh", device="cpu", widths=WIDTHS, seed=0):
    torch.manual_seed(seed)
    model = MLP(widths, activation=activation).to(device=device, dtype=F64)
    g = seeded_generator(seed + 1, device)
    x = torch.randn(4, widths[0], generator=g, device=device, dtype=F64)
    direction = [torch.randn(4, d, generator=g, device=device, dtype=F64) for d in widths[:-1]]
    return model, x, direction


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_and_a_hand_written_partial_sum(device):
    model, x, direction = _setup(device=device)
    sigmas = [0.3, 0.1]
    result = taylor_remainders(model, x, direction, sigmas, max_order=2)
    assert isinstance(result, TaylorRemainders)
    assert result.remainders.shape == (2, 2) and result.leading.shape == (2,)
    c = noise_taylor_terms(model, x, direction, 3)
    exact = accumulated_noise(model, x, [0.3 * e for e in direction])
    by_hand = (exact - 0.3 * c[1] - 0.09 * c[2]).pow(2).mean().sqrt().item()
    assert result.remainders[1, 0] == pytest.approx(by_hand, rel=1e-12)
    assert result.leading[1] == pytest.approx(c[3].pow(2).mean().sqrt().item(), rel=1e-12)
    assert result.output_scale == pytest.approx(c[0].abs().max().item(), rel=1e-12)


def test_ratios_tend_to_one_and_slopes_are_n_plus_one():
    model, x, direction = _setup()
    sigmas = 1e-3 * 2.0 ** np.arange(4)
    result = taylor_remainders(model, x, direction, sigmas, max_order=3)
    assert np.all(np.abs(result.ratios() - 1) < 0.05), result.ratios()
    slopes = [np.polyfit(np.log(sigmas), np.log(r), 1)[0] for r in result.remainders]
    assert slopes == pytest.approx([2, 3, 4], abs=0.05)


def test_a_linear_network_has_no_remainder():
    model, x, direction = _setup(activation="linear")
    result = taylor_remainders(model, x, direction, [0.5, 2.0], max_order=1)
    scale = accumulated_noise(model, x, [2.0 * e for e in direction]).abs().max().item()
    assert result.remainders.max() < 1e-13 * scale


def test_ratios_divide_by_the_leading_term():
    fake = TaylorRemainders(np.array([0.1, 0.2]), np.array([[1e-2, 4e-2], [2e-3, 1.6e-2]]), np.array([1.0, 2.0]), 1.0)
    np.testing.assert_allclose(fake.ratios(), [[1.0, 1.0], [1.0, 1.0]])


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"max_order": 0}, ValueError, "max_order"),
        ({"max_order": 1.5}, TypeError, "max_order"),
        ({"sigmas": []}, ValueError, "sigmas"),
        ({"sigmas": [0.1, -0.1]}, ValueError, "sigmas"),
        ({"sigmas": [[0.1]]}, ValueError, "sigmas"),
        ({"sigmas": ["a"]}, TypeError, "sigmas"),
        ({"sigmas": [float("nan")]}, ValueError, "sigmas"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, name):
    model, x, direction = _setup()
    arguments = {"sigmas": [0.1], "max_order": 2, **kwargs}
    with pytest.raises(error, match=name):
        taylor_remainders(model, x, direction, **arguments)

"""Tests for gni_lib.closed_forms against autograd oracles (float64): the MLP itself,
per-example torch.autograd.functional.jacobian and the full torch.func.hessian."""

from __future__ import annotations

import math

import pytest
import torch

from gni_lib.closed_forms import (
    one_hidden_layer_hessian_norm,
    one_hidden_layer_logits,
    one_hidden_layer_penalty,
    stack_one_hidden_layer,
)
from gni_lib.models import MLP
from gni_lib.penalties import jacobian_penalty
from _shared import DEVICES, CountingSyncs, one_thread, seeded_generator as _generator  # noqa: F401 (one_thread: autouse)


def _nets(count: int = 3, widths=(5, 7, 4), device: str = "cpu"):
    return [MLP(list(widths), seed=11 + m).to(device=device, dtype=torch.float64).eval() for m in range(count)]


def _inputs(count: int = 3, batch: int = 6, d: int = 5, device: str = "cpu", seed: int = 0):
    return torch.randn((count, batch, d), generator=_generator(seed, device), device=device, dtype=torch.float64)


def _jacobian_oracle(net, xb):
    """Batch mean of ||J||_F^2, one autograd jacobian per example."""
    total = 0.0
    for row in xb:
        J = torch.autograd.functional.jacobian(lambda z: net(z.unsqueeze(0)).squeeze(0), row)
        total += J.pow(2).sum().item()
    return total / xb.shape[0]


def _hessian_oracle(net, xb):
    """Batch mean of sum_k ||Hessian of F_k||_F^2, by torch.func.hessian per example."""
    one = lambda z: net(z.unsqueeze(0)).squeeze(0)  # noqa: E731
    return torch.func.vmap(torch.func.hessian(one))(xb).pow(2).sum(dim=(1, 2, 3)).mean().item()


@pytest.mark.parametrize("device", DEVICES)
def test_logits_match_the_networks(device):
    nets, x = _nets(device=device), _inputs(device=device)
    params = stack_one_hidden_layer(nets)
    logits = one_hidden_layer_logits(params, x)
    assert logits.shape == (3, 6, 4)
    for m, net in enumerate(nets):
        torch.testing.assert_close(logits[m], net(x[m]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_penalty_matches_autograd_jacobians(device):
    nets, x = _nets(device=device), _inputs(device=device)
    values = one_hidden_layer_penalty(stack_one_hidden_layer(nets), x)
    for m, net in enumerate(nets):
        assert math.isclose(values[m].item(), _jacobian_oracle(net, x[m]), rel_tol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_hessian_norm_matches_torch_func_hessian(device):
    nets, x = _nets(device=device), _inputs(device=device)
    values = one_hidden_layer_hessian_norm(stack_one_hidden_layer(nets), x)
    for m, net in enumerate(nets):
        assert math.isclose(values[m].item(), _hessian_oracle(net, x[m]), rel_tol=1e-10)


def test_noisy_penalty_draws_like_the_library():
    """M = 1: the same noise, hence the same value, as penalties.jacobian_penalty(samples=1)."""
    net, x = _nets(1)[0], _inputs(1)
    closed = one_hidden_layer_penalty(stack_one_hidden_layer([net]), x, torch.tensor([0.3], dtype=torch.float64),
                                      _generator(5)).item()
    library = jacobian_penalty(net, x[0], noise_std=0.3, generator=_generator(5)).item()
    clean = one_hidden_layer_penalty(stack_one_hidden_layer([net]), x).item()
    assert math.isclose(closed, library, rel_tol=1e-10)
    assert not math.isclose(closed, clean, rel_tol=1e-6)  # the noise did something


def test_zero_noise_for_one_network_leaves_it_clean():
    nets, x = _nets(), _inputs()
    params = stack_one_hidden_layer(nets)
    noisy = one_hidden_layer_penalty(params, x, torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64), _generator(1))
    clean = one_hidden_layer_penalty(params, x)
    assert noisy[0].item() == clean[0].item() and noisy[2].item() == clean[2].item()
    assert noisy[1].item() != clean[1].item()


def test_penalty_is_differentiable_and_stacking_is_detached():
    nets, x = _nets(), _inputs()
    params = [p.requires_grad_() for p in stack_one_hidden_layer(nets)]
    one_hidden_layer_penalty(params, x).sum().backward()
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0
    assert nets[0][1].weight.grad is None  # the networks' own parameters are untouched


def test_stack_moves_to_dtype():
    params = stack_one_hidden_layer(_nets(2), dtype=torch.float32)
    assert [p.dtype for p in params] == [torch.float32] * 4
    assert [tuple(p.shape) for p in params] == [(2, 7, 5), (2, 7), (2, 4, 7), (2, 4)]


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: stack_one_hidden_layer([]), ValueError, "models"),
        (lambda: stack_one_hidden_layer("net"), TypeError, "models"),
        (lambda: stack_one_hidden_layer([MLP([5, 7, 3, 4])]), TypeError, "models[0]"),
        (lambda: stack_one_hidden_layer([MLP([5, 7, 4], activation="relu")]), TypeError, "models[0]"),
        (lambda: stack_one_hidden_layer([MLP([5, 7, 4]), MLP([5, 8, 4])]), ValueError, "widths"),
        (lambda: one_hidden_layer_penalty(stack_one_hidden_layer(_nets())[:2], _inputs()), TypeError, "params"),
        (lambda: one_hidden_layer_logits(stack_one_hidden_layer(_nets())[:3], _inputs()), TypeError, "params"),
        (lambda: one_hidden_layer_penalty(stack_one_hidden_layer(_nets()), _inputs(2)), ValueError, "x must"),
        (lambda: one_hidden_layer_penalty(stack_one_hidden_layer(_nets()), _inputs(d=4)), ValueError, "x must"),
        (lambda: one_hidden_layer_penalty(stack_one_hidden_layer(_nets()), _inputs()[0]), ValueError, "x must"),
        (lambda: one_hidden_layer_penalty(stack_one_hidden_layer(_nets()), [[1.0]]), TypeError, "x must"),
        (lambda: one_hidden_layer_hessian_norm(stack_one_hidden_layer(_nets()), _inputs() * math.nan),
         ValueError, "x must be finite"),
        (lambda: one_hidden_layer_penalty(stack_one_hidden_layer(_nets()), _inputs(), torch.ones(2)),
         ValueError, "noise_std"),
        (lambda: one_hidden_layer_penalty(stack_one_hidden_layer(_nets()), _inputs(), -torch.ones(3)),
         ValueError, "noise_std"),
        (lambda: one_hidden_layer_penalty(stack_one_hidden_layer(_nets()), _inputs(), 0.3), TypeError, "noise_std"),
        (lambda: one_hidden_layer_penalty(stack_one_hidden_layer(_nets()), _inputs(), torch.ones(3), 7),
         TypeError, "generator"),
    ],
)
def test_bad_input_raises_and_names_the_argument(call, error, name):
    with pytest.raises(error, match=name.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_a_wrong_bias_shape_is_named():
    params = stack_one_hidden_layer(_nets())
    params[1] = params[1][:, :3]
    with pytest.raises(ValueError, match="b1"):
        one_hidden_layer_penalty(params, _inputs())


def test_noisy_penalty_reads_its_checks_back_once():
    """One host read-back per call (it runs at every training step): x, noise_std checked together."""
    params = stack_one_hidden_layer(_nets())
    x, noise_std = _inputs().as_subclass(CountingSyncs), torch.full((3,), 0.3, dtype=torch.float64)
    CountingSyncs.syncs = 0
    one_hidden_layer_penalty(params, x, noise_std.as_subclass(CountingSyncs), _generator(1))
    assert CountingSyncs.syncs == 1
    with pytest.raises(ValueError, match="x must be finite"):
        one_hidden_layer_penalty(params, _inputs() * math.nan, noise_std)
    with pytest.raises(ValueError, match="noise_std must be finite"):
        one_hidden_layer_penalty(params, _inputs(), noise_std * math.inf)
    with pytest.raises(ValueError, match="noise_std must hold standard deviations >= 0"):
        one_hidden_layer_penalty(params, _inputs(), -noise_std)

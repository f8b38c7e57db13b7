"""Tests for gni_lib.layer_norms against hand-built W-tilde and per-example autograd (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gni_lib.layer_norms import layer_jacobian_norms, layer_to_layer_jacobians, square_layer_traces
from gni_lib.models import MLP
from _shared import DEVICES, one_thread, seeded_generator  # noqa: F401 (one_thread: autouse)


def _net(activation: str, widths=(3, 6, 6, 6, 2), device: str = "cpu", sigma: float = 0.3):
    torch.manual_seed(0)
    model = MLP(list(widths), activation=activation, sigma=sigma)
    return model.to(device=device, dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_relu_jacobian_is_w_with_inactive_rows_zeroed(device):
    model = _net("relu", device=device)
    x = torch.randn(7, 3, dtype=torch.float64, generator=seeded_generator(1)).to(device)
    jacobians = layer_to_layer_jacobians(model, x)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(jacobians) == len(linears) == 4
    h = x
    for k, (linear, G) in enumerate(zip(linears, jacobians), start=1):
        z = linear(h)
        active = (z > 0).to(z.dtype) if k < len(linears) else torch.ones_like(z)
        expected = active.unsqueeze(2) * linear.weight  # rows i of inactive neurons are zero
        assert G.shape == (7, linear.out_features, linear.in_features)
        torch.testing.assert_close(G, expected, rtol=0, atol=0)
        h = torch.relu(z) if k < len(linears) else z
    # the zeroed entries are rows: a column test would fail on this network
    zero_rows = (jacobians[1].abs().sum(dim=2) == 0)
    assert zero_rows.any() and not (jacobians[1].abs().sum(dim=1) == 0).all()


@pytest.mark.parametrize("activation", ["tanh", "elu"])
def test_matches_per_example_autograd(activation):
    model = _net(activation)
    x = torch.randn(4, 3, dtype=torch.float64, generator=seeded_generator(2))
    jacobians = layer_to_layer_jacobians(model, x)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    act = nn.Tanh() if activation == "tanh" else nn.ELU()
    h = x
    for k, (linear, G) in enumerate(zip(linears, jacobians), start=1):
        last = k == len(linears)
        layer = (lambda v, lin=linear: lin(v)) if last else (lambda v, lin=linear: act(lin(v)))
        for b in range(x.shape[0]):
            expected = torch.autograd.functional.jacobian(layer, h[b])
            torch.testing.assert_close(G[b], expected, rtol=1e-12, atol=1e-12)
        h = layer(h)


def test_norms_and_noise_sites_ignored():
    model = _net("relu")
    model.train()  # noise sites on: the Jacobians must still be those of the clean network
    x = torch.randn(5, 3, dtype=torch.float64, generator=seeded_generator(3))
    jacobians = layer_to_layer_jacobians(model, x)
    again = layer_to_layer_jacobians(model, x)
    for G, H in zip(jacobians, again):
        torch.testing.assert_close(G, H, rtol=0, atol=0)
    norms = layer_jacobian_norms(model, x)
    squared = layer_jacobian_norms(model, x, squared=True)
    expected = torch.stack([G.flatten(1).norm(dim=1).mean() for G in jacobians])
    expected_sq = torch.stack([G.flatten(1).pow(2).sum(dim=1).mean() for G in jacobians])
    torch.testing.assert_close(norms, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(squared, expected_sq, rtol=1e-14, atol=0)
    assert (squared >= norms**2 - 1e-12).all()  # Jensen: mean of squares >= square of mean


def test_square_layer_traces():
    model = _net("relu", widths=(3, 6, 6, 6, 2))
    indices, traces = square_layer_traces(model)
    assert indices == [2, 3]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    expected = torch.stack([sum(linears[k - 1].weight[i, i] for i in range(6)) for k in indices])
    torch.testing.assert_close(traces, expected, rtol=1e-14, atol=0)


def test_bad_inputs():
    model = _net("relu")
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="model"):
        layer_to_layer_jacobians(nn.Linear(3, 2), x)
    with pytest.raises(ValueError, match="model"):
        layer_to_layer_jacobians(nn.Sequential(nn.Linear(3, 3), nn.Dropout(), nn.Linear(3, 1)), x)
    with pytest.raises(ValueError, match="model"):
        layer_to_layer_jacobians(nn.Sequential(nn.ReLU(), nn.Linear(3, 1)), x)
    with pytest.raises(TypeError, match="x"):
        layer_to_layer_jacobians(model, [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="x"):
        layer_to_layer_jacobians(model, torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="x"):
        layer_to_layer_jacobians(model, torch.full((2, 3), float("nan"), dtype=torch.float64))
    with pytest.raises(TypeError, match="squared"):
        layer_jacobian_norms(model, x, squared=1)
    with pytest.raises(ValueError, match="square"):
        square_layer_traces(_net("relu", widths=(3, 4, 2)))


def test_one_rule_for_a_plain_mlp():
    """layer_norms recognises an MLP by gni_lib.models.mlp_structure: a subclass of Sequential
    (which may override forward) is refused, two activations after a layer compose."""

    class Sub(nn.Sequential):
        pass

    x = torch.randn(2, 3, dtype=torch.float64, generator=seeded_generator(5))
    with pytest.raises(ValueError, match="model"):
        layer_to_layer_jacobians(Sub(nn.Linear(3, 2)).double(), x)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Tanh(), nn.Linear(4, 2)).double()
    G = layer_to_layer_jacobians(model, x)[0]
    for b in range(2):
        expected = torch.autograd.functional.jacobian(lambda v: model[:3](v), x[b])
        torch.testing.assert_close(G[b], expected)

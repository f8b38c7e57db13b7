"""Tests for gni_lib.jacobians (and noise.replace_site_outputs) against per-example
torch.autograd.functional.jacobian in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gni_lib.jacobians import layer_jacobians
from gni_lib.models import mlp_structure
from gni_lib.models import MLP
from gni_lib.noise import GaussianNoise, noise_sites, replace_site_outputs
from _shared import DEVICES, seeded_generator as _generator

ACTIVATIONS = ["tanh", "relu", "elu", "linear"]
F64 = torch.float64


def _mlp(widths, activation="tanh", sigma=0.3, mode="additive", device="cpu", seed=0):
    torch.manual_seed(seed)
    return MLP(widths, activation=activation, sigma=sigma, mode=mode).to(device=device, dtype=F64)


class Wrapped(nn.Module):
    """An MLP behind a non-Sequential wrapper: forces the generic (autograd) route."""

    def __init__(self, mlp: nn.Sequential):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(x)


class Branchy(nn.Module):
    """Not an MLP: a skip connection, sin, and a site on a 3-D activation."""

    def __init__(self, sigma=0.2):
        super().__init__()
        self.site0 = GaussianNoise(sigma)
        self.lin1 = nn.Linear(4, 6)
        self.site1 = GaussianNoise(sigma, mode="multiplicative")
        self.lin2 = nn.Linear(6, 3)
        self.skip = nn.Linear(4, 3)

    def forward(self, x):
        h0 = self.site0(x)
        z = torch.sin(self.lin1(h0)).reshape(-1, 2, 3)
        h1 = self.site1(z).reshape(-1, 6)
        return self.lin2(h1) + self.skip(h0) ** 2


def _sequential_oracle(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """J_k per example by autograd.functional.jacobian of the layers after site k."""
    positions = [i for i, child in enumerate(model) if isinstance(child, GaussianNoise)]
    flags = [m.training for m in model.modules()]
    model.eval()  # sites off: the clean network
    try:
        out = []
        for pos in positions:
            head, tail = model[:pos], model[pos + 1 :]
            h = head(x)
            rows = [
                torch.autograd.functional.jacobian(lambda v: tail(v.unsqueeze(0)).squeeze(0), h[b])
                for b in range(x.shape[0])
            ]
            out.append(torch.stack(rows))
        return out
    finally:
        for m, flag in zip(model.modules(), flags):
            m.training = flag


def _branchy_oracle(model: Branchy, x: torch.Tensor) -> list[torch.Tensor]:
    def from_site0(h0):
        z = torch.sin(model.lin1(h0)).reshape(-1, 6)
        return model.lin2(z) + model.skip(h0) ** 2

    def from_site1(h1, h0):
        return model.lin2(h1.reshape(-1, 6)) + model.skip(h0) ** 2

    j0, j1 = [], []
    for b in range(x.shape[0]):
        h0 = x[b : b + 1]
        j0.append(torch.autograd.functional.jacobian(lambda v: from_site0(v)[0], h0)[:, 0])
        h1 = torch.sin(model.lin1(h0)).reshape(1, 2, 3)
        jac = torch.autograd.functional.jacobian(lambda v: from_site1(v, h0)[0], h1)
        j1.append(jac.reshape(3, 6))
    return [torch.stack(j0), torch.stack(j1)]


# --- agreement with the oracle --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
@pytest.mark.parametrize("route", ["mlp", "generic"])
def test_matches_per_example_jacobian(device, activation, mode, route):
    mlp = _mlp([4, 6, 5, 3], activation, mode=mode, device=device)
    model = mlp if route == "mlp" else Wrapped(mlp)
    x = torch.randn(5, 4, dtype=F64, device=device)
    ours = layer_jacobians(model, x)
    oracle = _sequential_oracle(mlp, x)
    assert [J.shape for J in ours] == [(5, 3, 4), (5, 3, 6), (5, 3, 5)]
    for J, expected in zip(ours, oracle):
        assert J.device == x.device and J.dtype == F64
        torch.testing.assert_close(J, expected, rtol=1e-10, atol=1e-10)


def test_mlp_route_is_taken_for_mlp_and_not_for_wrapper():
    mlp = _mlp([3, 4, 2])
    structure = mlp_structure(mlp)
    assert structure is not None and structure.site_layers == [0, 1]
    assert mlp_structure(Wrapped(mlp)) is None
    assert mlp_structure(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))) is None


@pytest.mark.parametrize("activation", ["sigmoid", "softplus", "silu", "leaky", "elu2"])
def test_other_elementwise_activations_and_a_trailing_one(activation):
    act = {
        "sigmoid": nn.Sigmoid(),
        "softplus": nn.Softplus(),
        "silu": nn.SiLU(),
        "leaky": nn.LeakyReLU(0.2),
        "elu2": nn.ELU(alpha=2.0),
    }[activation]
    torch.manual_seed(3)
    model = nn.Sequential(
        GaussianNoise(0.1), nn.Linear(3, 5), act, nn.Tanh(),
        GaussianNoise(0.1), nn.Linear(5, 2), nn.Tanh(),
    ).double()  # fmt: skip
    assert mlp_structure(model) is not None
    x = torch.randn(4, 3, dtype=F64)
    for J, expected in zip(layer_jacobians(model, x), _sequential_oracle(model, x)):
        torch.testing.assert_close(J, expected, rtol=1e-10, atol=1e-10)


def test_generic_model_with_skip_and_3d_site():
    torch.manual_seed(1)
    model = Branchy().double()
    x = torch.randn(4, 4, dtype=F64)
    ours = layer_jacobians(model, x)
    assert [J.shape for J in ours] == [(4, 3, 4), (4, 3, 6)]
    for J, expected in zip(ours, _branchy_oracle(model, x)):
        torch.testing.assert_close(J, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("route", ["mlp", "generic"])
def test_parameter_gradient_matches_brute_force(route):
    mlp = _mlp([3, 5, 4, 2], "elu", seed=2)
    model = mlp if route == "mlp" else Wrapped(mlp)
    x = torch.randn(4, 3, dtype=F64)
    params = list(mlp.parameters())
    ours = sum(J.pow(2).sum() * (k + 1) for k, J in enumerate(layer_jacobians(model, x)))
    positions = [i for i, c in enumerate(mlp) if isinstance(c, GaussianNoise)]
    mlp.eval()
    oracle = 0.0
    for k, pos in enumerate(positions):
        h = mlp[:pos](x)
        for b in range(4):
            J = torch.autograd.functional.jacobian(
                lambda v: mlp[pos + 1 :](v.unsqueeze(0)).squeeze(0), h[b], create_graph=True
            )
            oracle = oracle + J.pow(2).sum() * (k + 1)
    kw = dict(allow_unused=True, materialize_grads=True)
    for a, b in zip(torch.autograd.grad(ours, params, **kw), torch.autograd.grad(oracle, params, **kw)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("route", ["mlp", "generic"])
def test_no_grad_gives_no_graph_and_same_values(route):
    mlp = _mlp([3, 4, 2])
    model = mlp if route == "mlp" else Wrapped(mlp)
    x = torch.randn(3, 3, dtype=F64)
    with torch.no_grad():
        plain = layer_jacobians(model, x)
    graph = layer_jacobians(model, x)
    for a, b in zip(plain, graph):
        assert a.grad_fn is None and b.grad_fn is not None
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_linear_network_jacobians_are_weight_products():
    """For a linear MLP, J_k is the product of the weights after site k, the same for every x."""
    model = _mlp([3, 4, 5, 2], "linear")
    x = torch.randn(6, 3, dtype=F64)
    W1, W2, W3 = (m.weight for m in model if isinstance(m, nn.Linear))
    expected = [W3 @ W2 @ W1, W3 @ W2, W3]
    for J, E in zip(layer_jacobians(model, x), expected):
        torch.testing.assert_close(J, E.detach().expand(6, -1, -1), rtol=1e-12, atol=1e-12)


def test_clean_pass_noise_state_untouched():
    """Sites are switched off (nothing drawn), and training flags are restored."""
    g = _generator(0)
    torch.manual_seed(0)
    model = MLP([3, 4, 2], sigma=0.5, generator=g).double()
    state = g.get_state()
    layer_jacobians(model, torch.randn(2, 3, dtype=F64))
    assert torch.equal(g.get_state(), state)
    assert all(m.training for m in model.modules())
    model.eval()
    layer_jacobians(Wrapped(model), torch.randn(2, 3, dtype=F64))
    assert not any(m.training for m in model.modules())


def test_float32_and_zero_sigma():
    torch.manual_seed(0)
    model = MLP([3, 4, 2])  # float32, sigma 0: Jacobians do not depend on sigma
    Js = layer_jacobians(model, torch.randn(2, 3))
    assert all(J.dtype == torch.float32 for J in Js) and len(Js) == 2


@settings(max_examples=10, deadline=None)
@given(
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    batch=st.integers(1, 3),
    activation=st.sampled_from(ACTIVATIONS),
    seed=st.integers(0, 50),
)
def test_property_matches_oracle_over_shapes(widths, batch, activation, seed):
    model = _mlp(widths, activation, seed=seed)
    x = torch.randn(batch, widths[0], dtype=F64)
    for J, expected in zip(layer_jacobians(model, x), _sequential_oracle(model, x)):
        torch.testing.assert_close(J, expected, rtol=1e-10, atol=1e-10)


# --- replace_site_outputs -------------------------------------------------------------


def test_replace_site_outputs_counts_restores_and_removes_hooks():
    model = _mlp([2, 3, 2], sigma=0.4)
    x = torch.randn(3, 2, dtype=F64)
    with replace_site_outputs(model, lambda k, h: h + 1.0 * k) as calls:
        out = model(x)
        assert calls == [1, 1]
        assert not any(site.training for site in noise_sites(model))
    model.eval()
    expected = model[4:](model[:3](x) + 1.0)  # site 1 (child 3) adds 1
    model.train()
    torch.testing.assert_close(out, expected)
    with pytest.raises(RuntimeError, match="boom"):
        with replace_site_outputs(model, lambda k, h: h):
            raise RuntimeError("boom")
    assert all(site.training for site in noise_sites(model))
    assert all(not site._forward_hooks for site in noise_sites(model))


def test_replace_site_outputs_errors():
    with pytest.raises(ValueError, match="model"):
        with replace_site_outputs(nn.Linear(2, 2), lambda k, h: h):
            pass
    with pytest.raises(TypeError, match="replace"):
        with replace_site_outputs(_mlp([2, 2]), "not callable"):
            pass


# --- errors ---------------------------------------------------------------------------


def test_model_without_sites():
    with pytest.raises(ValueError, match="model"):
        layer_jacobians(nn.Sequential(nn.Linear(3, 2)), torch.zeros(2, 3))


def test_model_not_a_module():
    with pytest.raises(TypeError, match="model"):
        layer_jacobians(lambda x: x, torch.zeros(2, 3))


@pytest.mark.parametrize("route", ["mlp", "generic"])
@pytest.mark.parametrize(
    "bad",
    [
        torch.randn(3, dtype=F64),
        torch.zeros(0, 3, dtype=F64),
        torch.randn(2, 4, dtype=F64),  # wrong width
        torch.randn(2, 3, dtype=torch.float32),  # wrong dtype for a float64 model
        torch.tensor([[0.0, float("nan"), 1.0]], dtype=F64),
        torch.tensor([[0.0, float("inf"), 1.0]], dtype=F64),
        torch.zeros(2, 3, dtype=torch.int64),
    ],
)
def test_bad_x(route, bad):
    mlp = _mlp([3, 4, 2])
    model = mlp if route == "mlp" else Wrapped(mlp)
    with pytest.raises(ValueError, match="x"):
        layer_jacobians(model, bad)


def test_x_not_a_tensor():
    with pytest.raises(TypeError, match="x"):
        layer_jacobians(_mlp([3, 2]), [[0.0, 0.0, 0.0]])


def test_site_used_twice_or_never():
    site = GaussianNoise(0.1)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.site, self.lin = site, nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(self.site(self.site(x)))

    class Never(Twice):
        def forward(self, x):
            return self.lin(x)

    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="site 0 was called 2 times"):
        layer_jacobians(Twice(), x)
    with pytest.raises(ValueError, match="site 0 was called 0 times"):
        layer_jacobians(Never(), x)


def test_output_not_batch_by_features():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.site = GaussianNoise(0.1)

        def forward(self, x):
            return self.site(x).sum(dim=1)

    with pytest.raises(ValueError, match="model must map x"):
        layer_jacobians(Flat(), torch.randn(2, 3))

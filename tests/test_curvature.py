"""Tests for gni_lib.curvature.hessian_trace against the full torch.func.hessian (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gni_lib.curvature import hessian_trace
from gni_lib.models import mlp_structure
from gni_lib.models import MLP
from gni_lib.noise import GaussianNoise
from _shared import DEVICES, seeded_generator as _generator

# torch.func.hessian (the oracle) goes through a path that warns about torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

F64 = torch.float64


def _mlp(widths, activation="tanh", bias=True, device="cpu", seed=0):
    torch.manual_seed(seed)
    return MLP(widths, activation=activation, sigma=0.3, bias=bias).to(device=device, dtype=F64)


def _targets(loss, batch, d_out, device="cpu"):
    g = _generator(0, device)
    if loss == "mse":
        return torch.randn(batch, d_out, dtype=F64, device=device, generator=g)
    return torch.randint(0, d_out, (batch,), device=device, generator=g)


def _batch_loss(out, y, loss):
    if loss == "mse":
        return 0.5 * (out - y).pow(2).sum(dim=1).mean()
    return F.cross_entropy(out, y)


def full_hessian(model: nn.Module, x, y, loss):
    """The full P x P Hessian of the clean loss (model in eval mode), by torch.func.hessian."""
    flags = [m.training for m in model.modules()]
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    sizes = [p.numel() for p in params]
    theta = torch.cat([p.reshape(-1) for p in params])

    def f(flat):
        tensors = {n: t.view(p.shape) for n, t, p in zip(names, flat.split(sizes), params)}
        return _batch_loss(torch.func.functional_call(model, tensors, (x,)), y, loss)

    hess = torch.func.hessian(f)(theta)
    for m, flag in zip(model.modules(), flags):
        m.training = flag
    return hess


def brute_ggn_trace(model: nn.Module, x, y, loss):
    """1/B sum_b Tr(J_b^T H_b J_b) with J_b = d h_L(x_b) / d theta by autograd.functional.jacobian."""
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for _, p in model.named_parameters())
    total = 0.0
    for b in range(x.shape[0]):

        def out(*ps):
            return torch.func.functional_call(model, dict(zip(names, ps)), (x[b : b + 1],))[0]

        blocks = torch.autograd.functional.jacobian(out, params)
        J = torch.cat([j.reshape(j.shape[0], -1) for j in blocks], dim=1)
        logits = out(*params)
        if loss == "mse":
            H = torch.eye(logits.numel(), dtype=x.dtype)
        else:
            p = torch.softmax(logits, 0)
            H = torch.diag(p) - torch.outer(p, p)
        total = total + torch.trace(J.T @ H @ J)
    model.train()
    return total / x.shape[0]


class Custom(nn.Module):
    """Not a plain MLP: exercises the generic routes."""

    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(3, 4)
        self.site = GaussianNoise(0.2)
        self.lin2 = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.tensor([0.7, -1.3]))

    def forward(self, x):
        return self.scale * self.lin2(torch.sin(self.site(self.lin1(x)))) + x[:, :2] ** 2


# --- exact ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "linear"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_exact_equals_trace_of_full_hessian(device, activation, loss):
    model = _mlp([3, 5, 4, 3], activation, device=device)
    x = torch.randn(6, 3, dtype=F64, device=device)
    y = _targets(loss, 6, 3, device)
    value, se = hessian_trace(model, x, y, loss=loss)
    assert value.device == x.device and value.dtype == F64 and se.item() == 0.0
    expected = full_hessian(model, x, y, loss).diagonal().sum()
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "model",
    [
        "no_bias",
        "trailing_activation",
        "prefix_activation",
        "composite_segments",
        "single_layer",
        "custom",
    ],
)
def test_exact_other_structures_and_generic_route(model):
    torch.manual_seed(1)
    models = {
        "no_bias": lambda: MLP([3, 4, 3], activation="elu", bias=False),
        "trailing_activation": lambda: nn.Sequential(
            GaussianNoise(0.1), nn.Linear(3, 4), nn.Softplus(),
            GaussianNoise(0.1), nn.Linear(4, 3), nn.Sigmoid(),
        ),  # fmt: skip
        "prefix_activation": lambda: nn.Sequential(
            nn.Tanh(), GaussianNoise(0.1), nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 3)
        ),
        "composite_segments": lambda: nn.Sequential(
            GaussianNoise(0.1), nn.Linear(3, 4), nn.GELU(), nn.Tanh(),
            GaussianNoise(0.1), nn.Linear(4, 3),
        ),  # fmt: skip
        "single_layer": lambda: nn.Sequential(GaussianNoise(0.1), nn.Linear(3, 3)),
        "custom": Custom,
    }
    net = models[model]().double()
    assert (mlp_structure(net) is None) == (model == "custom")
    x = torch.randn(5, 3, dtype=F64)
    d_out = 2 if model == "custom" else 3
    for loss in ("mse", "ce"):
        y = _targets(loss, 5, d_out)
        expected = full_hessian(net, x, y, loss).diagonal().sum()
        value = hessian_trace(net, x, y, loss=loss)[0]
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=5),
    batch=st.integers(1, 4),
    activation=st.sampled_from(["tanh", "relu", "elu", "linear"]),
    loss=st.sampled_from(["mse", "ce"]),
    seed=st.integers(0, 50),
)
def test_property_exact_matches_full_hessian(widths, batch, activation, loss, seed):
    model = _mlp(widths, activation, seed=seed)
    x = torch.randn(batch, widths[0], dtype=F64)
    y = _targets(loss, batch, widths[-1])
    expected = full_hessian(model, x, y, loss).diagonal().sum()
    value = hessian_trace(model, x, y, loss=loss)[0]
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)


def test_exact_in_chunks_of_examples(monkeypatch):
    import gni_lib.curvature as curvature

    model = _mlp([3, 5, 4, 3], "tanh")
    x, y = torch.randn(7, 3, dtype=F64), _targets("ce", 7, 3)
    whole = hessian_trace(model, x, y, loss="ce")[0]
    monkeypatch.setattr(curvature, "HESSIAN_ENTRIES_PER_CHUNK", 2 * 25)  # two examples per chunk
    torch.testing.assert_close(hessian_trace(model, x, y, loss="ce")[0], whole, rtol=1e-12, atol=0)


# --- Gauss-Newton ------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("net", ["mlp", "custom"])
def test_ggn_matches_brute_force(loss, net):
    torch.manual_seed(2)
    model = (_mlp([3, 5, 4, 2], "tanh", seed=2) if net == "mlp" else Custom().double())
    x = torch.randn(4, 3, dtype=F64)
    y = _targets(loss, 4, 2)
    value, se = hessian_trace(model, x, y, loss=loss, method="ggn")
    assert se.item() == 0.0
    torch.testing.assert_close(value, brute_ggn_trace(model, x, y, loss), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh"])
def test_ggn_is_exact_for_piecewise_linear_nets_with_mse(activation):
    """phi'' = 0 and MSE: no network-curvature terms, so GGN trace = exact trace."""
    model = _mlp([3, 5, 4, 2], activation)
    x, y = torch.randn(5, 3, dtype=F64), _targets("mse", 5, 2)
    exact, ggn = (hessian_trace(model, x, y, method=m)[0] for m in ("exact", "ggn"))
    if activation == "tanh":
        assert abs(exact - ggn) > 1e-6 * abs(exact)
    else:
        torch.testing.assert_close(exact, ggn, rtol=1e-10, atol=1e-12)


# --- Hutchinson ----------------------------------------------------------------------------------


HUTCHINSON_NETS = {  # the Taylor-mode MLP route, its structural corner cases, and the generic route
    "elu": lambda: MLP([3, 4, 3], activation="elu"),
    "no_bias_linear": lambda: MLP([3, 4, 3], activation="linear", bias=False),
    "trailing_and_prefix": lambda: nn.Sequential(
        nn.Tanh(), GaussianNoise(0.1), nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 3), nn.Sigmoid()
    ),
    "single_layer": lambda: nn.Sequential(GaussianNoise(0.1), nn.Linear(3, 3)),
    "custom": Custom,
}


@pytest.mark.parametrize("net", list(HUTCHINSON_NETS))
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_hutchinson_reproduces_documented_probes(loss, net):
    """mean_p v_p^T H v_p with v = 2*randint(0, 2, (n, P)) - 1 per chunk of PROBES_PER_CHUNK."""
    import gni_lib.curvature as curvature

    torch.manual_seed(5)
    model = HUTCHINSON_NETS[net]().double()
    d_out = 2 if net == "custom" else 3
    x, y = torch.randn(4, 3, dtype=F64), _targets(loss, 4, d_out)
    probes = curvature.PROBES_PER_CHUNK + 5
    value, se = hessian_trace(
        model, x, y, loss=loss, method="hutchinson", probes=probes, generator=_generator(4)
    )
    H = full_hessian(model, x, y, loss)
    g = _generator(4)
    chunks = [curvature.PROBES_PER_CHUNK, 5]
    v = torch.cat([(2 * torch.randint(0, 2, (n, H.shape[0]), generator=g) - 1).to(F64) for n in chunks])
    quad = ((v @ H) * v).sum(dim=1)
    torch.testing.assert_close(value, quad.mean(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(se, quad.std() / math.sqrt(probes), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_hutchinson_within_4_se_of_exact(loss):
    model = _mlp([3, 6, 5, 3], "tanh", seed=3)
    x, y = torch.randn(6, 3, dtype=F64), _targets(loss, 6, 3)
    exact = hessian_trace(model, x, y, loss=loss)[0]
    estimate, se = hessian_trace(
        model, x, y, loss=loss, method="hutchinson", probes=2000, generator=_generator(0)
    )
    assert se > 0 and abs(estimate - exact) <= 4 * se
    assert se < 0.2 * abs(exact)  # a meaningful resolution


def test_same_seed_same_estimate():
    model = _mlp([3, 4, 2])
    x, y = torch.randn(3, 3, dtype=F64), _targets("mse", 3, 2)
    a, b, c = (
        hessian_trace(model, x, y, method="hutchinson", probes=10, generator=_generator(s))[0]
        for s in (1, 1, 2)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- state, dtype ----------------------------------------------------------------------------


def test_model_state_untouched_and_no_graph():
    g = _generator(0)
    torch.manual_seed(0)
    model = MLP([3, 4, 2], sigma=0.5, generator=g).double()
    state = g.get_state()
    x, y = torch.randn(3, 3, dtype=F64), _targets("mse", 3, 2)
    for method in ("exact", "ggn", "hutchinson"):
        value, se = hessian_trace(model, x, y, method=method, probes=3)
        assert value.grad_fn is None and se.grad_fn is None
        value, se = hessian_trace(model, x.clone().requires_grad_(True), y, method=method, probes=3)
        assert value.grad_fn is None and se.grad_fn is None
    assert torch.equal(g.get_state(), state) and all(m.training for m in model.modules())


def test_float32_stays_float32():
    torch.manual_seed(0)
    model = MLP([3, 4, 2])
    value, se = hessian_trace(model, torch.randn(3, 3), torch.randn(3, 2))
    assert value.dtype == torch.float32 and se.dtype == torch.float32


# --- errors ---------------------------------------------------------------------------------


def _model_x_y():
    return _mlp([3, 4, 2]), torch.randn(2, 3, dtype=F64), torch.randn(2, 2, dtype=F64)


def test_bad_method_loss_and_probes():
    model, x, y = _model_x_y()
    with pytest.raises(ValueError, match="method"):
        hessian_trace(model, x, y, method="lanczos")
    with pytest.raises(ValueError, match="loss"):
        hessian_trace(model, x, y, loss="nll")
    with pytest.raises(ValueError, match="probes"):
        hessian_trace(model, x, y, method="hutchinson", probes=1)
    with pytest.raises(ValueError, match="probes"):
        hessian_trace(model, x, y, probes=0)
    with pytest.raises(TypeError, match="probes"):
        hessian_trace(model, x, y, method="hutchinson", probes=10.0)
    with pytest.raises(TypeError, match="generator"):
        hessian_trace(model, x, y, method="hutchinson", generator="seed")


def test_bad_x_y_and_model():
    model, x, y = _model_x_y()
    with pytest.raises(ValueError, match="x"):
        hessian_trace(model, torch.randn(2, 5, dtype=F64), y)
    with pytest.raises(ValueError, match="x"):
        hessian_trace(model, torch.full((2, 3), float("nan"), dtype=F64), y)
    with pytest.raises(ValueError, match="y"):
        hessian_trace(model, x, torch.randn(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="y"):
        hessian_trace(model, x, torch.tensor([0, 2]), loss="ce")
    with pytest.raises(ValueError, match="model"):
        hessian_trace(nn.Sequential(nn.Linear(3, 2)).double(), x, y)


@pytest.mark.parametrize("method", ["exact", "ggn", "hutchinson"])
def test_mlp_route_and_generic_route_agree(method):
    class Wrapped(nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.mlp = mlp

        def forward(self, x):
            return self.mlp(x)

    model = _mlp([3, 5, 4, 3], "elu", seed=4)
    x, y = torch.randn(5, 3, dtype=F64), _targets("ce", 5, 3)
    fast, generic = (
        hessian_trace(net, x, y, loss="ce", method=method, probes=30, generator=_generator(6))[0]
        for net in (model, Wrapped(model))
    )
    torch.testing.assert_close(fast, generic, rtol=1e-10, atol=1e-12)

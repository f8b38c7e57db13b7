"""Tests for gni_lib.models.MLP: child structure, forward pass against a hand-written oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gni_lib.models import ACTIVATIONS, MLP
from gni_lib.noise import GaussianNoise, noise_sites
from _shared import DEVICES, seeded_generator as _generator


_ACT_FN = {
    "tanh": torch.tanh,
    "relu": lambda t: torch.clamp(t, min=0.0),
    "elu": lambda t: torch.where(t > 0, t, torch.expm1(t)),
    "linear": lambda t: t,
}


def _oracle_forward(model, x, activation, z=None, sigmas=None, mode="additive"):
    """h_{k+1} = act(W (h_k + sigma_k z_k) + b), written out from the parameters."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    h = x
    for k, lin in enumerate(linears):
        if z is not None:
            h = h + sigmas[k] * z[k] if mode == "additive" else h * (1 + sigmas[k] * z[k])
        h = h @ lin.weight.T + (lin.bias if lin.bias is not None else 0.0)
        if k < len(linears) - 1:
            h = _ACT_FN[activation](h)
    return h


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=6),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    bias=st.booleans(),
    data=st.data(),
)
def test_property_child_structure(widths, activation, bias, data):
    L = len(widths) - 1
    sigmas = data.draw(st.lists(st.floats(0.0, 3.0), min_size=L, max_size=L))
    model = MLP(widths, activation=activation, sigma=sigmas, bias=bias)
    children = list(model)
    assert isinstance(model, nn.Sequential)
    assert len(children) == 3 * L - 1
    for k in range(L):
        site, lin = children[3 * k], children[3 * k + 1]
        assert type(site) is GaussianNoise and site.sigma == sigmas[k]
        assert type(lin) is nn.Linear
        assert (lin.in_features, lin.out_features) == (widths[k], widths[k + 1])
        assert (lin.bias is not None) == bias
        if k < L - 1:
            assert type(children[3 * k + 2]) is ACTIVATIONS[activation]
    assert noise_sites(model) == [children[3 * k] for k in range(L)]
    assert model.training


def test_scalar_sigma_mode_and_shared_generator():
    g = _generator(0)
    model = MLP([2, 3, 3, 1], sigma=0.4, mode="multiplicative", generator=g)
    sites = noise_sites(model)
    assert [s.sigma for s in sites] == [0.4, 0.4, 0.4]
    assert all(s.mode == "multiplicative" and s.generator is g for s in sites)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_clean_forward_matches_oracle(activation):
    torch.manual_seed(0)
    model = MLP([3, 5, 4, 2], activation=activation, sigma=0.5).double().eval()
    x = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(model(x), _oracle_forward(model, x, activation), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_noisy_forward_matches_oracle(device, mode):
    """In training mode the sites draw z_0, z_1, ... from the shared generator in forward order."""
    torch.manual_seed(1)
    widths, sigmas = [3, 6, 4, 2], [0.1, 0.2, 0.3]
    model = MLP(widths, sigma=sigmas, mode=mode, generator=_generator(4, device))
    model = model.to(device=device, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, device=device)
    out = model(x)
    oracle_gen = _generator(4, device)
    z = [
        torch.randn((5, w), generator=oracle_gen, device=device, dtype=torch.float64)
        for w in widths[:-1]
    ]
    expected = _oracle_forward(model, x, "tanh", z, sigmas, mode)
    assert out.device == x.device and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, model.eval()(x))


def test_linear_activation_gives_a_linear_map():
    torch.manual_seed(2)
    model = MLP([3, 4, 2], activation="linear", bias=False).double().eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    A = model[4].weight @ model[1].weight
    torch.testing.assert_close(model(x), x @ A.T, rtol=1e-12, atol=1e-12)
    assert isinstance(model[2], nn.Identity)


def test_initialisation_follows_the_global_seed():
    torch.manual_seed(3)
    a = MLP([2, 8, 1])
    torch.manual_seed(3)
    b = MLP([2, 8, 1])
    c = MLP([2, 8, 1])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("device", DEVICES)
def test_output_on_device(device):
    model = MLP([2, 4, 3], sigma=0.1).to(device)
    out = model(torch.randn(5, 2, device=device))
    assert out.shape == (5, 3) and out.device.type == device and out.dtype == torch.float32


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [[3], [], [3, 0], [3, -1], [3, 2.5], [3, True], "32", 3, None])
def test_bad_widths(bad):
    with pytest.raises(ValueError, match="widths"):
        MLP(bad)


def test_bad_activation_lists_choices():
    with pytest.raises(ValueError, match=r"activation.*tanh.*relu.*elu.*linear"):
        MLP([2, 2], activation="sigmoid")


@pytest.mark.parametrize("bad", [[0.1], [0.1, 0.2, 0.3]])
def test_sigma_length_mismatch(bad):
    with pytest.raises(ValueError, match="sigma"):
        MLP([2, 3, 1], sigma=bad)


def test_negative_sigma():
    with pytest.raises(ValueError, match="sigma"):
        MLP([2, 3, 1], sigma=[0.1, -0.1])


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        MLP([2, 3, 1], mode="dropout")


def test_bad_bias():
    with pytest.raises(TypeError, match="bias"):
        MLP([2, 3, 1], bias=1)


def test_bad_generator():
    with pytest.raises(TypeError, match="generator"):
        MLP([2, 3, 1], generator=0)


def test_seed_fixes_the_initial_weights_and_leaves_the_global_stream() -> None:
    from gni_lib.models import MLP

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = MLP([3, 5, 2], seed=9)
    assert torch.equal(torch.rand(3), expected_next)  # the global generator was not advanced
    b = MLP([3, 5, 2], seed=9)
    c = MLP([3, 5, 2], seed=10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[1].weight, c[1].weight)


@pytest.mark.parametrize(("bad", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_seed_names_the_argument(bad: object, error: type) -> None:
    from gni_lib.models import MLP

    with pytest.raises(error, match="seed"):
        MLP([3, 5, 2], seed=bad)  # type: ignore[arg-type]


# --- the MLP core ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "modules",
    [[nn.Tanh()], [nn.ReLU()], [nn.ELU(alpha=2.0)], [nn.LeakyReLU(0.2)], [nn.Sigmoid()],
     [nn.GELU()], [nn.Softplus(), nn.Tanh()], [nn.SiLU()], [nn.Mish()], [nn.Identity()], []],
    ids=["tanh", "relu", "elu", "leaky", "sigmoid", "gelu", "softplus-tanh", "silu", "mish",
         "identity", "none"],
)
def test_elementwise_derivatives_match_autograd(modules):
    """phi, phi' and phi'' of the core (closed forms, or forward mode) against nested autograd."""
    from gni_lib.models import elementwise

    z = torch.randn(4, 5, dtype=torch.float64, generator=_generator(0))
    phi = nn.Sequential(*modules)
    a, d1, d2 = elementwise(modules, z, second=True)
    grad = torch.func.vmap(torch.func.grad(phi))
    torch.testing.assert_close(a, phi(z), rtol=0, atol=0)
    one = torch.ones_like(z)
    torch.testing.assert_close(one if d1 is None else d1, grad(z.reshape(-1)).reshape(z.shape))
    expected = torch.func.vmap(torch.func.grad(torch.func.grad(phi)))(z.reshape(-1)).reshape(z.shape)
    torch.testing.assert_close(torch.zeros_like(z) if d2 is None else d2, expected)
    with torch.no_grad():  # the same without autograd, and without the second derivative
        _, d1_no_grad, d2_no_grad = elementwise(modules, z)
        _, _, d2_second = elementwise(modules, z, second=True)  # SiLU, Mish: forward-over-forward
    assert d2_no_grad is None and (d1 is None) == (d1_no_grad is None)
    torch.testing.assert_close(torch.zeros_like(z) if d2_second is None else d2_second, expected)


def test_mlp_structure_is_the_one_rule():
    from gni_lib.models import mlp_structure

    net = MLP([3, 4, 2], seed=0)
    structure = mlp_structure(net)
    assert structure.site_layers == [0, 1] and structure.prefix == []
    assert structure.names == [("1.weight", "1.bias"), ("4.weight", "4.bias")]
    assert [n for n, _ in net.named_parameters()] == [n for pair in structure.names for n in pair]

    class Sub(nn.Sequential):
        pass

    assert mlp_structure(Sub(*net)) is None  # a subclass may override forward
    assert mlp_structure(nn.Sequential(nn.Linear(2, 2), nn.Dropout())) is None
    assert mlp_structure(nn.Sequential(nn.Tanh())) is None  # no linear layer
    no_bias = mlp_structure(MLP([3, 4, 2], bias=False, seed=0))
    assert no_bias.names == [("1.weight", None), ("4.weight", None)]


def test_mlp_forward_and_backward_match_autograd_and_vmap():
    """The core's forward and backward recursion give the input-output Jacobian of autograd,
    and, under vmap over stacked parameters, the same as one model at a time."""
    from torch.func import stack_module_state, vmap

    from gni_lib.models import mlp_backward, mlp_forward, mlp_structure, mlp_weights

    nets = [MLP([3, 5, 4, 2], "tanh", seed=i).double().eval() for i in range(3)]
    x = torch.randn(6, 3, dtype=torch.float64, generator=_generator(1))
    structure = mlp_structure(nets[0])

    def jacobian(params):
        clean = mlp_forward(structure, x, params)
        weights = [w for w, _ in mlp_weights(structure, params)]
        eye = torch.eye(2, dtype=x.dtype).expand(6, 2, 2)
        return clean.output, mlp_backward(weights, clean.first, eye)[0]

    params, _ = stack_module_state(nets)
    outputs, jacobians = vmap(jacobian)(params)
    for i, net in enumerate(nets):
        torch.testing.assert_close(outputs[i], net(x))
        expected = torch.func.vmap(torch.func.jacrev(net))(x)
        torch.testing.assert_close(jacobians[i], expected)
        own = mlp_forward(mlp_structure(net), x)
        torch.testing.assert_close(own.output, outputs[i])  # vmap: round-off only
    # stacked weights with a leading model axis: one batched product per layer, no vmap
    forward = [mlp_forward(structure, x, {k: v[i] for k, v in params.items()}) for i in range(3)]
    weights = [w for w, _ in mlp_weights(structure, params)]
    first = [None if forward[0].first[m] is None else torch.stack([f.first[m] for f in forward])
             for m in range(len(weights))]
    stacked = mlp_backward(weights, first, torch.eye(2, dtype=x.dtype).expand(3, 6, 2, 2))[0]
    torch.testing.assert_close(stacked, jacobians)

"""Tests for gni_lib.regularisers: R (eqs. 9, 11, 13, 14) and the full second-order term,
against per-example autograd.functional.jacobian and torch.func.hessian in float64."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gni_lib.models import MLP
from gni_lib.noise import GaussianNoise, noise_sites, set_noise
from gni_lib.regularisers import explicit_regularizer, second_order_term
from _shared import DEVICES, seeded_generator as _generator

# torch.func.hessian (the oracle below) goes through a path that warns about torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

ACTIVATIONS = ["tanh", "relu", "elu", "linear"]
F64 = torch.float64


def _mlp(widths, activation="tanh", sigma=(0.3, 0.2, 0.5), mode="additive", device="cpu", seed=0):
    torch.manual_seed(seed)
    sigma = list(sigma)[: len(widths) - 1] if not isinstance(sigma, float) else sigma
    return MLP(widths, activation=activation, sigma=sigma, mode=mode).to(device=device, dtype=F64)


class Wrapped(nn.Module):
    """Forces the generic (autograd) route."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(x)


def _oracle_parts(model: nn.Sequential, x: torch.Tensor, create_graph: bool = False):
    """Per site: (sigma, mode, h_k (B, d_k), J_k (B, d_L, d_k)) by per-example jacobian; and logits."""
    positions = [i for i, c in enumerate(model) if isinstance(c, GaussianNoise)]
    flags = [m.training for m in model.modules()]
    model.eval()
    parts = []
    for pos in positions:
        site, head, tail = model[pos], model[:pos], model[pos + 1 :]
        h = head(x)
        J = torch.stack(
            [
                torch.autograd.functional.jacobian(
                    lambda v: tail(v.unsqueeze(0)).squeeze(0), h[b], create_graph=create_graph
                )
                for b in range(x.shape[0])
            ]
        )
        parts.append((site.sigma, site.mode, h, J))
    logits = model(x)
    for m, flag in zip(model.modules(), flags):
        m.training = flag
    return parts, logits


def _scaled(sigma, mode, h, J):
    return J * (sigma * h).unsqueeze(1) if mode == "multiplicative" else sigma * J


def oracle_R(model, x, loss, form="exact", create_graph=False):
    """R = 1/2 mean_b sum_k Tr(J~^T H J~), with H built explicitly per example."""
    parts, logits = _oracle_parts(model, x, create_graph)
    p = torch.softmax(logits, dim=1)
    total = 0.0
    for b in range(x.shape[0]):
        if loss == "mse":
            H = torch.eye(logits.shape[1], dtype=x.dtype)
        elif form == "exact":
            H = torch.diag(p[b]) - torch.outer(p[b], p[b])
        else:
            H = torch.diag(p[b] * (1 - p[b]))
        for sigma, mode, h, J in parts:
            Jt = _scaled(sigma, mode, h, J)[b]
            total = total + 0.5 * torch.trace(Jt.T @ H @ Jt)
    return total / x.shape[0]


# --- exact R against the oracle ---------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_exact_matches_oracle(device, activation, mode, loss):
    model = _mlp([4, 6, 5, 3], activation, mode=mode, device=device)
    x = torch.randn(5, 4, dtype=F64, device=device)
    value = explicit_regularizer(model, x, loss=loss)
    assert value.shape == () and value.dtype == F64 and value.device == x.device
    expected = oracle_R(model.cpu(), x.cpu(), loss)
    torch.testing.assert_close(value.cpu(), expected, rtol=1e-10, atol=1e-12)
    generic = explicit_regularizer(Wrapped(model.to(device)), x, loss=loss)
    torch.testing.assert_close(generic.cpu(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("route", ["mlp", "generic"])
def test_parameter_gradient_matches_oracle(loss, route):
    mlp = _mlp([3, 5, 4, 3], "tanh", mode="multiplicative", seed=4)
    model = mlp if route == "mlp" else Wrapped(mlp)
    x = torch.randn(4, 3, dtype=F64)
    params = list(mlp.parameters())
    kw = dict(allow_unused=True, materialize_grads=True)
    ours = torch.autograd.grad(explicit_regularizer(model, x, loss=loss), params, **kw)
    oracle = torch.autograd.grad(oracle_R(mlp, x, loss, create_graph=True), params, **kw)
    assert all(g.abs().max() > 1e-8 for g in ours[:-1])
    for a, b in zip(ours, oracle):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mse_is_half_sum_of_sigma2_frobenius_norms_eq11():
    model = _mlp([3, 4, 4, 2], "elu")
    x = torch.randn(6, 3, dtype=F64)
    parts, _ = _oracle_parts(model, x)
    expected = 0.5 * sum(s**2 * J.pow(2).sum() for s, _, _, J in parts) / 6
    torch.testing.assert_close(explicit_regularizer(model, x), expected, rtol=1e-10, atol=0)


def test_multiplicative_equals_additive_with_activation_scaled_sigma_eq6():
    """Eq. 6 from the other side: a one-site multiplicative R equals an additive R with
    sigma^2 h^2 when h is the same on every coordinate (a constant input)."""
    torch.manual_seed(0)
    mult = MLP([3, 4, 2], sigma=[0.3, 0.0], mode="multiplicative").double()
    add = MLP([3, 4, 2], sigma=[0.3 * 2.5, 0.0]).double()
    add.load_state_dict(mult.state_dict())
    x = torch.full((2, 3), 2.5, dtype=F64)
    expected = explicit_regularizer(add, x)
    torch.testing.assert_close(explicit_regularizer(mult, x), expected, rtol=1e-12, atol=0)


# --- cross-entropy: exact, diag, invariance --------------------------------------------


def test_exact_ce_is_sum_of_variances_under_p():
    model = _mlp([4, 6, 4], "tanh", sigma=(0.4, 0.7), seed=5)
    x = torch.randn(5, 4, dtype=F64)
    parts, logits = _oracle_parts(model, x)
    p = torch.softmax(logits, dim=1).unsqueeze(2)  # (B, d_L, 1)
    total = 0.0
    for sigma, _, _, J in parts:
        mean = (p * J).sum(dim=1, keepdim=True)
        variance = (p * (J - mean) ** 2).sum(dim=1)  # Var_{i~p}(J_ia), (B, d_k)
        total = total + 0.5 * sigma**2 * variance.sum()
    torch.testing.assert_close(explicit_regularizer(model, x, loss="ce"), total / 5, rtol=1e-10, atol=0)


def test_diag_equals_its_own_formula_eq14():
    model = _mlp([4, 6, 4], "elu", sigma=(0.4, 0.7), seed=6)
    x = torch.randn(5, 4, dtype=F64)
    parts, logits = _oracle_parts(model, x)
    p = torch.softmax(logits, dim=1)
    expected = sum(
        0.5 * s**2 * ((p * (1 - p)).unsqueeze(2) * J.pow(2)).sum() for s, _, _, J in parts
    ) / 5
    value = explicit_regularizer(model, x, loss="ce", method="diag")
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(value, oracle_R(model, x, "ce", form="diag"), rtol=1e-10, atol=0)


@pytest.mark.parametrize("route", ["mlp", "generic"])
def test_exact_ce_invariant_to_shifting_output_rows_diag_is_not(route):
    """Adding one vector u to every row of W_L adds (u . h) to every logit: p and H_L J are
    unchanged, so exact R is unchanged; the diagonal-only eq. 14 changes."""
    mlp = _mlp([4, 6, 5, 3], "tanh", sigma=0.5, seed=7)
    model = mlp if route == "mlp" else Wrapped(mlp)
    x = torch.randn(6, 4, dtype=F64)
    def both():
        return (explicit_regularizer(model, x, loss="ce", method=m).item() for m in ("exact", "diag"))

    exact, diag = both()
    with torch.no_grad():
        u = 3.0 * torch.randn(5, dtype=F64)
        mlp[-1].weight += u  # broadcast: the same u added to every row
    exact2, diag2 = both()
    assert exact2 == pytest.approx(exact, rel=1e-10)
    assert abs(diag2 - diag) > 1e-3 * diag
    with torch.no_grad():  # a different vector per row does change exact R (the test can fail)
        mlp[-1].weight += torch.randn(3, 5, dtype=F64)
    assert abs(explicit_regularizer(model, x, loss="ce").item() - exact) > 1e-3 * exact


def test_ce_does_not_depend_on_labels_and_mse_not_on_targets():
    """R takes no labels at all: H_L is label-free for CE (eq. 13) and I for MSE."""
    import inspect

    assert "y" not in inspect.signature(explicit_regularizer).parameters


# --- Hutchinson ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_hutchinson_mean_within_4_se_of_exact(loss):
    model = _mlp([4, 6, 5, 4], "tanh", mode="multiplicative", seed=8)
    x = torch.randn(5, 4, dtype=F64)
    exact = explicit_regularizer(model, x, loss=loss)
    g = _generator(0)
    with torch.no_grad():
        draws = torch.stack(
            [
                explicit_regularizer(model, x, loss=loss, method="hutchinson", generator=g)
                for _ in range(400)
            ]
        )
    se = draws.std() / math.sqrt(draws.numel())
    assert se > 0
    assert abs(draws.mean() - exact) <= 4 * se
    assert draws.std() > 1e-3 * exact  # the draws do vary: the test can fail


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("route", ["mlp", "generic"])
def test_hutchinson_value_and_gradient_at_fixed_probes(loss, route):
    """Documented draw: v = 2*randint(0, 2, (B, probes, d_L)) - 1; estimate
    1/2 mean_b sum_k ||(M v)^T J~_k||^2 / probes with M = I or S."""
    mlp = _mlp([3, 5, 4], "elu", sigma=(0.3, 0.6), seed=9)
    model = mlp if route == "mlp" else Wrapped(mlp)
    x = torch.randn(4, 3, dtype=F64)
    probes = 3
    value = explicit_regularizer(
        model, x, loss=loss, method="hutchinson", probes=probes, generator=_generator(5)
    )
    v = (2 * torch.randint(0, 2, (4, probes, 4), generator=_generator(5)) - 1).to(F64)
    parts, logits = _oracle_parts(mlp, x, create_graph=True)
    p = torch.softmax(logits, dim=1)
    expected = 0.0
    for b in range(4):
        S = torch.diag(p[b].sqrt()) - torch.outer(p[b], p[b].sqrt())
        cot = v[b] if loss == "mse" else v[b] @ S.T  # rows (S v_n)^T
        for sigma, mode, h, J in parts:
            expected = expected + 0.5 * (cot @ _scaled(sigma, mode, h, J)[b]).pow(2).sum() / probes
    expected = expected / 4
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=0)
    params = list(mlp.parameters())
    kw = dict(allow_unused=True, materialize_grads=True)
    ours, oracle = torch.autograd.grad(value, params, **kw), torch.autograd.grad(expected, params, **kw)
    for a, b in zip(ours, oracle):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_same_seed_same_value():
    model = _mlp([3, 4, 3])
    x = torch.randn(4, 3, dtype=F64)
    a, b, c = (
        explicit_regularizer(model, x, loss="ce", method="hutchinson", probes=2, generator=_generator(s))
        for s in (1, 1, 2)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- graph, dtype, zero noise ----------------------------------------------------------


@pytest.mark.parametrize("route", ["mlp", "generic"])
def test_no_grad_gives_value_without_graph(route):
    mlp = _mlp([3, 4, 2])
    model = mlp if route == "mlp" else Wrapped(mlp)
    x = torch.randn(4, 3, dtype=F64)
    with torch.no_grad():
        value = explicit_regularizer(model, x, loss="ce")
    assert value.grad_fn is None
    expected = explicit_regularizer(model, x, loss="ce").detach()
    torch.testing.assert_close(value, expected, rtol=1e-14, atol=0)


def test_zero_noise_gives_zero_and_float32_stays_float32():
    torch.manual_seed(0)
    model = MLP([3, 4, 2])
    value = explicit_regularizer(model, torch.randn(4, 3))
    assert value.dtype == torch.float32 and value.item() == 0.0
    set_noise(model, [0.0, 0.5])
    assert explicit_regularizer(model, torch.randn(4, 3)).item() > 0


def test_model_modes_and_site_generators_untouched():
    g = _generator(0)
    torch.manual_seed(0)
    model = MLP([3, 4, 2], sigma=0.5, generator=g).double()
    state = g.get_state()
    explicit_regularizer(model, torch.randn(2, 3, dtype=F64), loss="ce")
    assert torch.equal(g.get_state(), state) and all(m.training for m in model.modules())


@settings(max_examples=10, deadline=None)
@given(
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    sigma=st.floats(0.0, 2.0),
    activation=st.sampled_from(ACTIVATIONS),
    mode=st.sampled_from(["additive", "multiplicative"]),
    loss=st.sampled_from(["mse", "ce"]),
    seed=st.integers(0, 50),
)
def test_property_matches_oracle(widths, sigma, activation, mode, loss, seed):
    model = _mlp(widths, activation, sigma=sigma, mode=mode, seed=seed)
    x = torch.randn(3, widths[0], dtype=F64)
    value = explicit_regularizer(model, x, loss=loss)
    assert value >= -1e-15  # H_L is positive semi-definite (eq. 13)
    torch.testing.assert_close(value, oracle_R(model, x, loss), rtol=1e-10, atol=1e-13)


# --- the full second-order term ----------------------------------------------------------


def _brute_second_order(model: nn.Sequential, x, y, loss, split=False):
    """1/2 sum_k sum_{b,a} s^2 d^2L/dh_{k,b,a}^2 by torch.func.hessian with respect to
    perturbations delta_k at every site; with split=True also its network-curvature part,
    the same with L replaced by g^T h_L for the fixed output gradient g."""
    positions = [i for i, c in enumerate(model) if isinstance(c, GaussianNoise)]
    sites = [model[i] for i in positions]
    flags = [m.training for m in model.modules()]
    model.eval()

    def output(deltas):
        h = x
        for i, child in enumerate(model):
            h = child(h)
            if i in positions:
                h = h + deltas[positions.index(i)]
        return h

    def batch_loss(out):
        if loss == "mse":
            return 0.5 * (out - y).pow(2).sum(dim=1).mean()
        return torch.nn.functional.cross_entropy(out, y)

    zeros = tuple(torch.zeros_like(model[:i](x)) for i in positions)
    out0 = output(zeros)
    leaf = out0.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(batch_loss(leaf), leaf)

    def weighted_trace(fn):
        hess = torch.func.hessian(fn)(zeros)
        total = 0.0
        for k, (site, pos) in enumerate(zip(sites, positions)):
            size = zeros[k].numel()
            diag = hess[k][k].reshape(size, size).diagonal().reshape(zeros[k].shape)
            h = model[:pos](x)
            w = site.sigma**2 * (h**2 if site.mode == "multiplicative" else torch.ones_like(h))
            total = total + 0.5 * (w * diag).sum()
        return total

    full = weighted_trace(lambda d: batch_loss(output(d)))
    curvature = weighted_trace(lambda d: (g * output(d)).sum()) if split else None
    for m, flag in zip(model.modules(), flags):
        m.training = flag
    return (full, curvature) if split else full


@pytest.mark.parametrize("activation", ["tanh", "elu", "linear"])
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_second_order_term_matches_hessian_and_R_is_its_gauss_newton_part(activation, mode, loss):
    model = _mlp([3, 5, 4, 3], activation, mode=mode, seed=10)
    x = torch.randn(4, 3, dtype=F64)
    y = torch.randn(4, 3, dtype=F64) if loss == "mse" else torch.tensor([0, 2, 1, 2])
    value = second_order_term(model, x, y, loss=loss, chunk_size=2)
    full, curvature = _brute_second_order(model, x, y, loss, split=True)
    torch.testing.assert_close(value, full, rtol=1e-10, atol=1e-13)
    R = explicit_regularizer(model, x, loss=loss)
    torch.testing.assert_close(R, full - curvature, rtol=1e-10, atol=1e-13)
    if activation == "linear" and mode == "additive":
        assert abs(curvature) < 1e-13  # no network curvature: the term is R exactly
    elif activation != "linear":
        assert abs(curvature) > 1e-4 * abs(full)  # it is there, and of the same order


def test_second_order_term_generic_route_and_no_graph():
    mlp = _mlp([3, 4, 2], "tanh", sigma=(0.2, 0.3))
    x = torch.randn(3, 3, dtype=F64)
    y = torch.randn(3, 2, dtype=F64)
    value = second_order_term(Wrapped(mlp), x, y)
    assert value.grad_fn is None
    torch.testing.assert_close(value, _brute_second_order(mlp, x, y, "mse"), rtol=1e-10, atol=1e-14)


# --- errors ---------------------------------------------------------------------------------


def _model_and_x():
    return _mlp([3, 4, 2]), torch.randn(2, 3, dtype=F64)


def test_unknown_method_and_loss():
    model, x = _model_and_x()
    with pytest.raises(ValueError, match="method"):
        explicit_regularizer(model, x, method="fisher")
    with pytest.raises(ValueError, match="loss"):
        explicit_regularizer(model, x, loss="hinge")


def test_diag_with_mse_names_method_and_loss():
    model, x = _model_and_x()
    with pytest.raises(ValueError, match="method='diag'.*loss='ce'"):
        explicit_regularizer(model, x, method="diag")


def test_bad_probes():
    model, x = _model_and_x()
    for bad in (0, -1):
        with pytest.raises(ValueError, match="probes"):
            explicit_regularizer(model, x, method="hutchinson", probes=bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="probes"):
            explicit_regularizer(model, x, method="hutchinson", probes=bad)


def test_bad_generator():
    model, x = _model_and_x()
    with pytest.raises(TypeError, match="generator"):
        explicit_regularizer(model, x, method="hutchinson", generator=3)


def test_no_sites_and_bad_x():
    with pytest.raises(ValueError, match="model"):
        explicit_regularizer(nn.Sequential(nn.Linear(3, 2)).double(), torch.randn(2, 3, dtype=F64))
    model, _ = _model_and_x()
    for bad in (torch.randn(2, 5, dtype=F64), torch.tensor([[1.0, float("nan"), 0.0]], dtype=F64)):
        with pytest.raises(ValueError, match="x"):
            explicit_regularizer(model, bad)


def test_second_order_term_bad_y_and_chunk_size():
    model, x = _model_and_x()
    with pytest.raises(ValueError, match="y"):
        second_order_term(model, x, torch.randn(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="y"):
        second_order_term(model, x, torch.tensor([0, 5]), loss="ce")
    with pytest.raises(ValueError, match="y"):
        second_order_term(model, x, torch.tensor([[float("inf"), 0.0], [0.0, 0.0]], dtype=F64))
    with pytest.raises(TypeError, match="y"):
        second_order_term(model, x, [[0.0, 0.0]])
    with pytest.raises(ValueError, match="chunk_size"):
        second_order_term(model, x, torch.randn(2, 2, dtype=F64), chunk_size=0)


def test_negative_sigma_is_refused_where_it_is_set():
    """sigma < 0 never reaches R: the noise sites refuse it, naming sigma."""
    model, x = _model_and_x()
    with pytest.raises(ValueError, match="sigma"):
        set_noise(model, -0.1)
    with pytest.raises(ValueError, match="sigma"):
        noise_sites(model)[0].sigma = -1.0
    assert explicit_regularizer(model, x) > 0  # unchanged, still usable


@pytest.mark.parametrize("method", ["exact", "diag", "hutchinson"])
def test_ce_gradient_is_finite_when_the_softmax_saturates(method: str) -> None:
    """Failed before R took sqrt(p) from the log-softmax: sqrt'(0) = inf gave NaN gradients."""
    from gni_lib.models import MLP

    net = MLP([4, 8, 3], sigma=0.1, seed=0)
    with torch.no_grad():
        net[-1].weight.mul_(1e4)  # logits of order 1e4: some p are exactly 0 in float32
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert (torch.softmax(net.eval()(x), 1) == 0).any()
    value = explicit_regularizer(net, x, loss="ce", method=method, probes=3, generator=torch.Generator().manual_seed(1))
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("route", ["mlp", "generic"])
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_functional_regularizer_vmapped_over_three_models_equals_three_calls(route, mode, loss):
    """R as a function of the parameters composes with vmap over a stacked-model axis:
    values and parameter gradients equal three separate explicit_regularizer calls."""
    from torch.func import stack_module_state, vmap

    from gni_lib.regularisers import functional_regularizer

    mlps = [_mlp([4, 6, 5, 3], "tanh", sigma=(0.1, 0.2 * (i + 1), 0.3), mode=mode, seed=i) for i in range(3)]
    models = mlps if route == "mlp" else [Wrapped(m) for m in mlps]
    x = torch.randn(7, 4, dtype=F64, generator=_generator(0))
    params, _ = stack_module_state(models)
    sigmas = torch.tensor([[site.sigma for site in noise_sites(m)] for m in models], dtype=F64)
    values = vmap(lambda p, s: functional_regularizer(models[0], p, x, sigmas=s, loss=loss))(params, sigmas)
    expected = torch.stack([explicit_regularizer(m, x, loss=loss) for m in models])
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-15)
    grads = torch.autograd.grad(values.sum(), list(params.values()), allow_unused=True, materialize_grads=True)
    for i, model in enumerate(models):
        one = torch.autograd.grad(
            explicit_regularizer(model, x, loss=loss), list(model.parameters()),
            allow_unused=True, materialize_grads=True,
        )  # fmt: skip
        for g, h in zip(grads, one):
            torch.testing.assert_close(g[i], h, rtol=1e-10, atol=1e-15)

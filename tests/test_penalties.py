"""Tests for gni_lib.penalties against per-example torch.autograd.functional.jacobian (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gni_lib.penalties import (
    input_derivatives,
    input_hessian_norm,
    jacobian_laplacian_cross,
    jacobian_penalty,
    per_example_jacobians,
)
from gni_lib.models import MLP
from _shared import DEVICES, one_thread, seeded_generator as _generator  # noqa: F401 (one_thread: autouse)



def _net(activation: str, d_out: int, device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    return MLP([4, 7, 5, d_out], activation=activation).to(device=device, dtype=torch.float64).eval()


def _brute_force(model, x, create_graph=False):
    """Mean over examples of ||J||_F^2, one torch.autograd.functional.jacobian call per example."""
    total = 0.0
    for b in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(
            lambda xb: model(xb.unsqueeze(0)).squeeze(0), x[b], create_graph=create_graph
        )
        total = total + J.pow(2).sum()
    return total / x.shape[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("d_out", [1, 3])
def test_value_matches_per_example_jacobian(device, activation, d_out):
    model = _net(activation, d_out, device)
    x = torch.randn(6, 4, dtype=torch.float64, device=device)
    value = jacobian_penalty(model, x)
    assert value.shape == () and value.dtype == torch.float64 and value.device == x.device
    torch.testing.assert_close(value, _brute_force(model, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_per_example_jacobians_match(activation):
    model = _net(activation, 3)
    x = torch.randn(5, 4, dtype=torch.float64)
    J = per_example_jacobians(model, x)
    assert J.shape == (5, 3, 4)
    for b in range(5):
        expected = torch.autograd.functional.jacobian(lambda xb: model(xb.unsqueeze(0)).squeeze(0), x[b])
        torch.testing.assert_close(J[b], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_parameter_gradient_matches_brute_force(activation):
    model = _net(activation, 3, seed=1)
    x = torch.randn(5, 4, dtype=torch.float64)
    params = list(model.parameters())
    # The last bias does not enter the Jacobian: its gradient is zero (materialised).
    kw = dict(allow_unused=True, materialize_grads=True)
    ours = torch.autograd.grad(jacobian_penalty(model, x), params, **kw)
    oracle = torch.autograd.grad(_brute_force(model, x, create_graph=True), params, **kw)
    assert any(g.abs().max() > 1e-6 for g in ours)
    for a, b in zip(ours, oracle):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("samples", [1, 3])
def test_noisy_value_matches_brute_force_at_same_draw(device, samples):
    """Documented draw order: eps = noise_std * randn((samples, B, d_in)) from the generator."""
    model = _net("tanh", 3, device)
    x = torch.randn(4, 4, dtype=torch.float64, device=device)
    value = jacobian_penalty(model, x, noise_std=0.3, samples=samples, generator=_generator(9, device))
    eps = torch.randn((samples, 4, 4), generator=_generator(9, device), device=device, dtype=torch.float64)
    x_tilde = (x.unsqueeze(0) + 0.3 * eps).reshape(samples * 4, 4)
    torch.testing.assert_close(value, _brute_force(model, x_tilde), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(value, jacobian_penalty(model, x), rtol=1e-6, atol=0)


def test_same_seed_same_value_different_seed_different():
    model = _net("elu", 2)
    x = torch.randn(5, 4, dtype=torch.float64)
    a = jacobian_penalty(model, x, noise_std=0.5, samples=2, generator=_generator(3))
    b = jacobian_penalty(model, x, noise_std=0.5, samples=2, generator=_generator(3))
    c = jacobian_penalty(model, x, noise_std=0.5, samples=2, generator=_generator(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_no_noise_draws_nothing_and_ignores_samples():
    model = _net("tanh", 2)
    x = torch.randn(5, 4, dtype=torch.float64)
    g = _generator(0)
    state = g.get_state()
    a = jacobian_penalty(model, x, samples=4, generator=g)
    assert torch.equal(g.get_state(), state)
    torch.testing.assert_close(a, jacobian_penalty(model, x), rtol=1e-14, atol=0)


def test_linear_map_closed_form_and_noise_invariance():
    """F(x) = A x has J = A everywhere, so the penalty is ||A||_F^2 with or without noise."""
    A = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64)
    expected = A.pow(2).sum()
    torch.testing.assert_close(jacobian_penalty(lambda t: t @ A.T, x), expected, rtol=1e-13, atol=0)
    noisy = jacobian_penalty(lambda t: t @ A.T, x, noise_std=2.0, samples=3, generator=_generator(1))
    torch.testing.assert_close(noisy, expected, rtol=1e-13, atol=0)


def test_no_grad_gives_value_without_graph():
    model = _net("tanh", 2)
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        value = jacobian_penalty(model, x)
    assert value.grad_fn is None
    torch.testing.assert_close(value, jacobian_penalty(model, x).detach(), rtol=1e-14, atol=0)


def test_float32_stays_float32():
    torch.manual_seed(0)
    model = MLP([3, 4, 2]).eval()
    value = jacobian_penalty(model, torch.randn(4, 3), noise_std=0.1, generator=_generator(0))
    assert value.dtype == torch.float32


@settings(max_examples=12, deadline=None)
@given(
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    batch=st.integers(1, 4),
    seed=st.integers(0, 100),
)
def test_property_matches_brute_force_over_shapes(widths, batch, seed):
    torch.manual_seed(seed)
    model = MLP(widths, activation="tanh").double().eval()
    x = torch.randn(batch, widths[0], dtype=torch.float64)
    torch.testing.assert_close(jacobian_penalty(model, x), _brute_force(model, x), rtol=1e-10, atol=1e-12)


# --- errors ----------------------------------------------------------------------------------


def _model_and_x():
    return _net("tanh", 2), torch.randn(3, 4, dtype=torch.float64)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_noise_std_value(bad):
    model, x = _model_and_x()
    with pytest.raises(ValueError, match="noise_std"):
        jacobian_penalty(model, x, noise_std=bad)


@pytest.mark.parametrize("bad", ["0.1", None, True])
def test_bad_noise_std_type(bad):
    model, x = _model_and_x()
    with pytest.raises(TypeError, match="noise_std"):
        jacobian_penalty(model, x, noise_std=bad)


def test_bad_samples():
    model, x = _model_and_x()
    for bad in (0, -2):
        with pytest.raises(ValueError, match="samples"):
            jacobian_penalty(model, x, samples=bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="samples"):
            jacobian_penalty(model, x, samples=bad)


@pytest.mark.parametrize(
    "bad",
    [
        torch.randn(4, dtype=torch.float64),
        torch.randn(2, 3, 4, dtype=torch.float64),
        torch.zeros(0, 4, dtype=torch.float64),
        torch.tensor([[0.0, float("nan"), 0.0, 0.0]], dtype=torch.float64),
        torch.tensor([[0.0, float("inf"), 0.0, 0.0]], dtype=torch.float64),
        torch.zeros(2, 4, dtype=torch.int64),
    ],
)
def test_bad_x(bad):
    model, _ = _model_and_x()
    with pytest.raises(ValueError, match="x"):
        jacobian_penalty(model, bad)


def test_x_not_a_tensor():
    model, _ = _model_and_x()
    with pytest.raises(TypeError, match="x"):
        jacobian_penalty(model, [[0.0, 0.0, 0.0, 0.0]])


def test_model_not_callable():
    with pytest.raises(TypeError, match="model"):
        jacobian_penalty("mlp", torch.zeros(2, 3))


def test_model_with_wrong_output_shape():
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="model"):
        jacobian_penalty(lambda t: t.sum(dim=1), x)


def test_bad_generator_type():
    model, x = _model_and_x()
    with pytest.raises(TypeError, match="generator"):
        jacobian_penalty(model, x, noise_std=0.1, generator=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generator_on_other_device():
    model = _net("tanh", 2, "cuda")
    x = torch.randn(3, 4, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match="generator"):
        jacobian_penalty(model, x, noise_std=0.1, generator=_generator(0, "cpu"))


def test_model_in_training_mode_uses_its_own_noise_once():
    """The model is run once, as given: active noise sites perturb the Jacobian, reproducibly."""
    torch.manual_seed(0)
    model = MLP([4, 6, 2], sigma=0.5, generator=_generator(2)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    noisy = jacobian_penalty(model, x)
    model[0].generator.manual_seed(2)
    assert torch.equal(jacobian_penalty(model, x), noisy)
    assert not torch.allclose(noisy, jacobian_penalty(model.eval(), x), rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- input_derivatives


def test_input_derivatives_of_a_polynomial_and_of_sin() -> None:
    x = torch.linspace(-1.0, 1.0, 7, dtype=torch.float64).unsqueeze(1)
    values = input_derivatives(lambda z: z**4 - 2 * z, x, 5)
    expected = [x**4 - 2 * x, 4 * x**3 - 2, 12 * x**2, 24 * x, torch.full_like(x, 24.0), torch.zeros_like(x)]
    for got, want in zip(values, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    sines = input_derivatives(torch.sin, x, 4)
    for k, got in enumerate(sines):
        torch.testing.assert_close(got, torch.sin(x + k * math.pi / 2), rtol=0, atol=1e-12)


def test_input_derivatives_match_a_network_s_autograd_jacobian() -> None:
    torch.manual_seed(0)
    net = MLP([1, 8, 8, 1], activation="tanh").double().eval()
    x = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64).unsqueeze(1)
    first = input_derivatives(net, x, 1)[1]
    for n in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: net(v.unsqueeze(0)).squeeze(0), x[n])
        torch.testing.assert_close(first[n], jac.reshape(1), rtol=0, atol=1e-12)


def test_input_derivatives_errors() -> None:
    x = torch.zeros(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="x must have shape"):
        input_derivatives(torch.sin, torch.zeros(3, 2), 1)
    with pytest.raises(ValueError, match="order"):
        input_derivatives(torch.sin, x, -1)
    with pytest.raises(TypeError, match="order"):
        input_derivatives(torch.sin, x, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fn"):
        input_derivatives(3, x, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fn must map"):
        input_derivatives(lambda z: z.sum(), x, 1)


# --------------------------------------------------------------------------- Hutchinson option


def _probe_signs(samples_rows: int, d_out: int, probes: int, generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, (probes, samples_rows, d_out), generator=generator)
    return (2 * signs - 1).to(torch.float64)


def _brute_force_hutchinson(model, x, v):
    """Mean over rows of mean over probes of ||v^T J||^2, per-example autograd Jacobians."""
    total = 0.0
    for b in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(
            lambda xb: model(xb.unsqueeze(0)).squeeze(0), x[b], create_graph=True
        )
        total = total + (v[:, b, :] @ J).pow(2).sum() / v.shape[0]
    return total / x.shape[0]


@pytest.mark.parametrize("probes", [1, 3])
def test_hutchinson_matches_brute_force_at_documented_draw(probes):
    model = _net("tanh", 3, seed=2)
    x = torch.randn(5, 4, dtype=torch.float64)
    value = jacobian_penalty(model, x, method="hutchinson", probes=probes, generator=_generator(5))
    v = _probe_signs(5, 3, probes, _generator(5))
    torch.testing.assert_close(value, _brute_force_hutchinson(model, x, v), rtol=1e-10, atol=1e-12)


def test_hutchinson_with_noise_draws_noise_then_probes():
    model = _net("elu", 3, seed=3)
    x = torch.randn(4, 4, dtype=torch.float64)
    g = _generator(11)
    value = jacobian_penalty(model, x, noise_std=0.2, samples=2, method="hutchinson", probes=2, generator=g)
    oracle_g = _generator(11)
    eps = torch.randn((2, 4, 4), generator=oracle_g, dtype=torch.float64)
    x_tilde = (x.unsqueeze(0) + 0.2 * eps).reshape(8, 4)
    v = _probe_signs(8, 3, 2, oracle_g)
    torch.testing.assert_close(value, _brute_force_hutchinson(model, x_tilde, v), rtol=1e-10, atol=1e-12)


def test_hutchinson_parameter_gradient_matches_brute_force_at_same_probes():
    model = _net("tanh", 3, seed=4)
    x = torch.randn(5, 4, dtype=torch.float64)
    params = list(model.parameters())
    kw = dict(allow_unused=True, materialize_grads=True)
    ours = torch.autograd.grad(
        jacobian_penalty(model, x, method="hutchinson", probes=2, generator=_generator(8)), params, **kw
    )
    oracle = torch.autograd.grad(_brute_force_hutchinson(model, x, _probe_signs(5, 3, 2, _generator(8))), params, **kw)
    assert any(g.abs().max() > 1e-6 for g in ours)
    for a, b in zip(ours, oracle):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_hutchinson_is_unbiased_within_four_standard_errors():
    """2000 independent estimates; the exact value must lie within 4 SE of their mean.

    A biased estimator (e.g. probes in {0, 1}, with E[v v^T] = (I + 11^T)/4 != I) is off by
    over a hundred SE here (checked once by swapping it in).
    """
    model = _net("tanh", 5, seed=5)
    x = torch.randn(6, 4, dtype=torch.float64)
    g = _generator(21)
    draws = torch.stack(
        [jacobian_penalty(model, x, method="hutchinson", probes=1, generator=g) for _ in range(2000)]
    )
    exact = jacobian_penalty(model, x)
    se = draws.std() / math.sqrt(draws.numel())
    assert se > 0
    assert abs(draws.mean() - exact) < 4 * se, f"mean {draws.mean():.6g}, exact {exact:.6g}, SE {se:.2g}"


def test_hutchinson_exact_for_one_output_and_linear_map():
    """With d_out = 1 every probe is ±1, so ||v J||^2 = ||J||^2 exactly."""
    model = _net("tanh", 1, seed=6)
    x = torch.randn(5, 4, dtype=torch.float64)
    value = jacobian_penalty(model, x, method="hutchinson", probes=2, generator=_generator(0))
    torch.testing.assert_close(value, jacobian_penalty(model, x), rtol=1e-12, atol=0)


def test_hutchinson_same_seed_same_value_and_float32():
    model = _net("tanh", 3)
    x = torch.randn(5, 4, dtype=torch.float64)
    a = jacobian_penalty(model, x, method="hutchinson", generator=_generator(1))
    b = jacobian_penalty(model, x, method="hutchinson", generator=_generator(1))
    assert torch.equal(a, b)
    torch.manual_seed(0)
    small = MLP([3, 4, 2]).eval()
    assert jacobian_penalty(small, torch.randn(4, 3), method="hutchinson", generator=_generator(0)).dtype == torch.float32


def test_bad_method_and_probes():
    model, x = _model_and_x()
    for bad in ("diag", "Exact", None):
        with pytest.raises(ValueError, match="method"):
            jacobian_penalty(model, x, method=bad)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="probes"):
            jacobian_penalty(model, x, method="hutchinson", probes=bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="probes"):
            jacobian_penalty(model, x, method="hutchinson", probes=bad)


# --------------------------------------------------------------------------- Hessian norm and cross term


def _one(model):
    return lambda xb: model(xb.unsqueeze(0)).squeeze(0)


def _brute_hessian_norm(model, x):
    """Mean over examples of sum_k ||H_k||_F^2, one torch.autograd.functional.hessian per example and output."""
    total = 0.0
    d_out = model(x[:1]).shape[1]
    for b in range(x.shape[0]):
        for k in range(d_out):
            H = torch.autograd.functional.hessian(lambda xb: _one(model)(xb)[k], x[b])
            total = total + H.pow(2).sum()
    return total / x.shape[0]


def _brute_cross(model, x):
    """Mean over examples of sum_k grad F_k . grad Laplacian F_k, by nested torch.autograd.functional."""
    total = 0.0
    d_out = model(x[:1]).shape[1]
    for b in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(_one(model), x[b])
        for k in range(d_out):
            def laplacian(xb):
                H = torch.autograd.functional.hessian(lambda z: _one(model)(z)[k], xb, create_graph=True)
                return H.diagonal().sum()
            grad_lap = torch.autograd.functional.jacobian(laplacian, x[b])
            total = total + (J[k] * grad_lap).sum()
    return total / x.shape[0]


def test_hessian_norm_and_cross_term_of_a_polynomial_by_hand():
    """F(x) = x1^2 x2: J = (2 x1 x2, x1^2), H = [[2 x2, 2 x1], [2 x1, 0]], Laplacian 2 x2.

    So ||H||_F^2 = 4 x2^2 + 8 x1^2 and sum_i J_i d_i (Laplacian) = x1^2 * 2.
    """
    x = torch.randn(7, 2, dtype=torch.float64)
    F = lambda t: (t[:, 0] ** 2 * t[:, 1]).unsqueeze(1)
    expected_h = (4 * x[:, 1] ** 2 + 8 * x[:, 0] ** 2).mean()
    expected_c = (2 * x[:, 0] ** 2).mean()
    torch.testing.assert_close(input_hessian_norm(F, x), expected_h, rtol=1e-13, atol=0)
    torch.testing.assert_close(jacobian_laplacian_cross(F, x), expected_c, rtol=1e-13, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["tanh", "elu"])
def test_hessian_norm_and_cross_term_match_autograd(device, activation):
    model = _net(activation, 3, device, seed=7)
    x = torch.randn(4, 4, dtype=torch.float64, device=device)
    h = input_hessian_norm(model, x)
    c = jacobian_laplacian_cross(model, x)
    assert h.shape == () and h.dtype == torch.float64 and h.device == x.device
    torch.testing.assert_close(h, _brute_hessian_norm(model, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c, _brute_cross(model, x), rtol=1e-10, atol=1e-12)


def test_half_laplacian_of_jacobian_penalty_is_hessian_norm_plus_cross_term():
    """(1/2) Laplacian_x ||J(x)||_F^2 = ||H||_F^2 + sum_k grad F_k . grad Laplacian F_k (the sigma^2 coefficient)."""
    model = _net("tanh", 3, seed=8)
    x = torch.randn(5, 4, dtype=torch.float64)

    def P(xb):
        J = torch.autograd.functional.jacobian(_one(model), xb, create_graph=True)
        return J.pow(2).sum()

    half_laplacian = sum(torch.autograd.functional.hessian(P, x[b]).trace() for b in range(5)) / 10
    total = input_hessian_norm(model, x) + jacobian_laplacian_cross(model, x)
    torch.testing.assert_close(total, half_laplacian, rtol=1e-10, atol=1e-12)


def test_hessian_norm_zero_for_linear_map_and_parameter_gradient():
    A = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    assert input_hessian_norm(lambda t: t @ A.T, x).item() == 0.0
    assert jacobian_laplacian_cross(lambda t: t @ A.T, x).item() == 0.0
    model = _net("tanh", 2, seed=9)
    params = list(model.parameters())
    kw = dict(allow_unused=True, materialize_grads=True)
    ours = torch.autograd.grad(input_hessian_norm(model, x), params, **kw)

    def brute():
        total = 0.0
        for b in range(5):
            for k in range(2):
                H = torch.autograd.functional.hessian(lambda z: _one(model)(z)[k], x[b], create_graph=True)
                total = total + H.pow(2).sum()
        return total / 5

    oracle = torch.autograd.grad(brute(), params, **kw)
    assert any(g.abs().max() > 1e-6 for g in ours)
    for a, b in zip(ours, oracle):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [input_hessian_norm, jacobian_laplacian_cross])
def test_hessian_and_cross_errors(fn):
    model, x = _model_and_x()
    with pytest.raises(TypeError, match="model"):
        fn("mlp", x)
    with pytest.raises(TypeError, match="x"):
        fn(model, [[0.0] * 4])
    with pytest.raises(ValueError, match="x"):
        fn(model, torch.randn(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="x"):
        fn(model, torch.tensor([[0.0, float("nan"), 0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="model"):
        fn(lambda t: t.sum(dim=1), x)

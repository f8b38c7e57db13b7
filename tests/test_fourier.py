"""gni_lib.fourier against independent routes: the library's R and layer norms, and networks trained one by one."""

from __future__ import annotations

import math

import pytest
import torch

import gni_lib
from gni_lib.fourier import (
    FourierFeatures,
    PeriodicEmbedding,
    fit_stacked,
    periodic_grid,
    stack_mlps,
    stacked_forward,
    stacked_layer_statistics,
    stacked_regulariser,
)
from gni_lib.layer_norms import layer_jacobian_norms, square_layer_traces
from gni_lib.noise import set_noise
from gni_lib.regularisers import explicit_regularizer
from gni_lib.spectral import fourier_spectrum, sobolev_seminorm_fourier

WIDTHS = [1, 8, 8, 8, 1]


def _models(count: int, dtype=torch.float64, widths=WIDTHS):
    return [gni_lib.MLP(widths, activation="relu", seed=100 + s).to(dtype=dtype) for s in range(count)]


def test_fourier_features_give_the_seminorm_exactly() -> None:
    torch.manual_seed(0)
    readout = torch.nn.Linear(12, 1).double()
    net = torch.nn.Sequential(FourierFeatures(6), readout)
    x = periodic_grid(32).requires_grad_()
    values = net(x)
    derivative = torch.autograd.grad(values.sum(), x)[0]
    grid_mean = derivative.pow(2).mean()
    assert torch.isclose(grid_mean, sobolev_seminorm_fourier(values.detach().squeeze(1)), rtol=1e-12)
    assert FourierFeatures(6)(x.detach()).shape == (32, 12)


def test_periodic_embedding_has_period_one() -> None:
    x = periodic_grid(10)
    assert torch.allclose(PeriodicEmbedding()(x), PeriodicEmbedding()(x + 1.0), atol=1e-12)
    assert periodic_grid(4).squeeze(1).tolist() == [0.0, 0.25, 0.5, 0.75]


def test_stacked_forward_is_each_clean_model() -> None:
    models = _models(3)
    weights, biases = stack_mlps(models)
    x = periodic_grid(20)
    out, hidden = stacked_forward(weights, biases, x)
    assert out.shape == (3, 20, 1) and len(hidden) == len(WIDTHS) - 2
    for m, model in enumerate(models):
        assert torch.allclose(out[m], model.eval()(x), atol=1e-12)


def test_stacked_forward_noise_is_drawn_from_the_generator() -> None:
    weights, biases = stack_mlps(_models(2))
    x = periodic_grid(20)
    draw = [stacked_forward(weights, biases, x, hidden_std=0.3, generator=torch.Generator().manual_seed(1))[0]
            for _ in range(2)]
    assert torch.equal(draw[0], draw[1])
    assert not torch.allclose(draw[0], stacked_forward(weights, biases, x)[0])


def test_stacked_regulariser_is_the_librarys_R() -> None:
    models = _models(3)
    weights, biases = stack_mlps(models)
    x = periodic_grid(25)
    R = stacked_regulariser(weights, stacked_forward(weights, biases, x)[1], 0.2)
    for m, model in enumerate(models):
        set_noise(model, [0.0] + [0.2] * (len(WIDTHS) - 2))
        assert math.isclose(R[m].item(), explicit_regularizer(model, x).item(), rel_tol=1e-10)


def test_stacked_layer_statistics_are_the_librarys() -> None:
    models = _models(2)
    weights, biases = stack_mlps(models)
    x = periodic_grid(30)
    norms, traces = stacked_layer_statistics(weights, biases, x)
    assert norms.shape == traces.shape == (2, len(WIDTHS) - 3)
    for m, model in enumerate(models):
        library = layer_jacobian_norms(model, x).detach()[1:-1]
        assert torch.allclose(norms[m], library, rtol=1e-10)
        assert torch.allclose(traces[m], square_layer_traces(model)[1].detach(), rtol=1e-10)


def _train_alone(model, x, y, steps, lr, penalty_std):
    """One network, as an nn.Module, with its own Adam: the oracle for stacked training."""
    params = list(model.parameters())
    optimiser = torch.optim.Adam(params, lr=lr)
    set_noise(model, [0.0] + [penalty_std] * (len(WIDTHS) - 2))
    for _ in range(steps):
        model.eval()
        loss = 0.5 * (model(x) - y).pow(2).mean()
        if penalty_std:
            loss = loss + explicit_regularizer(model, x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


@pytest.mark.parametrize("penalty_std", [0.0, 0.1])
def test_stacked_training_is_independent_training(penalty_std: float) -> None:
    x = periodic_grid(16)
    y = torch.sin(2 * math.pi * 3 * x).expand(2, -1, -1) * torch.tensor([1.0, -0.5]).view(2, 1, 1)
    fit = fit_stacked(_models(2), x, y, steps=5, lr=1e-2, record_every=2, penalty_std=penalty_std)
    assert fit.spectra.shape == (2, 3, 9)  # records at steps 0, 2, 4
    for m, alone in enumerate(_models(2)):
        alone = _train_alone(alone, x, y[m], steps=5, lr=1e-2, penalty_std=penalty_std)
        assert torch.allclose(fit.models[m](x), alone.eval()(x), atol=1e-10)
    final = fourier_spectrum(fit.models[0](x).detach().squeeze(1))[1]
    assert not torch.allclose(fit.spectra[0, -1], final)  # the last record is step 4, not step 5
    assert fit.models[0].training is False


def test_bad_arguments_are_named() -> None:
    models = _models(2)
    weights, biases = stack_mlps(models)
    x = periodic_grid(8)
    with pytest.raises(ValueError, match="degree"):
        FourierFeatures(0)
    with pytest.raises(TypeError, match="degree"):
        FourierFeatures(2.5)
    with pytest.raises(ValueError, match="n must"):
        periodic_grid(1)
    with pytest.raises(ValueError, match="models"):
        stack_mlps([])
    with pytest.raises(ValueError, match="ReLU"):
        stack_mlps([gni_lib.MLP(WIDTHS, activation="tanh")])
    with pytest.raises(ValueError, match="architecture"):
        stack_mlps([models[0], _models(1, widths=[1, 4, 4, 1])[0]])
    with pytest.raises(ValueError, match="generator"):
        stacked_forward(weights, biases, x, hidden_std=0.1)
    with pytest.raises(ValueError, match="hidden_std"):
        stacked_forward(weights, biases, x, hidden_std=-0.1)
    with pytest.raises(ValueError, match="x must"):
        stacked_forward(weights, biases, torch.zeros(8, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden"):
        stacked_regulariser(weights, [], 0.1)
    with pytest.raises(ValueError, match="y must"):
        fit_stacked(models, x, torch.zeros(3, 8, 1), steps=1, lr=0.1, record_every=1)
    with pytest.raises(ValueError, match="steps"):
        fit_stacked(models, x, torch.zeros(2, 8, 1), steps=-1, lr=0.1, record_every=1)
    with pytest.raises(ValueError, match="lr"):
        fit_stacked(models, x, torch.zeros(2, 8, 1), steps=1, lr=0.0, record_every=1)
    with pytest.raises(ValueError, match="square"):
        stacked_layer_statistics(*stack_mlps(_models(1, widths=[1, 4, 5, 1])), x)

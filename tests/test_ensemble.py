"""Tests for gni_lib.ensemble: M models at once equal M sequential runs.

The oracle is gni_lib.train.train with the matching torch.optim optimiser
(SGD, Adam, or gni_lib.optim.PGD / AntiPGD / PerturbedGD) and a copy of each
generator, one model at a time. Tolerances: 1e-6 in float32 and 1e-12 in float64,
for the round-off of batched products (bmm, vmap) against per-model ones.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gni_lib.ensemble import METHODS, EnsembleResult, train_ensemble
from gni_lib.models import MLP
from gni_lib.optim import PGD, AntiPGD, PerturbedGD
from gni_lib.train import train
from _shared import DEVICES, one_thread  # noqa: F401 (autouse fixture)


TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
M = 3


def _gens(seed: int, count: int = M, device: str = "cpu") -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(seed + m) for m in range(count)]


def _models(dtype, device="cpu", widths=(3, 6, 4), count=M, activation="tanh"):
    out = []
    for m in range(count):
        with torch.random.fork_rng():
            torch.manual_seed(m)
            out.append(MLP(list(widths), activation=activation).to(device=device, dtype=dtype))
    return out


def _classification(dtype, device="cpu", n=30):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(3, 4, generator=g, dtype=torch.float64)).argmax(dim=1)
    return x.to(device, dtype), y.to(device)


def _regression(dtype, device="cpu", n=30):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(3, 4, generator=g, dtype=torch.float64))
    return x.to(device, dtype), y.to(device, dtype)


def _optimizer(method, params, lr, sigma, generator, layerwise):
    if method == "gd":
        return torch.optim.SGD(params, lr=lr)
    if method == "adam":
        return torch.optim.Adam(params, lr=lr)
    if method == "pgd":
        return PGD(params, lr, sigma, generator=generator)
    if method == "anti_pgd":
        return AntiPGD(params, lr, sigma, generator=generator)
    return PerturbedGD(params, lr, sigma, layerwise=layerwise, generator=generator)


def _sequential(models, x, y, *, method, lrs, sigmas, noise_seed, layerwise=False, batch_seeds=None,
                **kwargs):
    """The oracle: train each model alone with train() and the matching optimiser."""
    histories = []
    noise = _gens(noise_seed)
    for m, model in enumerate(models):
        opt = _optimizer(method, model.parameters(), lrs[m], sigmas[m], noise[m], layerwise)
        generator = None if batch_seeds is None else torch.Generator().manual_seed(batch_seeds[m])
        histories.append(train(model, x, y, optimizer=opt, generator=generator, progress=False, **kwargs))
    return histories


def _assert_same(ensemble_models, result, sequential_models, histories, dtype):
    tol = TOL[dtype]
    for m, (a, b) in enumerate(zip(ensemble_models, sequential_models)):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=tol, atol=tol)
            torch.testing.assert_close(result.params[name][m], q.detach(), rtol=tol, atol=tol)
    for mine, theirs in zip(result.histories, histories):
        d_mine, d_theirs = mine.as_dict(), theirs.as_dict()
        assert d_mine.keys() == d_theirs.keys()
        assert d_mine["steps"] == d_theirs["steps"]
        for key in d_mine:
            assert d_mine[key] == pytest.approx(d_theirs[key], rel=tol, abs=tol), key


CASES = [
    pytest.param("gd", False, id="gd"),
    pytest.param("adam", False, id="adam"),
    pytest.param("pgd", False, id="pgd"),
    pytest.param("anti_pgd", False, id="anti_pgd"),
    pytest.param("perturbed_gd", False, id="perturbed_gd"),
    pytest.param("perturbed_gd", True, id="perturbed_gd-layerwise"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["bmm", "vmap"])
@pytest.mark.parametrize("method, layerwise", CASES)
def test_ensemble_equals_sequential_training(method, layerwise, fast_path, dtype):
    """Minibatches shared by all models, cross-entropy, different lr and sigma per model
    (one sigma = 0), a test set: final weights and the whole history agree."""
    x, y = _classification(dtype)
    lrs = [0.3, 0.1, 0.2]
    sigmas = [0.0, 0.0, 0.0] if method in ("gd", "adam") else [0.05, 0.0, 0.1]
    common = dict(steps=12, loss="ce", batch_size=8, x_test=x[:10], y_test=y[:10], record_every=5)
    ours, theirs = _models(dtype), _models(dtype)
    result = train_ensemble(
        ours, x, y, lr=lrs, method=method, sigma=sigmas, layerwise=layerwise,
        generators=_gens(10) if method not in ("gd", "adam") else None,
        batch_generator=torch.Generator().manual_seed(4), fast_path=fast_path, progress=False, **common,
    )
    assert result.fast_path is fast_path
    histories = _sequential(theirs, x, y, method=method, lrs=lrs, sigmas=sigmas, noise_seed=10,
                            layerwise=layerwise, batch_seeds=[4] * M, **common)
    _assert_same(ours, result, theirs, histories, dtype)
    assert result.histories[0].steps == [0, 5, 10, 12]
    assert len(result.histories[0].test_accuracy) == 4


@pytest.mark.parametrize("fast_path", [True, False], ids=["bmm", "vmap"])
@pytest.mark.parametrize("device", DEVICES)
def test_per_model_batches_mse_and_extras(fast_path, device):
    """A batch order per model, MSE, relu, record_extra: still the sequential runs."""
    dtype = torch.float64
    x, y = _regression(dtype, device)
    lrs, sigmas = [0.05, 0.1, 0.07], [0.02, 0.05, 0.01]
    extra = {"weight_norm": lambda model: sum(p.pow(2).sum() for p in model.parameters())}
    common = dict(steps=10, loss="mse", batch_size=7, record_every=3, record_extra=extra)
    ours, theirs = _models(dtype, device, activation="relu"), _models(dtype, device, activation="relu")
    result = train_ensemble(
        ours, x, y, lr=lrs, method="anti_pgd", sigma=sigmas, generators=_gens(20, device=device),
        batch_generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)],
        fast_path=fast_path, progress=False, **common,
    )
    noise = _gens(20, device=device)
    histories = []
    for m, model in enumerate(theirs):
        opt = AntiPGD(model.parameters(), lrs[m], sigmas[m], generator=noise[m])
        histories.append(train(model, x, y, optimizer=opt, generator=torch.Generator().manual_seed(7 + m),
                               progress=False, **common))
    _assert_same(ours, result, theirs, histories, dtype)
    assert "weight_norm" in result.histories[0].extra


def test_full_batch_and_single_model():
    dtype = torch.float64
    x, y = _regression(dtype)
    ours, theirs = _models(dtype, count=1), _models(dtype, count=1)
    result = train_ensemble(ours, x, y, steps=7, lr=0.1, method="pgd", sigma=0.1,
                            generators=_gens(30, 1), progress=False)
    opt = PGD(theirs[0].parameters(), 0.1, 0.1, generator=_gens(30, 1)[0])
    history = train(theirs[0], x, y, steps=7, optimizer=opt, progress=False)
    _assert_same(ours, result, theirs, [history], dtype)
    assert isinstance(result, EnsembleResult)
    assert result.params["1.weight"].shape == (1, 6, 3)


class _Residual(nn.Module):
    """Not a Sequential: trained through vmap(grad(functional_call))."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 3)
        self.out = nn.Linear(3, 4)

    def forward(self, x):
        return self.out(x + torch.tanh(self.inner(x)))


def test_generic_module_goes_through_vmap():
    dtype = torch.float64
    x, y = _regression(dtype)
    ours, theirs = [], []
    for m in range(M):
        torch.manual_seed(m)
        ours.append(_Residual().double())
        theirs.append(copy.deepcopy(ours[-1]))
    result = train_ensemble(ours, x, y, steps=6, lr=0.1, method="perturbed_gd", sigma=0.1,
                            generators=_gens(40), progress=False)
    assert result.fast_path is False
    histories = _sequential(theirs, x, y, method="perturbed_gd", lrs=[0.1] * M, sigmas=[0.1] * M,
                            noise_seed=40, steps=6)
    _assert_same(ours, result, theirs, histories, dtype)
    with pytest.raises(ValueError, match="fast_path"):
        train_ensemble(ours, x, y, steps=1, lr=0.1, fast_path=True, progress=False)


def test_default_route_is_bmm_for_plain_mlps():
    """fast_path=None picks the batched matmuls for a plain MLP, vmap for anything else."""
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    for model, fast in [(MLP([2, 3, 1]), True), (MLP([2, 3, 1], activation="linear", bias=False), True),
                        (nn.Sequential(nn.Linear(2, 1), nn.LayerNorm(1)), False)]:
        assert train_ensemble([model.double()], x, y, steps=1, lr=0.1, progress=False).fast_path is fast
    assert set(METHODS) == {"gd", "adam", "pgd", "anti_pgd", "perturbed_gd"}


def test_models_are_updated_in_place_and_noise_reproducible():
    dtype = torch.float64
    x, y = _regression(dtype)
    a, b = _models(dtype), _models(dtype)
    first = train_ensemble(a, x, y, steps=5, lr=0.1, method="pgd", sigma=0.1, generators=_gens(50),
                           progress=False)
    second = train_ensemble(b, x, y, steps=5, lr=0.1, method="pgd", sigma=0.1, generators=_gens(50),
                            progress=False)
    for k in first.params:
        assert torch.equal(first.params[k], second.params[k])
    for m, model in enumerate(a):
        for k, p in model.named_parameters():
            assert torch.equal(p.detach(), first.params[k][m])
    third = train_ensemble(_models(dtype), x, y, steps=5, lr=0.1, method="pgd", sigma=0.1,
                           generators=_gens(51), progress=False)
    assert not torch.equal(first.params["1.weight"], third.params["1.weight"])


@pytest.mark.parametrize("fast_path", [True, False], ids=["bmm", "vmap"])
def test_divergence_names_the_model_and_keeps_the_last_good_weights(fast_path):
    dtype = torch.float64
    x, y = _regression(dtype)
    models = _models(dtype)
    with pytest.raises(FloatingPointError, match=r"models \[1\] at step"):
        train_ensemble(models, x * 1e3, y, steps=50, lr=[0.01, 1e6, 0.01], fast_path=fast_path,
                       progress=False)
    for model in models:
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _call(**overrides):
    dtype = torch.float64
    x, y = _regression(dtype, n=10)
    kwargs = dict(steps=2, lr=0.1, progress=False)
    kwargs.update(overrides)
    models = kwargs.pop("models", _models(dtype))
    return train_ensemble(models, kwargs.pop("x", x), kwargs.pop("y", y), **kwargs)


@pytest.mark.parametrize(
    "overrides, error, name",
    [
        (dict(models=[]), TypeError, "models"),
        (dict(models=MLP([3, 4])), TypeError, "models"),
        (dict(models=[MLP([3, 6, 4]).double(), "model"]), TypeError, r"models\[1\]"),
        (dict(models=[MLP([3, 6, 4]).double(), MLP([3, 5, 4]).double()]), ValueError, r"models\[1\]"),
        (dict(models=[MLP([3, 6, 4], sigma=0.1).double()]), ValueError, "noise site"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(lr=[0.1, 0.1]), ValueError, "lr"),
        (dict(lr=[0.1, -0.1, 0.1]), ValueError, r"lr\[1\]"),
        (dict(lr="0.1"), TypeError, "lr"),
        (dict(method="adamw"), ValueError, "method"),
        (dict(method="adam", sigma=0.1), ValueError, "sigma"),
        (dict(method="pgd", sigma=-0.1, generators=_gens(0)), ValueError, "sigma"),
        (dict(method="pgd", sigma=[0.1, 0.1], generators=_gens(0)), ValueError, "sigma"),
        (dict(sigma=0.1), ValueError, "sigma"),
        (dict(layerwise=True, method="pgd", sigma=0.1, generators=_gens(0)), ValueError, "layerwise"),
        (dict(method="pgd", sigma=0.1), ValueError, "generators"),
        (dict(method="pgd", sigma=0.1, generators=_gens(0, 2)), ValueError, "generators"),
        (dict(method="pgd", sigma=0.1, generators=[1, 2, 3]), TypeError, r"generators\[0\]"),
        # The messages say that one shared generator is accepted too.
        (dict(batch_size=4, batch_generator=_gens(0, 2)), ValueError, r"batch_generator must be one generator \(shared"),
        (dict(batch_size=4, batch_generator="g"), TypeError, "batch_generator must be None, a torch.Generator or"),
        (dict(batch_size=11), ValueError, "batch_size"),
        (dict(y=torch.zeros(9, 4, dtype=torch.float64)), ValueError, "y"),
        (dict(loss="ce"), ValueError, "target"),
        (dict(fast_path="yes"), TypeError, "fast_path"),
        (dict(record_extra={"r": 3}), TypeError, "record_extra"),
        # Failed before: a History field as an extra name was accepted (train() refuses it).
        (dict(record_extra={"steps": len}), ValueError, "record_extra"),
        (dict(steps=0), ValueError, "steps"),
        (dict(x_test=torch.zeros(3, 3, dtype=torch.float64)), ValueError, "y_test"),
        (dict(x=torch.zeros(10, 3)), ValueError, "x must"),
        (dict(x_test=torch.zeros(3, 3), y_test=torch.zeros(3, 4)), ValueError, "x_test must"),
    ],
)
def test_bad_arguments(overrides, error, name):
    with pytest.raises(error, match=name):
        _call(**overrides)


def test_same_model_twice_is_refused():
    model = MLP([3, 6, 4]).double()
    with pytest.raises(ValueError, match="distinct"):
        _call(models=[model, model])


class _SqrtNet(nn.Module):
    """sqrt(|.|) at 0 has a finite value and an infinite derivative."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 4)

    def forward(self, x):
        return torch.sqrt(self.layer(x).abs())


def test_infinite_gradient_with_a_finite_loss_is_refused():
    dtype = torch.float64
    x, y = _regression(dtype)
    models = []
    for m in range(2):
        torch.manual_seed(m)
        models.append(_SqrtNet().double())
    with torch.no_grad():
        models[1].layer.weight.zero_()
        models[1].layer.bias.zero_()
    before = [p.detach().clone() for p in models[0].parameters()]
    with pytest.raises(FloatingPointError, match=r"gradient is NaN or infinite for models \[1\] at step 1"):
        train_ensemble(models, x, y, steps=3, lr=0.1, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(models[0].parameters(), before))


# --- noise sites in the forward pass, and the explicit regulariser as a penalty ----------------

from gni_lib.noise import GaussianNoise, noise_sites  # noqa: E402
from gni_lib.regularisers import explicit_regularizer  # noqa: E402


def _noisy_models(dtype, sigma, *, mode="additive", activation="tanh", count=M, widths=(3, 6, 5, 4)):
    """MLPs with noise sites; ``sigma`` is one value or one per model (all sites alike)."""
    sigmas = sigma if isinstance(sigma, (list, tuple)) else [sigma] * count
    out = []
    for m in range(count):
        with torch.random.fork_rng():
            torch.manual_seed(m)
            out.append(MLP(list(widths), activation=activation, sigma=sigmas[m], mode=mode).to(dtype=dtype))
    return out


def _r_penalty(loss):
    return lambda model, xb: explicit_regularizer(model, xb, loss=loss)


def _sequential_noisy(models, x, y, *, site_seed, inject_noise, penalty, weights, lr, batch_seed=None,
                      optimizer=None, **kwargs):
    """The oracle: train() one model at a time, its sites drawing from a copy of site generator m."""
    histories = []
    for m, model in enumerate(models):
        site_gen = torch.Generator().manual_seed(site_seed + m)
        for site in noise_sites(model):
            site.generator = site_gen
        opt = torch.optim.SGD(model.parameters(), lr=lr) if optimizer is None else optimizer(m, model)
        generator = None if batch_seed is None else torch.Generator().manual_seed(batch_seed)
        histories.append(train(model, x, y, optimizer=opt, inject_noise=inject_noise, penalty=penalty,
                               penalty_weight=weights[m], generator=generator, progress=False, **kwargs))
    return histories


NOISE_CASES = [
    pytest.param(True, None, id="noise"),
    pytest.param(False, "explicit_regularizer", id="R"),
    pytest.param(True, "explicit_regularizer", id="noise+R"),
]


@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["bmm", "vmap"])
@pytest.mark.parametrize("inject_noise, penalty", NOISE_CASES)
def test_noise_sites_and_explicit_regularizer_equal_sequential_training(inject_noise, penalty, fast_path, mode):
    """Noise drawn per model and site from site_generators[m], R as the penalty with a weight
    per model, a sigma per model (one of them 0), shared minibatches, cross-entropy, elu:
    final weights and the whole history (with the recorded penalty) agree in float64."""
    dtype = torch.float64
    x, y = _classification(dtype)
    sigmas, weights = [0.3, 0.0, 0.2], [0.5, 1.0, 2.0]
    common = dict(steps=9, loss="ce", batch_size=8, x_test=x[:10], y_test=y[:10], record_every=4)
    ours = _noisy_models(dtype, sigmas, mode=mode, activation="elu")
    theirs = _noisy_models(dtype, sigmas, mode=mode, activation="elu")
    result = train_ensemble(
        ours, x, y, lr=0.2, inject_noise=inject_noise, site_generators=_gens(60) if inject_noise else None,
        penalty=penalty, penalty_weight=weights, batch_generator=torch.Generator().manual_seed(5),
        fast_path=fast_path, progress=False, **common,
    )
    assert result.fast_path is fast_path
    histories = _sequential_noisy(theirs, x, y, site_seed=60, inject_noise=inject_noise,
                                  penalty=_r_penalty("ce") if penalty else None, weights=weights, lr=0.2,
                                  batch_seed=5, **common)
    _assert_same(ours, result, theirs, histories, dtype)
    assert (len(result.histories[0].penalty) == 4) is (penalty is not None)


@pytest.mark.parametrize("fast_path", [True, False], ids=["bmm", "vmap"])
def test_one_model_matches_train_step_for_step_mse_float32(fast_path):
    """One model, MSE, relu, full batch, recorded at every step, in float32 (tolerance 1e-6)."""
    dtype = torch.float32
    x, y = _regression(dtype)
    for inject_noise, penalty in ((True, None), (False, "explicit_regularizer")):
        ours = _noisy_models(dtype, 0.2, activation="relu", count=1)
        theirs = _noisy_models(dtype, 0.2, activation="relu", count=1)
        common = dict(steps=6, loss="mse", record_every=1, x_test=x[:7], y_test=y[:7])
        result = train_ensemble(ours, x, y, lr=0.05, inject_noise=inject_noise,
                                site_generators=_gens(70, 1) if inject_noise else None, penalty=penalty,
                                fast_path=fast_path, progress=False, **common)
        histories = _sequential_noisy(theirs, x, y, site_seed=70, inject_noise=inject_noise,
                                      penalty=_r_penalty("mse") if penalty else None, weights=[1.0],
                                      lr=0.05, **common)
        _assert_same(ours, result, theirs, histories, dtype)
        assert result.histories[0].steps == list(range(7))


def test_noise_sites_with_a_noisy_optimizer_and_per_model_batches():
    """Site noise (site_generators) and Anti-PGD noise (generators) are separate streams."""
    dtype = torch.float64
    x, y = _regression(dtype)
    ours, theirs = _noisy_models(dtype, 0.1), _noisy_models(dtype, 0.1)
    common = dict(steps=8, loss="mse", batch_size=7, record_every=3)
    result = train_ensemble(
        ours, x, y, lr=0.1, method="anti_pgd", sigma=0.02, generators=_gens(80), inject_noise=True,
        site_generators=_gens(90), penalty="explicit_regularizer", penalty_weight=0.5,
        batch_generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)], progress=False, **common,
    )
    noise = _gens(80)
    histories = []
    for m, model in enumerate(theirs):
        site_gen = torch.Generator().manual_seed(90 + m)
        for site in noise_sites(model):
            site.generator = site_gen
        opt = AntiPGD(model.parameters(), 0.1, 0.02, generator=noise[m])
        histories.append(train(model, x, y, optimizer=opt, penalty=_r_penalty("mse"), penalty_weight=0.5,
                               generator=torch.Generator().manual_seed(1 + m), progress=False, **common))
    _assert_same(ours, result, theirs, histories, dtype)


def test_callable_penalty_loops_over_models():
    """A callable penalty takes the documented loop fallback, also on the fast path."""
    dtype = torch.float64
    x, y = _regression(dtype)

    def half_sq_norm(model, xb):
        return 0.5 * sum(p.pow(2).sum() for p in model.parameters()) + 0.0 * xb.sum()

    ours, theirs = _models(dtype), _models(dtype)
    result = train_ensemble(ours, x, y, steps=5, lr=0.1, penalty=half_sq_norm, penalty_weight=[0.1, 0.0, 1.0],
                            record_every=2, progress=False)
    assert result.fast_path is True
    histories = _sequential_noisy(theirs, x, y, site_seed=0, inject_noise=False, penalty=half_sq_norm,
                                  weights=[0.1, 0.0, 1.0], lr=0.1, steps=5, record_every=2)
    _assert_same(ours, result, theirs, histories, dtype)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
@pytest.mark.parametrize("activation", ["tanh", "elu", "relu", "linear"])
def test_vectorised_regulariser_equals_explicit_regularizer(loss, mode, activation):
    """The recorded penalty at step 0 is R of each model, per-site sigmas differing by model."""
    dtype = torch.float64
    x, y = _classification(dtype) if loss == "ce" else _regression(dtype)
    models = _noisy_models(dtype, [0.3, 0.1, 0.5], mode=mode, activation=activation)
    set_sigmas = [[0.3, 0.0, 0.2], [0.1, 0.4, 0.0], [0.5, 0.5, 0.5]]
    for model, sig in zip(models, set_sigmas):
        for site, s in zip(noise_sites(model), sig):
            site.sigma = s
    expected = [float(explicit_regularizer(model, x, loss=loss).detach()) for model in models]
    result = train_ensemble(models, x, y, steps=1, lr=1e-9, loss=loss, inject_noise=False,
                            penalty="explicit_regularizer", progress=False)
    got = [h.penalty[0] for h in result.histories]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert min(expected) > 0


def test_noise_is_injected_and_zero_weight_penalty_changes_nothing():
    dtype = torch.float64
    x, y = _regression(dtype)
    clean = train_ensemble(_noisy_models(dtype, 0.2), x, y, steps=5, lr=0.1, inject_noise=False, progress=False)
    noisy = train_ensemble(_noisy_models(dtype, 0.2), x, y, steps=5, lr=0.1, inject_noise=True,
                           site_generators=_gens(1), progress=False)
    zero = train_ensemble(_noisy_models(dtype, 0.2), x, y, steps=5, lr=0.1, inject_noise=False,
                          penalty="explicit_regularizer", penalty_weight=0.0, progress=False)
    plain = train_ensemble(_models(dtype, widths=(3, 6, 5, 4)), x, y, steps=5, lr=0.1, progress=False)
    for k in clean.params:
        assert torch.equal(clean.params[k], plain.params[k])
        torch.testing.assert_close(zero.params[k], plain.params[k], rtol=1e-13, atol=1e-13)
    assert not torch.allclose(noisy.params["1.weight"], clean.params["1.weight"])
    # sigma = 0 at every site: injection draws nothing and changes nothing.
    silent = train_ensemble(_noisy_models(dtype, 0.0), x, y, steps=5, lr=0.1, inject_noise=True,
                            site_generators=_gens(1), progress=False)
    for k in clean.params:
        assert torch.equal(silent.params[k], plain.params[k])


class _TwiceNoisy(nn.Module):
    """One noise site used twice: refused for injection on the vmap path."""

    def __init__(self):
        super().__init__()
        self.site = GaussianNoise(0.1)
        self.layer = nn.Linear(3, 3)
        self.out = nn.Linear(3, 4)

    def forward(self, x):
        return self.out(self.site(self.layer(self.site(x))))


def test_a_site_used_twice_is_refused_for_injection():
    dtype = torch.float64
    x, y = _regression(dtype)
    models = []
    for m in range(2):
        torch.manual_seed(m)
        models.append(_TwiceNoisy().double())
    with pytest.raises(ValueError, match="called 2 times"):
        train_ensemble(models, x, y, steps=1, lr=0.1, inject_noise=True, site_generators=_gens(0, 2),
                       progress=False)


def _noisy_call(**overrides):
    dtype = torch.float64
    x, y = _regression(dtype, n=10)
    kwargs = dict(steps=2, lr=0.1, progress=False, models=_noisy_models(dtype, 0.1))
    kwargs.update(overrides)
    models = kwargs.pop("models")
    return train_ensemble(models, x, y, **kwargs)


@pytest.mark.parametrize(
    "overrides, error, name",
    [
        (dict(inject_noise="yes"), TypeError, "inject_noise"),
        (dict(inject_noise=None), ValueError, "noise site"),
        (dict(inject_noise=True), ValueError, "site_generators"),
        (dict(inject_noise=True, site_generators=_gens(0, 2)), ValueError, "site_generators"),
        (dict(inject_noise=True, site_generators=[torch.Generator(), 1, 2]), TypeError, r"site_generators\[1\]"),
        (dict(inject_noise=True, site_generators=torch.Generator()), TypeError, "site_generators"),
        (dict(inject_noise=False, site_generators=_gens(0)), ValueError, "site_generators"),
        (dict(inject_noise=False, penalty="l2"), ValueError, "penalty"),
        (dict(inject_noise=False, penalty=3), TypeError, "penalty"),
        (dict(inject_noise=False, penalty=lambda m, x: x), TypeError, "penalty"),
        (dict(inject_noise=False, penalty="explicit_regularizer", penalty_weight=-1.0), ValueError,
         "penalty_weight"),
        (dict(inject_noise=False, penalty="explicit_regularizer", penalty_weight=[1.0, 2.0]), ValueError,
         "penalty_weight"),
        (dict(inject_noise=False, models=[MLP([3, 6, 5, 4]).double(),
                                          MLP([3, 6, 5, 4], mode="multiplicative").double()]),
         ValueError, r"models\[1\]"),
        (dict(models=[nn.Sequential(nn.Linear(3, 4)).double()], penalty="explicit_regularizer"),
         ValueError, "penalty"),
    ],
)
def test_bad_noise_and_penalty_arguments(overrides, error, name):
    with pytest.raises(error, match=name):
        _noisy_call(**overrides)


class _NoisyResidual(nn.Module):
    """Not a Sequential, with two noise sites: injection goes through vmap and the site probe."""

    def __init__(self, sigma):
        super().__init__()
        self.inner = nn.Linear(3, 5)
        self.out = nn.Linear(5, 4)
        self.skip = nn.Linear(3, 4)
        self.site_in = GaussianNoise(sigma)
        self.site_hidden = GaussianNoise(sigma, mode="multiplicative")

    def forward(self, x):
        x = self.site_in(x)
        return self.out(self.site_hidden(torch.tanh(self.inner(x)))) + self.skip(x)


def test_generic_module_with_noise_sites_and_r_goes_through_vmap():
    dtype = torch.float64
    x, y = _regression(dtype)
    ours, theirs = [], []
    for m in range(M):
        torch.manual_seed(m)
        ours.append(_NoisyResidual([0.2, 0.0, 0.3][m]).double())
        theirs.append(copy.deepcopy(ours[-1]))
    common = dict(steps=6, loss="mse", batch_size=9, record_every=2)
    result = train_ensemble(ours, x, y, lr=0.1, inject_noise=True, site_generators=_gens(110),
                            penalty="explicit_regularizer", penalty_weight=0.3,
                            batch_generator=torch.Generator().manual_seed(6), progress=False, **common)
    assert result.fast_path is False
    histories = _sequential_noisy(theirs, x, y, site_seed=110, inject_noise=True, penalty=_r_penalty("mse"),
                                  weights=[0.3] * M, lr=0.1, batch_seed=6, **common)
    _assert_same(ours, result, theirs, histories, dtype)


def test_models_of_other_module_types_are_refused():
    """A tanh and a ReLU MLP have the same parameter shapes; both used to train as models[0]'s tanh."""
    tanh = MLP([3, 6, 4], activation="tanh", seed=0).double()
    relu = MLP([3, 6, 4], activation="relu", seed=1).double()
    x, y = _regression(torch.float64)
    with pytest.raises(ValueError, match=r"models\[1\] must have the module types"):
        train_ensemble([tanh, relu], x, y, steps=1, lr=0.1)


def test_non_finite_data_is_refused_by_name():
    models = _models(torch.float64)
    x, y = _regression(torch.float64)
    x = x.clone()
    x[1, 0] = float("inf")
    with pytest.raises(ValueError, match="^x must be finite"):
        train_ensemble(models, x, y, steps=1, lr=0.1)


@pytest.mark.parametrize("fast_path", [True, False], ids=["bmm", "vmap"])
def test_noise_sites_with_adam_equal_sequential_training(fast_path):
    """Adam (one lr per model) with noise injected at every site and a batch order per model:
    each model ends where train() with torch.optim.Adam and a copy of its site generator ends."""
    dtype = torch.float64
    x, y = _classification(dtype)
    lrs = [0.01, 0.03, 0.02]
    common = dict(steps=10, loss="ce", batch_size=8, record_every=4)
    ours, theirs = _noisy_models(dtype, [0.2, 0.0, 0.3]), _noisy_models(dtype, [0.2, 0.0, 0.3])
    result = train_ensemble(
        ours, x, y, lr=lrs, method="adam", inject_noise=True, site_generators=_gens(95),
        batch_generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)], fast_path=fast_path,
        progress=False, **common,
    )
    histories = []
    for m, model in enumerate(theirs):
        site_gen = torch.Generator().manual_seed(95 + m)
        for site in noise_sites(model):
            site.generator = site_gen
        opt = torch.optim.Adam(model.parameters(), lr=lrs[m])
        histories.append(train(model, x, y, optimizer=opt, generator=torch.Generator().manual_seed(1 + m),
                               progress=False, **common))
    _assert_same(ours, result, theirs, histories, dtype)


def test_a_site_that_feeds_no_linear_layer_goes_through_vmap():
    """The fast path injects noise at the inputs of linear layers (the MLP core's site_layers);
    an MLP with a site after its last layer is trained on the vmap path, still as train() would."""
    dtype = torch.float64
    x, y = _regression(dtype)
    ours, theirs = [], []
    for m in range(M):
        torch.manual_seed(m)
        ours.append(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), GaussianNoise(0.2)).double())
        theirs.append(copy.deepcopy(ours[-1]))
    common = dict(steps=4, loss="mse", record_every=2)
    result = train_ensemble(ours, x, y, lr=0.1, inject_noise=True, site_generators=_gens(120),
                            progress=False, **common)
    assert result.fast_path is False
    histories = _sequential_noisy(theirs, x, y, site_seed=120, inject_noise=True, penalty=None,
                                  weights=[0.0] * M, lr=0.1, **common)
    _assert_same(ours, result, theirs, histories, dtype)
    with pytest.raises(ValueError, match="fast_path"):
        train_ensemble(ours, x, y, steps=1, lr=0.1, inject_noise=True, site_generators=_gens(120),
                       fast_path=True, progress=False)

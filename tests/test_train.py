"""Tests for gni_lib.train: the loop against hand-rolled updates, recording, and errors."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from gni_lib import train as train_module
from gni_lib.data import regression_1d
from gni_lib.losses import ce_loss, mse_loss
from gni_lib.models import MLP
from gni_lib.train import History, train


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int = 12, dtype=torch.float64):
    return regression_1d(n, noise_std=0.1, seed=0, dtype=dtype)


def _model(seed: int = 0, sigma: float = 0.0, generator=None):
    torch.manual_seed(seed)
    return MLP([1, 8, 1], sigma=sigma, generator=generator).double()


def _sgd_step(model, lr):
    """theta <- theta - lr * grad, as one fused op: torch's SGD computes theta + (-lr) * grad."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)


def _same_parameters(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _half_sq_norm(model, x):
    return 0.5 * sum(p.pow(2).sum() for p in model.parameters())


# --- the update ------------------------------------------------------------------------------


def test_full_batch_sgd_matches_hand_rolled_loop_bitwise():
    x, y = _data()
    model, manual = _model(), _model()
    train(model, x, y, steps=3, lr=0.1, optimizer="sgd", progress=False)
    for _ in range(3):
        manual.zero_grad()
        mse_loss(manual(x), y).backward()
        _sgd_step(manual, 0.1)
    assert _same_parameters(model, manual)
    assert not _same_parameters(model, _model())


def test_penalty_is_added_to_the_objective():
    """With P = 1/2 ||theta||^2 and weight lam, each step is theta - lr (grad L + lam theta)."""
    x, y = _data()
    lam, lr = 0.3, 0.05
    model, manual = _model(), _model()
    history = train(
        model, x, y, steps=4, lr=lr, optimizer="sgd", penalty=_half_sq_norm,
        penalty_weight=lam, record_every=2, progress=False,
    )
    for _ in range(4):
        manual.zero_grad()
        (mse_loss(manual(x), y) + lam * _half_sq_norm(manual, x)).backward()
        _sgd_step(manual, lr)
    assert _same_parameters(model, manual)
    # An independent route: torch's SGD weight decay adds lam * theta to the gradient.
    decayed = _model()
    opt = torch.optim.SGD(decayed.parameters(), lr=lr, weight_decay=lam)
    for _ in range(4):
        opt.zero_grad()
        mse_loss(decayed(x), y).backward()
        opt.step()
    for p, q in zip(model.parameters(), decayed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # The recorded penalty is the unweighted P of the current parameters.
    assert history.steps == [0, 2, 4]
    assert history.penalty[-1] == _half_sq_norm(model, x).item()
    assert history.penalty[0] == _half_sq_norm(_model(), x).item()


def test_noise_sites_are_on_during_steps_and_off_when_recording():
    """One SGD step equals a hand-rolled step on the noisy forward with the same site seed;
    recording (in eval mode) draws nothing from the sites' generator."""
    x, y = _data()
    model = _model(sigma=0.3, generator=_generator(5))
    manual = _model(sigma=0.3, generator=_generator(5))
    history = train(model, x, y, steps=2, lr=0.1, optimizer="sgd", record_every=1, progress=False)
    for _ in range(2):
        manual.zero_grad()
        mse_loss(manual(x), y).backward()
        _sgd_step(manual, 0.1)
    assert _same_parameters(model, manual)
    clean = _model(sigma=0.0)
    for _ in range(2):
        clean.zero_grad()
        mse_loss(clean(x), y).backward()
        _sgd_step(clean, 0.1)
    assert not _same_parameters(model, clean)
    # Recorded losses are clean: the final one is the eval-mode loss of the trained model.
    assert not model.training
    with torch.no_grad():
        assert history.train_loss[-1] == mse_loss(model(x), y).item()


def test_minibatches_follow_documented_permutations():
    """n = 10, batch 4: each epoch is randperm(10, generator) cut into 4, 4, 2."""
    x, y = _data(10)
    model, manual = _model(), _model()
    train(model, x, y, steps=5, lr=0.1, optimizer="sgd", batch_size=4,
          generator=_generator(7), progress=False)
    g = _generator(7)
    batches = []
    for _ in range(2):
        order = torch.randperm(10, generator=g)
        batches += [order[0:4], order[4:8], order[8:10]]
    for index in batches[:5]:
        manual.zero_grad()
        mse_loss(manual(x[index]), y[index]).backward()
        _sgd_step(manual, 0.1)
    assert _same_parameters(model, manual)


def test_batch_size_n_is_full_batch():
    x, y = _data(10)
    a, b = _model(), _model()
    train(a, x, y, steps=3, lr=0.1, optimizer="sgd", batch_size=10, progress=False)
    train(b, x, y, steps=3, lr=0.1, optimizer="sgd", progress=False)
    assert _same_parameters(a, b)


def test_same_seeds_give_identical_history():
    x, y = _data(16)
    xt, yt = regression_1d(20, seed=1)

    def run():
        torch.manual_seed(0)
        model = MLP([1, 8, 1], sigma=0.2).double()  # noise from the (seeded) global generator
        return train(model, x, y, steps=30, lr=0.01, x_test=xt, y_test=yt, record_every=10,
                     batch_size=5, generator=_generator(3), progress=False).as_dict()

    first, second = run(), run()
    assert first == second
    assert len(first["test_loss"]) == 4


def test_loss_decreases_on_easy_regression():
    x, y = regression_1d(20, noise_std=0.05, seed=0)
    history = train(_model(), x, y, steps=300, lr=0.02, record_every=100, progress=False)
    assert history.train_loss[-1] < 0.1 * history.train_loss[0]


def test_cross_entropy_training():
    g = _generator(0)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = MLP([2, 8, 2]).double()
    history = train(model, x, y, steps=100, lr=0.05, loss="ce", record_every=50, progress=False)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    with torch.no_grad():
        assert history.train_loss[-1] == ce_loss(model(x), y).item()


# --- recording -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps, every, expected",
    [(250, 100, [0, 100, 200, 250]), (200, 100, [0, 100, 200]), (3, 100, [0, 3]), (3, 1, [0, 1, 2, 3])],
)
def test_recorded_steps(steps, every, expected):
    x, y = _data(6)
    history = train(_model(), x, y, steps=steps, lr=1e-3, optimizer="sgd", record_every=every,
                    progress=False)
    assert history.steps == expected
    assert len(history.train_loss) == len(expected)
    assert history.test_loss == [] and history.penalty == []


def test_recorded_losses_are_clean_full_set_losses():
    x, y = _data(12)
    xt, yt = regression_1d(8, seed=4)
    model = _model(sigma=0.5)
    initial = copy.deepcopy(model).eval()
    history = train(model, x, y, steps=5, lr=0.01, x_test=xt, y_test=yt, batch_size=3,
                    generator=_generator(0), progress=False)
    with torch.no_grad():
        assert history.train_loss[0] == mse_loss(initial(x), y).item()
        assert history.test_loss[0] == mse_loss(initial(xt), yt).item()
        assert history.train_loss[-1] == mse_loss(model(x), y).item()
        assert history.test_loss[-1] == mse_loss(model(xt), yt).item()


def test_model_ends_in_eval_mode():
    x, y = _data(6)
    model = _model()
    train(model, x, y, steps=2, lr=0.01, progress=False)
    assert not any(m.training for m in model.modules())


def test_history_as_dict_copies():
    history = History(steps=[0, 1], train_loss=[1.0, 0.5])
    d = history.as_dict()
    assert d == {"steps": [0, 1], "train_loss": [1.0, 0.5], "test_loss": [], "penalty": []}
    d["steps"].append(2)
    assert history.steps == [0, 1]


def test_progress_bar(capsys, monkeypatch):
    x, y = _data(6)
    train(_model(), x, y, steps=2, lr=0.01, progress=True)
    assert "train" in capsys.readouterr().err
    train(_model(), x, y, steps=2, lr=0.01, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("CI", "1")
    assert train_module._show_progress(None) is False
    monkeypatch.delenv("CI")
    assert train_module._show_progress(None) is True


# --- errors ----------------------------------------------------------------------------------


def test_non_finite_objective_names_the_step_and_is_not_applied():
    x, y = _data(6)
    calls = []

    def exploding(model, xb):
        calls.append(model.training)
        bad = len(calls) == 4  # the record at step 0, then steps 1, 2, 3
        return torch.tensor(float("nan") if bad else 0.0, dtype=torch.float64)

    model, manual = _model(), _model()
    with pytest.raises(FloatingPointError, match="step 3"):
        train(model, x, y, steps=5, lr=0.1, optimizer="sgd", penalty=exploding, progress=False)
    for _ in range(2):
        manual.zero_grad()
        mse_loss(manual(x), y).backward()
        _sgd_step(manual, 0.1)
    assert _same_parameters(model, manual)
    assert not model.training


def _call(**overrides):
    x, y = _data(6)
    kwargs = dict(steps=2, lr=0.01, progress=False)
    kwargs.update(overrides)
    model = kwargs.pop("model", _model())
    return train(model, kwargs.pop("x", x), kwargs.pop("y", y), **kwargs)


@pytest.mark.parametrize(
    "overrides, error, name",
    [
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=2.0), TypeError, "steps"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(lr=float("inf")), ValueError, "lr"),
        (dict(lr="0.1"), TypeError, "lr"),
        (dict(loss="l1"), ValueError, "loss"),
        (dict(optimizer="rmsprop"), ValueError, "optimizer"),
        (dict(y=torch.zeros(5, 1, dtype=torch.float64)), ValueError, "y"),
        (dict(y=torch.zeros(6, dtype=torch.float64)), ValueError, "target"),
        (dict(x=[[0.0]] * 6), TypeError, "x"),
        (dict(x_test=torch.zeros(3, 1, dtype=torch.float64)), ValueError, "y_test"),
        (dict(y_test=torch.zeros(3, 1, dtype=torch.float64)), ValueError, "x_test"),
        (dict(x_test=torch.zeros(3, 1, dtype=torch.float64), y_test=torch.zeros(2, 1, dtype=torch.float64)),
         ValueError, "y_test"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=7), ValueError, "batch_size"),
        (dict(batch_size=2.5), TypeError, "batch_size"),
        (dict(record_every=0), ValueError, "record_every"),
        (dict(penalty_weight=-1.0), ValueError, "penalty_weight"),
        (dict(penalty_weight=float("nan")), ValueError, "penalty_weight"),
        (dict(penalty="l2"), TypeError, "penalty"),
        (dict(model=lambda t: t), TypeError, "model"),
        (dict(generator=3), TypeError, "generator"),
        (dict(progress="yes"), TypeError, "progress"),
    ],
)
def test_bad_arguments(overrides, error, name):
    with pytest.raises(error, match=name):
        _call(**overrides)


# --- the noisy optimisers, instances, loss + R, extra records -----------------------------------------

from gni_lib.noise import noise_sites  # noqa: E402
from gni_lib.optim import PGD, AntiPGD, PerturbedGD  # noqa: E402


def _hand_loop(model, opt, x, y, steps):
    for _ in range(steps):
        def closure():
            opt.zero_grad(set_to_none=True)
            objective = mse_loss(model(x), y)
            objective.backward()
            return objective

        opt.step(closure)


@pytest.mark.parametrize(
    "name, cls, kwargs",
    [
        ("pgd", PGD, {}),
        ("anti_pgd", AntiPGD, {}),
        ("perturbed_gd", PerturbedGD, {}),
        ("perturbed_gd", PerturbedGD, {"layerwise": True}),
        ("anti_pgd", AntiPGD, {"momentum": 0.5}),
    ],
)
def test_noisy_optimizers_by_name_and_instance_match_a_hand_loop(name, cls, kwargs):
    x, y = _data()
    by_name, by_instance, manual = _model(), _model(), _model()
    train(by_name, x, y, steps=4, lr=0.05, optimizer=name, progress=False,
          optimizer_kwargs=dict(sigma=0.1, generator=_generator(8), **kwargs))
    opt = cls(by_instance.parameters(), 0.05, 0.1, generator=_generator(8), **kwargs)
    train(by_instance, x, y, steps=4, optimizer=opt, progress=False)
    _hand_loop(manual, cls(manual.parameters(), 0.05, 0.1, generator=_generator(8), **kwargs), x, y, 4)
    assert _same_parameters(by_name, manual)
    assert _same_parameters(by_instance, manual)
    assert not _same_parameters(manual, _model())


def test_an_instance_keeps_its_state_across_calls():
    """Two calls of 3 steps with one AntiPGD instance are one run of 6 (xi_n carries over)."""
    x, y = _data()
    split, whole = _model(), _model()
    opt = AntiPGD(split.parameters(), 0.05, 0.1, generator=_generator(9))
    train(split, x, y, steps=3, optimizer=opt, progress=False)
    train(split, x, y, steps=3, optimizer=opt, progress=False)
    opt2 = AntiPGD(whole.parameters(), 0.05, 0.1, generator=_generator(9))
    train(whole, x, y, steps=6, optimizer=opt2, progress=False)
    assert _same_parameters(split, whole)


def _sigma_penalty(model, xb):
    """A stand-in for R: reads the noise sites' sigma, like the explicit regulariser does."""
    sigmas = [site.sigma for site in noise_sites(model)]
    weights = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
    return 0.5 * sum(s**2 * w.pow(2).sum() for s, w in zip(sigmas, weights))


def test_loss_plus_r_without_injected_noise():
    """inject_noise=False: the steps use the clean network plus the penalty, and draw no noise."""
    x, y = _data()
    site_generator = _generator(11)
    model = _model(sigma=0.3, generator=site_generator)
    state = site_generator.get_state()
    manual = _model(sigma=0.3)
    history = train(model, x, y, steps=3, lr=0.1, optimizer="sgd", penalty=_sigma_penalty,
                    penalty_weight=2.0, inject_noise=False, record_every=1, progress=False)
    assert torch.equal(site_generator.get_state(), state)
    manual.eval()
    for _ in range(3):
        manual.zero_grad()
        (mse_loss(manual(x), y) + 2.0 * _sigma_penalty(manual, x)).backward()
        _sgd_step(manual, 0.1)
    assert _same_parameters(model, manual)
    assert history.penalty[-1] == _sigma_penalty(model, x).item()
    # With the injection on (the default) the same call differs.
    noisy = _model(sigma=0.3, generator=_generator(11))
    train(noisy, x, y, steps=3, lr=0.1, optimizer="sgd", penalty=_sigma_penalty, penalty_weight=2.0,
          progress=False)
    assert not _same_parameters(noisy, manual)


def test_record_extra_is_called_on_the_clean_model_at_record_steps():
    x, y = _data()
    calls = []

    def weight_norm(model):
        calls.append(model.training)
        return sum(p.pow(2).sum() for p in model.parameters())  # a tensor is accepted

    def constant(model):
        return 1.5

    model = _model(sigma=0.2)
    history = train(model, x, y, steps=4, lr=0.05, record_every=2, progress=False,
                    record_extra={"weight_norm": weight_norm, "one": constant})
    assert history.steps == [0, 2, 4] and calls == [False, False, False]
    assert history.extra["one"] == [1.5, 1.5, 1.5]
    assert history.extra["weight_norm"][-1] == pytest.approx(
        sum(p.pow(2).sum() for p in model.parameters()).item(), rel=0, abs=0
    )
    d = history.as_dict()
    assert list(d) == ["steps", "train_loss", "test_loss", "penalty", "weight_norm", "one"]


def test_cross_entropy_records_accuracy():
    g = _generator(0)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = MLP([2, 8, 2]).double()
    history = train(model, x, y, steps=20, lr=0.1, loss="ce", x_test=x[:10], y_test=y[:10],
                    record_every=10, progress=False)
    with torch.no_grad():
        assert history.train_accuracy[-1] == (model(x).argmax(1) == y).double().mean().item()
        assert history.test_accuracy[-1] == (model(x[:10]).argmax(1) == y[:10]).double().mean().item()
    assert len(history.train_accuracy) == len(history.steps) == 3
    assert {"train_accuracy", "test_accuracy"} <= set(history.as_dict())
    mse_history = train(_model(), *_data(), steps=2, lr=0.1, progress=False)
    assert mse_history.train_accuracy == [] and "train_accuracy" not in mse_history.as_dict()


@pytest.mark.parametrize(
    "overrides, error, name",
    [
        (dict(lr=None), ValueError, "lr"),
        (dict(optimizer=3), TypeError, "optimizer"),
        (dict(optimizer="pgd"), TypeError, "sigma"),
        (dict(optimizer="pgd", optimizer_kwargs=dict(sigma=-1.0)), ValueError, "sigma"),
        (dict(optimizer="sgd", optimizer_kwargs=[("momentum", 0.9)]), TypeError, "optimizer_kwargs"),
        (dict(inject_noise=None), TypeError, "inject_noise"),
        (dict(record_extra=[len]), TypeError, "record_extra"),
        (dict(record_extra={"steps": len}), ValueError, "record_extra"),
        (dict(record_extra={"r": 3}), TypeError, "record_extra"),
        (dict(record_extra={"r": lambda m: "big"}), TypeError, "record_extra"),
    ],
)
def test_bad_new_arguments(overrides, error, name):
    with pytest.raises(error, match=name):
        _call(**overrides)


def test_bad_optimizer_instances():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    with pytest.raises(ValueError, match="lr"):
        train(model, x, y, steps=1, lr=0.1, optimizer=opt, progress=False)
    with pytest.raises(ValueError, match="optimizer_kwargs"):
        train(model, x, y, steps=1, optimizer=opt, optimizer_kwargs={}, progress=False)
    foreign = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        train(model, x, y, steps=1, optimizer=foreign, progress=False)


@pytest.mark.parametrize("name", ["x", "y", "x_test", "y_test"])
def test_non_finite_data_is_a_value_error_naming_the_argument(name):
    """Failed before: a NaN in x surfaced later as a FloatingPointError about a step."""
    x, y = _data(6)
    data = {"x": x.clone(), "y": y.clone(), "x_test": x.clone(), "y_test": y.clone()}
    data[name][0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"^{name} must be finite"):
        train(_model(), data["x"], data["y"], steps=2, lr=0.01, progress=False,
              x_test=data["x_test"], y_test=data["y_test"])

"""Tests for gni_lib.optim: the noisy optimisers against their defining equations.

Oracles: the pure updates themselves (sigma = 0), an independent float64 gradient
descent written with torch.func (change of variables, perturbed gradients), the
documented draw order reproduced from a clone of the generator, and Monte Carlo
moments with their standard errors.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch.func import functional_call, grad, vmap

from gni_lib.data import widening_valley_loss
from gni_lib.losses import mse_loss
from gni_lib.models import MLP
from gni_lib.optim import (
    PGD,
    AntiPGD,
    NonFiniteGradientError,
    PerturbedGD,
    anti_pgd_update,
    _draw_rows,
    draw_noise,
    gd_update,
    perturb,
    pgd_update,
)
from _shared import DEVICES, one_thread  # noqa: F401 (autouse fixture)



# Statistical checks use k = 5 standard errors, as in tests/test_data.py: with fixed
# seeds each check is deterministic; a correct implementation fails a given seed with
# probability below 6e-7, while the mistakes they guard against (sigma used as a
# variance, PGD's independent noise in place of Anti-PGD's increments) are off by
# tens to hundreds of standard errors.
K = 5.0


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _problem(device: str = "cpu", n: int = 16):
    g = _gen(100)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64).to(device)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64).to(device)
    return x, y


def _model(seed: int = 0, device: str = "cpu"):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MLP([3, 5, 2]).double().to(device).eval()


def _closure(model, opt, x, y, log=None):
    def closure():
        opt.zero_grad(set_to_none=True)
        if log is not None:
            log.append([p.detach().clone() for p in model.parameters()])
        loss = mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _equal(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a, b))


def _noise_like(params, sigma, generator):
    """The documented draw: one flat randn over all tensors, in order, times sigma."""
    sizes = [p.numel() for p in params]
    flat = torch.randn(sum(sizes), generator=generator, dtype=params[0].dtype, device=params[0].device)
    return [c.view(p.shape) * sigma for p, c in zip(params, flat.split(sizes))]


# --- sigma = 0 is gradient descent, bit for bit -------------------------------------------------

NOISY = [
    pytest.param(PGD, {}, id="PGD"),
    pytest.param(AntiPGD, {}, id="AntiPGD"),
    pytest.param(PerturbedGD, {}, id="PerturbedGD"),
    pytest.param(PerturbedGD, {"layerwise": True}, id="PerturbedGD-layerwise"),
]


def _gd_reference(model, x, y, lr, steps, momentum=0.0):
    """gd_update in a loop (heavy-ball buffer b = mu b + g when momentum > 0)."""
    skeleton = copy.deepcopy(model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = None
    for _ in range(steps):
        g = grad(lambda p: mse_loss(functional_call(skeleton, p, (x,)), y))(params)
        if momentum:
            buffers = g if buffers is None else {k: momentum * buffers[k] + g[k] for k in g}
            g = buffers
        params = gd_update(params, g, lr)
    return params


@pytest.mark.parametrize("cls, extra", NOISY)
@pytest.mark.parametrize("device", DEVICES)
def test_sigma_zero_is_gradient_descent_exactly(cls, extra, device):
    x, y = _problem(device)
    model = _model(device=device)
    expected = _gd_reference(model, x, y, 0.05, 6)
    opt = cls(model.parameters(), 0.05, 0.0, generator=_gen(1, device), **extra)
    for _ in range(6):
        opt.step(_closure(model, opt, x, y))
    assert all(torch.equal(p.detach(), expected[k]) for k, p in model.named_parameters())
    assert not _equal(_params(model), _params(_model(device=device)))  # it did move


@pytest.mark.parametrize("cls, extra", NOISY)
def test_momentum_is_the_heavy_ball_of_torch_sgd(cls, extra):
    """momentum=mu steps along b_n = mu b_{n-1} + g (b_1 = g): torch.optim.SGD's momentum,
    up to SGD's fused multiply-add, and exactly the gd_update loop on the buffers."""
    x, y = _problem()
    model, reference = _model(), _model()
    expected = _gd_reference(model, x, y, 0.05, 6, momentum=0.9)
    opt = cls(model.parameters(), 0.05, 0.0, generator=_gen(1), momentum=0.9, **extra)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    for _ in range(6):
        opt.step(_closure(model, opt, x, y))
        sgd.step(_closure(reference, sgd, x, y))
    for (k, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p.detach(), expected[k])
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-13)
    plain = _gd_reference(_model(), x, y, 0.05, 6)
    assert not all(torch.equal(p.detach(), plain[k]) for k, p in model.named_parameters())


# --- PGD and the draw order --------------------------------------------------------------------------


def _zero_gradient_closure(params, opt):
    def closure():
        opt.zero_grad()
        loss = sum((p * 0.0).sum() for p in params)
        loss.backward()
        return loss

    return closure


def test_pgd_adds_the_documented_draw():
    """With a zero gradient one PGD step is w + xi, xi = draw_noise(params, sigma, clone)."""
    model = _model()
    before = dict(model.named_parameters())
    before = {k: v.detach().clone() for k, v in before.items()}
    generator = _gen(3)
    clone = copy.deepcopy(generator)
    opt = PGD(model.parameters(), 0.1, 0.3, generator=generator)
    opt.step(_zero_gradient_closure(list(model.parameters()), opt))
    xi = draw_noise(before, 0.3, clone)
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k] + xi[k])
    assert torch.equal(generator.get_state(), clone.get_state())  # one buffer, nothing more


def test_pgd_noise_has_variance_sigma_squared():
    """sigma is a standard deviation: the increments have variance sigma^2, SE sigma^2 sqrt(2/n)."""
    sigma, d = 0.3, 100_000
    w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    opt = PGD([w], 0.1, sigma, generator=_gen(4))
    opt.step(_zero_gradient_closure([w], opt))
    var = w.detach().pow(2).mean().item()
    assert abs(var - sigma**2) < K * sigma**2 * math.sqrt(2 / d)


# --- Anti-PGD ----------------------------------------------------------------------------------------


def _anti_pgd_increments(cls, sigma, d, steps):
    w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    opt = cls([w], 0.1, sigma, generator=_gen(5))
    path = [w.detach().clone()]
    for _ in range(steps):
        opt.step(_zero_gradient_closure([w], opt))
        path.append(w.detach().clone())
    return [path[i + 1] - path[i] for i in range(steps)]


def test_anti_pgd_increments_variance_and_autocorrelation():
    r"""Delta_n = xi_{n+1} - xi_n (n >= 1): variance 2 sigma^2, lag-1 correlation -1/2, lag-2 0.

    The d coordinates are independent, so each statistic is a mean of d i.i.d.
    terms. Standard errors: the variance estimate mean(Delta^2) has SE
    2 sigma^2 sqrt(2/d) (Var Delta^2 = 2 (2 sigma^2)^2); a sample correlation of a
    bivariate normal has SE (1 - rho^2)/sqrt(d), i.e. 0.75/sqrt(d) at rho = -1/2 and
    1/sqrt(d) at rho = 0. The first increment is xi_1 - xi_0 = xi_1, variance sigma^2.
    """
    sigma, d = 0.3, 200_000
    deltas = _anti_pgd_increments(AntiPGD, sigma, d, steps=5)

    def corr(a, b):
        return ((a * b).mean() / (a.pow(2).mean() * b.pow(2).mean()).sqrt()).item()

    first = deltas[0].pow(2).mean().item()
    assert abs(first - sigma**2) < K * sigma**2 * math.sqrt(2 / d)
    for n in (1, 2, 3):
        var = deltas[n].pow(2).mean().item()
        assert abs(var - 2 * sigma**2) < K * 2 * sigma**2 * math.sqrt(2 / d)
    for n in (1, 2):
        assert abs(corr(deltas[n], deltas[n + 1]) - (-0.5)) < K * 0.75 / math.sqrt(d)
    assert abs(corr(deltas[1], deltas[3])) < K / math.sqrt(d)
    # The same statistics tell PGD apart (independent increments, variance sigma^2).
    pgd = _anti_pgd_increments(PGD, sigma, d, steps=3)
    assert abs(corr(pgd[1], pgd[2])) < K / math.sqrt(d)
    assert abs(corr(pgd[1], pgd[2]) - (-0.5)) > 100 / math.sqrt(d)


def _valley_grad(w):
    return grad(lambda q: widening_valley_loss(q[:-1], q[-1]))(w)


def test_anti_pgd_change_of_variables_on_the_widening_valley():
    r"""z_n = w_n - xi_n follows z_{n+1} = z_n - lr grad L(z_n + xi_n) to float64 round-off.

    The oracle is plain gradient descent written with torch.func, fed the same
    xi_n (drawn from a clone of the generator in the documented order).
    """
    d, lr, sigma, steps = 5, 0.1, 0.2, 40
    start = torch.cat([torch.linspace(0.5, 1.5, d, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)])
    u = torch.nn.Parameter(start[:-1].clone())
    v = torch.nn.Parameter(start[-1].clone())
    generator = _gen(6)
    clone = copy.deepcopy(generator)
    opt = AntiPGD([u, v], lr, sigma, generator=generator)

    def closure():
        opt.zero_grad()
        loss = widening_valley_loss(u, v)
        loss.backward()
        return loss

    z = start.clone()
    xi = torch.zeros_like(start)
    for _ in range(steps):
        z = z - lr * _valley_grad(z + xi)  # the oracle: GD at the perturbed point
        noise = _noise_like([u, v], sigma, clone)
        xi = torch.cat([noise[0], noise[1].reshape(1)])
        opt.step(closure)
        w = torch.cat([u.detach(), v.detach().reshape(1)])
        state_xi = torch.cat([opt.state[u]["xi"], opt.state[v]["xi"].reshape(1)])
        assert torch.equal(state_xi, xi)  # the noise really is shared
        torch.testing.assert_close(w - state_xi, z, rtol=1e-12, atol=1e-12)
    assert (z - start).abs().max() > 0.01  # the test has teeth: z moved


def test_anti_pgd_change_of_variables_on_an_mlp():
    """The same identity for a tanh MLP: the gradient of the network loss at w_n."""
    x, y = _problem()
    model = _model()
    names = [k for k, _ in model.named_parameters()]
    generator = _gen(7)
    clone = copy.deepcopy(generator)
    lr, sigma = 0.05, 0.05
    opt = AntiPGD(model.parameters(), lr, sigma, generator=generator)
    skeleton = copy.deepcopy(model)

    def loss_of(params):
        return mse_loss(functional_call(skeleton, params, (x,)), y)

    z = {k: v.detach().clone() for k, v in model.named_parameters()}
    xi = {k: torch.zeros_like(v) for k, v in z.items()}
    for _ in range(25):
        g = grad(loss_of)(perturb(z, xi))
        z = {k: z[k] - lr * g[k] for k in z}
        xi = dict(zip(names, _noise_like(list(z.values()), sigma, clone)))
        opt.step(_closure(model, opt, x, y))
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach() - opt.state[p]["xi"], z[k], rtol=1e-12, atol=1e-12)


# --- PerturbedGD -------------------------------------------------------------------------------------


def test_perturbed_gd_takes_the_gradient_at_the_perturbed_point():
    x, y = _problem()
    model = _model()
    before = _params(model)
    generator = _gen(8)
    clone = copy.deepcopy(generator)
    lr, sigma = 0.1, 0.2
    opt = PerturbedGD(model.parameters(), lr, sigma, generator=generator)
    seen = []
    opt.step(_closure(model, opt, x, y, log=seen))
    xi = _noise_like(before, sigma, clone)
    perturbed = [w + e for w, e in zip(before, xi)]
    assert _equal(seen[0], perturbed)  # the closure ran at w + xi
    # Independent oracle: the float64 gradient at w + xi by torch.func, then w - lr g.
    skeleton = copy.deepcopy(model)
    names = [k for k, _ in model.named_parameters()]
    g = grad(lambda p: mse_loss(functional_call(skeleton, p, (x,)), y))(dict(zip(names, perturbed)))
    for (k, p), w in zip(model.named_parameters(), before):
        torch.testing.assert_close(p.detach(), w - lr * g[k], rtol=1e-14, atol=1e-15)
    # ... and not the gradient at w.
    g_clean = grad(lambda p: mse_loss(functional_call(skeleton, p, (x,)), y))(dict(zip(names, before)))
    assert not all(torch.allclose(g[k], g_clean[k]) for k in names)


def test_perturbed_gd_leaves_the_weights_unperturbed():
    """With lr = 0 the step must give back the weights bit for bit: restored, not (w + xi) - xi."""
    x, y = _problem()
    for layerwise in (False, True):
        model = _model()
        before = _params(model)
        opt = PerturbedGD(model.parameters(), 0.0, 0.7, layerwise=layerwise, generator=_gen(9))
        for _ in range(5):
            opt.step(_closure(model, opt, x, y))
        assert _equal(_params(model), before)


def test_perturbed_gd_restores_the_weights_when_the_closure_fails():
    model = _model()
    before = _params(model)
    opt = PerturbedGD(model.parameters(), 0.1, 0.5, generator=_gen(10))

    def failing():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(failing)
    assert _equal(_params(model), before)


def test_perturbed_gd_all_parameter_mode_perturbs_every_coordinate_with_sigma():
    """sigma split, all-parameter mode: every coordinate of every tensor gets N(0, sigma^2)."""
    sigma = 0.25
    a = torch.nn.Parameter(torch.zeros(300, 100, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(30_000, dtype=torch.float64))
    opt = PerturbedGD([a, b], 0.1, sigma, generator=_gen(11))
    seen = []

    def closure():
        opt.zero_grad()
        seen.append((a.detach().clone(), b.detach().clone()))
        loss = (a * 0).sum() + (b * 0).sum()
        loss.backward()
        return loss

    opt.step(closure)
    for xi in seen[0]:
        n = xi.numel()
        assert abs(xi.pow(2).mean().item() - sigma**2) < K * sigma**2 * math.sqrt(2 / n)
        assert abs(xi.mean().item()) < K * sigma / math.sqrt(n)


def test_perturbed_gd_layerwise_touches_one_tensor_per_step_cyclically():
    x, y = _problem()
    model = _model()
    tensors = len(list(model.parameters()))
    assert tensors == 4
    opt = PerturbedGD(model.parameters(), 0.05, 0.3, layerwise=True, generator=_gen(12))
    for step in range(2 * tensors + 1):
        before = _params(model)
        seen = []
        opt.step(_closure(model, opt, x, y, log=seen))
        touched = [i for i, (p, q) in enumerate(zip(seen[0], before)) if not torch.equal(p, q)]
        assert touched == [step % tensors], f"step {step} perturbed tensors {touched}"
        assert opt.steps_taken == step + 1


def test_perturbed_gd_requires_a_closure():
    opt = PerturbedGD(_model().parameters(), 0.1, 0.1)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(TypeError, match="closure"):
        opt.step("not callable")


# --- state_dict round trip ---------------------------------------------------------------------------

# (optimiser, settings, whether a resumed run depends on the optimiser state)
RESUMABLE = [
    pytest.param(PGD, {}, False, id="PGD"),
    pytest.param(AntiPGD, {}, True, id="AntiPGD"),
    pytest.param(AntiPGD, {"momentum": 0.9}, True, id="AntiPGD-momentum"),
    pytest.param(PerturbedGD, {"layerwise": True}, True, id="PerturbedGD-layerwise"),
    pytest.param(PerturbedGD, {}, False, id="PerturbedGD"),
]


@pytest.mark.parametrize("cls, kwargs, stateful", RESUMABLE)
def test_state_dict_round_trip_resumes_bit_identically(cls, kwargs, stateful):
    """Save mid-run (torch.save, weights_only load), restore into fresh objects, resume."""
    x, y = _problem()
    model = _model()
    generator = _gen(13)
    opt = cls(model.parameters(), 0.05, 0.1, generator=generator, **kwargs)
    for _ in range(5):
        opt.step(_closure(model, opt, x, y))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    generator_state = generator.get_state()
    for _ in range(5):
        opt.step(_closure(model, opt, x, y))
    straight = _params(model)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(seed=99)  # different weights, overwritten by the checkpoint
    resumed.load_state_dict(saved["model"])
    new_generator = _gen(0)
    new_generator.set_state(generator_state)
    opt2 = cls(resumed.parameters(), 0.05, 0.1, generator=new_generator, **kwargs)
    opt2.load_state_dict(saved["opt"])
    for _ in range(5):
        opt2.step(_closure(resumed, opt2, x, y))
    assert _equal(_params(resumed), straight)

    # Without the optimiser state (xi_n, momentum, the layer cursor) the run differs,
    # so the test does check that the state survives.
    if stateful:
        fresh = _model(seed=99)
        fresh.load_state_dict(saved["model"])
        g3 = _gen(0)
        g3.set_state(generator_state)
        opt3 = cls(fresh.parameters(), 0.05, 0.1, generator=g3, **kwargs)
        for _ in range(5):
            opt3.step(_closure(fresh, opt3, x, y))
        assert not _equal(_params(fresh), straight)


def test_a_loaded_state_dict_is_not_changed_by_later_steps():
    """load_state_dict keeps the given xi tensors (no copy); the steps replace xi instead of
    changing it in place, so one checkpoint dict can be loaded twice with the same result."""
    model = _model()
    x, y = _problem()
    opt = AntiPGD(model.parameters(), 0.05, 0.1, generator=_gen(14))
    opt.step(_closure(model, opt, x, y))
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    xi1 = checkpoint["opt"]["state"][0]["xi"].clone()
    results = []
    for _ in range(2):
        twin = _model(seed=5)
        twin.load_state_dict(checkpoint["model"])
        again = AntiPGD(twin.parameters(), 0.05, 0.1, generator=_gen(1))
        again.load_state_dict(checkpoint["opt"])
        for _ in range(3):
            again.step(_closure(twin, again, x, y))
        results.append(_params(twin))
    assert torch.equal(checkpoint["opt"]["state"][0]["xi"], xi1)
    assert _equal(results[0], results[1])


def test_param_groups_carry_their_settings():
    model = _model()
    opt = AntiPGD(
        [{"params": list(model.parameters())[:2], "sigma": 0.0}, {"params": list(model.parameters())[2:]}],
        0.1, 0.2, momentum=0.5,
    )
    assert [g["sigma"] for g in opt.param_groups] == [0.0, 0.2]
    assert all(g["momentum"] == 0.5 for g in opt.param_groups)
    # A scheduler changes the lr that the next step uses.
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _problem()
    opt.step(_closure(model, opt, x, y))
    scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.05
    # Groups added later get the defaults, and are checked.
    extra = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt.add_param_group({"params": [extra]})
    assert opt.param_groups[-1]["sigma"] == 0.2 and opt.param_groups[-1]["momentum"] == 0.5
    with pytest.raises(ValueError, match="sigma"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "sigma": -1.0})
    assert len(opt.param_groups) == 3  # the bad group was not kept


def test_deepcopy_keeps_the_generator_state():
    """Deep-copying model and optimiser together gives a twin that continues identically."""
    x, y = _problem()
    model = _model()
    opt = AntiPGD(model.parameters(), 0.05, 0.1, generator=_gen(15), momentum=0.5)
    opt.step(_closure(model, opt, x, y))
    twin_model, twin = copy.deepcopy((model, opt))
    assert twin.generator is not opt.generator
    for _ in range(3):
        opt.step(_closure(model, opt, x, y))
        twin.step(_closure(twin_model, twin, x, y))
    assert _equal(_params(model), _params(twin_model))


# --- functional updates ------------------------------------------------------------------------------


def _stacked(count=3, seed=0):
    g = _gen(seed)
    return {
        "w": torch.randn(count, 4, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(count, 4, generator=g, dtype=torch.float64),
    }


def _row(stacked, m):
    return {k: v[m] for k, v in stacked.items()}


def test_functional_updates_under_vmap_equal_per_model_calls():
    params, grads, noise, prev = _stacked(seed=1), _stacked(seed=2), _stacked(seed=3), _stacked(seed=4)
    lr = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    batched = {
        "gd": vmap(gd_update)(params, grads, lr),
        "pgd": vmap(pgd_update)(params, grads, noise, lr),
        "anti": vmap(anti_pgd_update)(params, grads, noise, prev, lr)[0],
        "anti0": vmap(lambda p, g, z, r: anti_pgd_update(p, g, z, None, r))(params, grads, noise, lr)[0],
    }
    for m in range(3):
        p, g, z, q, r = _row(params, m), _row(grads, m), _row(noise, m), _row(prev, m), lr[m].item()
        single = {
            "gd": gd_update(p, g, r),
            "pgd": pgd_update(p, g, z, r),
            "anti": anti_pgd_update(p, g, z, q, r)[0],
            "anti0": anti_pgd_update(p, g, z, None, r)[0],
        }
        for name in batched:
            for k in p:
                torch.testing.assert_close(batched[name][k][m], single[name][k], rtol=1e-15, atol=1e-15)
        # ... and each is its formula.
        for k in p:
            torch.testing.assert_close(single["pgd"][k], p[k] - r * g[k] + z[k], rtol=1e-15, atol=1e-15)
            torch.testing.assert_close(single["anti"][k], p[k] - r * g[k] + z[k] - q[k], rtol=1e-15, atol=1e-15)


def test_functional_anti_pgd_threads_the_state():
    params, grads, noise = _stacked(seed=1), _stacked(seed=2), _stacked(seed=3)
    new, xi = anti_pgd_update(params, grads, noise, None, 0.1)
    assert xi.keys() == noise.keys() and all(torch.equal(xi[k], noise[k]) for k in xi)


def test_perturbed_gradient_step_under_vmap():
    """gd_update(w, grad(L)(perturb(w, xi))) for three least-squares models at once: the
    gradient is taken at w + xi, the step from w (Orvieto et al. 2023)."""
    g = _gen(16)
    a = torch.randn(8, 4, generator=g, dtype=torch.float64)
    t = torch.randn(8, generator=g, dtype=torch.float64)
    params = {"w": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    noise = {"w": 0.1 * torch.randn(3, 4, generator=g, dtype=torch.float64)}
    grad_fn = grad(lambda p: 0.5 * (a @ p["w"] - t).pow(2).mean())
    out = vmap(lambda p, z: gd_update(p, grad_fn(perturb(p, z)), 0.2))(params, noise)
    for m in range(3):
        w, xi = params["w"][m], noise["w"][m]
        expected = w - 0.2 * a.T @ (a @ (w + xi) - t) / 8
        torch.testing.assert_close(out["w"][m], expected, rtol=1e-14, atol=1e-14)


def test_functional_step_matches_the_optimiser():
    """pgd_update + draw_noise reproduce one PGD step exactly: the optimiser calls them."""
    x, y = _problem()
    model = _model()
    generator = _gen(17)
    clone = copy.deepcopy(generator)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    skeleton = copy.deepcopy(model)
    grads = grad(lambda p: mse_loss(functional_call(skeleton, p, (x,)), y))(params)
    expected = pgd_update(params, grads, draw_noise(params, 0.1, clone), 0.05)
    opt = PGD(model.parameters(), 0.05, 0.1, generator=generator)
    opt.step(_closure(model, opt, x, y))
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), expected[k])


def _stacked_noise(stacked, sigmas, generators, distribution="gaussian"):
    first = next(iter(stacked.values()))
    sizes = [v[0].numel() for v in stacked.values()]
    rows = _draw_rows(sum(sizes), sigmas, generators, first.dtype, first.device, distribution)
    return {k: r.reshape(v.shape) for (k, v), r in zip(stacked.items(), rows.split(sizes, dim=1))}


@pytest.mark.parametrize("device", DEVICES)
def test_stacked_rows_are_single_draws(device):
    """_draw_rows (the ensemble's drawer): row m is draw_noise for model m alone."""
    stacked = {k: v.to(device) for k, v in _stacked(count=3).items()}
    sigmas = [0.1, 0.0, 0.5]
    generators = [_gen(20 + m, device) for m in range(3)]
    clones = copy.deepcopy(generators)
    noise = _stacked_noise(stacked, sigmas, generators)
    for m in range(3):
        single = draw_noise(_row(stacked, m), sigmas[m], clones[m])
        for k in stacked:
            assert torch.equal(noise[k][m], single[k])
    assert torch.equal(noise["w"][1], torch.zeros_like(noise["w"][1]))
    # One key only (a layer-wise step) draws only that tensor's numbers.
    only = draw_noise(_row(stacked, 0), 0.1, _gen(20, device), keys=["b"])
    assert list(only) == ["b"] and only["b"].shape == (4,)


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PGD, AntiPGD, PerturbedGD])
@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(lr=-0.1), ValueError, "lr"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(lr="0.1"), TypeError, "lr"),
        (dict(sigma=-1.0), ValueError, "sigma"),
        (dict(sigma=float("inf")), ValueError, "sigma"),
        (dict(sigma=None), TypeError, "sigma"),
        (dict(generator=3), TypeError, "generator"),
        (dict(momentum=-0.9), ValueError, "momentum"),
        (dict(momentum="0.9"), TypeError, "momentum"),
        (dict(momentum=0.9, lr_extra=True), TypeError, "lr_extra"),
    ],
)
def test_bad_arguments_name_the_argument(cls, kwargs, error, name):
    args = dict(lr=0.1, sigma=0.1)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        cls(_model().parameters(), **args)


@pytest.mark.parametrize("cls", [PGD, AntiPGD, PerturbedGD])
def test_empty_and_bad_params(cls):
    with pytest.raises(ValueError, match="params"):
        cls([], 0.1, 0.1)
    with pytest.raises(ValueError, match="params"):
        cls(iter([]), 0.1, 0.1)
    with pytest.raises(TypeError, match="params"):
        cls(torch.zeros(3, requires_grad=True), 0.1, 0.1)
    with pytest.raises(TypeError, match="params"):
        cls(5, 0.1, 0.1)
    with pytest.raises(ValueError, match="sigma"):
        cls([{"params": [torch.zeros(2, requires_grad=True)], "sigma": -0.5}], 0.1, 0.1)
    with pytest.raises(ValueError, match="lr"):
        cls([{"params": [torch.zeros(2, requires_grad=True)], "lr": -0.5}], 0.1, 0.1)


def test_layerwise_must_be_a_bool():
    with pytest.raises(TypeError, match="layerwise"):
        PerturbedGD(_model().parameters(), 0.1, 0.1, layerwise="yes")


@pytest.mark.parametrize("cls", [PGD, AntiPGD, PerturbedGD])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradients_raise_and_change_nothing(cls, bad):
    model = _model()
    opt = cls(model.parameters(), 0.1, 0.1, generator=_gen(18))
    before = _params(model)

    def closure():
        opt.zero_grad()
        loss = sum(p.sum() for p in model.parameters()) * bad
        loss.backward()
        return loss

    with pytest.raises(NonFiniteGradientError, match="gradient"):
        opt.step(closure)
    assert _equal(_params(model), before)
    assert isinstance(NonFiniteGradientError("x"), ValueError)
    assert isinstance(NonFiniteGradientError("x"), FloatingPointError)


def test_functional_bad_input():
    params = {"w": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="grads"):
        gd_update(params, {"v": torch.zeros(2, 3)}, 0.1)
    with pytest.raises(ValueError, match="grads"):
        gd_update(params, {"w": torch.zeros(3, 2)}, 0.1)
    with pytest.raises(ValueError, match="noise"):
        pgd_update(params, params, {}, 0.1)
    with pytest.raises(ValueError, match="prev_noise"):
        anti_pgd_update(params, params, params, {"w": torch.zeros(1)}, 0.1)
    with pytest.raises(ValueError, match="noise"):
        perturb(params, {"x": torch.zeros(1)})
    with pytest.raises(TypeError, match="params"):
        gd_update([torch.zeros(1)], {}, 0.1)
    with pytest.raises(ValueError, match="sigma"):
        draw_noise(params, -1.0, None)
    with pytest.raises(ValueError, match="keys"):
        draw_noise(params, 1.0, None, keys=["nope"])
    with pytest.raises(TypeError, match="generator"):
        draw_noise(params, 1.0, "seed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generator_on_the_wrong_device():
    model = _model(device="cuda")
    x, y = _problem("cuda")
    opt = PGD(model.parameters(), 0.1, 0.1, generator=_gen(0, "cpu"))
    with pytest.raises(ValueError, match="generator"):
        opt.step(_closure(model, opt, x, y))


# --- Rademacher (+-sigma) noise, the noise of Orvieto et al. (2022), Thm. 3.1 -------------------------


def _signs_like(params, sigma, generator):
    """The documented Rademacher draw: one flat 2 * randint(0, 2) - 1 over all tensors, times sigma."""
    sizes = [p.numel() for p in params]
    bits = torch.randint(0, 2, (sum(sizes),), generator=generator, device=params[0].device)
    flat = (2 * bits - 1).to(params[0].dtype)
    return [c.view(p.shape) * sigma for p, c in zip(params, flat.split(sizes))]


@pytest.mark.parametrize("device", DEVICES)
def test_rademacher_draw_is_the_documented_sign_buffer(device):
    params = {k: v.to(device) for k, v in _row(_stacked(count=1), 0).items()}
    generator = _gen(30, device)
    clone = copy.deepcopy(generator)
    xi = draw_noise(params, 0.3, generator, distribution="rademacher")
    expected = _signs_like(list(params.values()), 0.3, clone)
    for (k, value), e in zip(xi.items(), expected):
        assert torch.equal(value, e)
        assert value.shape == params[k].shape and value.dtype == params[k].dtype
        assert torch.equal(value.abs(), torch.full_like(value, 0.3))  # exactly +-sigma
    assert torch.equal(generator.get_state(), clone.get_state())  # one buffer, nothing more
    # The Gaussian default is untouched by the option: same seed, the old randn buffer.
    gauss = draw_noise(params, 0.3, _gen(30, device))
    assert all(torch.equal(gauss[k], e) for k, e in zip(params, _noise_like(list(params.values()), 0.3, _gen(30, device))))


def test_rademacher_moments():
    r"""Mean 0 (SE sigma/sqrt(P)), P(+sigma) = 1/2 (SE 1/(2 sqrt(P))), variance sigma^2 and
    fourth moment sigma^4 exactly; a Gaussian has fourth moment 3 sigma^4 (SE sigma^4 sqrt(96/P))."""
    sigma, size = 0.5, 200_000
    params = {"w": torch.zeros(size, dtype=torch.float64)}
    xi = draw_noise(params, sigma, _gen(31), distribution="rademacher")["w"]
    assert abs(xi.mean().item()) < K * sigma / math.sqrt(size)
    assert abs((xi > 0).double().mean().item() - 0.5) < K * 0.5 / math.sqrt(size)
    assert xi.pow(2).mean().item() == pytest.approx(sigma**2, rel=1e-14)
    assert xi.pow(4).mean().item() == pytest.approx(sigma**4, rel=1e-14)
    gauss = draw_noise(params, sigma, _gen(31))["w"]
    assert abs(gauss.pow(4).mean().item() - 3 * sigma**4) < K * sigma**4 * math.sqrt(96 / size)


@pytest.mark.parametrize("cls", [PGD, AntiPGD])
def test_optimisers_add_the_rademacher_draw(cls):
    """With a zero gradient the first PGD / Anti-PGD step (xi_0 = 0) adds the documented sign draw."""
    model = _model()
    before = _params(model)
    generator = _gen(32)
    clone = copy.deepcopy(generator)
    opt = cls(model.parameters(), 0.1, 0.2, generator=generator, distribution="rademacher")
    opt.step(_zero_gradient_closure(list(model.parameters()), opt))
    for p, w, e in zip(model.parameters(), before, _signs_like(before, 0.2, clone)):
        assert torch.equal(p.detach(), w + e)
    assert torch.equal(generator.get_state(), clone.get_state())


def test_perturbed_gd_evaluates_at_a_rademacher_point():
    x, y = _problem()
    model = _model()
    before = _params(model)
    clone = _gen(33)
    opt = PerturbedGD(model.parameters(), 0.1, 0.2, generator=_gen(33), distribution="rademacher")
    seen = []
    opt.step(_closure(model, opt, x, y, log=seen))
    expected = [w + e for w, e in zip(before, _signs_like(before, 0.2, clone))]
    assert _equal(seen[0], expected)


def test_anti_pgd_change_of_variables_with_rademacher_noise():
    """z_n = w_n - xi_n follows GD at z_n + xi_n for +-sigma noise too, and |xi| = sigma."""
    d, lr, sigma, steps = 4, 0.1, 0.3, 30
    u = torch.nn.Parameter(torch.linspace(0.5, 1.5, d, dtype=torch.float64))
    v = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    z = torch.cat([u.detach(), v.detach().reshape(1)])
    generator = _gen(34)
    clone = copy.deepcopy(generator)
    opt = AntiPGD([u, v], lr, sigma, generator=generator, distribution="rademacher")

    def closure():
        opt.zero_grad()
        loss = widening_valley_loss(u, v)
        loss.backward()
        return loss

    xi = torch.zeros_like(z)
    start = z.clone()
    for _ in range(steps):
        z = z - lr * _valley_grad(z + xi)
        noise = _signs_like([u, v], sigma, clone)
        xi = torch.cat([noise[0], noise[1].reshape(1)])
        opt.step(closure)
        w = torch.cat([u.detach(), v.detach().reshape(1)])
        state_xi = torch.cat([opt.state[u]["xi"], opt.state[v]["xi"].reshape(1)])
        assert torch.equal(state_xi, xi)
        assert torch.equal(state_xi.abs(), torch.full_like(state_xi, sigma))
        torch.testing.assert_close(w - state_xi, z, rtol=1e-12, atol=1e-12)
    assert (z - start).abs().max() > 0.01


@pytest.mark.parametrize("device", DEVICES)
def test_stacked_rademacher_rows_are_single_draws(device):
    stacked = {k: v.to(device) for k, v in _stacked(count=3).items()}
    sigmas = [0.1, 0.0, 0.5]
    generators = [_gen(40 + m, device) for m in range(3)]
    clones = copy.deepcopy(generators)
    noise = _stacked_noise(stacked, sigmas, generators, distribution="rademacher")
    for m in range(3):
        single = draw_noise(_row(stacked, m), sigmas[m], clones[m], distribution="rademacher")
        for k in stacked:
            assert torch.equal(noise[k][m], single[k])
    assert torch.equal(noise["w"][1], torch.zeros_like(noise["w"][1]))
    assert torch.equal(noise["w"][2].abs(), torch.full_like(noise["w"][2], 0.5))


def test_the_distribution_survives_deepcopy_and_pickling():
    model = _model()
    opt = AntiPGD(model.parameters(), 0.05, 0.1, generator=_gen(35), distribution="rademacher")
    twin_model, twin = copy.deepcopy((model, opt))
    assert twin.distribution == "rademacher"
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=False).distribution == "rademacher"


@pytest.mark.parametrize("bad", ["uniform", "Gaussian", None, 3])
def test_unknown_distribution_names_the_argument(bad):
    params = {"w": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="distribution"):
        draw_noise(params, 0.1, None, distribution=bad)
    for cls in (PGD, AntiPGD, PerturbedGD):
        with pytest.raises(ValueError, match="distribution"):
            cls(_model().parameters(), 0.1, 0.1, distribution=bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stacked_rows_are_single_draws_in_low_precision(dtype):
    """Row m equals draw_noise for model m in bfloat16 / float16 too: sigma is not rounded to
    the low precision before the product (it was, through a torch.tensor(sigmas) per step)."""
    stacked = {"w": torch.zeros(2, 64, 8, dtype=dtype)}
    sigmas = [0.1, 0.37]
    generators = [_gen(50 + m) for m in range(2)]
    clones = copy.deepcopy(generators)
    noise = _stacked_noise(stacked, sigmas, generators)
    for m in range(2):
        assert torch.equal(noise["w"][m], draw_noise(_row(stacked, m), sigmas[m], clones[m])["w"])

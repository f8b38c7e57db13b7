"""train_ensemble (16 models at once) vs a Python loop over the 16 models.

Chapters 07, 13, 15 and 17 train a grid of seeds, noise levels and step sizes so
that every figure can show intervals. The design's target: 16 MLPs 32-64-64-10,
200 SGD steps, batch 64, at least 3x faster than a Python loop in float32. The
PGD and Anti-PGD rows check that drawing the noise (one N(0, 1) number per
weight per step, the same numbers in both routes) does not eat the speed-up.

The loop is what a reader writes without the library: per model, a
torch.optim optimiser (SGD, or gni_lib.optim.PGD / AntiPGD) and
zero_grad / forward / backward / step on the same minibatches. Both routes are
checked to end at the same weights before anything is timed.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import time_side_by_side  # noqa: E402

from gni_lib.ensemble import train_ensemble  # noqa: E402
from gni_lib.losses import ce_loss  # noqa: E402
from gni_lib.models import MLP  # noqa: E402
from gni_lib.optim import PGD, AntiPGD  # noqa: E402
from gni_lib.seeding import make_generator, spawn_generators  # noqa: E402
from gni_lib.noise import noise_sites  # noqa: E402
from gni_lib.regularisers import explicit_regularizer  # noqa: E402
from gni_lib.train import _minibatches, train  # noqa: E402

MODELS, STEPS, BATCH, N_TRAIN = 16, 200, 64, 1024
WIDTHS = [32, 64, 64, 10]
LR, SIGMA = 0.1, 0.01
VARIANTS = [("SGD", "gd"), ("PGD", "pgd"), ("Anti-PGD", "anti_pgd")]
DTYPES = [torch.float32, torch.float64]


def problem(device: torch.device, dtype: torch.dtype):
    """Gaussian inputs labelled by a random linear teacher; 16 MLPs from seeds 0..15."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, WIDTHS[0], generator=g, dtype=torch.float64)
    teacher = torch.randn(WIDTHS[0], WIDTHS[-1], generator=g, dtype=torch.float64)
    y = (x @ teacher).argmax(dim=1)
    models = []
    for seed in range(MODELS):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            models.append(MLP(WIDTHS).to(device=device, dtype=dtype).eval())
    return x.to(device, dtype), y.to(device), models


def python_loop(models, x, y, method: str, device: torch.device):
    """Train copies of the models one after another; return the trained copies."""
    noise = spawn_generators(1, MODELS, device) if method != "gd" else [None] * MODELS
    trained = []
    for model, generator in zip(models, noise):
        model = copy.deepcopy(model)
        params = list(model.parameters())
        if method == "gd":
            opt = torch.optim.SGD(params, lr=LR)
        elif method == "pgd":
            opt = PGD(params, LR, SIGMA, generator=generator)
        else:
            opt = AntiPGD(params, LR, SIGMA, generator=generator)
        batches = _minibatches(N_TRAIN, BATCH, make_generator(2, device), x.device)
        for _ in range(STEPS):
            index = next(batches)
            xb, yb = x[index], y[index]

            def closure():
                opt.zero_grad(set_to_none=True)
                objective = ce_loss(model(xb), yb)
                objective.backward()
                return objective

            opt.step(closure)
        trained.append(model)
    return trained


def ensemble(models, x, y, method: str, device: torch.device, fast_path: bool):
    trained = [copy.deepcopy(m) for m in models]
    train_ensemble(
        trained, x, y, steps=STEPS, lr=LR, method=method,
        sigma=SIGMA if method != "gd" else 0.0,
        generators=spawn_generators(1, MODELS, device) if method != "gd" else None,
        loss="ce", batch_size=BATCH, batch_generator=make_generator(2, device),
        record_every=STEPS, fast_path=fast_path, progress=False,
    )
    return trained


def check_same(a, b, dtype: torch.dtype) -> None:
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for ma, mb in zip(a, b):
        for p, q in zip(ma.parameters(), mb.parameters()):
            torch.testing.assert_close(p, q, rtol=tol, atol=tol)


NOISY_STEPS, NOISY_SIGMA = 100, 0.3
NOISY_VARIANTS = [("noise injection", True, None), ("loss + R", False, "explicit_regularizer")]


def noisy_models(models, dtype):
    """Copies of the models with a noise site of std NOISY_SIGMA before every layer."""
    out = []
    for model in models:
        noisy = MLP(WIDTHS, sigma=NOISY_SIGMA).to(device=next(model.parameters()).device, dtype=dtype)
        noisy.load_state_dict(model.state_dict())
        out.append(noisy)
    return out


def noisy_loop(models, x, y, inject_noise: bool, penalty, device: torch.device):
    """train() per model, with the model's sites drawing from its own generator (seed 3 + m)."""
    trained = []
    for m, model in enumerate(models):
        model = copy.deepcopy(model)
        site_generator = make_generator(3 + m, device)
        for site in noise_sites(model):
            site.generator = site_generator
        train(
            model, x, y, steps=NOISY_STEPS, lr=LR, loss="ce", optimizer="sgd", batch_size=BATCH,
            generator=make_generator(2, device), inject_noise=inject_noise, record_every=NOISY_STEPS,
            penalty=(lambda net, xb: explicit_regularizer(net, xb, loss="ce")) if penalty else None,
            progress=False,
        )
        trained.append(model)
    return trained


def noisy_ensemble(models, x, y, inject_noise: bool, penalty, device: torch.device, fast_path: bool):
    trained = [copy.deepcopy(m) for m in models]
    train_ensemble(
        trained, x, y, steps=NOISY_STEPS, lr=LR, loss="ce", batch_size=BATCH,
        batch_generator=make_generator(2, device), inject_noise=inject_noise,
        site_generators=[make_generator(3 + m, device) for m in range(MODELS)] if inject_noise else None,
        penalty=penalty, record_every=NOISY_STEPS, fast_path=fast_path, progress=False,
    )
    return trained


def noisy_tables(device: torch.device) -> list[str]:
    rows = [
        "",
        f"Training with the noise or with its regulariser: the same {MODELS} MLPs with a noise site "
        f"(σ = {NOISY_SIGMA}) before every layer, SGD, {NOISY_STEPS} steps, float32. The loop calls "
        "`gni_lib.train.train` per model; the R rows use `penalty=\"explicit_regularizer\"`, which the "
        "bmm path computes by the MLP core's batched backward recursion and the vmap path as `vmap` "
        "over `functional_regularizer`.",
        "",
        "| training | Python loop of `train()` | `train_ensemble` (bmm) | speed-up "
        "| `train_ensemble` (vmap) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    dtype = torch.float32
    x, y, base = problem(device, dtype)
    models = noisy_models(base, dtype)
    for label, inject_noise, penalty in NOISY_VARIANTS:
        loop = lambda: noisy_loop(models, x, y, inject_noise, penalty, device)  # noqa: E731
        fast = lambda: noisy_ensemble(models, x, y, inject_noise, penalty, device, True)  # noqa: E731
        generic = lambda: noisy_ensemble(models, x, y, inject_noise, penalty, device, False)  # noqa: E731
        reference = loop()
        check_same(reference, fast(), dtype)
        check_same(reference, generic(), dtype)
        t = time_side_by_side({"loop": loop, "fast": fast, "vmap": generic}, device=device, rounds=3, warmup=1)
        loop_s, fast_s, vmap_s = t["loop"].median_s, t["fast"].median_s, t["vmap"].median_s
        rows.append(
            f"| {label} | {loop_s:.2f} s | {fast_s:.2f} s | {loop_s / fast_s:.1f}× "
            f"| {vmap_s:.2f} s | {loop_s / vmap_s:.1f}× |"
        )
    return rows


def tables(device: torch.device) -> list[str]:
    rows = [
        f"{MODELS} MLPs {'-'.join(map(str, WIDTHS))} (tanh, cross-entropy), {STEPS} steps, "
        f"batch {BATCH}, lr {LR}, sigma {SIGMA}. Target: ensemble ≥ 3× faster than the loop "
        "in float32.",
        "",
        "| optimiser | dtype | Python loop | `train_ensemble` (bmm fast path) | speed-up "
        "| `train_ensemble` (vmap path) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for dtype in DTYPES:
        x, y, models = problem(device, dtype)
        for label, method in VARIANTS:
            loop = lambda: python_loop(models, x, y, method, device)  # noqa: E731
            fast = lambda: ensemble(models, x, y, method, device, True)  # noqa: E731
            generic = lambda: ensemble(models, x, y, method, device, False)  # noqa: E731
            reference = loop()
            check_same(reference, fast(), dtype)
            check_same(reference, generic(), dtype)
            t = time_side_by_side(
                {"loop": loop, "fast": fast, "vmap": generic}, device=device, rounds=5, warmup=1
            )
            loop_s, fast_s, vmap_s = t["loop"].median_s, t["fast"].median_s, t["vmap"].median_s
            rows.append(
                f"| {label} | {str(dtype).removeprefix('torch.')} | {loop_s:.2f} s | {fast_s:.2f} s "
                f"| {loop_s / fast_s:.1f}× | {vmap_s:.2f} s | {loop_s / vmap_s:.1f}× |"
            )
    return rows + noisy_tables(device)


if __name__ == "__main__":
    from harness import machine_line, set_threads

    from gni_lib import get_device

    set_threads()
    dev = get_device()
    print(machine_line(dev))
    print("\n".join(tables(dev)))

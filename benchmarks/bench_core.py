"""The core of gni_lib against its baselines: R, the noise gap and the Hessian trace.

All on the book's reference network, "6x256": an MLP with widths
[32, 256, 256, 256, 256, 256, 256, 10] (six hidden layers of width 256, 7 linear
layers, 7 noise sites, 339,978 parameters), tanh, batch 32, float32, noise
sigma = 0.1 at every site. Targets from ../shared/DESIGN.md section 6:

- exact R >= 40x faster than the naive route (torch.autograd.functional.jacobian
  per example and per noise site), for MSE and CE;
- the value of exact R <= 2x one clean forward+backward, also under no_grad;
- R with its parameter gradient <= 6x one clean forward+backward;
- the 1000-draw noise gap <= 1x the time of 1000 single clean forward passes;
- antithetic relative SE <= 0.5% at sigma in {0.01, 0.1, 0.3} with 1000 draws;
- exact Hessian trace <= 0.5 s, and no slower than 100 looped Hessian-vector products;
- the 100-probe Hutchinson estimate no slower than those 100 looped products.

`tables(device)` returns the markdown lines; benchmarks/run.py prints them.
Every timed pair is first checked to compute the same number.
"""

from __future__ import annotations

import torch

from gni_lib.curvature import hessian_trace
from gni_lib.gap import noisy_loss_gap
from gni_lib.losses import get_loss
from gni_lib.models import MLP
from gni_lib.noise import noise_sites, replace_site_outputs
from gni_lib.regularisers import explicit_regularizer

try:  # run as benchmarks/run.py (this folder on sys.path) or as a package module
    from harness import time_side_by_side
except ImportError:  # pragma: no cover
    from benchmarks.harness import time_side_by_side

WIDTHS = [32] + [256] * 6 + [10]
BATCH = 32
SIGMA = 0.1


def reference_problem(device: torch.device, sigma: float = SIGMA, seed: int = 0):
    """The 6x256 tanh MLP, a batch of inputs, MSE targets and CE labels (float32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(WIDTHS, activation="tanh", sigma=sigma).to(device)
        x = torch.randn(BATCH, WIDTHS[0], device=device)
        y = torch.randn(BATCH, WIDTHS[-1], device=device)
        labels = torch.randint(0, WIDTHS[-1], (BATCH,), device=device)
    return model, x, y, labels


def naive_regularizer(model, x: torch.Tensor, loss: str) -> torch.Tensor:
    """R by brute force: one autograd.functional.jacobian per example and per noise site."""
    sites = noise_sites(model)
    total = x.new_zeros(())
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        captured: dict[int, torch.Tensor] = {}

        def capture(k, h):
            captured[k] = h
            return h

        with replace_site_outputs(model, capture):
            clean = model(xb)[0]
        if loss == "ce":
            p = torch.softmax(clean, dim=0)
            hess = torch.diag(p) - torch.outer(p, p)
        else:
            hess = torch.eye(clean.shape[0], device=x.device, dtype=x.dtype)
        for k, site in enumerate(sites):

            def output_of(h, k=k):
                with replace_site_outputs(model, lambda j, g: h if j == k else g):
                    return model(xb)[0]

            h_k = captured[k].detach()
            jac = torch.autograd.functional.jacobian(output_of, h_k).reshape(clean.shape[0], -1)
            scale = site.sigma * (h_k.reshape(-1) if site.mode == "multiplicative" else 1.0)
            jac = jac * scale
            total = total + 0.5 * torch.trace(jac.T @ hess @ jac)
    return total / x.shape[0]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def regularizer_rows(device: torch.device) -> list[str]:
    model, x, y, labels = reference_problem(device)
    params = list(model.parameters())
    rows = [
        "| quantity | gni_lib | baseline | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    # Exact R vs the naive per-example, per-site Jacobian route.
    for loss in ("mse", "ce"):

        def fast(loss=loss):
            with torch.no_grad():
                return explicit_regularizer(model, x, loss=loss)

        def naive(loss=loss):
            with torch.no_grad():
                return naive_regularizer(model, x, loss)

        torch.testing.assert_close(fast(), naive(), rtol=1e-4, atol=1e-7)
        t = time_side_by_side({"fast": fast, "naive": naive}, device=device, rounds=3, warmup=1)
        ratio = t["naive"].median_s / t["fast"].median_s
        rows.append(
            f"| exact R ({loss}) vs per-example, per-site `autograd.functional.jacobian` "
            f"| {_ms(t['fast'].median_s)} | {_ms(t['naive'].median_s)} | {ratio:.0f}× faster "
            f"| ≥ 40× | {_verdict(ratio >= 40)} |"
        )

    # R against one clean forward+backward of the loss.
    model.eval()  # the baseline is the clean network; R switches the sites off itself
    loss_fn = get_loss("mse")

    def forward_backward():
        return torch.autograd.grad(loss_fn(model(x), y), params)

    def value():
        return explicit_regularizer(model, x)

    def value_no_grad():
        with torch.no_grad():
            return explicit_regularizer(model, x)

    def value_and_grad():
        return torch.autograd.grad(explicit_regularizer(model, x), params, allow_unused=True)

    t = time_side_by_side(
        {"fb": forward_backward, "value": value, "no_grad": value_no_grad, "grad": value_and_grad},
        device=device,
        rounds=15,
    )
    base = t["fb"].median_s
    for name, label, target in (
        ("value", "exact R (mse), value, autograd on", 2.0),
        ("no_grad", "exact R (mse), value, under `torch.no_grad()`", 2.0),
        ("grad", "exact R (mse) and its parameter gradient", 6.0),
    ):
        ratio = t[name].median_s / base
        rows.append(
            f"| {label} vs one clean forward+backward | {_ms(t[name].median_s)} | {_ms(base)} "
            f"| {ratio:.2f}× the cost | ≤ {target:g}× | {_verdict(ratio <= target)} |"
        )
    model.train()
    return rows


def gap_rows(device: torch.device) -> list[str]:
    model, x, y, _ = reference_problem(device)
    generator = torch.Generator(device=device)
    rows = [
        "| quantity | gni_lib | baseline | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]

    def gap():
        generator.manual_seed(0)
        return noisy_loss_gap(model, x, y, samples=1000, generator=generator)

    def thousand_forwards():
        with torch.no_grad():
            for _ in range(1000):
                model(x)

    model.eval()  # the baseline: 1000 clean forward passes (noise off)
    t = time_side_by_side(
        {"gap": gap, "forwards": thousand_forwards}, device=device, rounds=5, warmup=1
    )
    model.train()
    ratio = t["gap"].median_s / t["forwards"].median_s
    rows.append(
        f"| 1000-draw noise gap vs 1000 single clean forward passes | {_ms(t['gap'].median_s)} "
        f"| {_ms(t['forwards'].median_s)} | {ratio:.2f}× the time | ≤ 1× "
        f"| {_verdict(ratio <= 1)} |"
    )
    rows += [
        "",
        "| σ | gap (antithetic) | relative SE, antithetic | relative SE, plain | R | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for sigma in (0.01, 0.1, 0.3):
        model, x, y, _ = reference_problem(device, sigma=sigma)
        generator.manual_seed(1)
        estimate, se = noisy_loss_gap(model, x, y, samples=1000, generator=generator)
        generator.manual_seed(1)
        plain, plain_se = noisy_loss_gap(
            model, x, y, samples=1000, antithetic=False, generator=generator
        )
        with torch.no_grad():
            r = explicit_regularizer(model, x)
        rel = float(se / estimate.abs())
        rows.append(
            f"| {sigma} | {float(estimate):.4g} | {rel:.2%} | {float(plain_se / plain.abs()):.1%} "
            f"| {float(r):.4g} | ≤ 0.5% | {_verdict(rel <= 0.005)} |"
        )
    return rows


def hessian_rows(device: torch.device) -> list[str]:
    model, x, y, _ = reference_problem(device)
    params = list(model.parameters())
    loss_fn = get_loss("mse")
    rows = [
        "| quantity | gni_lib | baseline | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]

    def exact():
        return hessian_trace(model, x, y)

    def looped_hvps():
        with replace_site_outputs(model, lambda k, h: h):
            gradient = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
        generator = torch.Generator(device=device).manual_seed(0)
        total = x.new_zeros(())
        for _ in range(100):
            signs = [
                torch.randint(0, 2, p.shape, generator=generator, device=device) for p in params
            ]
            v = [2.0 * s.to(p.dtype) - 1 for s, p in zip(signs, params)]
            hv = torch.autograd.grad(gradient, params, v, retain_graph=True)
            total = total + sum((a * b).sum() for a, b in zip(v, hv))
        return total / 100

    def hutchinson():
        generator = torch.Generator(device=device).manual_seed(0)
        return hessian_trace(model, x, y, method="hutchinson", probes=100, generator=generator)

    value = float(exact()[0])
    estimate = float(looped_hvps())
    if device.type == "cpu":  # the CPU generator fills any shape in order: the same 100 probes
        torch.testing.assert_close(float(hutchinson()[0]), estimate, rtol=1e-4, atol=0)
    t = time_side_by_side(
        {"exact": exact, "hvps": looped_hvps, "hutchinson": hutchinson},
        device=device,
        rounds=5,
        warmup=1,
    )
    seconds = t["exact"].median_s
    ratio = seconds / t["hvps"].median_s
    hutchinson_ratio = t["hutchinson"].median_s / t["hvps"].median_s
    rows.append(
        f"| exact Tr ∇²_θ L (mse, {sum(p.numel() for p in params):,} parameters) "
        f"| {_ms(seconds)} | — | — | ≤ 0.5 s | {_verdict(seconds <= 0.5)} |"
    )
    rows.append(
        f"| exact Tr ∇²_θ L vs 100 looped Hessian-vector products | {_ms(seconds)} "
        f"| {_ms(t['hvps'].median_s)} | {ratio:.2f}× the time | ≤ 1× | {_verdict(ratio <= 1)} |"
    )
    rows.append(
        f"| Hutchinson (100 probes) vs 100 looped Hessian-vector products "
        f"| {_ms(t['hutchinson'].median_s)} | {_ms(t['hvps'].median_s)} "
        f"| {hutchinson_ratio:.2f}× the time | ≤ 1× | {_verdict(hutchinson_ratio <= 1)} |"
    )
    rows.append("")
    rows.append(
        f"Exact trace {value:.4g}; the 100-probe Hutchinson estimate of the baseline gave "
        f"{estimate:.4g} ({(estimate - value) / abs(value):+.0%})."
    )
    return rows


def tables(device: torch.device) -> list[str]:
    """Markdown lines: the three tables of the core benchmarks, with a heading each."""
    return [
        "#### Explicit regulariser R (6×256 tanh MLP, batch 32, float32, σ = 0.1)",
        "",
        *regularizer_rows(device),
        "",
        "#### Monte Carlo noise gap E[L̃] − L",
        "",
        *gap_rows(device),
        "",
        "#### Hessian trace",
        "",
        *hessian_rows(device),
    ]


if __name__ == "__main__":  # pragma: no cover
    from harness import machine_line, set_threads

    set_threads()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(machine_line(dev))
    print("\n".join(tables(dev)))

"""jacobian_penalty (one batched set of VJPs) vs the naive per-example Jacobian loop.

Chapter 02 trains with the Tikhonov penalty mean ||J_F(x)||_F^2 and chapter 13
with its noisy-input version, so its cost sets the cost of a training step.
The naive route calls torch.autograd.functional.jacobian once per example.
"""

from __future__ import annotations

import torch

from gni_lib.penalties import jacobian_penalty
from gni_lib.models import MLP

CASES = [
    # (label, widths, batch)
    ("1-64-64-1 tanh, batch 200 (chapter 02)", [1, 64, 64, 1], 200),
    ("32-256-256-10 tanh, batch 32", [32, 256, 256, 10], 32),
]


def naive_penalty(model, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    total = x.new_zeros(())
    for row in x:
        jac = torch.autograd.functional.jacobian(
            lambda v: model(v.unsqueeze(0)).squeeze(0), row, create_graph=create_graph
        )
        total = total + jac.pow(2).sum()
    return total / x.shape[0]


def cases(device: torch.device):
    for label, widths, batch in CASES:
        torch.manual_seed(0)
        model = MLP(widths, activation="tanh").to(device).eval()
        x = torch.randn(batch, widths[0], device=device)
        params = list(model.parameters())

        def fast_value(model=model, x=x):
            with torch.no_grad():
                return jacobian_penalty(model, x)

        def naive_value(model=model, x=x):
            with torch.no_grad():
                return naive_penalty(model, x, create_graph=False)

        def fast_grad(model=model, x=x, params=params):
            return torch.autograd.grad(jacobian_penalty(model, x), params, allow_unused=True)

        def naive_grad(model=model, x=x, params=params):
            return torch.autograd.grad(
                naive_penalty(model, x, create_graph=True), params, allow_unused=True
            )

        # The output bias does not enter the Jacobian, hence allow_unused above.
        # The two routes compute the same number (a benchmark of a wrong answer is worthless).
        torch.testing.assert_close(fast_value(), naive_value(), rtol=1e-4, atol=1e-6)
        yield label, {"value": (fast_value, naive_value), "value + grad": (fast_grad, naive_grad)}

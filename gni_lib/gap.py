r"""The noisy-loss gap :math:`\mathbb E_\varepsilon[\tilde L] - L`, by Monte Carlo, with its SE.

The left-hand side of Camuto et al. (2020), Thm. 1: how much the noise raises the
loss on average, compared with :math:`R` (:func:`gni_lib.regularisers.explicit_regularizer`)
and :math:`T_2` (:func:`gni_lib.regularisers.second_order_term`) in lecture 05
(book/05-explicit-regulariser.md).

**Antithetic pairs.** :math:`\tilde L(\varepsilon) - L` has a first-order part
:math:`\nabla L^\top \varepsilon` of zero mean whose variance swamps the
:math:`O(\sigma^2)` mean when :math:`\sigma` is small (relative error
:math:`\propto 1/\sigma`). The average of :math:`\tilde L(\varepsilon)` and
:math:`\tilde L(-\varepsilon)` has the same mean and no first-order part, so
pairs :math:`(+\varepsilon, -\varepsilon)` keep the relative error flat in :math:`\sigma`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_input, check_int, check_target
from .jacobians import check_calls, check_model, run_model
from .losses import LOSSES, per_example_loss  # noqa: F401 (the chapters import per_example_loss from here)
from .noise import replace_site_outputs, standard_noise
from .seeding import check_generator

__all__ = ["noisy_loss_gap", "per_example_loss"]

#: Rows (draws x examples) per vectorised forward pass.
ROWS_PER_CHUNK = 8192


def noisy_loss_gap(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss: str = "mse",
    samples: int = 1000,
    antithetic: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Monte Carlo estimate of :math:`\mathbb E_\varepsilon[\tilde L] - L` and its standard error.

    .. math::

        \hat\Delta = \frac1N \sum_{s=1}^{N} g_s, \qquad
        \operatorname{SE} = \frac{\operatorname{std}(g_1, \dots, g_N)}{\sqrt N},
        \qquad g_s = \tfrac12\bigl(\tilde L(\varepsilon_s) + \tilde L(-\varepsilon_s)\bigr) - L,

    with :math:`N` = ``samples``/2 pairs; with ``antithetic=False``, :math:`N` =
    ``samples`` and :math:`g_s = \tilde L(\varepsilon_s) - L`. ``samples`` counts the
    noisy forward passes either way. :math:`\tilde L(\varepsilon)` is the batch-mean
    loss with site :math:`k` returning :math:`h_k + \sigma_k \varepsilon_k` or
    :math:`h_k (1 + \sigma_k \varepsilon_k)`, independently per example
    (Camuto et al. 2020, eqs. 5, 6, Thm. 1). Computed without a graph.

    **Draw order.** The noise comes from ``generator``; the sites' own generators are
    untouched. Draws are stacked along the batch axis, chunks of about
    ``ROWS_PER_CHUNK`` rows per forward pass: for each chunk of :math:`n` draws (pairs),
    for each site in forward order, :func:`gni_lib.noise.standard_noise` of shape
    ``(n * B, *site_shape)`` (``torch.randn``); draw :math:`s` is rows :math:`sB, \dots, sB + B - 1`.
    Each chunk also runs the clean batch and takes :math:`L` from it, so that
    :math:`\tilde L - L` uses the same kernels (this matters in float32 at small :math:`\sigma`).

    Args:
        model: an ``nn.Module`` with ``GaussianNoise`` sites whose examples do not
            interact (see :func:`gni_lib.jacobians.layer_jacobians`).
        x: inputs, shape :math:`(B, d_0)`, finite.
        y: targets: shape :math:`(B, d_L)` and the output's dtype for ``"mse"``;
            int64 class indices of shape :math:`(B,)` for ``"ce"``.
        loss: ``"mse"`` (½-squared error) or ``"ce"`` (softmax cross-entropy).
        samples: noisy forward passes, at least 2 (with ``antithetic``: even and at
            least 4, two pairs for a standard error).
        antithetic: use pairs :math:`(+\varepsilon, -\varepsilon)`.
        generator: the source of the noise; ``None`` uses torch's global generator.

    Returns:
        tuple[Tensor, Tensor]: ``(estimate, standard_error)``, scalars on ``x``'s
        device and the output's dtype.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: for an unknown ``loss``, too few or (antithetic) odd ``samples``, a
            model with no noise sites, bad ``x`` or ``y``, or a generator on another device type.
    """
    sites = check_model(model)
    loss = check_choice(loss, "loss", tuple(LOSSES))
    samples = check_int(samples, "samples", minimum=2)
    if not isinstance(antithetic, bool):
        raise TypeError(f"antithetic must be a bool, got {type(antithetic).__name__}")
    if antithetic and samples % 2:
        raise ValueError(
            f"samples must be even with antithetic=True (it counts the forward passes of "
            f"samples/2 pairs), got {samples}"
        )
    if antithetic and samples < 4:
        raise ValueError(
            f"samples must be at least 4 with antithetic=True: the standard error needs at "
            f"least two antithetic pairs, got {samples}"
        )
    x = check_input(x)
    check_generator(generator, x.device)
    batch = x.shape[0]
    draws = samples // 2 if antithetic else samples
    copies = 2 if antithetic else 1  # noisy passes per draw
    per_chunk = max(1, ROWS_PER_CHUNK // (copies * batch))

    with torch.no_grad():
        with replace_site_outputs(model, lambda k, h: h) as calls:
            clean_output = run_model(model, x)
        check_calls(calls)
        y = check_target(y, clean_output, loss)

        values = []
        for start in range(0, draws, per_chunk):
            n = min(per_chunk, draws - start)
            rows = copies * n + 1  # the noisy copies, then the clean batch
            x_rep = x.unsqueeze(0).expand(rows, *x.shape).reshape(rows * batch, *x.shape[1:])
            y_rep = y.unsqueeze(0).expand(rows, *y.shape).reshape(rows * batch, *y.shape[1:])

            def add_noise(k: int, h: Tensor, n: int = n) -> Tensor:
                if sites[k].sigma == 0.0:
                    return h
                if h.shape[0] != rows * batch:
                    raise ValueError(
                        f"model's noise site {k} sees an activation of shape {tuple(h.shape)}; "
                        f"it must be batch first, (B, ...) with B = {rows * batch} here"
                    )
                # rows: n draws with +z, then (antithetic) n with -z, then the clean batch
                drawn = standard_noise((n * batch, *h.shape[1:]), generator, dtype=h.dtype, device=h.device)
                out = torch.empty_like(h)
                signs = (1.0, -1.0) if antithetic else (1.0,)
                for i, sign in enumerate(signs):
                    part = slice(i * n * batch, (i + 1) * n * batch)
                    if sites[k].mode == "additive":  # h + sigma z
                        torch.add(h[part], drawn, alpha=sign * sites[k].sigma, out=out[part])
                    else:  # h (1 + sigma z) = h + sigma h z
                        torch.addcmul(h[part], h[part], drawn, value=sign * sites[k].sigma, out=out[part])
                out[copies * n * batch :] = h[copies * n * batch :]
                return out

            with replace_site_outputs(model, add_noise) as calls:
                output = model(x_rep)
            check_calls(calls)
            ell = per_example_loss(output, y_rep, loss).reshape(rows, batch)
            gaps = (ell[:-1] - ell[-1]).mean(dim=1)  # (copies * n,)
            if antithetic:
                gaps = 0.5 * (gaps[:n] + gaps[n:])
            values.append(gaps)
        values = torch.cat(values)
        estimate = values.mean()
        standard_error = values.std(correction=1) / math.sqrt(values.numel())
    return estimate, standard_error

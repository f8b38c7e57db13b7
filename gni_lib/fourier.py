r"""Trigonometric features, periodic grids, and stacks of ReLU MLPs fitted at once to a periodic target.

The Fourier reading of the explicit regulariser (Camuto et al. 2020, Thm. 2,
eqs. 15-18; the book's lectures 08 and 09) needs networks whose outputs are
trigonometric polynomials on :math:`[0, 1)` (:class:`FourierFeatures`, for which the
FFT of :math:`N` samples gives the Sobolev seminorm exactly) or at least periodic
(:class:`PeriodicEmbedding`), and many ReLU MLPs of one architecture trained side by
side on the sum of sines of Fig. 4, with the regulariser :math:`R` of their hidden
noise sites and the layer-to-layer Jacobian norms of Fig. 5.

**Stacking.** The weights :math:`W_k` of :math:`M` networks are stacked into one
tensor of shape :math:`(M, d_k, d_{k-1})`, and one batched product
(:func:`torch.baddbmm`) evaluates all of them. Adam acts on every parameter entry
separately, and the summed loss has, for each network, the gradient of that
network's own loss, so one optimiser on the stacked tensors trains every network
independently (``tests/test_fourier.py`` checks this against networks trained one
at a time).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_int, check_real
from .spectral import fourier_spectrum

__all__ = [
    "FourierFeatures",
    "PeriodicEmbedding",
    "periodic_grid",
    "StackedFit",
    "stack_mlps",
    "stacked_forward",
    "stacked_regulariser",
    "fit_stacked",
    "stacked_layer_statistics",
]


def _check_std(value: object, name: str) -> float:
    return check_real(value, name, what=" (a standard deviation)")


def _cos_sin(inputs: Tensor, k: Tensor | float) -> Tensor:
    r""":math:`[\cos 2\pi k x, \sin 2\pi k x]` of ``inputs`` :math:`(B, 1)`."""
    if inputs.ndim != 2 or inputs.shape[1] != 1:
        raise ValueError(f"inputs must have shape (B, 1), got {tuple(inputs.shape)}")
    phase = 2 * math.pi * inputs * k
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)


class FourierFeatures(nn.Module):
    r"""The layer :math:`x \mapsto [\cos 2\pi k x, \sin 2\pi k x]_{k=1}^{K}`: trigonometric-polynomial outputs.

    Any linear read-out after it is a trigonometric polynomial of degree :math:`K`
    in :math:`x`, so on a grid of :math:`N > 2K` points the FFT of its samples gives
    :math:`\frac1N\sum_n f'(x_n)^2` exactly (Camuto et al. 2020, Thm. 2 on a periodic grid).

    Args:
        degree: :math:`K \ge 1`.

    Shapes:
        input :math:`(B, 1)`; output :math:`(B, 2K)`, the :math:`K` cosines, then the :math:`K` sines.

    Raises:
        TypeError: if ``degree`` is not an int.
        ValueError: if ``degree < 1``, or (in ``forward``) the input is not of shape :math:`(B, 1)`.
    """

    def __init__(self, degree: int):
        super().__init__()
        degree = check_int(degree, "degree", 1)
        self.register_buffer("k", torch.arange(1, degree + 1, dtype=torch.float64))

    def forward(self, inputs: Tensor) -> Tensor:
        """The features of ``inputs`` of shape :math:`(B, 1)`, shape :math:`(B, 2K)`."""
        return _cos_sin(inputs, self.k)


class PeriodicEmbedding(nn.Module):
    r"""The layer :math:`x \mapsto (\cos 2\pi x, \sin 2\pi x)`: any network after it has period 1 in :math:`x`.

    Shapes:
        input :math:`(B, 1)`; output :math:`(B, 2)`.

    Raises:
        ValueError: (in ``forward``) if the input is not of shape :math:`(B, 1)`.
    """

    def forward(self, inputs: Tensor) -> Tensor:
        r""":math:`(\cos 2\pi x, \sin 2\pi x)` of ``inputs`` of shape :math:`(B, 1)`, shape :math:`(B, 2)`."""
        return _cos_sin(inputs, 1.0)


def periodic_grid(n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    r"""The grid :math:`x_j = j/N`, :math:`j = 0, \dots, N-1`, of one period :math:`[0, 1)`, shape :math:`(N, 1)`.

    Raises:
        TypeError, ValueError: if ``n`` is not an int :math:`\ge 2`.
    """
    n = check_int(n, "n", 2)
    return (torch.arange(n, dtype=dtype, device=device) / n).unsqueeze(1)


class StackedFit(NamedTuple):
    """What :func:`fit_stacked` returns.

    Attributes:
        models: the input models, holding the trained weights, in ``eval()`` mode.
        spectra: float64 CPU tensor :math:`(M, R, \\lfloor N/2\\rfloor + 1)`: the one-sided
            amplitude spectrum (:func:`gni_lib.spectral.fourier_spectrum`) of each clean
            network on the grid at each of the :math:`R` records (steps
            :math:`0, r, 2r, \\dots`).
        weights: the trained stacked weights, detached (see :func:`stack_mlps`).
        biases: the trained stacked biases, detached.
    """

    models: list[nn.Sequential]
    spectra: Tensor
    weights: list[Tensor]
    biases: list[Tensor]


def _linear_layers(models: object) -> list[list[nn.Linear]]:
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)) or len(models) == 0:
        raise ValueError("models must be a non-empty list of gni_lib.MLP networks with ReLU activations")
    layers = None
    for m, model in enumerate(models):
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"models[{m}] must be an nn.Sequential from gni_lib.MLP, got {type(model).__name__}")
        children = list(model.children())
        linears = children[1::3]
        activations = children[2::3]
        if (not linears or len(children) != 3 * len(linears) - 1
                or not all(isinstance(layer, nn.Linear) and layer.bias is not None for layer in linears)
                or not all(isinstance(act, nn.ReLU) for act in activations)):
            raise ValueError(f"models[{m}] must be a gni_lib.MLP with ReLU activations and biases")
        shapes = [tuple(layer.weight.shape) for layer in linears]
        if layers is None:
            layers, first = [[] for _ in linears], shapes
        elif shapes != first:
            raise ValueError(f"models must share one architecture: models[{m}] has layers {shapes}, models[0] {first}")
        for k, layer in enumerate(linears):
            layers[k].append(layer)
    return layers


def stack_mlps(models: Sequence[nn.Sequential]) -> tuple[list[Tensor], list[Tensor]]:
    r"""Stack the weights and biases of :math:`M` ReLU MLPs of one architecture.

    Args:
        models: :math:`M \ge 1` networks from :func:`gni_lib.models.MLP` with
            ``activation="relu"``, biases, and the same widths :math:`[d_0, \dots, d_L]`.

    Returns:
        tuple: ``(weights, biases)``, lists of :math:`L` new leaf tensors that require grad,
        :math:`W_k` of shape :math:`(M, d_k, d_{k-1})` and :math:`b_k` of shape
        :math:`(M, d_k)`, copies of the models' parameters.

    Raises:
        TypeError: if an entry of ``models`` is not an ``nn.Sequential``.
        ValueError: if ``models`` is empty, not all ReLU MLPs with biases, or of different
            architectures (widths or depth).
    """
    layers = _linear_layers(models)
    weights = [torch.stack([lin.weight.detach() for lin in layer]).requires_grad_() for layer in layers]
    biases = [torch.stack([lin.bias.detach() for lin in layer]).requires_grad_() for layer in layers]
    return weights, biases


def _check_stack(weights: object, biases: object) -> None:
    if not isinstance(weights, (list, tuple)) or not weights or not all(isinstance(w, Tensor) and w.ndim == 3 for w in weights):
        raise ValueError("weights must be a non-empty list of tensors of shape (M, d_k, d_{k-1}), as from stack_mlps")
    if not isinstance(biases, (list, tuple)) or len(biases) != len(weights) or not all(
        isinstance(b, Tensor) and b.shape == w.shape[:2] for w, b in zip(weights, biases)
    ):
        raise ValueError("biases must be a list of tensors of shape (M, d_k), one per entry of weights")


def stacked_forward(
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    x: Tensor,
    *,
    hidden_std: float = 0.0,
    input_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[Tensor]]:
    r"""Evaluate :math:`M` stacked ReLU MLPs on the same inputs, with optional Gaussian noise.

    .. math::

        h_0 = x + \sigma_0\varepsilon_0, \qquad
        h_k = \mathrm{relu}(W_k \tilde h_{k-1} + b_k), \quad \tilde h_k = h_k + \sigma\varepsilon_k
        \ (k = 1, \dots, L-1), \qquad f = W_L \tilde h_{L-1} + b_L,

    with :math:`\varepsilon_k` standard normal, a fresh draw per call, from ``generator``
    (the input noise first, then the hidden sites in order). With both standard
    deviations 0 this is the clean network, as ``model.eval()(x)`` of every stacked model.

    Args:
        weights, biases: as returned by :func:`stack_mlps`.
        x: inputs, shape :math:`(N, d_0)`, shared by the :math:`M` networks.
        hidden_std, input_std: :math:`\sigma` and :math:`\sigma_0`.
        generator: the source of the noise; required when a standard deviation is positive.

    Returns:
        tuple: ``(outputs, hidden)``, outputs of shape :math:`(M, N, d_L)`, and
        :math:`[h_1, \dots, h_{L-1}]`, each :math:`(M, N, d_k)`, before their noise.

    Raises:
        TypeError: if a standard deviation is not a real number.
        ValueError: if the stacks are malformed, ``x`` is not :math:`(N, d_0)`, a
            standard deviation is negative, or noise is asked for without a generator.
    """
    _check_stack(weights, biases)
    hidden_std, input_std = _check_std(hidden_std, "hidden_std"), _check_std(input_std, "input_std")
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != weights[0].shape[2]:
        raise ValueError(f"x must be a tensor of shape (N, {weights[0].shape[2]})")
    if (hidden_std or input_std) and not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator when hidden_std or input_std is positive")

    def noisy(h: Tensor, std: float) -> Tensor:
        return h + std * torch.randn(h.shape, generator=generator, device=x.device, dtype=h.dtype) if std else h

    h = noisy(x.expand(weights[0].shape[0], *x.shape), input_std)
    hidden = []
    for layer, (W, b) in enumerate(zip(weights, biases)):
        if layer > 0:
            hidden.append(torch.relu(h))
            h = noisy(hidden[-1], hidden_std)
        h = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))
    return h, hidden


def stacked_regulariser(weights: Sequence[Tensor], hidden: Sequence[Tensor], sigma: float) -> Tensor:
    r"""The explicit regulariser of noise :math:`\sigma` on every hidden site, ½-MSE, for each stacked network.

    .. math::

        R = \frac{\sigma^2}{2}\,\frac1N\sum_{n=1}^{N}\sum_{k=1}^{L-1}
            \Bigl\lVert \frac{\partial f(x_n)}{\partial h_k} \Bigr\rVert^2

    (Camuto et al. 2020, eq. 11 with :math:`H_L = 1`), with
    :math:`g_k = \partial f / \partial h_k` from the backward recursion
    :math:`g_{L-1} = W_L`, :math:`g_{k-1} = (g_k \odot \mathrm{relu}'(z_k))\,W_k`, batched
    over networks and inputs and differentiable in the weights. ReLU only:
    :math:`\mathrm{relu}'(z_k) = 1[h_k > 0]`; one output, :math:`d_L = 1`.

    Args:
        weights: as from :func:`stack_mlps`.
        hidden: :math:`[h_1, \dots, h_{L-1}]` of the clean pass, from :func:`stacked_forward`.
        sigma: the noise standard deviation of the hidden sites.

    Returns:
        Tensor: shape :math:`(M,)`.

    Raises:
        TypeError: if ``sigma`` is not a real number.
        ValueError: if ``sigma < 0``, ``hidden`` does not have one entry per hidden layer,
            or the networks have more than one output.
    """
    sigma = _check_std(sigma, "sigma")
    if not isinstance(hidden, (list, tuple)) or len(hidden) != len(weights) - 1 or not hidden:
        raise ValueError(f"hidden must be the list of the {len(weights) - 1} hidden activations from stacked_forward")
    if weights[-1].shape[1] != 1:
        raise ValueError(f"weights must end in one output (d_L = 1), got d_L = {weights[-1].shape[1]}")
    n_inputs = hidden[0].shape[1]
    g = weights[-1].expand(-1, n_inputs, -1)  # df/dh_{L-1} = W_L, (M, N, d_{L-1})
    total = g.pow(2).sum(dim=(1, 2))
    for k in range(len(hidden) - 1, 0, -1):  # h_{L-1} -> ... -> h_1
        g = torch.bmm(g * (hidden[k] > 0), weights[k])
        total = total + g.pow(2).sum(dim=(1, 2))
    return sigma**2 / 2 * total / n_inputs


def fit_stacked(
    models: Sequence[nn.Sequential],
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float,
    record_every: int,
    hidden_std: float = 0.0,
    input_std: float = 0.0,
    penalty_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> StackedFit:
    r"""Train :math:`M` ReLU MLPs at once, full batch, with Adam, and record their spectra.

    Network :math:`m` minimises its own ½-MSE,
    :math:`\frac12\frac1N\sum_n \lVert f_m(\tilde x_n) - y_{m,n}\rVert^2`, on a forward
    pass with noise ``hidden_std`` on every hidden activation and ``input_std`` on the
    input (:func:`stacked_forward`), plus, if ``penalty_std`` :math:`=\sigma > 0`, the
    explicit regulariser :math:`R` of noise :math:`\sigma` on the hidden sites
    (:func:`stacked_regulariser`) on that pass. Every ``record_every`` steps, from step
    0 to ``steps``, the amplitude spectrum of each clean network on ``x`` is recorded
    (``x`` must be the periodic grid of :func:`periodic_grid` for the spectrum to mean
    frequencies). The trained weights are copied back into ``models``.

    Args:
        models: as :func:`stack_mlps`; changed in place.
        x: grid, shape :math:`(N, d_0)`, on the models' device and dtype.
        y: targets, shape :math:`(M, N, d_L)`, one per network.
        steps, lr, record_every: Adam steps :math:`\ge 0`, step size :math:`> 0`, and :math:`\ge 1`.
        hidden_std, input_std, penalty_std: standard deviations, :math:`\ge 0`.
        generator: the source of the training noise; required when noise is injected.

    Returns:
        StackedFit: the models, the spectra, and the trained stacked weights.

    Raises:
        TypeError, ValueError: as :func:`stack_mlps` and :func:`stacked_forward`, and on a
            bad ``steps``, ``record_every``, ``lr`` or ``y``.
    """
    steps = check_int(steps, "steps", 0)
    record_every = check_int(record_every, "record_every", 1)
    lr = check_real(lr, "lr", positive=True)
    penalty_std = _check_std(penalty_std, "penalty_std")
    weights, biases = stack_mlps(models)
    expected = (len(models), x.shape[0] if isinstance(x, Tensor) else -1, weights[-1].shape[1])
    if not isinstance(y, Tensor) or tuple(y.shape) != expected:
        raise ValueError(f"y must be a tensor of shape (M, N, d_L) = {expected}, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    optimiser = torch.optim.Adam(weights + biases, lr=lr)
    spectra = []
    for step in range(steps + 1):
        if step % record_every == 0:
            with torch.no_grad():
                outputs = stacked_forward(weights, biases, x)[0]
                spectra.append(fourier_spectrum(outputs.squeeze(2).double())[1].cpu())
        if step < steps:
            out, hidden = stacked_forward(weights, biases, x, hidden_std=hidden_std, input_std=input_std,
                                          generator=generator)
            loss = 0.5 * (out - y).pow(2).mean(dim=(1, 2))  # the ½-MSE of every network
            loss = loss + stacked_regulariser(weights, hidden, penalty_std) if penalty_std else loss
            optimiser.zero_grad()
            loss.sum().backward()
            optimiser.step()
    with torch.no_grad():  # the trained weights back into the models
        for layer, lin_layer in enumerate(_linear_layers(models)):
            for m, lin in enumerate(lin_layer):
                lin.weight.copy_(weights[layer][m]), lin.bias.copy_(biases[layer][m])
    return StackedFit([model.eval() for model in models], torch.stack(spectra, dim=1),
                      [w.detach() for w in weights], [b.detach() for b in biases])


def stacked_layer_statistics(weights: Sequence[Tensor], biases: Sequence[Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    r"""Layer-to-layer Jacobian norms and weight traces of the inner layers :math:`k = 2, \dots, L-1`.

    For ReLU, :math:`\nabla_{h_{k-1}} h_k = \widetilde W_k`, :math:`W_k` with the rows of the
    neurons that are off set to zero (Camuto et al. 2020, Sec. 4 and Fig. 5), so

    .. math::

        n_k = \frac1N\sum_n \lVert \widetilde W_k(x_n) \rVert_F, \qquad
        \lVert \widetilde W_k(x_n) \rVert_F^2 = \sum_i 1[h_{k,i}(x_n) > 0]\,\lVert (W_k)_{i,:} \rVert^2,
        \qquad t_k = \operatorname{Tr} W_k,

    batched over the stacked networks at the clean forward pass. The same numbers, one
    network at a time, come from :func:`gni_lib.layer_norms.layer_jacobian_norms` and
    :func:`gni_lib.layer_norms.square_layer_traces`.

    Args:
        weights, biases: as from :func:`stack_mlps`, with :math:`L \ge 3` layers whose
            inner layers :math:`2, \dots, L-1` are square.
        x: inputs, shape :math:`(N, d_0)`.

    Returns:
        tuple: ``(norms, traces)``, float64 CPU tensors of shape :math:`(M, L-2)`, column
        :math:`j` for layer :math:`k = j + 2`.

    Raises:
        ValueError: if the stacks are malformed, have fewer than 3 layers, an inner
            layer is not square, or ``x`` has the wrong shape.
    """
    _check_stack(weights, biases)
    inner = range(1, len(weights) - 1)
    if len(weights) < 3 or any(weights[k].shape[1] != weights[k].shape[2] for k in inner):
        raise ValueError("weights must have at least 3 layers, with square inner layers 2..L-1")
    with torch.no_grad():
        hidden = stacked_forward(weights, biases, x)[1]
        norms = [((hidden[k] > 0) * weights[k].pow(2).sum(2).unsqueeze(1)).sum(2).sqrt().mean(1) for k in inner]
        traces = [torch.diagonal(weights[k], dim1=1, dim2=2).sum(1) for k in inner]
    return torch.stack(norms, 1).cpu().double(), torch.stack(traces, 1).cpu().double()

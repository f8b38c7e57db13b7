r"""The book's networks: multilayer perceptrons with a noise site before every layer.

For widths :math:`[d_0, \dots, d_L]`, :func:`MLP` builds the map

.. math::

    h_0 = x, \qquad
    h_{k+1} = \phi\bigl(W_{k+1} \tilde h_k + b_{k+1}\bigr) \ (k < L-1), \qquad
    h_L = W_L \tilde h_{L-1} + b_L,

where :math:`\tilde h_k` is :math:`h_k` after the noise site :math:`k`
(:class:`gni_lib.noise.GaussianNoise`, standard deviation :math:`\sigma_k`).
This is the setting of Camuto et al. (2020), Sec. 2: Gaussian noise is added to
the input and to every hidden activation, and the output layer is linear with no
noise after it.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from .noise import GaussianNoise, sigma_list

__all__ = ["MLP", "ACTIVATIONS"]

#: The accepted activations and the modules that implement them. ``"linear"``
#: uses :class:`torch.nn.Identity`, so a linear network has the same children
#: (and the same indices) as a nonlinear one.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "linear": nn.Identity,
}


def _check_widths(widths: object) -> list[int]:
    message = "widths must be a sequence of at least 2 positive ints [d_0, ..., d_L]"
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise ValueError(f"{message}, got {type(widths).__name__}")
    if len(widths) < 2:
        raise ValueError(f"{message}, got {list(widths)!r}")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1:
            raise ValueError(f"{message}, got {list(widths)!r}")
    return [int(w) for w in widths]


def MLP(
    widths: Sequence[int],
    activation: str = "tanh",
    sigma: float | Sequence[float] = 0.0,
    bias: bool = True,
    mode: str = "additive",
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> nn.Sequential:
    r"""Return a multilayer perceptron with a Gaussian noise site before every layer.

    For ``widths`` :math:`= [d_0, \dots, d_L]` the children of the returned
    :class:`torch.nn.Sequential` are, in order,

    ``GaussianNoise, Linear, act, GaussianNoise, Linear, act, ..., GaussianNoise, Linear``

    that is :math:`3L - 1` children: site :math:`k` (child :math:`3k`) perturbs
    :math:`h_k` for :math:`k = 0, \dots, L-1`, linear layer :math:`k+1` is child
    :math:`3k + 1`, and its activation child :math:`3k + 2` (none after the last
    layer). In training mode site :math:`k` computes
    :math:`\tilde h_k = h_k + \sigma_k \varepsilon_k` (or
    :math:`h_k \odot (1 + \sigma_k \varepsilon_k)`, Camuto et al. 2020, eq. 6);
    in ``eval()`` mode every site is the identity and the model is the clean
    network.

    Parameters get PyTorch's default initialisation. With ``seed`` given they are
    drawn from a CPU stream seeded with it, and torch's global generator is left
    untouched, so the same seed gives the same initial weights on every device;
    without it they come from the global generator. A chapter passes its seeds
    through :func:`gni_lib.seeding.stream_seed`, so that ``GNI_SEED`` moves them.
    The model is built on the CPU in float32; move it with ``.to(device, dtype)``.

    Args:
        widths: :math:`[d_0, \dots, d_L]`, at least two positive ints;
            :math:`d_0` is the input and :math:`d_L` the output dimension.
        activation: ``"tanh"``, ``"relu"``, ``"elu"`` or ``"linear"`` (identity).
        sigma: the noise standard deviation (not variance): one value for all
            :math:`L` sites, or a sequence :math:`[\sigma_0, \dots, \sigma_{L-1}]`.
        bias: whether the linear layers have biases.
        mode: ``"additive"`` or ``"multiplicative"``, for every site.
        generator: shared by all sites; the sites draw from it in forward order.
            ``None`` uses torch's global generator.
        seed: a non-negative int that fixes the initial weights, or ``None``
            (the global generator's next draws).

    Shapes:
        input :math:`(B, d_0)`, output :math:`(B, d_L)`.

    Returns:
        nn.Sequential: the network, in training mode (noise on).

    Raises:
        ValueError: if ``widths`` is not a sequence of at least two positive ints,
            ``activation`` or ``mode`` is unknown, a :math:`\sigma_k` is negative or
            not finite, or a ``sigma`` sequence does not have :math:`L` entries.
        TypeError: if ``sigma``, ``bias``, ``generator`` or ``seed`` has the wrong type.
    """
    widths = _check_widths(widths)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}"
        )
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    n_layers = len(widths) - 1
    sigmas = sigma_list(sigma, n_layers)

    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be a non-negative int or None, got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {seed}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return MLP(widths, activation, sigma, bias, mode, generator)

    children: list[nn.Module] = []
    for k in range(n_layers):
        children.append(GaussianNoise(sigmas[k], mode=mode, generator=generator))
        children.append(nn.Linear(widths[k], widths[k + 1], bias=bias))
        if k < n_layers - 1:
            children.append(ACTIVATIONS[activation]())
    return nn.Sequential(*children)

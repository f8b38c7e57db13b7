r"""Gaussian noise injections: the noise *sites* of a network (Camuto et al. 2020, eqs. 1 and 6).

A noise site is a :class:`GaussianNoise` module placed in front of a layer. In training mode it
perturbs the activation passing through it, :math:`\tilde h_k = h_k + \sigma_k \varepsilon_k`
(additive) or :math:`\tilde h_k = h_k \odot (1 + \sigma_k \varepsilon_k)` (multiplicative), with
:math:`\varepsilon_k \sim \mathcal N(0, I)` drawn afresh at every forward pass; like
:class:`torch.nn.Dropout`, it is the identity in ``eval()`` mode, so the clean network is the
same module switched to ``eval()``. ``sigma`` is always a **standard deviation**, never a
variance. :func:`noise_sites` lists the sites in forward order, :func:`set_noise` sets their
:math:`\sigma_k`, and :func:`replace_site_outputs` lets the caller decide what each site returns
(a zero perturbation to differentiate, or noise from the caller's generator).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_generator, check_real, check_values

__all__ = [
    "GaussianNoise", "noise_sites", "set_noise", "sigma_list", "replace_site_outputs",
    "standard_noise", "NOISE_MODES", "NOISE_DISTRIBUTIONS",
]

#: The accepted values of ``mode``.
NOISE_MODES = ("additive", "multiplicative")

#: The accepted values of ``distribution``: standard normal draws, or signs :math:`\pm 1`.
NOISE_DISTRIBUTIONS = ("gaussian", "rademacher")


def _check_sigma(sigma: object, name: str = "sigma") -> float:
    return check_real(sigma, name, what=" (a standard deviation)")


def standard_noise(
    shape: int | Sequence[int], generator: torch.Generator | None, *, dtype: torch.dtype,
    device: torch.device | str, distribution: str = "gaussian",
) -> Tensor:
    r"""Independent draws :math:`z` with mean 0 and variance 1: the one place gni_lib draws noise.

    Every noise in the library is :math:`\sigma z` with :math:`z` from here, so a run
    is reproduced number for number by a copy of its generator.

    - ``"gaussian"``: :math:`z_i \sim \mathcal N(0, 1)`, drawn as
      ``torch.randn(shape, generator=generator, dtype=dtype, device=device)``.
    - ``"rademacher"``: :math:`P(z_i = \pm 1) = \tfrac12`, the noise of Orvieto et al.
      (2022), Thm. 3.1 (fourth moment 1 instead of 3), drawn as
      ``2 * torch.randint(0, 2, shape, generator=generator, device=device) - 1`` in ``dtype``.

    A flat draw of as many numbers, viewed as ``shape``, gives the same numbers (tested
    on each device), so the flat buffers of :mod:`gni_lib.optim` and the shaped draws of
    :class:`GaussianNoise` are one stream. ``shape`` is an int for a flat draw;
    ``generator`` (``None``: torch's global one) must draw on ``device``, which the
    callers check with their own messages.

    Returns:
        Tensor: :math:`z`, of shape ``shape`` (an int: a flat draw), dtype ``dtype``, on ``device``.

    Raises:
        ValueError: if ``distribution`` is not one of :data:`NOISE_DISTRIBUTIONS`.
    """
    size = (shape,) if isinstance(shape, int) else tuple(shape)
    if distribution == "gaussian":
        return torch.randn(size, generator=generator, dtype=dtype, device=device)
    check_choice(distribution, "distribution", NOISE_DISTRIBUTIONS)
    signs = torch.randint(0, 2, size, generator=generator, device=device)
    return signs.to(dtype).mul_(2).sub_(1)


def sigma_list(sigma: object, count: int, name: str = "sigma") -> list[float]:
    r"""Expand ``sigma`` into one standard deviation per noise site.

    ``sigma`` is one real :math:`\sigma \ge 0` for all ``count`` sites, or a sequence (list,
    tuple, 1-D array or tensor) of ``count`` of them; ``name`` is used in error messages.
    Returns :math:`[\sigma_0, \dots, \sigma_{\text{count}-1}]`.

    Raises:
        TypeError: if ``sigma`` is neither a real number nor a sequence of them.
        ValueError: if a value is negative or not finite, or the sequence does not have ``count`` entries.
    """
    return check_values(sigma, count, name, _check_sigma, per="noise site")


class GaussianNoise(nn.Module):
    r"""A noise site: Gaussian noise on the activation passing through it.

    In training mode, for an input :math:`h` of any shape,

    .. math::

        \text{additive:}\quad \tilde h = h + \sigma z, \qquad
        \text{multiplicative:}\quad \tilde h = h \odot (1 + \sigma z)
        = h + \sigma\, (h \odot z),

    with :math:`z \sim \mathcal N(0, I)` of the shape of :math:`h` drawn by
    :func:`standard_noise` at every call; the second form is Camuto et al. (2020), eq. 6:
    multiplicative noise is additive noise scaled by the activation. In ``eval()`` mode,
    or when :math:`\sigma = 0`, the site returns its input object unchanged and draws
    nothing. A :func:`copy.deepcopy` of a site (or of a model holding sites) copies its
    generator in its current state, so the copy draws the same noise from its own stream.

    Args:
        sigma: the standard deviation :math:`\sigma \ge 0` (not a variance); assigning
            to the attribute later is validated too.
        mode: ``"additive"`` or ``"multiplicative"``.
        generator: where :math:`z` is drawn from, on the activations' device type;
            ``None`` uses torch's global generator.

    Shapes:
        input :math:`(*)`, output :math:`(*)`, the same shape, dtype and device.

    Raises:
        TypeError: if ``sigma`` is not a real number, or ``generator`` not a :class:`torch.Generator` or ``None``.
        ValueError: if ``sigma`` is negative or not finite, ``mode`` is unknown, or (at the
            forward pass) ``generator`` draws on another device type than the input.
    """

    def __init__(self, sigma: float = 0.0, mode: str = "additive", generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.sigma = sigma
        self.mode = mode
        self.generator = generator

    # Validated attributes: assignment goes through these setters (nn.Module
    # forwards plain attribute assignment to object.__setattr__, which honours
    # properties), so `site.sigma = -1` fails as loudly as the constructor.
    @property
    def sigma(self) -> float:
        return self._sigma

    @sigma.setter
    def sigma(self, value: float) -> None:
        self._sigma = _check_sigma(value)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = check_choice(value, "mode", NOISE_MODES)

    @property
    def generator(self) -> torch.Generator | None:
        return self._generator

    @generator.setter
    def generator(self, value: torch.Generator | None) -> None:
        self._generator = check_generator(value)

    def forward(self, h: Tensor) -> Tensor:
        r"""Return :math:`h + \sigma z` or :math:`h (1 + \sigma z)` in training, else :math:`h`.

        Raises:
            ValueError: if ``self.generator`` draws on another device type than ``h``.
        """
        if not self.training or self._sigma == 0.0:
            return h
        generator = self._generator
        if generator is not None and generator.device.type != h.device.type:
            raise ValueError(
                f"generator draws on {generator.device.type!r} but the activations are on "
                f"{h.device.type!r}; give the GaussianNoise a generator made with "
                f"make_generator(seed, device={h.device.type!r})"
            )
        z = standard_noise(h.shape, generator, dtype=h.dtype, device=h.device)
        if self._mode == "additive":
            return h + self._sigma * z
        return h * (1.0 + self._sigma * z)

    def extra_repr(self) -> str:
        return f"sigma={self._sigma!r}, mode={self._mode!r}"


def noise_sites(model: nn.Module) -> list[GaussianNoise]:
    r"""Return the :class:`GaussianNoise` modules of ``model``, in ``model.modules()`` order.

    For an :func:`gni_lib.models.MLP` with widths :math:`[d_0, \dots, d_L]` this is
    the :math:`L` sites in forward order: site :math:`k` perturbs :math:`h_k`,
    the input to the :math:`(k+1)`-th linear layer.

    Raises:
        TypeError: if ``model`` is not a :class:`torch.nn.Module`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if isinstance(m, GaussianNoise)]


def set_noise(model: nn.Module, sigma: float | Sequence[float]) -> nn.Module:
    r"""Set the standard deviations :math:`\sigma_k` of all noise sites of ``model``.

    ``sigma`` is one standard deviation :math:`\sigma \ge 0` for every site, or one per site in
    :func:`noise_sites` order. Returns ``model`` itself (changed in place), for chaining.

    Raises:
        TypeError: if ``model`` is not a module or ``sigma`` has the wrong type.
        ValueError: if ``model`` has no noise sites, or ``sigma`` is not as :func:`sigma_list`
            wants; nothing is changed then.
    """
    sites = noise_sites(model)
    if not sites:
        raise ValueError("model has no GaussianNoise sites to set sigma on")
    values = sigma_list(sigma, len(sites))
    for site, value in zip(sites, values):
        site.sigma = value
    return model


@contextmanager
def replace_site_outputs(
    model: nn.Module, replace: Callable[[int, Tensor], Tensor]
) -> Iterator[list[int]]:
    r"""Within the ``with`` block, noise site :math:`k` of ``model`` returns ``replace(k, h_k)``.

    Inside the block each site is in ``eval()`` (it draws nothing) and a forward hook hands
    its clean activation :math:`h_k` to ``replace``, whose result the rest of the network
    sees; ``k`` is the site's index in :func:`noise_sites` order. For example
    ``replace = lambda k, h: h + delta[k]`` evaluates the network at
    :math:`\tilde h_k = h_k + \delta_k` (Camuto et al. 2020, eq. 5). On exit, also when the
    block raises, the hooks are removed and every site gets back its ``training`` flag.

    Yields:
        list[int]: how many times each site has been called so far inside the
        block, in :func:`noise_sites` order (a site used twice in one forward
        pass, or never, shows here).

    Raises:
        TypeError: if ``model`` is not a module or ``replace`` is not callable.
        ValueError: if ``model`` has no :class:`GaussianNoise` sites.
    """
    sites = noise_sites(model)
    if not callable(replace):
        raise TypeError(f"replace must be callable (k, h) -> tensor, got {type(replace).__name__}")
    if not sites:
        raise ValueError("model must contain at least one GaussianNoise noise site, but it has none")
    calls = [0] * len(sites)
    flags = [site.training for site in sites]
    handles = []

    def make_hook(k: int) -> Callable[[nn.Module, tuple, Tensor], Tensor]:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            calls[k] += 1
            return replace(k, inputs[0])

        return hook

    try:
        for k, site in enumerate(sites):
            site.training = False
            handles.append(site.register_forward_hook(make_hook(k)))
        yield calls
    finally:
        for handle in handles:
            handle.remove()
        for site, flag in zip(sites, flags):
            site.training = flag

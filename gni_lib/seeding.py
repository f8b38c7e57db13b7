"""Reproducible randomness through explicit :class:`torch.Generator` objects.

The library keeps no global random state: every function that draws noise takes
a ``generator`` argument. These helpers make such generators from integer seeds,
on the right device, and split one seed into many independent streams (one per
training run, say) without the streams overlapping.
"""

from __future__ import annotations

import numbers

import torch

from .device import get_device

__all__ = ["make_generator", "spawn_generators", "check_generator"]

# Seeds are mixed with a large odd constant (the 64-bit golden ratio) so that
# consecutive child indices give well-separated Philox/MT seeds.
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def _check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed}")
    return int(seed)


def make_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    r"""Return a :class:`torch.Generator` seeded with ``seed``.

    Args:
        seed: a non-negative integer. The same seed gives the same numbers.
        device: where the generator draws; defaults to :func:`get_device`.
            Noise for a tensor on CUDA must come from a CUDA generator.

    Raises:
        TypeError: if ``seed`` is not an integer.
        ValueError: if ``seed`` is negative.
    """
    seed = _check_seed(seed)
    device = torch.device(device) if device is not None else get_device()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def spawn_generators(
    seed: int, count: int, device: torch.device | str | None = None
) -> list[torch.Generator]:
    r"""Return ``count`` generators with distinct, reproducible seeds derived from ``seed``.

    Child :math:`i` is seeded with :math:`(\text{seed} \cdot 2^{32} + i) \cdot g
    \bmod 2^{63}` for the odd constant :math:`g = \lfloor 2^{64}/\varphi \rfloor`,
    Multiplication by an odd constant is a bijection modulo :math:`2^{63}`, so
    no two children collide, across parents too, for parent seeds below
    :math:`2^{31}` and counts up to :math:`2^{32}`.

    Raises:
        TypeError: if ``seed`` or ``count`` is not an integer.
        ValueError: if either is negative or ``count`` is zero.
    """
    seed = _check_seed(seed)
    count = _check_seed(count, "count")
    if count == 0:
        raise ValueError("count must be a positive int, got 0")
    return [
        make_generator(((seed << 32) + i) * _GOLDEN & _MASK, device) for i in range(count)
    ]


def check_generator(generator: object, device: torch.device | str | None = None) -> None:
    """Raise a clear error unless ``generator`` is ``None`` or a generator on ``device``.

    Raises:
        TypeError: if ``generator`` is not a :class:`torch.Generator`.
        ValueError: if it draws on a different device type than ``device``.
    """
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if device is not None and torch.device(device).type != generator.device.type:
        raise ValueError(
            f"generator draws on {generator.device.type!r} but the tensors are on "
            f"{torch.device(device).type!r}; make it with make_generator(seed, device=...)"
        )

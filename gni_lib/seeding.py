"""Reproducible randomness through explicit :class:`torch.Generator` objects.

Every function that draws noise takes a ``generator`` argument; these helpers make
generators from integer seeds, on the right device, and split one seed into many
unrelated ones (one per training run, say).

**The reader's random stream.** ``GNI_SEED`` (default 0) selects the random stream
of every chapter: a chapter passes each seed it writes through :func:`stream_seed`,
which leaves it as written in stream 0 and maps it to an unrelated seed in any
other. Another stream, CPU or a GPU (CUDA generators draw other numbers from the
same seed) gives other numbers, and the book's verdicts must not change with them
(``make robustness`` checks this).
"""

from __future__ import annotations

import hashlib
import os

import torch

from ._checks import check_generator, check_int, check_positive_int
from .device import get_device

__all__ = ["make_generator", "spawn_generators", "check_generator", "get_stream", "stream_seed", "SEED_ENV_VAR"]

#: Environment variable that selects the random stream of every chapter.
SEED_ENV_VAR = "GNI_SEED"


def _check_seed(seed: object, name: str = "seed") -> int:
    return check_int(seed, name, 0, expected="a non-negative int")


def _hash_seed(text: str) -> int:
    """The first 63 bits of SHA-256(``text``), a seed unrelated to any other text's."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def get_stream() -> int:
    """Return the random stream selected by ``GNI_SEED``: a non-negative int, 0 when unset.

    Raises:
        ValueError: if ``GNI_SEED`` is set to anything but a non-negative integer.
    """
    value = os.environ.get(SEED_ENV_VAR, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ValueError(f"{SEED_ENV_VAR} must be a non-negative integer, got {value!r}")
    return int(value)


def stream_seed(seed: int, stream: int | None = None) -> int:
    r"""Return the seed that ``seed`` stands for in random stream ``stream``.

    Stream 0 is the identity, so the book built with ``GNI_SEED`` unset draws the
    numbers written in it. Any other stream :math:`s` maps seed :math:`n` to the
    first 63 bits of :math:`\operatorname{SHA\text{-}256}(\texttt{"gni_lib.stream:s:n"})`:
    distinct seeds stay distinct (up to a hash collision, probability about
    :math:`2^{-63}` per pair) and are unrelated to the seeds of stream 0.

    Args:
        seed: the seed as the chapter writes it, a non-negative int.
        stream: the stream; ``None`` reads it from ``GNI_SEED`` (:func:`get_stream`).

    Raises:
        TypeError: if ``seed`` or ``stream`` is not an integer.
        ValueError: if either is negative, or ``GNI_SEED`` is malformed.
    """
    seed = _check_seed(seed)
    stream = get_stream() if stream is None else _check_seed(stream, "stream")
    return seed if stream == 0 else _hash_seed(f"gni_lib.stream:{stream}:{seed}")


def make_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    r"""Return a :class:`torch.Generator` seeded with ``seed``.

    Args:
        seed: a non-negative int; the same seed gives the same numbers.
        device: where the generator draws (noise for a CUDA tensor needs a CUDA
            generator); defaults to :func:`~gni_lib.device.get_device`.

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

    Child :math:`i` is seeded with the first 63 bits of
    :math:`\operatorname{SHA\text{-}256}(\texttt{"gni_lib.spawn:seed:i"})`, so the
    children of any parent, and of different parents, are unrelated streams; two of
    them share a seed only by a hash collision (probability about :math:`2^{-63}`
    per pair).

    Raises:
        TypeError: if ``seed`` or ``count`` is not an integer.
        ValueError: if ``seed`` is negative or ``count`` is below 1.
    """
    seed = _check_seed(seed)
    count = check_positive_int(count, "count")
    return [make_generator(_hash_seed(f"gni_lib.spawn:{seed}:{i}"), device) for i in range(count)]

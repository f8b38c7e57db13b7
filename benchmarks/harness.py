"""Timing harness for the ratio benchmarks.

Speed claims in this project are ratios measured side by side in one run:
each candidate and its baseline are timed in the same process, interleaved
round by round so that a slow patch of the machine hits both, and we quote
the median over rounds. Nothing here is a test; `make bench` prints the table
and writes it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def set_threads() -> int:
    """Use as many torch threads as the machine has cores, and return that number."""
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    return cores


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    name: str
    median_s: float
    rounds: int


def time_side_by_side(
    candidates: dict[str, Callable[[], object]],
    *,
    device: torch.device,
    rounds: int = 15,
    warmup: int = 3,
    min_seconds: float = 0.02,
) -> dict[str, Timing]:
    """Median seconds per call of each candidate, interleaved round by round.

    Each round times every candidate once, in turn; a call shorter than
    ``min_seconds`` is repeated within its round and averaged, so that timer
    resolution does not dominate.
    """
    inner: dict[str, int] = {}
    for name, fn in candidates.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        once = max(time.perf_counter() - start, 1e-9)
        inner[name] = max(1, int(min_seconds / once))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {
        name: Timing(name, statistics.median(values), rounds) for name, values in samples.items()
    }


def machine_line(device: torch.device) -> str:
    """One line saying where the numbers were measured."""
    where = platform.processor() or platform.machine()
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    return (
        f"{where}; {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {device}"
    )

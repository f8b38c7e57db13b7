"""Helpers shared by the library tests (imported as ``from _shared import ...``)."""

from __future__ import annotations

import pytest
import torch

#: Parametrise a test over devices: CUDA runs where a GPU is present and is skipped elsewhere.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    ),
]


def seeded_generator(seed: int, device: str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed`` (built directly, not through gni_lib)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator

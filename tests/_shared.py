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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run a test module single-threaded (import it to use it).

    The optimiser and ensemble problems are tiny; on a shared 2-core machine torch's
    intra-op threads only wait on each other (a log_softmax of 30 x 4 took 15 ms under
    load). Results do not depend on the thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Front matter of a minimal jupytext MyST chapter, for the book-machinery tests.
CHAPTER_HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A scratch chapter

"""


def chapter_source(*cells: str) -> str:
    """A minimal MyST chapter with the given code cells."""
    return CHAPTER_HEADER + "\n".join(f"```{{code-cell}} ipython3\n{c}\n```\n" for c in cells)


class CountingSyncs(torch.Tensor):
    """A tensor that counts the calls copying its values to the host (each a sync on CUDA).

    Wrap with ``t.as_subclass(CountingSyncs)``, set ``CountingSyncs.syncs = 0``, call, read it back.
    """

    syncs = 0
    _host = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__int__, torch.Tensor.__bool__,
             torch.Tensor.__float__, torch.Tensor.__index__}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in cls._host:
            cls.syncs += 1
        return super().__torch_function__(func, types, args, kwargs or {})

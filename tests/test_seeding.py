"""gni_lib.seeding: generators from seeds, independent child streams, checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gni_lib.seeding import check_generator, make_generator, spawn_generators


def test_same_seed_same_numbers() -> None:
    a = torch.randn(100, generator=make_generator(7, "cpu"))
    b = torch.randn(100, generator=make_generator(7, "cpu"))
    assert torch.equal(a, b)


def test_different_seeds_differ() -> None:
    a = torch.randn(100, generator=make_generator(7, "cpu"))
    b = torch.randn(100, generator=make_generator(8, "cpu"))
    assert not torch.equal(a, b)


def test_generator_device_defaults_to_get_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNI_DEVICE", "cpu")
    assert make_generator(0).device == torch.device("cpu")


@pytest.mark.parametrize("bad", [-1, -100])
def test_negative_seed(bad: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        make_generator(bad, "cpu")


@pytest.mark.parametrize("bad", [1.5, "3", None, True])
def test_non_integer_seed(bad: object) -> None:
    with pytest.raises(TypeError, match="seed"):
        make_generator(bad, "cpu")  # type: ignore[arg-type]


def test_spawn_is_reproducible_and_distinct() -> None:
    first = [torch.randn(50, generator=g) for g in spawn_generators(3, 5, "cpu")]
    again = [torch.randn(50, generator=g) for g in spawn_generators(3, 5, "cpu")]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for i in range(5):
        for j in range(i + 1, 5):
            assert not torch.equal(first[i], first[j])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**64), st.integers(0, 2**64), st.integers(1, 8))
def test_spawned_seeds_do_not_collide_across_parents(a: int, b: int, n: int) -> None:
    if a == b:
        return
    seeds_a = {g.initial_seed() for g in spawn_generators(a, n, "cpu")}
    seeds_b = {g.initial_seed() for g in spawn_generators(b, n, "cpu")}
    assert len(seeds_a) == n
    assert not seeds_a & seeds_b


def test_spawn_count_errors() -> None:
    with pytest.raises(ValueError, match="count"):
        spawn_generators(0, 0, "cpu")
    with pytest.raises(TypeError, match="count"):
        spawn_generators(0, 2.0, "cpu")  # type: ignore[arg-type]


def test_check_generator() -> None:
    check_generator(None)
    check_generator(make_generator(0, "cpu"), "cpu")
    with pytest.raises(TypeError, match="generator"):
        check_generator(0)
    with pytest.raises(ValueError, match="generator"):
        check_generator(make_generator(0, "cpu"), "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator() -> None:
    g = make_generator(1, "cuda")
    assert g.device.type == "cuda"
    x = torch.randn(4, device="cuda", generator=g)
    assert x.device.type == "cuda"

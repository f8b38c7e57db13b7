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
    for count in (0, -1):  # the message asks for what is needed (>= 1), not "non-negative"
        with pytest.raises(ValueError, match="count must be a positive int"):
            spawn_generators(0, count, "cpu")
    with pytest.raises(TypeError, match="count must be a positive int"):
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


def test_stream_zero_keeps_the_written_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    from gni_lib.seeding import stream_seed

    monkeypatch.delenv("GNI_SEED", raising=False)
    assert [stream_seed(n) for n in (0, 1, 404)] == [0, 1, 404]
    assert stream_seed(7, 0) == 7


def test_other_streams_move_every_seed_and_keep_them_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    from gni_lib.seeding import get_stream, stream_seed

    monkeypatch.setenv("GNI_SEED", "3")
    assert get_stream() == 3
    moved = [stream_seed(n) for n in range(1000)]
    assert len(set(moved)) == 1000 and not set(moved) & set(range(1000))
    assert moved[5] == stream_seed(5, 3) != stream_seed(5, 4)
    assert all(0 <= m < 2**63 for m in moved)
    make_generator(moved[0], "cpu")  # a valid seed for a generator


@pytest.mark.parametrize("bad", ["-1", "x", "1.5"])
def test_malformed_stream_names_the_variable(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    from gni_lib.seeding import get_stream

    monkeypatch.setenv("GNI_SEED", bad)
    with pytest.raises(ValueError, match="GNI_SEED"):
        get_stream()


def test_stream_seed_bad_arguments() -> None:
    from gni_lib.seeding import stream_seed

    with pytest.raises(ValueError, match="seed"):
        stream_seed(-1, 1)
    with pytest.raises(TypeError, match="stream"):
        stream_seed(1, 1.5)  # type: ignore[arg-type]

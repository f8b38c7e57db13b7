"""gni_lib.scale: GNI_SCALE=quick|paper, quick by default."""

from __future__ import annotations

import pytest

from gni_lib.scale import SCALE_ENV_VAR, by_scale, get_scale


def test_quick_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCALE_ENV_VAR, raising=False)
    assert get_scale() == "quick"
    assert by_scale(quick=1, paper=2) == 1


@pytest.mark.parametrize("value", ["paper", "PAPER", " paper "])
def test_paper_preset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(SCALE_ENV_VAR, value)
    assert get_scale() == "paper"
    assert by_scale(quick=1, paper=2) == 2


def test_unknown_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCALE_ENV_VAR, "huge")
    with pytest.raises(ValueError, match=SCALE_ENV_VAR):
        get_scale()
    with pytest.raises(ValueError, match="huge"):
        by_scale(quick=1, paper=2)


def test_by_scale_needs_both_presets() -> None:
    with pytest.raises(TypeError):
        by_scale(quick=1)  # type: ignore[call-arg]

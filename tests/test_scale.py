"""gni_lib.scale: GNI_SCALE=quick|large|paper, quick by default; the sizes chosen are remembered."""

from __future__ import annotations

import pytest

from gni_lib.scale import SCALE_ENV_VAR, by_scale, get_scale, settings


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


def test_large_preset_falls_back_to_quick_not_paper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCALE_ENV_VAR, "large")
    assert get_scale() == "large"
    assert by_scale(quick=1, paper=3, large=2) == 2
    assert by_scale(quick=1, paper=3) == 1


def test_settings_name_the_line_the_value_and_whether_it_is_the_papers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCALE_ENV_VAR, "large")
    width = by_scale(quick=[8, 8], large=[64, 64], paper=[256, 256])
    seeds = by_scale(quick=5, large=20, paper=20)
    found = {entry["line"]: entry for entry in settings()}
    assert found["width = by_scale(quick=[8, 8], large=[64, 64], paper=[256, 256])"] == {
        "line": "width = by_scale(quick=[8, 8], large=[64, 64], paper=[256, 256])",
        "value": width, "paper": [256, 256], "is_paper": False}
    assert found["seeds = by_scale(quick=5, large=20, paper=20)"]["is_paper"] is True

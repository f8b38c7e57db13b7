"""Quick or paper-sized experiments: ``GNI_SCALE=quick|paper``.

Every chapter runs a *quick* preset by default, sized so that the whole chapter
executes in under a minute on a 2-core CPU. ``GNI_SCALE=paper`` selects the
settings of the source papers, meant for a GPU. Chapters pick their sizes with
:func:`by_scale`, so the two presets sit side by side in the page.
"""

from __future__ import annotations

import os
from typing import TypeVar

__all__ = ["get_scale", "by_scale", "SCALE_ENV_VAR", "SCALES"]

#: Environment variable that selects the preset.
SCALE_ENV_VAR = "GNI_SCALE"
#: The presets, the first being the default.
SCALES = ("quick", "paper")

T = TypeVar("T")


def get_scale() -> str:
    """Return ``"quick"`` (the default) or ``"paper"``, from ``GNI_SCALE``.

    Raises:
        ValueError: if ``GNI_SCALE`` is set to another value.
    """
    value = os.environ.get(SCALE_ENV_VAR, "").strip().lower()
    if not value:
        return SCALES[0]
    if value not in SCALES:
        raise ValueError(f"{SCALE_ENV_VAR}={value!r} is not a preset; expected one of {SCALES}")
    return value


def by_scale(*, quick: T, paper: T) -> T:
    """Return ``quick`` or ``paper`` according to :func:`get_scale`.

    Example:
        ``steps = by_scale(quick=2_000, paper=60_000)``
    """
    return paper if get_scale() == "paper" else quick

"""Quick, large or paper-sized experiments: ``GNI_SCALE=quick|large|paper``.

*quick* (the default) runs a chapter in under a minute on a 2-core CPU; *paper*
uses the source papers' settings, meant for a GPU; *large* is what ``make results``
runs on a CPU: the largest sizes that fit about an hour. Chapters pick each size
with :func:`by_scale`, so the presets sit side by side in the page; :func:`settings`
lists the sizes chosen, so that a recorded run says which are the paper's.
"""

from __future__ import annotations

import linecache
import os
import sys
from typing import Any, TypeVar

__all__ = ["get_scale", "by_scale", "settings", "SCALE_ENV_VAR", "SCALES"]

#: Environment variable that selects the preset.
SCALE_ENV_VAR = "GNI_SCALE"
#: The presets, the first being the default.
SCALES = ("quick", "large", "paper")

T = TypeVar("T")

_MISSING: Any = object()
_SETTINGS: dict[str, dict[str, Any]] = {}


def get_scale() -> str:
    """Return ``"quick"`` (the default), ``"large"`` or ``"paper"``, from ``GNI_SCALE``.

    Raises:
        ValueError: if ``GNI_SCALE`` is set to another value.
    """
    value = os.environ.get(SCALE_ENV_VAR, "").strip().lower()
    if not value:
        return SCALES[0]
    if value not in SCALES:
        raise ValueError(f"{SCALE_ENV_VAR}={value!r} is not a preset; expected one of {SCALES}")
    return value


def _caller_line() -> str:
    frame = sys._getframe(2)
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return line or f"{frame.f_code.co_filename}:{frame.f_lineno}"


def by_scale(*, quick: T, paper: T, large: T = _MISSING) -> T:
    """Return ``quick``, ``large`` or ``paper`` according to :func:`get_scale`.

    ``large`` defaults to ``quick``: a size that a chapter does not enlarge for
    the CPU run keeps its quick value there, never the paper's by accident.

    Example:
        ``steps = by_scale(quick=2_000, large=10_000, paper=60_000)``
    """
    scale = get_scale()
    if large is _MISSING:
        large = quick
    value = {"quick": quick, "large": large, "paper": paper}[scale]
    _SETTINGS[_caller_line()] = {"value": value, "paper": paper, "is_paper": _same(value, paper)}
    return value


def _same(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an array compares element-wise: then they are not one setting
        return a is b


def settings() -> list[dict[str, Any]]:
    """The sizes chosen so far in this process, one entry per line that called :func:`by_scale`.

    Each entry: ``line`` (the source line), ``value`` (what it returned), ``paper``
    (the paper preset's value) and ``is_paper`` (whether the two are equal), in the
    order the lines first ran.
    """
    return [{"line": line, **entry} for line, entry in _SETTINGS.items()]

"""Sphinx extension: never serve an executed chapter that is older than its library.

myst-nb caches each notebook's outputs under a key made of its code cells only.
A change to ``gni_lib`` (or to the pinned requirements) leaves every code cell
unchanged, so the cache would happily serve outputs computed by the old library.

This extension hashes the files named in the ``gni_cache_watch`` config value
(paths relative to the book root; folders are walked), together with the values of
the environment variables named in ``gni_cache_env`` (``GNI_SEED``, ``GNI_SCALE``,
``GNI_DEVICE``: a build at another random stream, preset or device must not serve
the outputs of the last one). When the hash differs
from the one stored beside the execution cache, the cache is deleted and every
document is re-read, so every chapter is executed again.

It also lets ``{glue:text}`` format glued NumPy scalars (see :func:`numpy_scalar_text`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

logger = logging.getLogger(__name__)

_SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".hypothesis"}


def watched_files(root: Path, watch: list[str]) -> list[Path]:
    """The files named by ``watch`` (files or folders below ``root``), sorted."""
    files: list[Path] = []
    for entry in watch:
        path = (root / entry).resolve()
        if path.is_dir():
            files.extend(
                p
                for p in path.rglob("*")
                if p.is_file() and not (_SKIP_PARTS & set(p.parts)) and p.suffix != ".pyc"
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"gni_cache_watch names {entry!r}, which does not exist")
    return sorted(set(files))


def library_key(root: Path, watch: list[str], env: list[str] | None = None) -> str:
    """SHA-256 over the relative names and contents of the watched files and the named variables' values."""
    digest = hashlib.sha256()
    for name in env or []:
        digest.update(f"{name}={os.environ.get(name, '')}".encode())
        digest.update(b"\0")
    for path in watched_files(root, watch):
        digest.update(str(path.relative_to(root.resolve())).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _invalidate_stale_cache(app: Sphinx) -> None:
    watch = list(app.config.gni_cache_watch or [])
    app.gni_cache_reset = False  # type: ignore[attr-defined]
    if not watch:
        return
    cache = Path(app.env.mystnb_config.execution_cache_path)
    stamp = cache.with_name(cache.name + ".library-key")
    key = library_key(Path(app.confdir), watch, list(app.config.gni_cache_env or []))
    previous = stamp.read_text().strip() if stamp.exists() else None
    if previous == key:
        return
    if cache.exists():
        shutil.rmtree(cache)
    logger.info(
        "gni_build: %s changed; re-executing every chapter",
        ", ".join(watch + list(app.config.gni_cache_env or [])),
    )
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")
    app.gni_cache_reset = True  # type: ignore[attr-defined]


def _reread_everything(
    app: Sphinx, env: BuildEnvironment, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    if getattr(app, "gni_cache_reset", False):
        return sorted(env.found_docs - added - changed)
    return []


_NUMPY_SCALAR = re.compile(r"^np\.(?:float|int|uint|complex|bool)\w*\((.*)\)$", re.S)


def numpy_scalar_text(text: str) -> str:
    """``'np.float64(0.25)'`` -> ``'0.25'``: the plain value inside NumPy 2's scalar repr.

    A glued NumPy scalar is stored as its repr, which NumPy 2 writes as
    ``np.float64(0.25)``; myst-nb's ``{glue:text}`key:.3f` `` cannot read that as a
    number and fails the build. Any other text is returned unchanged.
    """
    match = _NUMPY_SCALAR.match(text.strip())
    return match.group(1) if match else text


def _read_numpy_scalars() -> None:
    """Let ``{glue:text}`` format glued NumPy scalars, as it formats Python floats."""
    import myst_nb.core.variables as variables
    import myst_nb.ext.glue.crossref as crossref
    import myst_nb.ext.glue.roles as roles

    original = variables.format_plain_text
    if getattr(original, "gni_numpy_scalars", False):
        return

    def format_plain_text(text: str, fmt_spec: str) -> str:
        return original(numpy_scalar_text(text), fmt_spec)

    format_plain_text.gni_numpy_scalars = True  # type: ignore[attr-defined]
    for module in (variables, roles, crossref):
        module.format_plain_text = format_plain_text


def setup(app: Sphinx) -> dict:
    _read_numpy_scalars()
    app.add_config_value("gni_cache_watch", [], "env")
    app.add_config_value("gni_cache_env", [], "env")
    # After myst-nb's own builder-inited handler has resolved the cache path.
    app.connect("builder-inited", _invalidate_stale_cache, priority=900)
    app.connect("env-get-outdated", _reread_everything)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

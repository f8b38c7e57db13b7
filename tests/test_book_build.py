"""The build fails loudly and never serves stale outputs.

Each test builds a throw-away one-page book in a temporary folder with the
repository's own ``_config.yml`` (execution, error and cache settings, and the
``book/_ext/gni_build.py`` extension), changing only what points at files.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _shared import chapter_source

REPO = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")

pytestmark = pytest.mark.slow

def _write_book(root: Path, cells: list[str]) -> None:
    """A one-chapter book using the repository's configuration."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config.pop("bibtex_bibfiles", None)  # no citations here, so no bibtex extension
    sphinx = config["sphinx"]
    sphinx["local_extensions"] = {"gni_build": str(REPO / "book" / "_ext")}
    sphinx["config"]["gni_cache_watch"] = ["mylib.py"]
    # Only gni_build is loaded here, so the other local extensions' settings must go too.
    for key in [k for k in sphinx["config"] if k.startswith("gni_") and k not in ("gni_cache_watch", "gni_cache_env")]:
        sphinx["config"].pop(key)
    sphinx["config"].pop("html_extra_path", None)
    sphinx["config"].pop("mathjax_path", None)
    sphinx["config"].pop("bibtex_reference_style", None)
    (root / "_config.yml").write_text(yaml.safe_dump(config))
    (root / "_toc.yml").write_text("format: jb-book\nroot: chapter\n")
    (root / "chapter.md").write_text(chapter_source(*cells))
    # Test runs leave Markdown in hidden folders (.pytest_cache/README.md); a -W build
    # must not read it as an orphan page, on the first run or the second.
    (root / ".pytest_cache").mkdir()
    (root / ".pytest_cache" / "README.md").write_text("# pytest cache directory\n")


def _build(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(JUPYTER_BOOK), "build", str(root), "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _html(root: Path) -> str:
    return (root / "_build" / "html" / "chapter.html").read_text()


def test_a_cell_that_raises_fails_the_build(tmp_path: Path) -> None:
    (tmp_path / "mylib.py").write_text("VALUE = 'unused'\n")
    _write_book(tmp_path, ["x = 1", "raise RuntimeError('deliberate failure 7c1f')"])
    result = _build(tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log
    assert "deliberate failure 7c1f" in log


def test_a_library_change_re_executes_every_chapter(tmp_path: Path) -> None:
    (tmp_path / "mylib.py").write_text("VALUE = 'first-value'\n")
    _write_book(
        tmp_path,
        [
            "import uuid, mylib\nprint('run', uuid.uuid4().hex)\nprint('value', mylib.VALUE)",
        ],
    )

    def run_and_value() -> tuple[str, str]:
        result = _build(tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        html = _html(tmp_path)
        run = re.search(r"run ([0-9a-f]{32})", html)
        value = re.search(r"value (\w+-value)", html)
        assert run and value, html
        return run.group(1), value.group(1)

    first_run, first_value = run_and_value()
    assert first_value == "first-value"

    # Nothing changed: the cached outputs are served, the chapter does not run again.
    # (Without this the next assertion could pass with no cache at all.)
    assert run_and_value() == (first_run, first_value)

    # The library changed, the chapter did not: it must run again, with the new library.
    (tmp_path / "mylib.py").write_text("VALUE = 'second-value'\n")
    second_run, second_value = run_and_value()
    assert second_value == "second-value"
    assert second_run != first_run


def test_the_random_stream_is_part_of_the_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(REPO / "book" / "_ext"))
    try:
        import gni_build
    finally:
        sys.path.pop(0)
    (tmp_path / "mylib.py").write_text("VALUE = 1\n")
    monkeypatch.delenv("GNI_SEED", raising=False)
    unset = gni_build.library_key(tmp_path, ["mylib.py"], ["GNI_SEED"])
    assert gni_build.library_key(tmp_path, ["mylib.py"], ["GNI_SEED"]) == unset
    monkeypatch.setenv("GNI_SEED", "3")
    moved = gni_build.library_key(tmp_path, ["mylib.py"], ["GNI_SEED"])
    assert moved != unset
    assert gni_build.library_key(tmp_path, ["mylib.py"]) == gni_build.library_key(tmp_path, ["mylib.py"], [])


def test_watched_paths_must_exist(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "book" / "_ext"))
    try:
        import gni_build
    finally:
        sys.path.pop(0)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        gni_build.library_key(tmp_path, ["no_such_folder"])


def test_glued_numpy_scalars_can_be_formatted() -> None:
    """NumPy 2 stores a glued np.float64 as 'np.float64(0.25)'; {glue:text}`key:.2f` must still work."""
    sys.path.insert(0, str(REPO / "book" / "_ext"))
    try:
        import gni_build
    finally:
        sys.path.pop(0)
    import myst_nb.core.variables as variables
    import myst_nb.ext.glue.crossref as crossref
    import myst_nb.ext.glue.roles as roles

    assert gni_build.numpy_scalar_text("np.float64(0.25)") == "0.25"
    assert gni_build.numpy_scalar_text("np.int64(-3)") == "-3"
    assert gni_build.numpy_scalar_text("'np.float64 is a type'") == "'np.float64 is a type'"
    gni_build._read_numpy_scalars()
    for module in (variables, roles, crossref):
        assert module.format_plain_text("np.float64(0.25)", ".3f") == "0.250"
        assert module.format_plain_text("np.float32(2.5e-05)", ".1e") == "2.5e-05"
        assert module.format_plain_text("'plain text'", "s") == "plain text"

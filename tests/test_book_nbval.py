"""The conftest.py collector runs a chapter's .md through nbval, in place.

Each test runs pytest in a scratch folder (pytester) with the repository's own
conftest.py, on small MyST notebooks written for the occasion.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _shared import chapter_source

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture
def scratch(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest((REPO / "conftest.py").read_text())
    return pytester


def _run(scratch: pytest.Pytester, *paths: str) -> pytest.RunResult:
    return scratch.runpytest_subprocess(
        "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", *paths
    )


def test_a_failing_cell_is_reported_as_a_failure(scratch: pytest.Pytester) -> None:
    (scratch.path / "book").mkdir()
    (scratch.path / "book" / "ch.md").write_text(
        chapter_source("x = 2", "assert x == 3, 'the collector saw this cell fail'", "y = x + 1")
    )
    result = _run(scratch, "book")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*the collector saw this cell fail*"])
    # No temporary notebook was written next to the chapter.
    assert sorted(p.name for p in (scratch.path / "book").iterdir()) == ["ch.md"]


def test_cells_run_in_the_chapter_folder(scratch: pytest.Pytester) -> None:
    folder = scratch.path / "book"
    folder.mkdir()
    (folder / "data.txt").write_text("beside the chapter")
    (folder / "ch.md").write_text(
        chapter_source(
            "from pathlib import Path\n"
            "assert Path.cwd().name == 'book', Path.cwd()\n"
            "assert Path('data.txt').read_text() == 'beside the chapter'"
        )
    )
    _run(scratch, "book").assert_outcomes(passed=1)


def test_plain_markdown_pages_are_not_collected(scratch: pytest.Pytester) -> None:
    folder = scratch.path / "book"
    folder.mkdir()
    (folder / "page.md").write_text("# Notation\n\nNo kernel here.\n")
    (folder / "fake.md").write_text("---\ntitle: x\n---\n\n```python\n1/0\n```\n")
    result = _run(scratch, "book")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_without_the_nbval_flags_chapters_are_ignored(scratch: pytest.Pytester) -> None:
    (scratch.path / "book").mkdir()
    (scratch.path / "book" / "ch.md").write_text(chapter_source("raise SystemExit(1)"))
    result = scratch.runpytest_subprocess("-p", "no:cacheprovider", "book")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED

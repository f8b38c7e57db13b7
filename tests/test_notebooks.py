"""benchmarks/notebooks.py: a chapter run cut short is never recorded as a clean run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import notebooks  # noqa: E402

_spec = importlib.util.spec_from_file_location("robustness_driver", REPO / "benchmarks" / "robustness.py")
robustness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(robustness)

HEADER = (
    "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
    "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
)


def _chapter(tmp_path: Path, *cells: str) -> Path:
    path = tmp_path / "99-test.md"
    path.write_text(HEADER + "\n".join(f"```{{code-cell}} ipython3\n{c}\n```\n" for c in cells))
    return path


def test_a_clean_run_and_a_raising_cell(tmp_path: Path) -> None:
    run = notebooks.execute(_chapter(tmp_path, "x = 1", "raise ValueError('boom')", "y = 2"), {}, 60)
    assert run["crashed"] is None and run["unexecuted"] == 0
    assert [f["cell"] for f in run["failing"]] == [2] and "boom" in run["failing"][0]["error"]


def test_a_dead_kernel_leaves_cells_that_never_ran_and_counts_as_failing(tmp_path: Path) -> None:
    run = notebooks.execute(_chapter(tmp_path, "x = 1", "import os\nos._exit(1)", "y = 2", "z = 3"), {}, 60)
    assert run["crashed"] is not None
    assert run["unexecuted"] >= 2  # the cells after the crash
    result = {"failing": run["failing"], "crashed": run["crashed"], "unexecuted": run["unexecuted"]}
    assert robustness.bad_cells(result) >= 2
    assert robustness.bad_cells({"failing": [], "crashed": "DeadKernelError", "unexecuted": 0}) == 1
    assert robustness.bad_cells({"failing": [], "crashed": None, "unexecuted": 0}) == 0

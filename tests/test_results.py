"""The recorded larger-scale run, book/results/paper.json: schema, coverage, computed staleness, rendering.

``make results`` (benchmarks/results.py) writes the file; the build reads it through
book/_ext/gni_results.py and shows it in the ledger and in every chapter's verdict
table. These tests check the committed file against the schema and the claims
registry, that staleness is computed from hashes (and flips when a chapter or the
library changes), that the rendered tables carry the column, and that a chapter names
every claim whose recorded verdict differs from the one its build computed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
HTML = REPO / "_build" / "html"
RESULTS = BOOK / "results" / "paper.json"

sys.path.insert(0, str(BOOK / "_ext"))
import gni_ledger  # noqa: E402
import gni_results  # noqa: E402

_spec = importlib.util.spec_from_file_location("results_driver", REPO / "benchmarks" / "results.py")
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)

ENTRIES = gni_ledger.load_registry(BOOK / "claims.yml")
IDS = [entry["id"] for entry in ENTRIES]


def _committed() -> dict:
    data = gni_results.load(RESULTS, IDS)
    assert data is not None, "book/results/paper.json is missing: run `make results` and commit it"
    return data


def test_the_recorded_run_has_every_claim_and_passes_the_schema() -> None:
    data = _committed()
    assert list(data["claims"]) == sorted(IDS)
    for claim, record in data["claims"].items():
        entry = next(e for e in ENTRIES if e["id"] == claim)
        assert record["chapter"] == Path(entry["chapter"]).name, f"{claim} is recorded under another chapter"


def test_every_claim_not_holding_at_quick_scale_was_run_or_says_why() -> None:
    """Each claim whose quick verdict is not 'holds' has a larger-scale result, or a reason of its own.

    The default reason of a chapter left out says the hour went to such claims, so it
    may not stand for one of them.
    """
    data = _committed()
    glue = HTML.parent / "jupyter_execute"
    quick = gni_ledger.read_verdicts(glue, ENTRIES) if glue.exists() else {}
    if not quick or any(v is None for v in quick.values()):
        pytest.skip("the book is not built (make book): no quick verdicts to compare")
    for claim, verdict in quick.items():
        record = data["claims"][claim]
        if verdict != "holds":
            assert record["status"] == "run" or record["reason"] != driver.DEFAULT_REASON, (
                f"{claim} ({verdict} at quick scale) was left out of the run with the generic reason")


def test_a_run_records_its_provenance() -> None:
    data = _committed()
    runs = {name: run for name, run in data["chapters"].items() if run["status"] == "run"}
    assert runs, "the recorded file holds no run at all"
    for name, run in runs.items():
        assert re.fullmatch(r"[0-9a-f]{7,}( \(with uncommitted changes\))?", run["commit"]), name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", run["date"]) and run["torch"] and run["device"], name
        assert set(run["hashes"]) == {"chapter", "gni_lib"} and run["wall_seconds"] > 0, name
        assert all({"line", "value", "paper", "is_paper"} <= set(s) for s in run["settings"]), name


def _tree(tmp_path: Path, stem: str) -> Path:
    """A copy of one chapter and of gni_lib/ at the same relative paths: the same hashes as the repository."""
    (tmp_path / "book").mkdir()
    shutil.copy(BOOK / f"{stem}.md", tmp_path / "book" / f"{stem}.md")
    shutil.copytree(REPO / "gni_lib", tmp_path / "gni_lib", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _one_run(root: Path, stem: str, claim: str) -> dict:
    run = {"status": "run", "scale": "large", "commit": "abc1234", "date": "2026-12-02", "device": "CPU",
           "torch": "2", "python": "3", "threads": 1, "wall_seconds": 1.0,
           "hashes": gni_results.source_hashes(root, stem), "failing_cells": [], "settings": []}
    record = {"chapter": stem, "status": "run", "verdict": "holds", "measured": "x = 1 [0, 2]",
              "intervals": [[0.0, 2.0]], "seeds": 10, "level": 0.95,
              "settings": [{"line": "n = by_scale(quick=1, large=2, paper=3)", "value": 2, "paper": 3,
                            "is_paper": False}]}
    return {"schema": 1, "chapters": {stem: run}, "claims": {claim: record}}


def test_staleness_is_computed_from_the_chapter_and_the_library(tmp_path: Path) -> None:
    stem = "10-calibration"
    root = _tree(tmp_path, stem)
    data = _one_run(root, stem, "camuto.calibration")
    assert gni_results.staleness(data, root) == {stem: []}
    assert "stale" not in gni_results.cell_text("camuto.calibration", data, {stem: []})
    chapter = root / "book" / f"{stem}.md"
    chapter.write_text(chapter.read_text() + "\nOne more sentence.\n")
    assert gni_results.staleness(data, root) == {stem: ["chapter"]}
    (root / "gni_lib" / "scale.py").write_text((root / "gni_lib" / "scale.py").read_text() + "\n# edit\n")
    stale = gni_results.staleness(data, root)
    assert stale == {stem: ["chapter", "gni_lib"]}
    assert "**stale**: chapter and gni_lib changed" in gni_results.cell_text("camuto.calibration", data, stale)


def test_sizes_are_called_the_papers_only_where_every_one_is(tmp_path: Path) -> None:
    data = _one_run(_tree(tmp_path, "10-calibration"), "10-calibration", "camuto.calibration")
    assert "not the paper's sizes" in gni_results.cell_text("camuto.calibration", data, {})
    data["claims"]["camuto.calibration"]["settings"][0].update(value=3, is_paper=True)
    assert "paper settings" in gni_results.cell_text("camuto.calibration", data, {})


@pytest.mark.parametrize(
    ("breach", "message"),
    [
        (lambda d: d["chapters"]["10-calibration"].update(stale=True), "computed"),
        (lambda d: d["claims"]["camuto.calibration"].update(stale=False), "computed"),
        (lambda d: d["claims"]["camuto.calibration"].update(verdict="holds mostly"), "verdict"),
        (lambda d: d["claims"]["camuto.calibration"].update(intervals=[[2.0, 1.0]]), "low > high"),
        (lambda d: d["chapters"]["10-calibration"].pop("hashes"), "hashes"),
        (lambda d: d["chapters"]["10-calibration"].update(scale="quick"), "scale"),
        (lambda d: d["claims"].update({"camuto.fig3": {"chapter": "07-noise-vs-regulariser", "status": "not run"}}),
         "chapter"),
        (lambda d: d["chapters"].update({"07-noise-vs-regulariser": {"status": "not run", "reason": " "}}), "reason"),
    ],
)
def test_a_record_that_breaks_the_schema_is_refused(tmp_path: Path, breach, message: str) -> None:
    data = _one_run(_tree(tmp_path, "10-calibration"), "10-calibration", "camuto.calibration")
    breach(data)
    path = tmp_path / "paper.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        gni_results.load(path)


def test_a_missing_claim_is_refused(tmp_path: Path) -> None:
    data = _one_run(_tree(tmp_path, "10-calibration"), "10-calibration", "camuto.calibration")
    path = tmp_path / "paper.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing"):
        gni_results.load(path, ["camuto.calibration", "camuto.fig3"])


def test_a_rerun_replaces_its_chapters_claims_and_others_get_a_reason(tmp_path: Path) -> None:
    data = _one_run(_tree(tmp_path, "10-calibration"), "10-calibration", "camuto.calibration")
    entries = [{"id": "camuto.calibration", "chapter": "book/10-calibration"},
               {"id": "camuto.fig3", "chapter": "book/07-noise-vs-regulariser"}]
    rerun = {"chapter": "10-calibration", "run": data["chapters"]["10-calibration"], "claims": {}}
    merged = driver.merge(data, [rerun], entries, "no budget")
    assert merged["claims"]["camuto.calibration"]["status"] == "not run"  # the rerun glued nothing for it
    assert "glued no result" in merged["claims"]["camuto.calibration"]["reason"]
    assert merged["claims"]["camuto.fig3"] == {"chapter": "07-noise-vs-regulariser", "status": "not run",
                                               "reason": "no budget"}
    again = driver.merge(None, [{"chapter": "10-calibration", "run": data["chapters"]["10-calibration"],
                                 "claims": {"camuto.calibration": data["claims"]["camuto.calibration"]}}],
                         entries, "no budget")
    assert again["claims"]["camuto.calibration"]["verdict"] == "holds"


def test_the_note_names_exactly_the_claims_whose_verdict_changed(tmp_path: Path) -> None:
    data = _one_run(_tree(tmp_path, "10-calibration"), "10-calibration", "camuto.calibration")
    entries = [{"id": "camuto.calibration"}]
    assert gni_ledger.changed_with_scale(entries, {"camuto.calibration": "holds"}, data, {}) == []
    note = "\n".join(gni_ledger.changed_with_scale(entries, {"camuto.calibration": "did not reproduce"}, data, {}))
    assert "The verdict changes with scale" in note and "**camuto.calibration**: holds at larger scale" in note
    assert "x = 1 \\[0, 2\\]" in note and "n = by_scale(quick=1, large=2, paper=3)" in note


def _rendered(page: str) -> str:
    path = HTML / f"{page}.html"
    if not path.exists():
        pytest.skip(f"{path} not built; run `make book` first")
    return path.read_text(encoding="utf-8")


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def test_the_rendered_tables_show_the_recorded_run_and_name_changed_verdicts() -> None:
    data = _committed()
    stale = gni_results.staleness(data, REPO)
    ledger = _text(_rendered("book/ledger"))
    assert "At larger scale" in ledger
    quick = gni_ledger.read_verdicts(HTML.parent / "jupyter_execute", ENTRIES)
    for entry in ENTRIES:
        claim, html = entry["id"], _rendered(entry["chapter"])
        table = html[html.index("gni-verdict-table"):]
        shown = _text(table[: table.index("</table>")])
        assert "At larger scale" in shown, entry["chapter"]
        record = data["claims"][claim]
        expected = record["verdict"] if record["status"] == "run" else "not run"
        assert expected in shown, f"{claim}: the chapter's table does not show {expected!r}"
        if record["status"] == "run" and stale[record["chapter"]]:
            assert "stale" in shown, f"{claim}: its chapter changed since the run, but the table does not say so"
        changed = record["status"] == "run" and quick.get(claim) not in (None, record["verdict"])
        note = _text(table[table.index("</table>"):][:6000]) if "changes with scale" in table else ""
        assert (f"{claim}: {expected} at larger scale" in note) == changed, (
            f"{claim}: the chapter should {'name' if changed else 'not name'} it as changed with scale")

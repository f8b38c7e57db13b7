"""The claims ledger against the chapters that check its claims.

``book/claims.yml`` is the registry; chapters tag their asserting cells with a first
line ``# claim: <id>``. The checks below are plain functions of the registry and of
the parsed chapters, so that each is also run on small hand-made cases that must fail
(a check that cannot fail is a defect). The last tests read the rendered ledger and
chapters in ``_build/html`` and follow every link from a claim to its cell.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
HTML = REPO / "_build" / "html"

_spec = importlib.util.spec_from_file_location("gni_ledger", BOOK / "_ext" / "gni_ledger.py")
gni_ledger = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gni_ledger)

_TAG = re.compile(r"^# claim: (\S+)\s*$")
_ASSERT = re.compile(r"^\s*assert\b", re.MULTILINE)
_TARGET = re.compile(r"^\(([A-Za-z0-9_.:-]+)\)=\s*$", re.MULTILINE)
_GLUE = re.compile(r"""glue\(\s*["']([A-Za-z0-9_]+)["']""")
# gni_lib.record_claim("paper.claim", verdict, measured) glues verdict_ and ledger_ keys.
_RECORD = re.compile(r"""record_claim\(\s*["']([a-z0-9_]+\.[a-z0-9_]+)["']""")
# A tagged cell checks its claim by an assert or by computing a verdict.
_CHECK = re.compile(r"^\s*assert\b|\b(?:judge|verdict|record_claim)\(", re.MULTILINE)


@dataclass
class Chapter:
    """What the ledger needs to know about one chapter source."""

    name: str  # e.g. "book/05-explicit-regulariser"
    tagged: dict[str, list[str]] = field(default_factory=dict)  # claim id -> sources of its cells
    targets_before: dict[str, bool] = field(default_factory=dict)  # label -> precedes a tagged cell of its id
    targets: set[str] = field(default_factory=set)
    glue_keys: set[str] = field(default_factory=set)


def parse_chapter(name: str, text: str) -> Chapter:
    """Read the claim tags, targets and glue keys of a jupytext MyST chapter."""
    notebook = jupytext.reads(text, fmt="md:myst")
    chapter = Chapter(name)
    pending_targets: set[str] = set()
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            labels = set(_TARGET.findall(cell.source))
            chapter.targets |= labels
            pending_targets |= labels
            continue
        if cell.cell_type != "code":
            continue
        chapter.glue_keys |= set(_GLUE.findall(cell.source))
        for claim_id in _RECORD.findall(cell.source):
            chapter.glue_keys |= {gni_ledger.glue_key(claim_id), gni_ledger.verdict_key(claim_id)}
        first = cell.source.splitlines()[0] if cell.source else ""
        match = _TAG.match(first)
        if match:
            claim_id = match.group(1)
            if claim_id not in chapter.tagged:
                label = gni_ledger.target_label(claim_id)
                chapter.targets_before[label] = label in pending_targets
            chapter.tagged.setdefault(claim_id, []).append(cell.source)
        pending_targets = set()
    return chapter


def ledger_problems(entries: list[dict[str, str]], chapters: dict[str, Chapter]) -> list[str]:
    """Every way the registry and the chapters disagree, as readable sentences."""
    problems = []
    registered = {entry["id"]: entry for entry in entries}
    for chapter in chapters.values():
        for claim_id in chapter.tagged:
            if claim_id not in registered:
                problems.append(f"{chapter.name} tags a cell '# claim: {claim_id}', which book/claims.yml does not list")
            elif registered[claim_id]["chapter"] != chapter.name:
                problems.append(
                    f"{chapter.name} tags {claim_id}, which book/claims.yml assigns to {registered[claim_id]['chapter']}"
                )
    for claim_id, entry in registered.items():
        chapter = chapters.get(entry["chapter"])
        if chapter is None:
            problems.append(f"{claim_id} is checked in {entry['chapter']}.md, which does not exist")
            continue
        cells = chapter.tagged.get(claim_id, [])
        if not cells:
            problems.append(f"{claim_id} is registered but no cell of {chapter.name} is tagged with it")
            continue
        if not any(_CHECK.search(source) for source in cells):
            problems.append(f"{claim_id}: none of its tagged cells asserts anything or computes a verdict")
        label = gni_ledger.target_label(claim_id)
        if not chapter.targets_before.get(label, False):
            problems.append(f"{chapter.name}: put the target ({label})= just before the first cell tagged {claim_id}")
        if gni_ledger.glue_key(claim_id) not in chapter.glue_keys:
            problems.append(f"{chapter.name} never glues {gni_ledger.glue_key(claim_id)!r}, the ledger's measured result")
        if gni_ledger.verdict_key(claim_id) not in chapter.glue_keys:
            problems.append(f"{chapter.name} never glues {gni_ledger.verdict_key(claim_id)!r}, the claim's computed verdict")
    return problems


def _book_chapters() -> dict[str, Chapter]:
    chapters = {}
    for path in sorted(BOOK.glob("[0-9][0-9]-*.md")):
        name = f"book/{path.stem}"
        chapters[name] = parse_chapter(name, path.read_text(encoding="utf-8"))
    return chapters


# --- the real book ---------------------------------------------------------------------


def test_registry_is_well_formed() -> None:
    entries = gni_ledger.load_registry(BOOK / "claims.yml")
    assert len(entries) >= 31  # the 29 ids of the design card plus the Bishop chapters' two extras


def test_registry_and_chapters_agree() -> None:
    entries = gni_ledger.load_registry(BOOK / "claims.yml")
    problems = ledger_problems(entries, _book_chapters())
    assert not problems, "\n".join(problems)


def test_every_written_chapter_checks_at_least_one_claim() -> None:
    entries = gni_ledger.load_registry(BOOK / "claims.yml")
    claimed_chapters = {entry["chapter"] for entry in entries}
    for name, chapter in _book_chapters().items():
        assert name in claimed_chapters, f"{name} is not named by any claim in book/claims.yml"
        assert chapter.tagged, f"{name} has no '# claim:' cell"


# --- the checks can fail -----------------------------------------------------------------

_ENTRY = {
    "id": "paper.claim",
    "paper": "camuto2020",
    "where": "eq. 1",
    "statement": "something",
    "chapter": "book/99-test",
}
_HEADER = "---\nkernelspec:\n  name: python3\n  display_name: Python 3\n---\n\n"


def _chapter(*blocks: str) -> Chapter:
    return parse_chapter("book/99-test", _HEADER + "\n\n".join(blocks) + "\n")


def _cell(source: str) -> str:
    return "```{code-cell} ipython3\n" + source + "\n```"


GOOD = (
    "(claim-paper-claim)=",
    _cell("# claim: paper.claim\nx = 1\nassert x == 1\ngni_lib.record_claim('paper.claim', 'holds', 'x = 1')"),
)


def test_a_consistent_chapter_passes() -> None:
    assert ledger_problems([dict(_ENTRY)], {"book/99-test": _chapter(*GOOD)}) == []


def test_an_unregistered_tag_fails() -> None:
    chapter = _chapter(*GOOD, _cell("# claim: paper.other\nassert True"))
    assert any("does not list" in p for p in ledger_problems([dict(_ENTRY)], {"book/99-test": chapter}))


def test_a_claim_without_an_assert_or_a_verdict_fails() -> None:
    chapter = _chapter(
        "(claim-paper-claim)=",
        _cell("# claim: paper.claim\nx = 1\nglue('ledger_paper_claim', 'x', display=False)\nglue('verdict_paper_claim', 'holds', display=False)"),
    )
    problems = ledger_problems([dict(_ENTRY)], {"book/99-test": chapter})
    assert any("asserts anything or computes a verdict" in p for p in problems)


def test_a_computed_verdict_counts_as_a_check() -> None:
    chapter = _chapter(
        "(claim-paper-claim)=",
        _cell("# claim: paper.claim\nj = gni_lib.judge(values, claim=(0, 1))\ngni_lib.record_claim('paper.claim', j.verdict, 'x')"),
    )
    assert ledger_problems([dict(_ENTRY)], {"book/99-test": chapter}) == []


def test_a_registered_claim_without_a_cell_fails() -> None:
    chapter = _chapter(_cell("x = 1"))
    problems = ledger_problems([dict(_ENTRY)], {"book/99-test": chapter})
    assert any("no cell of book/99-test is tagged" in p for p in problems)
    problems = ledger_problems([dict(_ENTRY)], {})
    assert any("does not exist" in p for p in problems)


def test_a_missing_target_or_glue_key_fails() -> None:
    no_target = _chapter(GOOD[1])
    assert any("put the target" in p for p in ledger_problems([dict(_ENTRY)], {"book/99-test": no_target}))
    no_glue = _chapter(GOOD[0], _cell("# claim: paper.claim\nassert True"))
    assert any("never glues 'ledger_" in p for p in ledger_problems([dict(_ENTRY)], {"book/99-test": no_glue}))


def test_a_claim_without_a_glued_verdict_fails() -> None:
    chapter = _chapter(GOOD[0], _cell("# claim: paper.claim\nassert True\nglue('ledger_paper_claim', 'x', display=False)"))
    problems = ledger_problems([dict(_ENTRY)], {"book/99-test": chapter})
    assert any("never glues 'verdict_paper_claim'" in p for p in problems)


def test_a_tag_in_the_wrong_chapter_fails() -> None:
    entry = dict(_ENTRY, chapter="book/98-elsewhere")
    assert any("assigns to" in p for p in ledger_problems([entry], {"book/99-test": _chapter(*GOOD)}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {id: a.b, paper: p, where: w, statement: s}\n", "chapter"),
        ("- {id: a.b, paper: p, where: w, statement: s, chapter: c, status: holds}\n", "status"),
        ("- {id: NoDot, paper: p, where: w, statement: s, chapter: c}\n", "NoDot"),
        ("- {id: a.b, paper: p, where: w, statement: s, chapter: c, extra: 1}\n", "extra"),
        (
            "- {id: a.b, paper: p, where: w, statement: s, chapter: c}\n"
            "- {id: a.b, paper: p, where: w, statement: s, chapter: c}\n",
            "twice",
        ),
        ("{}\n", "list"),
    ],
)
def test_a_malformed_registry_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "claims.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        gni_ledger.load_registry(path)


# --- the rendered ledger: one click from a claim to its cell -------------------------------


def _rendered(page: str) -> str:
    path = HTML / f"{page}.html"
    if not path.exists():
        pytest.skip(f"{path} not built; run `make book` first")
    return path.read_text(encoding="utf-8")


def test_every_checked_claim_links_to_its_cell_and_shows_a_measurement() -> None:
    ledger = _rendered("book/ledger")
    entries = gni_ledger.load_registry(BOOK / "claims.yml")
    for entry in entries:
        claim_id = entry["id"]
        assert claim_id in ledger, f"{claim_id} is missing from the rendered ledger"
        label = gni_ledger.target_label(claim_id)
        page = entry["chapter"].rsplit("/", 1)[-1]
        href = f'href="{page}.html#{label}"'
        assert href in ledger, f"the ledger row of {claim_id} does not link to {page}.html#{label}"
        chapter_html = _rendered(entry["chapter"])
        assert f'id="{label}"' in chapter_html, f"{page}.html has no anchor {label}"
        row = ledger[ledger.index(href) :]
        row = row[: row.index("</tr>")]
        pasted = [text.strip() for text in re.findall(r'<span class="pasted-text">([^<]+)</span>', row)]
        assert len(pasted) == 2, f"the ledger row of {claim_id} should paste a verdict and a measurement: {pasted}"
        assert pasted[0] in gni_ledger.STATUSES, f"the ledger row of {claim_id} shows no computed verdict: {pasted[0]!r}"
        assert pasted[1], f"the ledger row of {claim_id} shows no measured result"


def test_the_anchor_sits_on_the_asserting_cell() -> None:
    """The target is followed directly by the tagged code cell in the rendered chapter."""
    entries = gni_ledger.load_registry(BOOK / "claims.yml")
    for entry in entries:
        html = _rendered(entry["chapter"])
        label = gni_ledger.target_label(entry["id"])
        after = html[html.index(f'id="{label}"') :][:4000]
        assert "cell_input" in after and f"claim: {entry['id']}" in after.replace("</span>", "").replace(
            '<span class="c1">', ""
        ), f"the anchor {label} is not followed by the cell tagged {entry['id']}"


def test_checking_section_is_the_heading_above_the_target() -> None:
    text = "# Title\n\n## Derivation\n\ntext\n\n### The lasso\n\n(claim-paper-claim)=\n\ncell\n\n## Later\n"
    assert gni_ledger.checking_section(text, "paper.claim") == "The lasso"
    assert gni_ledger.checking_section(text, "paper.other") is None


def test_summary_counts_the_glued_verdicts(tmp_path: Path) -> None:
    entries = [dict(_ENTRY), dict(_ENTRY, id="paper.other")]
    folder = tmp_path / "book"
    folder.mkdir()
    glue = {
        "verdict_paper_claim": {"data": {"text/plain": "'holds'"}},
        "verdict_paper_other": {"data": {"text/plain": "'did not reproduce'"}},
    }
    (folder / "99-test.glue.json").write_text(__import__("json").dumps(glue))
    verdicts = gni_ledger.read_verdicts(tmp_path, entries)
    assert verdicts == {"paper.claim": "holds", "paper.other": "did not reproduce"}
    line = gni_ledger.summary_line(entries, verdicts)
    assert line.endswith("1 holds, 1 did not reproduce.")
    # A verdict that is missing (or not one of the four) gives no counts at all, not wrong ones.
    del glue["verdict_paper_other"]
    (folder / "99-test.glue.json").write_text(__import__("json").dumps(glue))
    verdicts = gni_ledger.read_verdicts(tmp_path, entries)
    assert verdicts["paper.other"] is None
    assert "holds" not in gni_ledger.summary_line(entries, verdicts)


def test_every_chapter_closes_with_a_table_of_its_computed_verdicts() -> None:
    """The rendered {verdict-table} of each chapter pastes one measurement and one verdict per claim."""
    entries = gni_ledger.load_registry(BOOK / "claims.yml")
    by_chapter: dict[str, list[str]] = {}
    for entry in entries:
        by_chapter.setdefault(entry["chapter"], []).append(entry["id"])
    for chapter, claim_ids in by_chapter.items():
        html = _rendered(chapter)
        assert "gni-verdict-table" in html, f"{chapter} has no verdict table"
        table = html[html.index("gni-verdict-table") :]
        table = table[: table.index("</table>")]
        pasted = [text.strip() for text in re.findall(r'<span class="pasted-text">([^<]+)</span>', table)]
        assert len(pasted) == 2 * len(claim_ids), f"{chapter}: expected a measurement and a verdict per claim, got {pasted}"
        verdicts = pasted[1::2]
        assert all(v in gni_ledger.STATUSES for v in verdicts), f"{chapter}: not computed verdicts: {verdicts}"
        for claim_id in claim_ids:
            assert f"#{gni_ledger.target_label(claim_id)}" in table, f"{chapter}: the table does not link {claim_id}"


def test_the_verdict_table_rows_paste_the_chapters_own_glue() -> None:
    rows = "\n".join(gni_ledger.verdict_rows([dict(_ENTRY)]))
    assert f"{{glue:text}}`{gni_ledger.verdict_key(_ENTRY['id'])}:s`" in rows
    assert f"{{glue:text}}`{gni_ledger.glue_key(_ENTRY['id'])}:s`" in rows
    assert _ENTRY["statement"] in rows and "::" not in rows

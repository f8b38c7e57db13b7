"""Sphinx extension: the claims ledger, rendered from ``book/claims.yml``.

The registry lists every claim of the four papers that the book checks (see the
comment at the top of ``book/claims.yml`` for its fields). The ``{claims-ledger}``
directive turns it into a table: one row a claim, with a link to the target
``(claim-<id>)=`` that sits just before the chapter cell checking it, the verdict
that the chapter computed and glued under ``verdict_<id>`` when it executed, and
the measured result it glued under ``ledger_<id>``. The registry types no status:
a verdict is computed (``gni_lib.verdicts``), never written down.

``{verdict-table}`` closes every chapter: the same rows for the claims whose
``chapter`` is that page (claim, what the paper says, what we measured, verdict),
from the page's own glue. A page that checks no claim cannot have one.

Both tables have a column "At larger scale": the verdict and measured result of the
recorded run in ``book/results/paper.json`` (``make results``), with its preset,
device, commit and date, marked stale where the chapter or gni_lib changed since
(``gni_results.staleness``), or why the claim was not run. Below a chapter's table,
a note names each claim whose recorded verdict differs from the one this build computed.

The glued numbers live in the chapters, so the ledger page must be written again
whenever a chapter is; ``env-get-outdated`` marks it outdated on every build (it is
one cheap page). The same is done for the pages named in ``gni_always_reread``.

The registry loader and the naming rules are plain functions, imported by
``tests/test_ledger.py``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

if str(Path(__file__).parent) not in sys.path:  # the sibling module, also when loaded by file path
    sys.path.insert(0, str(Path(__file__).parent))
import gni_results  # noqa: E402

#: The recorded larger-scale run (``make results``), relative to the source folder.
RESULTS = "book/results/paper.json"

#: The verdicts a claim can have, in the order the ledger counts them (gni_lib.verdicts.VERDICTS).
STATUSES = ("holds", "holds approximately", "did not reproduce", "inconclusive")
REQUIRED = ("id", "paper", "where", "statement", "chapter")
OPTIONAL = ("note",)
_ID = re.compile(r"^[a-z][a-z0-9]*\.[a-z][a-z0-9_]*$")


def target_label(claim_id: str) -> str:
    """The MyST target a chapter puts before the cell that checks ``claim_id``."""
    return "claim-" + claim_id.replace(".", "-").replace("_", "-")


def glue_key(claim_id: str) -> str:
    """The glue key under which a chapter stores the measured result for ``claim_id``."""
    return "ledger_" + claim_id.replace(".", "_")


def verdict_key(claim_id: str) -> str:
    """The glue key under which a chapter stores the computed verdict for ``claim_id``."""
    return "verdict_" + claim_id.replace(".", "_")


def load_registry(path: str | Path) -> list[dict[str, str]]:
    """Read and validate the registry; raise ``ValueError`` naming the entry and field."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of claims, got {type(data).__name__}")
    seen: set[str] = set()
    entries = []
    for index, entry in enumerate(data):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(entry).__name__}")
        if "status" in entry:
            raise ValueError(
                f"{where} ({entry.get('id', '?')}): remove field 'status': a claim's verdict is "
                "computed by its chapter and glued as verdict_<id>, never typed in the registry"
            )
        unknown = set(entry) - set(REQUIRED) - set(OPTIONAL)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
        for field in REQUIRED:
            value = entry.get(field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where} ({entry.get('id', '?')}): field {field!r} must be a non-empty string")
        claim_id = entry["id"]
        if not _ID.match(claim_id):
            raise ValueError(f"{where}: id {claim_id!r} must look like 'paper.claim' (lower case)")
        if claim_id in seen:
            raise ValueError(f"{where}: id {claim_id!r} appears twice")
        seen.add(claim_id)
        if "note" in entry and not isinstance(entry["note"], str):
            raise ValueError(f"{where} ({claim_id}): field 'note' must be a string")
        entries.append({key: str(value) for key, value in entry.items()})
    return entries


_HEADING = re.compile(r"^(#{2,4}) +(.+?) *$", re.M)


def checking_section(source_text: str, claim_id: str) -> str | None:
    """The title of the (sub)section that holds the claim's target, or None if there is no target."""
    target = f"({target_label(claim_id)})="
    position = source_text.find(target)
    if position < 0:
        return None
    headings = [m.group(2) for m in _HEADING.finditer(source_text, 0, position)]
    return headings[-1] if headings else None


def load_results(root: Path, entries: list[dict[str, str]]) -> tuple[dict | None, dict[str, list[str]]]:
    """The recorded run (None if there is none) and, per chapter run, what changed since."""
    data = gni_results.load(root / RESULTS, [entry["id"] for entry in entries])
    return data, (gni_results.staleness(data, root) if data else {})


def ledger_rows(entries: list[dict[str, str]], root: Path, ledger_doc: str) -> list[str]:
    """The ledger as a MyST ``list-table``, one row a claim.

    Five columns: the claim (id, linked to its asserting cell, with the paper and
    the place in it), the statement (with the note), the computed verdict (with the
    chapter that checks it), the measured result, and the recorded larger-scale result.
    """
    results, stale = load_results(root, entries)
    lines = [
        "```{list-table}",
        ":header-rows: 1",
        ":widths: 18 30 14 20 18",
        ":width: 100%",
        ":class: gni-ledger",
        "",
        "* - Claim",
        "  - Statement",
        "  - Verdict",
        "  - Measured",
        "  - At larger scale",
    ]
    ledger_dir = os.path.dirname(ledger_doc)
    for entry in entries:
        claim_id, chapter = entry["id"], entry["chapter"]
        source = root / f"{chapter}.md"
        if not source.exists():
            raise ExtensionError(f"claims ledger: {claim_id} is checked in {chapter}.md, which does not exist")
        link = f"{{ref}}`{claim_id} <{target_label(claim_id)}>`"
        checked = f"{{doc}}`/{chapter}`"
        section = checking_section(source.read_text(encoding="utf-8"), claim_id)
        if section:
            checked += f", section “{section.replace('`', '')}”"
        relative = os.path.relpath(f"{chapter}.md", ledger_dir or ".")
        measured = f"{{glue:text}}`{relative}::{glue_key(claim_id)}:s`"
        shown_status = f"{{glue:text}}`{relative}::{verdict_key(claim_id)}:s`"
        statement = entry["statement"]
        if entry.get("note"):
            statement += f" *({entry['note']})*"
        lines += [f"* - {link}", "", f"    {{cite:t}}`{entry['paper']}`, {entry['where']}"]
        lines.append(f"  - {statement}")
        lines += [f"  - {shown_status}", "", f"    in {checked}"]
        lines.append(f"  - {measured}")
        lines.append(f"  - {gni_results.cell_text(claim_id, results, stale)}")
    lines.append("```")
    return lines


def read_verdicts(glue_folder: Path, entries: list[dict[str, str]]) -> dict[str, str | None]:
    """The verdict each chapter glued when it executed, read from myst-nb's glue caches (None if absent)."""
    verdicts: dict[str, str | None] = {}
    for entry in entries:
        path = glue_folder / f"{entry['chapter']}.glue.json"
        value = None
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            text = data.get(verdict_key(entry["id"]), {}).get("data", {}).get("text/plain")
            if isinstance(text, str):
                value = text.strip().strip("'\"")
        verdicts[entry["id"]] = value
    return verdicts


def summary_line(entries: list[dict[str, str]], verdicts: dict[str, str | None] | None = None) -> str:
    """"31 claims: 16 holds, ...", counted from the computed verdicts (only the total while any is missing)."""
    if not verdicts or any(verdicts.get(entry["id"]) not in STATUSES for entry in entries):
        return f"{len(entries)} claims, each with the verdict its chapter computed when it executed."
    counts = Counter(verdicts[entry["id"]] for entry in entries)
    parts = [f"{counts[status]} {status}" for status in STATUSES if counts[status]]
    return f"{len(entries)} claims, verdicts as computed by the chapters in this build: " + ", ".join(parts) + "."


class ClaimsLedgerDirective(SphinxDirective):
    """``{claims-ledger}``: the registry as a table (no arguments, no content)."""

    has_content = False
    required_arguments = 0

    def run(self) -> list[nodes.Node]:
        root = Path(self.env.srcdir)
        registry = root / self.config.gni_claims_registry
        self.env.note_dependency(str(registry))
        try:
            entries = load_registry(registry)
        except ValueError as error:
            raise self.error(str(error)) from error
        glue_folder = Path(self.env.mystnb_config.output_folder)
        self.env.note_dependency(str(root / RESULTS))
        lines = [summary_line(entries, read_verdicts(glue_folder, entries)), ""]
        try:
            lines += ledger_rows(entries, root, self.env.docname)
        except ValueError as error:
            raise self.error(str(error)) from error
        container = nodes.container(classes=["gni-claims-ledger"])
        self.state.nested_parse(StringList(lines, source=str(registry)), self.content_offset, container)
        return [container]


def verdict_rows(
    entries: list[dict[str, str]], results: dict | None = None, stale: dict[str, list[str]] | None = None
) -> list[str]:
    """A chapter's closing verdict table as a MyST ``list-table``: claim, paper, measured, verdict, larger scale.

    The measured result and the verdict are the chapter's own glued ``ledger_<id>`` and
    ``verdict_<id>``, so the table shows what this execution computed; the last column
    is the recorded larger-scale run (:func:`gni_results.cell_text`).
    """
    lines = [
        "```{list-table}",
        ":header-rows: 1",
        ":widths: 16 30 24 11 19",
        ":width: 100%",
        ":class: gni-verdicts",
        "",
        "* - Claim",
        "  - What the paper says",
        "  - What we measured",
        "  - Verdict",
        "  - At larger scale",
    ]
    for entry in entries:
        claim_id = entry["id"]
        lines += [
            f"* - {{ref}}`{claim_id} <{target_label(claim_id)}>`",
            "",
            f"    {{cite:t}}`{entry['paper']}`, {entry['where']}",
            f"  - {entry['statement']}",
            f"  - {{glue:text}}`{glue_key(claim_id)}:s`",
            f"  - {{glue:text}}`{verdict_key(claim_id)}:s`",
            f"  - {gni_results.cell_text(claim_id, results, stale or {})}",
        ]
    lines.append("```")
    return lines


def changed_with_scale(
    entries: list[dict[str, str]], quick: dict[str, str | None], results: dict | None, stale: dict[str, list[str]]
) -> list[str]:
    """A MyST note naming each claim whose recorded larger-scale verdict differs from this build's."""
    items = []
    for entry in entries:
        claim_id = entry["id"]
        record = (results or {}).get("claims", {}).get(claim_id)
        if not record or record["status"] != "run" or quick.get(claim_id) in (None, record["verdict"]):
            continue
        run = results["chapters"][record["chapter"]]
        off = gni_results.settings_off_paper(record["settings"])
        sizes = ("at the paper's settings" if not off else
                 f"at the {run['scale']} preset, where these sizes differ from the paper's: "
                 + "; ".join(f"`` {line} ``" for line in off))
        items.append(
            f"- **{claim_id}**: {record['verdict']} at larger scale, {quick[claim_id]} at the quick preset of this "
            f"page. The recorded run measured {gni_results.escape(record['measured'])}, {sizes}; "
            f"{gni_results.escape(run['device'])}, "
            f"commit {run['commit']}, {run['date']}, {run['wall_seconds']:.0f} s for the whole lecture."
            + (f" **Stale**: the {' and '.join(stale[record['chapter']])} changed since."
               if stale.get(record["chapter"]) else "")
        )
    if not items:
        return []
    return ["", "```{admonition} The verdict changes with scale", ":class: warning", "", *items, "```"]


def _page_verdicts(directive: SphinxDirective, entries: list[dict[str, str]]) -> dict[str, str | None]:
    """The verdicts this page glued in this execution (myst-nb's client holds them while it renders)."""
    element_renderer = directive.state.document.attributes.get("nb_renderer")
    try:
        glued = element_renderer.renderer.nb_client.glue_data or {}
    except (AttributeError, KeyError):  # not a notebook page
        glued = {}
    found: dict[str, str | None] = {}
    for entry in entries:
        value = glued.get(verdict_key(entry["id"]))
        text = value.get("data", {}).get("text/plain") if isinstance(value, dict) else None
        found[entry["id"]] = text.strip().strip("'\"") if isinstance(text, str) else None
    return found


class VerdictTableDirective(SphinxDirective):
    """``{verdict-table}``: the claims this chapter checks, with its glued results (closes a chapter)."""

    has_content = False
    required_arguments = 0

    def run(self) -> list[nodes.Node]:
        registry = Path(self.env.srcdir) / self.config.gni_claims_registry
        self.env.note_dependency(str(registry))
        try:
            entries = load_registry(registry)
        except ValueError as error:
            raise self.error(str(error)) from error
        mine = [entry for entry in entries if entry["chapter"] == self.env.docname]
        if not mine:
            raise self.error(
                f"verdict-table: no claim in {self.config.gni_claims_registry} names chapter "
                f"{self.env.docname!r}; set the claims' chapter field, or remove the table"
            )
        root = Path(self.env.srcdir)
        self.env.note_dependency(str(root / RESULTS))
        try:
            results, stale = load_results(root, entries)
        except ValueError as error:
            raise self.error(str(error)) from error
        lines = verdict_rows(mine, results, stale)
        lines += changed_with_scale(mine, _page_verdicts(self, mine), results, stale)
        container = nodes.container(classes=["gni-verdict-table"])
        self.state.nested_parse(StringList(lines, source=str(registry)), self.content_offset, container)
        return [container]


def _always_outdated(app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    return [doc for doc in app.config.gni_always_reread if doc in env.found_docs]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("gni_claims_registry", "book/claims.yml", "env")
    app.add_config_value("gni_always_reread", [], "env")
    app.add_directive("claims-ledger", ClaimsLedgerDirective)
    app.add_directive("verdict-table", VerdictTableDirective)
    app.connect("env-get-outdated", _always_outdated)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

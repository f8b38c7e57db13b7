"""The recorded large-scale run: ``book/results/paper.json``, its schema and its staleness.

``make results`` (``benchmarks/results.py``) executes chapters at a larger preset than
the quick one the book is built at (``GNI_SCALE=paper`` on an accelerator,
``GNI_SCALE=large`` on a CPU, see :mod:`gni_lib.scale`) and records, per chapter,
its provenance and, per claim, the result the chapter glued (``result_<id>``, from
``gni_lib.record_claim``): verdict, measured summary, intervals, seeds and the
sizes it ran at. The file is committed; the build only reads it.

A chapter's record holds the hashes of the chapter source and of ``gni_lib/`` it
ran on. :func:`staleness` compares them with the files as they are now, so a row
whose chapter or library changed since the run is marked stale by computation;
the file itself never says "stale".

Used by ``book/_ext/gni_ledger.py`` (the "larger scale" column), by
``benchmarks/results.py`` and by ``tests/test_results.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: The verdicts a claim can have (gni_lib.verdicts.VERDICTS).
VERDICTS = ("holds", "holds approximately", "did not reproduce", "inconclusive")
SCHEMA = 1
SCALES = ("large", "paper")
RUN_FIELDS = ("scale", "commit", "date", "device", "torch", "python", "threads", "wall_seconds", "hashes",
              "failing_cells", "settings")
CLAIM_FIELDS = ("verdict", "measured", "intervals", "seeds", "level", "settings")


def digest(root: Path, paths: list[Path]) -> str:
    """A short SHA-256 of the files (folders: their ``*.py``), their paths relative to ``root`` included."""
    h = hashlib.sha256()
    for path in paths:
        if not path.exists():
            h.update(b"missing\0" + str(path.relative_to(root)).encode() + b"\0")
            continue
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            h.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def source_hashes(root: Path, chapter: str) -> dict[str, str]:
    """``{"chapter": ..., "gni_lib": ...}``: the hashes of ``book/<chapter>.md`` and of ``gni_lib/``."""
    return {
        "chapter": digest(root, [root / "book" / f"{chapter}.md"]),
        "gni_lib": digest(root, [root / "gni_lib"]),
    }


def _fail(where: str, message: str) -> None:
    raise ValueError(f"book/results/paper.json: {where}: {message}")


def _check_run(name: str, record: Any) -> None:
    where = f"chapter {name!r}"
    if not isinstance(record, dict) or record.get("status") not in ("run", "not run"):
        _fail(where, "needs status 'run' or 'not run'")
    if "stale" in record:
        _fail(where, "staleness is computed from the hashes, never recorded")
    if record["status"] == "not run":
        if not isinstance(record.get("reason"), str) or not record["reason"].strip():
            _fail(where, "a chapter not run needs its reason")
        return
    missing = [f for f in RUN_FIELDS if f not in record]
    if missing:
        _fail(where, f"missing field(s) {missing}")
    if record["scale"] not in SCALES:
        _fail(where, f"scale must be one of {SCALES}, got {record['scale']!r}")
    if set(record["hashes"]) != {"chapter", "gni_lib"}:
        _fail(where, "hashes must be {'chapter', 'gni_lib'}")
    if not isinstance(record["wall_seconds"], (int, float)) or record["wall_seconds"] <= 0:
        _fail(where, "wall_seconds must be positive")


def _check_claim(claim: str, record: Any, chapters: dict[str, Any]) -> None:
    where = f"claim {claim!r}"
    if not isinstance(record, dict) or record.get("status") not in ("run", "not run"):
        _fail(where, "needs status 'run' or 'not run'")
    if record.get("chapter") not in chapters:
        _fail(where, f"its chapter {record.get('chapter')!r} has no record")
    if "stale" in record:
        _fail(where, "staleness is computed from the hashes, never recorded")
    if record["status"] == "not run":
        if not isinstance(record.get("reason"), str) or not record["reason"].strip():
            _fail(where, "a claim not run needs its reason")
        return
    if chapters[record["chapter"]]["status"] != "run":
        _fail(where, "has a result but its chapter was not run")
    missing = [f for f in CLAIM_FIELDS if f not in record]
    if missing:
        _fail(where, f"missing field(s) {missing}")
    if record["verdict"] not in VERDICTS:
        _fail(where, f"verdict must be one of {VERDICTS}, got {record['verdict']!r}")
    for low, high in record["intervals"]:
        if not low <= high:
            _fail(where, f"interval [{low}, {high}] has low > high")


def load(path: Path, claim_ids: list[str] | None = None) -> dict[str, Any] | None:
    """Read and check the recorded run; ``None`` if there is no file.

    With ``claim_ids``, every one of them must have a record (``not run`` with a
    reason is a record) and no other claim may.

    Raises:
        ValueError: naming the chapter or claim whose record breaks the schema.
    """
    path = Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        _fail("top level", f"schema must be {SCHEMA}")
    chapters, claims = data.get("chapters"), data.get("claims")
    if not isinstance(chapters, dict) or not isinstance(claims, dict):
        _fail("top level", "needs the mappings 'chapters' and 'claims'")
    for name, record in chapters.items():
        _check_run(name, record)
    for claim, record in claims.items():
        _check_claim(claim, record, chapters)
    if claim_ids is not None:
        missing, extra = set(claim_ids) - set(claims), set(claims) - set(claim_ids)
        if missing or extra:
            _fail("claims", f"missing {sorted(missing)}, unknown {sorted(extra)}")
    return data


def staleness(data: dict[str, Any], root: Path) -> dict[str, list[str]]:
    """Per chapter that was run: what changed since the run (``[]``: up to date; ``"chapter"``, ``"gni_lib"``)."""
    now_lib = digest(root, [root / "gni_lib"])
    out: dict[str, list[str]] = {}
    for name, record in data["chapters"].items():
        if record["status"] != "run":
            continue
        source = root / "book" / f"{name}.md"
        changed = []
        if not source.exists() or digest(root, [source]) != record["hashes"]["chapter"]:
            changed.append("chapter")
        if now_lib != record["hashes"]["gni_lib"]:
            changed.append("gni_lib")
        out[name] = changed
    return out


def settings_off_paper(settings: list[dict[str, Any]]) -> list[str]:
    """The source lines of the sizes that were not the paper's, with the value used and the paper's."""
    return [f"{s['line']} → {s['value']!r} (paper: {s['paper']!r})" for s in settings if not s.get("is_paper")]


def escape(text: str) -> str:
    """Text from a run, safe inside MyST: characters that would start markup are escaped."""
    for char in "\\`*_$[]<>{}|":
        text = text.replace(char, "\\" + char)
    return text


def cell_text(claim: str, data: dict[str, Any] | None, stale: dict[str, list[str]]) -> str:
    """The ledger's "larger scale" cell for one claim: verdict, numbers and provenance, or why not run."""
    if data is None or claim not in data["claims"]:
        return "not run: no recorded run (`make results`)"
    record = data["claims"][claim]
    if record["status"] != "run":
        return f"not run: {escape(record['reason'])}"
    run = data["chapters"][record["chapter"]]
    sizes = "paper settings" if not settings_off_paper(record["settings"]) else f"{run['scale']} preset, not the paper's sizes"
    text = (f"**{record['verdict']}**: {escape(record['measured'])} ({sizes}; {escape(run['device'])}, "
            f"commit {run['commit']}, {run['date']})")
    changed = stale.get(record["chapter"], [])
    if changed:
        text += f" **stale**: {' and '.join(changed)} changed since this run"
    return text

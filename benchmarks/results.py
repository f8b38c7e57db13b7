"""Run chapters at a larger preset and record every claim's result in ``book/results/paper.json``.

``make results`` runs this. It is not part of ``make test``.

Each chosen chapter is executed once, at random stream 0, with
``GNI_SCALE=paper`` where an accelerator is found and ``GNI_SCALE=large`` on a
CPU (``--scale`` overrides; see ``gni_lib.scale``), with errors allowed. From the
executed notebook it reads what ``gni_lib.record_claim`` glued under
``result_<claim id>``: verdict, measured summary, intervals, seeds and the sizes
the chapter ran at (each with the paper's value). Per chapter it records the
provenance: commit, date, device, torch and Python versions, threads, wall time,
the cells that failed, and the hashes of the chapter and of ``gni_lib/`` (so that
the ledger can compute which rows went stale).

Chapters not run keep their earlier record if there is one, else they are
recorded as ``not run`` with ``--reason``; every claim of ``book/claims.yml``
appears in the file. ``--out`` writes elsewhere (a pilot run); ``--scale quick``
(pilots only) writes the raw results there without merging. ``--merge FILE ...``
takes the chapters that were run from other files of the same schema (runs made
side by side) into ``--out`` and runs nothing.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "book" / "_ext"))
sys.path.insert(0, str(Path(__file__).parent))
import notebooks  # noqa: E402
import gni_results  # noqa: E402
from gni_ledger import load_registry  # noqa: E402

BOOK = REPO / "book"
OUTPUT = BOOK / "results" / "paper.json"
RECORD_MIME = "application/papermill.record/text/plain"
DEFAULT_REASON = (
    "not in this run: the CPU hour went to the chapters with a claim whose quick verdict is not "
    "'holds'; the paper preset needs an accelerator"
)


def _glued_results(notebook: object) -> dict[str, dict]:
    found = {}
    for cell in notebook.cells:  # type: ignore[attr-defined]
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name", "")
            text = output.get("data", {}).get(RECORD_MIME)
            if name.startswith("result_") and text is not None:
                record = json.loads(ast.literal_eval(text))
                found[record["claim"]] = record
    return found


def _device() -> tuple[str, str]:
    import torch

    from gni_lib import get_device

    device = get_device()
    if device.type == "cuda":
        return device.type, torch.cuda.get_device_name(device)
    return device.type, f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_chapter(stem: str, scale: str, timeout: int) -> dict:
    """Execute one chapter at ``scale``; return its run record and the claims it glued."""
    import torch

    path = BOOK / f"{stem}.md"
    hashes = gni_results.source_hashes(REPO, stem)  # before the run: what it ran on
    commit = _commit(stem)
    run = notebooks.execute(path, {"GNI_SCALE": scale, "GNI_SEED": "0"}, timeout)
    failing = [f"code cell {f['cell']}: {f['error']}" for f in run["failing"]]
    if run["unexecuted"]:
        failing.append(f"{run['unexecuted']} code cell(s) never ran")
    if run["crashed"]:
        failing.append(run["crashed"])
    claims = _glued_results(run["notebook"])
    settings = max((c["settings"] for c in claims.values()), key=len, default=[])
    kind, name = _device()
    record = {
        "status": "run", "scale": scale, "commit": commit, "date": _dt.date.today().isoformat(),
        "device": name, "torch": torch.__version__, "python": platform.python_version(),
        "threads": int(os.environ["OMP_NUM_THREADS"]) if kind == "cpu" else None,
        "wall_seconds": round(run["seconds"], 1), "hashes": hashes, "failing_cells": failing, "settings": settings,
    }
    return {"chapter": stem, "run": record, "claims": claims}


def _job(args: tuple[str, str, int]) -> dict:
    result = run_chapter(*args)
    verdicts = ", ".join(f"{c}: {r['verdict']}" for c, r in result["claims"].items())
    print(f"{result['chapter']}: {result['run']['wall_seconds']} s, {len(result['run']['failing_cells'])} failing; "
          f"{verdicts}", flush=True)
    return result


def _commit(stem: str) -> str:
    """HEAD, and whether the chapter or gni_lib differ from it (the hashes say exactly what ran)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", f"book/{stem}.md", "gni_lib"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")


def merge(old: dict | None, results: list[dict], entries: list[dict], reason: str, note: str | None = None) -> dict:
    """The new file: fresh records for the chapters run, earlier ones kept, ``not run`` for the rest."""
    chapters = dict(old["chapters"]) if old else {}
    claims = dict(old["claims"]) if old else {}
    for result in results:
        chapters[result["chapter"]] = result["run"]
        claims = {c: r for c, r in claims.items() if r["chapter"] != result["chapter"]}  # a rerun replaces all
        for claim, record in result["claims"].items():
            claims[claim] = {"chapter": result["chapter"], "status": "run",
                             **{k: record[k] for k in gni_results.CLAIM_FIELDS}}
    for entry in entries:
        stem = Path(entry["chapter"]).name
        chapters.setdefault(stem, {"status": "not run", "reason": reason})
        if entry["id"] not in claims or claims[entry["id"]]["chapter"] != stem:
            if chapters[stem]["status"] == "run":
                why = "its chapter ran but glued no result for it (see the chapter's failing cells)"
            else:
                why = chapters[stem]["reason"]
            claims[entry["id"]] = {"chapter": stem, "status": "not run", "reason": why}
    known = {e["id"] for e in entries}
    notes = list(old.get("notes", [])) if old else []
    if note and note not in notes:
        notes.append(note)
    return {
        "schema": gni_results.SCHEMA,
        "about": "written by make results (benchmarks/results.py); staleness is computed by the build",
        "notes": notes,
        "chapters": dict(sorted(chapters.items())),
        "claims": {k: claims[k] for k in sorted(claims) if k in known},
    }


def _merge_files(files: list[Path], out: Path, entries: list[dict], reason: str, note: str | None) -> int:
    ids = [e["id"] for e in entries]
    results = []
    for file in files:
        data = gni_results.load(file, ids)
        for stem, run in data["chapters"].items():
            if run["status"] == "run":
                claims = {c: r for c, r in data["claims"].items() if r["chapter"] == stem and r["status"] == "run"}
                results.append({"chapter": stem, "run": run, "claims": claims})
    old = gni_results.load(out) if out.exists() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merge(old, results, entries, reason, note), indent=1, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    gni_results.load(out, ids)
    print(f"merged {len(results)} chapter run(s) into {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="+", help="chapter name prefixes, e.g. 02 10")
    parser.add_argument("--scale", choices=("quick", *gni_results.SCALES),
                        help="default: paper on an accelerator, else large (quick: pilots, with --out)")
    parser.add_argument("--merge", nargs="+", type=Path, help="files whose chapter runs to take into --out")
    parser.add_argument("--jobs", type=int, default=2, help="chapters executed at once")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds a cell may take")
    parser.add_argument("--reason", default=DEFAULT_REASON, help="recorded for the chapters not run")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    parser.add_argument("--note", help="a sentence on how this run was made, kept in the file's notes")
    args = parser.parse_args()
    notebooks.stop_children_on_signal()
    entries = load_registry(BOOK / "claims.yml")
    if args.merge:
        return _merge_files(args.merge, args.out, entries, args.reason, args.note)
    if not args.chapters:
        parser.error("--chapters is needed unless --merge is given")
    stems = sorted(p.stem for p in BOOK.glob("[0-9][0-9]-*.md") if any(p.stem.startswith(x) for x in args.chapters))
    if not stems:
        raise SystemExit(f"no chapter matches {args.chapters}")
    # One thread a chapter where chapters run side by side, set before torch is imported here.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // max(1, args.jobs))))
    scale = args.scale or ("paper" if _device()[0] == "cuda" else "large")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_job, [(s, scale, args.timeout) for s in stems]))
    if scale == "quick":
        if args.out == OUTPUT:
            parser.error("--scale quick is for pilots: give --out")
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return 0
    old = gni_results.load(args.out) if args.out.exists() else None
    data = merge(old, results, entries, args.reason, args.note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    gni_results.load(args.out, [e["id"] for e in entries])  # what was written passes the schema
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

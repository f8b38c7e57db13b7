"""Run every chapter under several random streams and tabulate failing cells and verdicts.

``make robustness`` runs this. Each chapter is executed once per stream
(``GNI_SEED=s``), in its own folder, with errors allowed, so that one failing cell
does not hide the next. From each run it records the cells that raised, the
verdicts the chapter glued (``verdict_<claim id>``), and the wall time. The
results go to ``benchmarks/ROBUSTNESS.md`` with the commit and the date:

* chapters x streams: failing cells (and seconds);
* claims x streams: verdicts, and whether they agree.

Per-run results are kept in ``_build/robustness/`` so that ``--chapters`` can rerun
a few chapters and the table is rebuilt from all of them; a run of a chapter or
library other than the current one is marked stale.

It is not part of ``make test``: five streams of seventeen chapters take about half an
hour on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import notebooks  # noqa: E402

BOOK = REPO / "book"
CACHE = REPO / "_build" / "robustness"
OUTPUT = REPO / "benchmarks" / "ROBUSTNESS.md"
RECORD_MIME = "application/papermill.record/text/plain"


def chapters(patterns: list[str] | None) -> list[Path]:
    found = sorted(BOOK.glob("[0-9][0-9]-*.md"))
    if patterns:
        found = [p for p in found if any(p.stem.startswith(x) or p.stem == x for x in patterns)]
    if not found:
        raise SystemExit(f"no chapter matches {patterns}")
    return found


def _digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def source_key(chapter: Path) -> str:
    """A hash of the chapter and the library it runs on."""
    return _digest([chapter, REPO / "gni_lib"])


def _glued(output: dict) -> tuple[str, str] | None:
    name = output.get("metadata", {}).get("scrapbook", {}).get("name")
    if name is None:
        return None
    text = output.get("data", {}).get(RECORD_MIME)
    if text is None:
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return name, text


def run_chapter(chapter: str, stream: int, timeout: int) -> dict:
    """Execute one chapter at one stream; return its failing cells, verdicts and time."""
    path = Path(chapter)
    run = notebooks.execute(path, {"GNI_SEED": str(stream)}, timeout)
    verdicts = {}
    for cell in run["notebook"].cells:
        for output in cell.get("outputs", []):
            glued = _glued(output)
            if glued and glued[0].startswith("verdict_"):
                verdicts[glued[0][len("verdict_"):]] = glued[1]
    return {
        "chapter": path.stem,
        "stream": stream,
        "seconds": round(run["seconds"], 1),
        "failing": run["failing"],
        "crashed": run["crashed"],
        "unexecuted": run["unexecuted"],
        "verdicts": verdicts,
        "source_key": source_key(path),
    }


def bad_cells(result: dict) -> int:
    """Cells that raised, plus those that never ran (at least one if the run crashed)."""
    return len(result["failing"]) + max(result.get("unexecuted", 0), 1 if result["crashed"] else 0)


def _job(args: tuple[str, int, int]) -> dict:
    chapter, stream, timeout = args
    result = run_chapter(chapter, stream, timeout)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"{result['chapter']}--{stream}.json").write_text(json.dumps(result, indent=1))
    status = "ok" if not bad_cells(result) else f"{bad_cells(result)} failing or not run"
    print(f"{result['chapter']} stream {stream}: {status}, {result['seconds']} s", flush=True)
    return result


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "book", "gni_lib"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def write_table(streams: list[int], jobs: int) -> str:
    results = [json.loads(p.read_text()) for p in sorted(CACHE.glob("*.json"))]
    current = {p.stem: source_key(p) for p in chapters(None)}
    results = [r for r in results if r["chapter"] in current and r["stream"] in streams]
    by_key = {(r["chapter"], r["stream"]): r for r in results}
    lines = [
        "# Robustness of the book's verdicts across random streams",
        "",
        "Written by `make robustness` (`benchmarks/robustness.py`): every chapter executed",
        "at the quick preset under each random stream `GNI_SEED=s`, with errors allowed.",
        f"Commit {_commit()}, {_dt.date.today().isoformat()}, device "
        f"{os.environ.get('GNI_DEVICE', 'default (get_device())')}, streams {', '.join(map(str, streams))}.",
        "",
        "## Failing cells per chapter and stream",
        "",
        "Each entry: failing cells (with those that never ran), and the chapter's execution time",
        f"in seconds (kernel start included; {jobs} chapter(s) ran at once on {os.cpu_count()} cores"
        + (", so times are upper bounds)." if jobs > 1 else ")."),
        "*stale*: the run was of an older chapter or library than the current one.",
        "",
        "| chapter | " + " | ".join(f"stream {s}" for s in streams) + " |",
        "|---|" + "---|" * len(streams),
    ]
    total_failing, stale_runs = 0, 0
    for chapter in sorted(current):
        row = [chapter]
        for s in streams:
            r = by_key.get((chapter, s))
            if r is None:
                row.append("not run")
                continue
            failing = bad_cells(r)
            total_failing += failing
            stale = r["source_key"] != current[chapter]
            stale_runs += stale
            row.append(f"{failing} ({r['seconds']:.0f} s)" + (" *stale*" if stale else ""))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Failing cells in all: **{total_failing}**; stale runs: {stale_runs}.", ""]
    failures = [(r["chapter"], r["stream"], f) for r in results for f in r["failing"]]
    if failures:
        lines += ["Failing cells:", ""]
        for chapter, s, f in failures:
            lines.append(f"- {chapter}, stream {s}, code cell {f['cell']} (`{f['first_line']}`): {f['error']}")
        lines.append("")
    lines += [
        "## Verdicts per claim and stream",
        "",
        "| claim | chapter | " + " | ".join(f"stream {s}" for s in streams) + " | same in all |",
        "|---|---|" + "---|" * len(streams) + "---|",
    ]
    claims: dict[str, str] = {}
    for r in results:
        for claim in r["verdicts"]:
            claims.setdefault(claim, r["chapter"])
    disagreeing = 0
    for claim in sorted(claims, key=lambda c: (claims[c], c)):
        chapter = claims[claim]
        values = [by_key.get((chapter, s), {}).get("verdicts", {}).get(claim, "—") for s in streams]
        same = len(set(values)) == 1 and "—" not in values
        disagreeing += not same
        lines.append(f"| `{claim.replace('_', '.', 1)}` | {chapter} | " + " | ".join(values) + f" | {'yes' if same else '**no**'} |")
    lines += ["", f"Claims: {len(claims)}; verdicts that differ between streams: **{disagreeing}**.", ""]
    text = "\n".join(lines)
    OUTPUT.write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--chapters", nargs="*", help="chapter name prefixes, e.g. 05 08 (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="chapters executed at once")
    parser.add_argument("--timeout", type=int, default=900, help="seconds a cell may take")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from earlier runs")
    args = parser.parse_args()
    notebooks.stop_children_on_signal()
    if not args.table_only:
        jobs = [(str(c), s, args.timeout) for s in args.streams for c in chapters(args.chapters)]
        if args.jobs > 1:
            # One thread a chapter, so that parallel chapters do not fight over the cores.
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // args.jobs)))
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(_job, jobs))
    text = write_table(args.streams, args.jobs)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every ratio benchmark, print the table and write benchmarks/RESULTS.md.

Usage: `make bench` (or `.venv/bin/python benchmarks/run.py`). GNI_DEVICE picks
the device as everywhere else. Timings never enter the test suite.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the benchmark modules beside this file

import bench_core  # noqa: E402
import bench_ensemble  # noqa: E402
import bench_jacobian_penalty  # noqa: E402
import torch  # noqa: E402
from harness import machine_line, set_threads, time_side_by_side  # noqa: E402

from gni_lib import get_device  # noqa: E402

RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def jacobian_penalty_table(device: torch.device) -> list[str]:
    rows = [
        "| case | quantity | `jacobian_penalty` | per-example `autograd.functional.jacobian` | speed-up |",
        "|---|---|---|---|---|",
    ]
    for label, quantities in bench_jacobian_penalty.cases(device):
        for quantity, (fast, naive) in quantities.items():
            t = time_side_by_side({"fast": fast, "naive": naive}, device=device, rounds=11)
            ratio = t["naive"].median_s / t["fast"].median_s
            rows.append(
                f"| {label} | {quantity} | {t['fast'].median_s * 1e3:.2f} ms "
                f"| {t['naive'].median_s * 1e3:.2f} ms | {ratio:.0f}× |"
            )
    return rows


def main() -> None:
    set_threads()
    device = get_device()
    stamp = datetime.date.today().isoformat()
    lines = [
        f"### Measured {stamp} on {machine_line(device)}",
        "",
        "Median over interleaved rounds, after warm-up; float32.",
        "",
        *bench_core.tables(device),
        "",
        *bench_ensemble.tables(device),
        "",
        "#### `jacobian_penalty` vs the naive per-example loop",
        "",
        *jacobian_penalty_table(device),
    ]
    table = "\n".join(lines)
    print(table)
    text = RESULTS.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        section = f"{BEGIN}\n<!-- device: {device.type} -->\n{table}\n{END}"
        RESULTS.write_text(head + section + tail)
        print(f"\nwritten to {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()

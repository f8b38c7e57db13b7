"""Execute a chapter as a notebook, for ``make robustness`` and ``make results``; stop cleanly.

:func:`execute` runs one chapter (a jupytext MyST file) in a fresh kernel with errors
allowed and reports the cells that raised, a crash (a dead kernel, a timeout), and
the code cells that never ran: a run cut short is never mistaken for a clean one.

:func:`stop_children_on_signal` makes SIGTERM and SIGINT kill every process this one
started, pool workers and their kernels included, before it exits; without it a
killed run leaves kernels computing in the background.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def execute(path: Path, env: dict[str, str], timeout: int) -> dict[str, Any]:
    """Run ``path`` with ``env`` added to the environment; return the notebook, seconds and what went wrong.

    Keys: ``notebook``, ``seconds``, ``failing`` (one dict per cell that raised:
    ``cell``, ``first_line``, ``error``), ``crashed`` (``None`` or the error that
    stopped the run) and ``unexecuted`` (code cells that never ran).
    """
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    os.environ.update(env)
    client = NotebookClient(notebook, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    crashed = None
    try:
        client.execute()
    except Exception as error:  # a dead kernel or a timeout: record it, keep going
        first = str(error).splitlines()[0][:200] if str(error) else ""
        crashed = f"{type(error).__name__}: {first}"
    seconds = time.perf_counter() - start
    failing, unexecuted = [], 0
    for index, cell in enumerate(c for c in notebook.cells if c.cell_type == "code"):
        if cell.source.strip() and cell.get("execution_count") is None:
            unexecuted += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                first = cell.source.splitlines()[0] if cell.source else ""
                failing.append({"cell": index + 1, "first_line": first[:80],
                                "error": f"{output['ename']}: {output['evalue'][:200]}"})
    return {"notebook": notebook, "seconds": seconds, "failing": failing, "crashed": crashed,
            "unexecuted": unexecuted}


def _kill_children(signum: int, frame: object) -> None:
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=10)
    print(f"stopped by signal {signum}: killed {len(children)} child process(es); nothing more is recorded",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)


def stop_children_on_signal() -> None:
    """On SIGTERM or SIGINT, kill all descendant processes (workers, kernels) and exit."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _kill_children)

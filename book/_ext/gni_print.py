"""Print every chapter of the rendered book to its own PDF, with headless chromium.

``make pdf`` runs this after ``make book``: each numbered chapter page of
``_build/html`` is opened offline (every request that is not ``file://`` is
blocked), MathJax is given time to typeset, and chromium prints the page with the
theme's print stylesheet, plus ``PRINT_CSS`` (code wraps instead of being cut at
the margin), to ``_build/pdf/<chapter>.pdf``. No LaTeX is involved.

The browser helpers here (launch options, network blocking, waiting for MathJax)
are shared with ``tests/test_browser.py``.

Usage: ``python book/_ext/gni_print.py [--html _build/html] [--out _build/pdf]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("GNI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MATH_TIMEOUT_MS = 30_000

#: Added to every page before it is printed. The theme's code blocks scroll sideways
#: on screen (``white-space: pre``), which on paper cuts every line at the margin:
#: wrap them instead, breaking inside a word if a word alone is too long. Code cells
#: and their frames may break across pages, so that a block taller than what is left
#: of a page starts there instead of leaving an empty frame behind.
PRINT_CSS = """
pre, div.highlight pre, .cell_input pre, .cell_output pre, .output pre {
  white-space: pre-wrap !important;
  overflow-wrap: anywhere !important;
  word-break: break-all !important;
  overflow: visible !important;
  max-height: none !important;
}
div.highlight, div.cell, div.cell_input, div.cell_output, div.output, .highlight, pre {
  break-inside: auto !important;
  page-break-inside: auto !important;
  overflow: visible !important;
}
"""
_CHAPTER = re.compile(r"(^|/)\d\d-[^/]+$")


def toc_pages(toc_path: Path) -> list[str]:
    """Every document named in a _toc.yml, root first, in reading order."""
    toc = yaml.safe_load(toc_path.read_text())
    pages = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({key: value for key, value in toc.items() if key != "root"})
    return pages


def chapter_pages(toc_path: Path) -> list[str]:
    """The chapters (``NN-slug`` documents) of a _toc.yml, in reading order."""
    return [page for page in toc_pages(toc_path) if _CHAPTER.search(page)]


def launch(playwright):
    """Debian's chromium, headless, with the network-quiet flags this machine needs."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def block_network(page, blocked: list[str]) -> None:
    """Let ``file://`` requests through; abort and record every other one."""

    def route(route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", route)


def wait_for_math(page, timeout_ms: int = MATH_TIMEOUT_MS) -> None:
    """Wait, bounded, until MathJax has started and finished its first typeset."""
    page.wait_for_function(
        "() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=timeout_ms
    )
    page.evaluate("() => { MathJax.startup.promise.then(() => { window.__gniTypeset = true; }); }")
    page.wait_for_function("() => window.__gniTypeset === true", timeout=timeout_ms)


def print_chapters(html: Path, out: Path, toc_path: Path) -> list[Path]:
    """Print each chapter page under ``html`` to ``out``; return the PDFs written."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(
            f"chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium`, "
            "or point GNI_CHROMIUM at a chromium binary"
        )
    html, out = html.resolve(), out.resolve()
    pages = chapter_pages(toc_path)
    if not pages:
        raise SystemExit(f"{toc_path} names no chapter (NN-slug) pages")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for name in pages:
                source = html / f"{name}.html"
                if not source.exists():
                    raise SystemExit(f"{source} does not exist: run `make book` first")
                page = browser.new_page()
                blocked: list[str] = []
                block_network(page, blocked)
                page.goto(source.as_uri(), wait_until="load")
                if page.locator(".math").count():
                    wait_for_math(page)
                page.wait_for_function("() => [...document.images].every(img => img.complete)")
                if blocked:
                    raise SystemExit(f"{name}: asked the network for {blocked}")
                page.emulate_media(media="print")
                page.add_style_tag(content=PRINT_CSS)
                target = out / f"{Path(name).name}.pdf"
                page.pdf(
                    path=str(target),
                    format="A4",
                    print_background=True,
                    margin={"top": "18mm", "bottom": "18mm", "left": "15mm", "right": "15mm"},
                )
                page.close()
                written.append(target)
                print(f"gni_print: {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=REPO / "_build" / "html")
    parser.add_argument("--out", type=Path, default=REPO / "_build" / "pdf")
    parser.add_argument("--toc", type=Path, default=REPO / "_toc.yml")
    args = parser.parse_args(argv)
    print_chapters(args.html, args.out, args.toc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

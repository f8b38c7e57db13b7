"""Every page of the rendered book, opened in a real browser with no network.

Playwright drives Debian's chromium. Every request that is not ``file://`` is
blocked (and reported), so a page that needs the network to show its math,
images or scripts fails here. On every page listed in ``_toc.yml``:

* the page loads;
* math is typeset: MathJax has started (bounded wait on ``MathJax.startup.promise``),
  every math element holds an ``mjx-container`` and none is a TeX error;
* every ``img`` has ``naturalWidth > 0``;
* the console shows no error beyond the named allowlist below.

The book must have been built first (``make book``; ``make test`` does it).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The rendered book; GNI_BOOK_HTML points the check at another build (e.g. the student edition).
HTML = Path(os.environ.get("GNI_BOOK_HTML") or REPO / "_build" / "html")
TOC = Path(os.environ.get("GNI_BOOK_TOC") or REPO / "_toc.yml")

# Launch options, network blocking and the MathJax wait are shared with `make pdf`.
_spec = importlib.util.spec_from_file_location("gni_print", REPO / "book" / "_ext" / "gni_print.py")
gni_print = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gni_print)
CHROMIUM = gni_print.CHROMIUM

#: Console errors the book theme emits on every page, offline or not. Nothing else is allowed.
CONSOLE_ALLOWLIST = (
    "Identifier 'THEBE_JS_URL' has already been declared",  # sphinx-thebe loads its config twice
    "Got invalid theme mode",  # pydata-sphinx-theme reading an empty localStorage value
)

#: Pages that legitimately carry no mathematics.
PAGES_WITHOUT_MATH = {"book/bibliography", "book/status", "book/running", "book/ledger"}


def toc_pages() -> list[str]:
    """Every document named in _toc.yml, root first, in reading order."""
    return gni_print.toc_pages(TOC)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
            "(.ci/run does this), or point GNI_CHROMIUM at a chromium binary"
        )
    if not (HTML / "index.html").exists():
        pytest.fail(f"{HTML} has no index.html: run `make book` first")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = gni_print.launch(playwright)
        yield instance
        instance.close()


def _allowed(message: str) -> bool:
    return any(fragment in message for fragment in CONSOLE_ALLOWLIST)


@pytest.mark.book
@pytest.mark.parametrize("page_name", toc_pages())
def test_page_renders_offline(browser, page_name: str) -> None:
    path = HTML / f"{page_name}.html"
    assert path.exists(), f"{page_name} is in _toc.yml but {path} was not built"

    context = browser.new_context()
    page = context.new_page()
    blocked: list[str] = []
    errors: list[str] = []
    gni_print.block_network(page, blocked)
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))

    response = page.goto(path.as_uri(), wait_until="load")
    assert response is None or response.ok, f"{page_name}: loading failed"
    assert page.title(), f"{page_name}: page has no title"

    assert not blocked, f"{page_name}: asked the network for {blocked}"

    math_count = page.locator(".math").count()
    if page_name in PAGES_WITHOUT_MATH:
        pass
    else:
        assert math_count > 0, f"{page_name}: expected mathematics on this page, found none"
    if math_count:
        gni_print.wait_for_math(page)
        untypeset = page.evaluate(
            "() => [...document.querySelectorAll('.math')]"
            ".filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80))"
        )
        assert not untypeset, f"{page_name}: math left untypeset: {untypeset[:5]}"
        assert page.locator("mjx-container").count() >= math_count
        assert page.locator("mjx-merror").count() == 0, f"{page_name}: MathJax reports a TeX error"

    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=10_000)
    broken = page.evaluate(
        "() => [...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src)"
    )
    assert not broken, f"{page_name}: images that did not load: {broken}"

    assert not blocked, f"{page_name}: asked the network for {blocked}"
    unexpected = [e for e in errors if not _allowed(e)]
    assert not unexpected, f"{page_name}: console errors: {unexpected}"
    print(
        f"{page_name}: loaded, {math_count} math elements typeset, "
        f"{page.evaluate('document.images.length')} images, "
        f"{len(errors)} allowlisted console messages"
    )
    context.close()

"""Notebooks to download, launch links, the student edition and the printable chapters.

These read what ``make book``, ``make book-student`` and ``make pdf`` wrote (``make
test`` runs all three first). Solution text is found in the chapter sources by a plain
regular expression, independently of the extension that removes it, and each check is
also run against the full edition, where the same text must be found: a probe that
matches nothing there would prove nothing in the student edition.
"""

from __future__ import annotations

import html as html_lib
import importlib.util
import re
import unicodedata
from pathlib import Path

import jupytext
import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
FULL = REPO / "_build" / "html"
STUDENT = REPO / "_build" / "student" / "_build" / "html"
PDF = REPO / "_build" / "pdf"

_spec = importlib.util.spec_from_file_location("gni_editions", BOOK / "_ext" / "gni_editions.py")
gni_editions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gni_editions)

CHAPTERS = sorted(BOOK.glob("[0-9][0-9]-*.md"))
_CODE_CELL = re.compile(r"^```\{code-cell\}.*?^```", re.M | re.S)
_SOLUTION = re.compile(r"^(`{3,}|:{3,})\{solution-start\}.*?^(`{3,}|:{3,})\{solution-end\}", re.M | re.S)


def _words(text: str) -> str:
    """Lower-case words; ligatures a PDF's text may hold (ﬁ, ﬂ) are spelt out first."""
    return " ".join(re.findall(r"[a-z0-9]+", unicodedata.normalize("NFKC", text).lower()))


def _page_text(path: Path) -> str:
    raw = path.read_text(encoding="utf-8")
    raw = re.sub(r"<script.*?</script>|<style.*?</style>", " ", raw, flags=re.S)
    return _words(html_lib.unescape(re.sub(r"<[^>]+>", " ", raw)))


def solution_probes(source: str) -> list[str]:
    """Distinctive word sequences (8+ words) found in the solutions of a chapter source, and only there.

    A line that also occurs outside the solutions (a data-loading line repeated from the
    main text, say) is no evidence of a leak, so it is not a probe.
    """
    outside = _words(_SOLUTION.sub(" ", source))
    probes = []
    for block in _SOLUTION.finditer(source):
        for line in block.group(0).splitlines()[1:-1]:
            if line.startswith(("```", ":::", ":class:", ":label:", "#")):
                continue
            words = _words(line).split()
            if len(words) >= 8:
                probe = " ".join(words[:12])
                if probe not in outside:
                    probes.append(probe)
    return probes


def _need(path: Path, command: str) -> None:
    if not path.exists():
        pytest.skip(f"{path} not built: run `{command}` first")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_student_edition_has_no_solution_text(chapter: Path) -> None:
    page = f"book/{chapter.stem}.html"
    _need(STUDENT / page, "make book-student")
    _need(FULL / page, "make book")
    probes = solution_probes(chapter.read_text(encoding="utf-8"))
    assert probes, f"{chapter.name}: no solution text to look for (exercises need solutions)"
    full_text = _page_text(FULL / page)
    found_in_full = [p for p in probes if p in full_text]
    assert found_in_full, f"{chapter.name}: no probe matches the full edition, so the check would be empty"
    student_text = _page_text(STUDENT / page)
    leaked = [p for p in found_in_full if p in student_text]
    assert not leaked, f"{chapter.name}: solution text in the student edition: {leaked[:3]}"
    assert "solution is not included in the student edition" in student_text
    # Exercises stay.
    assert "exercise" in student_text


def test_student_edition_ships_no_sources_and_no_solution_nodes() -> None:
    _need(STUDENT / "index.html", "make book-student")
    assert not (STUDENT / "_sources").exists(), "the student edition must not copy the page sources"
    for page in STUDENT.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert 'class="solution' not in text and "solution-content" not in text, f"{page}: a solution node survived"


@pytest.mark.parametrize("edition", ["full", "student"])
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_offers_a_notebook(chapter: Path, edition: str) -> None:
    root = FULL if edition == "full" else STUDENT
    page = root / "book" / f"{chapter.stem}.html"
    _need(page, "make book" if edition == "full" else "make book-student")
    notebook_path = root / "_notebooks" / "book" / f"{chapter.stem}.ipynb"
    assert notebook_path.exists(), f"{notebook_path} was not written"
    notebook = nbformat.read(notebook_path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    source_cells = [c.source for c in jupytext.read(chapter, fmt="md:myst").cells if c.cell_type == "code"]
    cells = [c.source for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs for c in notebook.cells if c.cell_type == "code")
    if edition == "full":
        assert cells == source_cells, "the clean notebook must hold exactly the chapter's code cells"
    else:
        assert cells and set(cells) <= set(source_cells) and len(cells) < len(source_cells)
        text = _words(" ".join(c.source for c in notebook.cells))
        leaked = [p for p in solution_probes(chapter.read_text(encoding="utf-8")) if p in text]
        assert not leaked, f"student notebook {notebook_path.name} keeps solution text: {leaked[:3]}"
    html = page.read_text(encoding="utf-8")
    assert f"_notebooks/book/{chapter.stem}.ipynb" in html, "the page does not link its notebook"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_launch_buttons_open_notebooks_not_markdown(chapter: Path) -> None:
    page = FULL / "book" / f"{chapter.stem}.html"
    _need(page, "make book")
    html = html_lib.unescape(page.read_text(encoding="utf-8"))
    colab = re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', html)
    binder = re.findall(r'href="(https://mybinder\.org/[^"]+)"', html)
    assert colab and binder, "the chapter page has no Colab or Binder button"
    for url in colab + binder:
        assert url.endswith(f"book/{chapter.stem}.ipynb"), url
    # The executed notebook (copied by the theme) is offered too.
    assert (FULL / "_sources" / "book" / f"{chapter.stem}.ipynb").exists()


def test_strip_gated_solutions_by_hand() -> None:
    source = (
        "---\nkernelspec:\n  name: python3\n  display_name: Python 3\n---\n\n"
        "Before.\n\n```{solution-start} ex-1\n:class: dropdown\n```\n\nSecret prose.\n\n"
        "```{code-cell} ipython3\nsecret = 1\n```\n\n```{solution-end}\n```\n\nAfter.\n\n"
        "```{code-cell} ipython3\nkept = 2\n```\n"
    )
    notebook = gni_editions.strip_gated_solutions(jupytext.reads(source, fmt="md:myst"))
    text = "\n".join(c.source for c in notebook.cells)
    assert "Secret" not in text and "secret" not in text
    assert "Before." in text and "After." in text and "kept = 2" in text
    assert gni_editions.STUDENT_NOTE in text
    broken = source.replace("```{solution-end}\n```\n", "")
    with pytest.raises(ValueError, match="solution-end"):
        gni_editions.strip_gated_solutions(jupytext.reads(broken, fmt="md:myst"))


# --- printable chapters -----------------------------------------------------------------


def test_make_pdf_writes_one_pdf_per_chapter() -> None:
    _need(PDF, "make pdf")
    assert {path.stem for path in PDF.glob("*.pdf")} == {chapter.stem for chapter in CHAPTERS}


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_chapter_pdf_has_pages_text_math_and_figures(chapter: Path) -> None:
    from pypdf import PdfReader

    _need(PDF, "make pdf")
    reader = PdfReader(PDF / f"{chapter.stem}.pdf")
    assert len(reader.pages) >= 3, f"the chapter printed to only {len(reader.pages)} pages"
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    source = chapter.read_text(encoding="utf-8")
    title = re.search(r"^# (.+)$", source, re.M).group(1)
    assert _words(title) in _words(text), f"the title {title!r} is not in the PDF"
    for heading in ("Learning goals", "Exercises", "Verdicts"):
        assert heading in text, f"{heading!r} is not in the PDF"
    # Typeset math leaves glyphs, not TeX source: no display equation of the chapter's prose
    # may appear in the PDF's text as TeX (code cells may, so only the prose is probed).
    prose = _CODE_CELL.sub(" ", source)
    tex = [re.sub(r"\s+", "", line) for block in re.findall(r"\$\$(.*?)\$\$", prose, re.S)
           for line in block.splitlines() if len(re.findall(r"\\[A-Za-z]+", line)) >= 2]
    flat = re.sub(r"\s+", "", text)
    printed = [line for line in tex if line in flat]
    assert not printed, f"math was printed as TeX source: {printed[:2]}"
    images = sum(len(page.images) for page in reader.pages)
    assert images >= 1, "expected the chapter's figures in the PDF, found none"


def test_the_tex_probe_would_see_display_math() -> None:
    """The TeX probe above finds the display equations of the chapters' prose (so it can fail)."""
    found = 0
    for chapter in CHAPTERS:
        prose = _CODE_CELL.sub(" ", chapter.read_text(encoding="utf-8"))
        found += sum(1 for block in re.findall(r"\$\$(.*?)\$\$", prose, re.S) for line in block.splitlines()
                     if len(re.findall(r"\\[A-Za-z]+", line)) >= 2)
    assert found >= 20, f"only {found} display-math lines to probe in the whole book"


#: A code line at least this long would run past the printed page's right margin if the
#: print style did not wrap it (the printed code width is about 85 characters).
LONG_LINE = 70
_HIDDEN_INPUT = ("remove-cell", "remove-input", "hide-input", "hide-cell")


def printed_code_lines(source: str) -> list[str]:
    """The long code lines a printed chapter shows: those of visible cells outside the solutions."""
    visible = _SOLUTION.sub(" ", source)
    lines = []
    for cell in _CODE_CELL.findall(visible):
        body = cell.split("\n")[1:-1]
        options: list[str] = []
        if body and body[0].strip() == "---" and "---" in body[1:]:
            options, body = body[: body.index("---", 1) + 1], body[body.index("---", 1) + 1 :]
        while body and body[0].startswith(":") and not body[0].startswith("::"):
            options, body = options + body[:1], body[1:]
        if any(tag in line for line in options for tag in _HIDDEN_INPUT):
            continue
        lines += [line for line in body if len(line.rstrip()) >= LONG_LINE]
    return lines


def _alnum(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", unicodedata.normalize("NFKC", text))


def test_printed_chapters_keep_the_ends_of_long_code_lines() -> None:
    """Every long code line's last characters appear in its chapter's PDF: nothing is cut at the margin."""
    from pypdf import PdfReader

    _need(PDF, "make pdf")
    probed, cut = 0, []
    for chapter in CHAPTERS:
        pdf = PDF / f"{chapter.stem}.pdf"
        assert pdf.exists(), f"make pdf wrote no {pdf.name}"
        printed = _alnum("".join(page.extract_text() for page in PdfReader(pdf).pages))
        for line in printed_code_lines(chapter.read_text(encoding="utf-8")):
            ending = _alnum(line)[-12:]
            if len(ending) < 6:
                continue
            probed += 1
            if ending not in printed:
                cut.append(f"{chapter.stem}: {line.strip()[-60:]}")
    assert probed >= 10, f"only {probed} long code lines were probed: the check would prove little"
    assert not cut, f"{len(cut)} of {probed} long code lines lost their ending in print, e.g. {cut[:3]}"


def test_the_probe_finds_long_lines_and_skips_hidden_ones() -> None:
    long = "x = " + "a" * LONG_LINE
    source = (
        f"```{{code-cell}} ipython3\n{long}\nshort\n```\n\n"
        f"```{{code-cell}} ipython3\n---\ntags: [remove-input]\n---\n{long}_hidden\n```\n\n"
        f"```{{code-cell}} ipython3\n:tags: [remove-cell]\n{long}_removed\n```\n\n"
        f"```{{solution-start}} ex\n```\n\n```{{code-cell}} ipython3\n{long}_solution\n```\n\n```{{solution-end}}\n```\n"
    )
    assert printed_code_lines(source) == [long]

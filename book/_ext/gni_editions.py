"""Sphinx extension: notebooks to download, launch links, and the student edition.

**Notebooks.** Every chapter is a jupytext MyST file; readers want an ``.ipynb``.
After an HTML build, each chapter is written as a clean notebook (no outputs) to
``_notebooks/<docname>.ipynb`` in the output folder, and the page's download menu
offers it next to the executed notebook that sphinx-book-theme copies into
``_sources``. The Binder and Colab buttons are pointed at ``<docname>.ipynb`` instead
of the ``.md`` source, which Colab cannot open (the publishing workflow puts those
notebooks on the branch the buttons name; see the README).

**Student edition.** With ``GNI_EDITION=student`` in the environment
(``make book-student``):

- sphinx-exercise's ``hide_solutions`` is switched on. It drops ``{solution}``
  directives, but a *gated* solution (``{solution-start}`` ... ``{solution-end}``)
  would keep everything between the two markers, code cells included. So in this
  edition the two gated directives are replaced by markers, and a transform removes
  the markers and everything between them;
- the page sources (``_sources``) are not copied and the launch buttons are off,
  since both would carry the solutions;
- the downloadable notebooks have the same solutions cut out;
- execution results are shared with the full edition (same jupyter-cache), so the
  student edition costs no re-execution.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jupytext
import nbformat
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.transforms import Transform
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

NOTEBOOK_FOLDER = "_notebooks"
STUDENT_NOTE = "*(The solution is not included in the student edition.)*"

_START = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution-start\}")
_END = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution-end\}")


def is_student_edition() -> bool:
    """True when the environment asks for the student edition (``GNI_EDITION=student``)."""
    edition = os.environ.get("GNI_EDITION", "full").strip().lower()
    if edition not in {"full", "student"}:
        raise ExtensionError(f"GNI_EDITION must be 'full' or 'student', got {edition!r}")
    return edition == "student"


# --- notebooks -----------------------------------------------------------------------------


def strip_gated_solutions(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove every ``{solution-start}`` ... ``{solution-end}`` block from a notebook.

    Markdown lines from the start fence to the end directive's closing fence go, and
    so do the code cells in between; a short note takes the solution's place.
    Raises ``ValueError`` on an unterminated solution.
    """
    cells = []
    inside = False
    closing: str | None = None  # the fence that closes the solution-end directive
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            if not inside:
                cells.append(cell)
            continue
        kept: list[str] = []
        for line in cell.source.splitlines():
            if closing is not None:  # skipping the body of {solution-end}
                if line.strip() == closing:
                    closing = None
                    inside = False
                continue
            if inside:
                end = _END.match(line)
                if end:
                    closing = end.group("fence")
                continue
            start = _START.match(line)
            if start:
                inside = True
                kept.append(STUDENT_NOTE)
                continue
            kept.append(line)
        text = "\n".join(kept).strip("\n")
        if text.strip():
            cell = nbformat.from_dict(dict(cell))
            cell.source = text
            cells.append(cell)
    if inside:
        raise ValueError("a {solution-start} block is never closed by {solution-end}")
    result = nbformat.from_dict(dict(notebook))
    result.cells = cells
    return result


def chapter_notebook(source: Path, *, student: bool) -> nbformat.NotebookNode:
    """The clean ``.ipynb`` of a jupytext MyST chapter (no outputs; no solutions if ``student``)."""
    notebook = jupytext.read(source, fmt="md:myst")
    notebook.metadata.pop("jupytext", None)
    if student:
        notebook = strip_gated_solutions(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(notebook)
    return notebook


def _is_chapter(app: Sphinx, docname: str) -> bool:
    metadata = app.env.metadata.get(docname, {})
    return "kernelspec" in metadata and app.env.doc2path(docname).endswith(".md")


def _write_notebooks(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    student = is_student_edition()
    for docname in sorted(app.env.found_docs):
        if not _is_chapter(app, docname):
            continue
        notebook = chapter_notebook(Path(app.env.doc2path(docname)), student=student)
        target = Path(app.outdir, NOTEBOOK_FOLDER, f"{docname}.ipynb")
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, target)


def _page_buttons(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Offer the clean notebook for download and point launch links at ``.ipynb``."""
    if doctree is None or not _is_chapter(app, pagename):
        return
    buttons = context.get("header_buttons")
    if buttons is None:
        return
    pathto = context["pathto"]
    url = pathto(f"{NOTEBOOK_FOLDER}/{pagename}.ipynb", 1)
    entry = {
        "type": "link",
        "url": url,
        "text": ".ipynb (student)" if is_student_edition() else ".ipynb (clean)",
        "tooltip": "Download the chapter as a notebook without outputs",
        "icon": "fas fa-code",
        "label": "download-clean-notebook-button",
    }
    group = next((b for b in buttons if b.get("label") == "download-buttons"), None)
    if group is None:
        group = {
            "type": "group",
            "tooltip": "Download this page",
            "icon": "fas fa-download",
            "buttons": [],
            "label": "download-buttons",
        }
        buttons.append(group)
    group["buttons"].insert(0, entry)
    for group in buttons:
        if group.get("label") != "launch-buttons":
            continue
        for button in group.get("buttons", []):
            if "url" in button:
                button["url"] = re.sub(rf"{re.escape(pagename)}\.md\b", f"{pagename}.ipynb", button["url"])


# --- the student edition ------------------------------------------------------------------


class solution_marker(nodes.Element):
    """Where a gated solution starts or ends (removed before writing)."""


def _skip(self: Any, node: nodes.Node) -> None:
    raise nodes.SkipNode


class _MarkerDirective(SphinxDirective):
    optional_arguments = 1
    final_argument_whitespace = True
    has_content = True
    option_spec = {"label": directives.unchanged, "class": directives.class_option, "hidden": directives.flag}
    kind = "start"

    def run(self) -> list[nodes.Node]:
        marker = solution_marker(kind=self.kind)
        self.set_source_info(marker)
        return [marker]


class _EndMarkerDirective(_MarkerDirective):
    kind = "end"


class RemoveGatedSolutions(Transform):
    """Delete each start marker, the end marker after it, and every sibling in between."""

    default_priority = 200

    def apply(self, **kwargs: Any) -> None:
        for start in list(self.document.findall(solution_marker)):
            if start.get("kind") != "start" or start.parent is None:
                continue
            parent = start.parent
            index = parent.index(start)
            for end_index in range(index + 1, len(parent.children)):
                child = parent.children[end_index]
                if isinstance(child, solution_marker) and child.get("kind") == "end":
                    break
            else:
                raise ExtensionError(
                    f"{start.source}:{start.line}: a gated solution has no {{solution-end}} at the same level"
                )
            note = nodes.paragraph()
            note += nodes.emphasis(text="(The solution is not included in the student edition.)")
            parent.children[index : end_index + 1] = [note]
            note.parent = parent
        leftover = list(self.document.findall(solution_marker))
        if leftover:
            node = leftover[0]
            raise ExtensionError(f"{node.source}:{node.line}: {{solution-end}} without a {{solution-start}}")


def _configure_edition(app: Sphinx, config: Any) -> None:
    if not is_student_edition():
        return
    logger.info("gni_editions: building the student edition (solutions removed)")
    config.hide_solutions = True
    config.html_copy_source = False
    options = dict(config.html_theme_options or {})
    options.pop("launch_buttons", None)
    config.html_theme_options = options
    config.html_title = f"{config.html_title or config.project} (student edition)"
    # Share the full edition's execution results: the student edition re-executes nothing.
    config.nb_execution_cache_path = str(Path(app.confdir, "_build", ".jupyter_cache").resolve())
    app.add_directive("solution-start", _MarkerDirective, override=True)
    app.add_directive("solution-end", _EndMarkerDirective, override=True)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx_exercise")
    app.add_node(solution_marker, html=(_skip, None), latex=(_skip, None), text=(_skip, None))
    app.add_transform(RemoveGatedSolutions)
    app.connect("config-inited", _configure_edition)
    app.connect("html-page-context", _page_buttons, priority=600)
    app.connect("build-finished", _write_notebooks)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

"""pytest set-up shared by the library tests and the chapter checks.

nbval only collects ``.ipynb`` files, while the book's chapters are jupytext
MyST notebooks (``book/NN-slug.md``). The collector below reads a chapter with
jupytext in memory and hands the notebook to nbval's own ``IPyNbFile``, so a
chapter is checked cell by cell, in place (the kernel's working directory is
the chapter's folder) and without writing a temporary ``.ipynb`` anywhere.

Run it as ``pytest --nbval-lax --nbval-current-env book/``.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import jupytext
import nbval.plugin
import pytest
from nbval.plugin import IPyNbFile

pytest_plugins = ["pytester"]


def is_chapter_notebook(path: Path) -> bool:
    """True for a MyST markdown file whose front matter names a Jupyter kernel."""
    if path.suffix != ".md":
        return False
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return False
    front_matter = text[3:].split("\n---", 1)[0]
    return "kernelspec:" in front_matter


class MarkdownNotebook(IPyNbFile):
    """nbval's notebook collector, fed from a jupytext MyST ``.md`` file."""

    def collect(self):
        notebook = jupytext.read(self.path)
        # nbval's collect() reads ``self.fspath`` with ``nbformat.read``; give it
        # the notebook jupytext parsed instead, for the duration of collection.
        reader = mock.Mock(read=mock.Mock(return_value=notebook))
        with mock.patch.object(nbval.plugin, "nbformat", reader):
            yield from super().collect()


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    option = parent.config.option
    if (option.nbval or option.nbval_lax) and is_chapter_notebook(file_path):
        return MarkdownNotebook.from_parent(parent, path=file_path)
    return None

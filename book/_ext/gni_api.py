"""Sphinx extension: ``{gni-api-used}`` lists, with links, the gni_lib objects a chapter uses.

A chapter puts the directive just after its set-up cell. It reads the chapter's own
code cells, finds every ``gni_lib`` name they import or call (``from gni_lib.x import
f``, ``import gni_lib``, ``gni_lib.f(...)``, ``gni_lib.optim.PGD``), resolves each to the
object it names, and writes one line of cross-references into the API reference
(``book/api.md``). Nitpicky builds (``-n``) then fail if a chapter uses a public
function that the API page does not document.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

_CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.M | re.S)


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def used_names(source: str) -> list[str]:
    """Dotted ``gni_lib`` names that the code cells of a MyST chapter use, in first-use order.

    Names imported from gni_lib count, and so do attribute chains on ``gni_lib`` or on
    a name imported from it (``from gni_lib import optim`` then ``optim.PGD``).
    """
    names: list[str] = []

    def add(name: str) -> None:
        if name not in names:
            names.append(name)

    aliases = {"gni_lib": "gni_lib"}
    for cell in _CODE_CELL.findall(source):
        # Drop IPython magics and shell escapes, which are not Python.
        code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.splitlines())
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gni_lib":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    aliases[alias.asname or alias.name] = full
                    add(full)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "gni_lib":
                        aliases[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name or "gni_lib"
        inner: set[int] = set()
        chains: list[tuple[int, int, str]] = []
        for node in ast.walk(tree):  # outer attributes come before the ones they contain
            if isinstance(node, ast.Attribute):
                if isinstance(node.value, ast.Attribute):
                    inner.add(id(node.value))
                if id(node) in inner:
                    continue
                dotted = _dotted(node)
                if dotted is None:
                    continue
                head, _, rest = dotted.partition(".")
                if head in aliases and rest:
                    chains.append((node.lineno, node.col_offset, f"{aliases[head]}.{rest}"))
        for _, _, name in sorted(chains):
            add(name)
    return names


def resolve(name: str) -> tuple[str, str] | None:
    """``(role, target)`` for a dotted gni_lib name, or None if it is not a public gni_lib object."""
    parts = name.split(".")
    obj: Any = None
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            # A trailing method call on a returned value (gni_lib.f(...).g): stop at what resolves.
            return resolve(".".join(parts[:-1])) if len(parts) > 2 else None
        break
    if obj is None or any(part.startswith("_") for part in parts):
        return None
    if inspect.ismodule(obj):
        return ("py:mod", obj.__name__)
    module = getattr(obj, "__module__", "") or ""
    qualname = getattr(obj, "__qualname__", None)
    if not module.startswith("gni_lib") or qualname is None:
        return None
    if inspect.isclass(obj):
        return ("py:class", f"{module}.{qualname}")
    if callable(obj):
        return ("py:func", f"{module}.{qualname}")
    return None


class ApiUsedDirective(SphinxDirective):
    """``{gni-api-used}``: one line of links to the gni_lib objects this chapter uses."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        source = Path(self.env.doc2path(self.env.docname)).read_text(encoding="utf-8")
        targets: list[tuple[str, str]] = []
        for name in used_names(source):
            resolved = resolve(name)
            if resolved and resolved[0] != "py:mod" and resolved not in targets:
                targets.append(resolved)
        if not targets:
            raise self.error("{gni-api-used}: this chapter's code uses no public gni_lib object")
        links = ", ".join(f"{{{role}}}`~{target}`" for role, target in targets)
        text = f"**gni_lib in this chapter** (see the {{doc}}`API reference </book/api>`): {links}."
        container = nodes.container(classes=["gni-api-used"])
        self.state.nested_parse(StringList([text]), self.content_offset, container)
        return container.children


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("gni-api-used", ApiUsedDirective)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

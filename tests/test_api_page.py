"""The API reference covers gni_lib's public objects, and every chapter links to those it uses.

``book/_ext/gni_api.py`` finds the gni_lib names a chapter's code uses; its parsing is
checked here on a hand-made chapter. The rendered pages (``make book``) are then
checked: every name in a gni_lib module's ``__all__`` has an entry on the API page,
and every chapter page links to the API entry of each gni_lib function it uses.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import gni_lib

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
HTML = REPO / "_build" / "html"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]-*.md"))

_spec = importlib.util.spec_from_file_location("gni_api", BOOK / "_ext" / "gni_api.py")
gni_api = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gni_api)

SOURCE = """---
kernelspec:
  name: python3
---

Text mentioning gni_lib.fake_name, which is not code.

```{code-cell} ipython3
import gni_lib
from gni_lib import optim
from gni_lib.regularisers import (
    explicit_regularizer,
    second_order_term as sot,
)
%matplotlib inline
```

```{code-cell} ipython3
device = gni_lib.get_device()
opt = optim.PGD
value = gni_lib.data.load_digits_split
```
"""


def test_used_names_reads_imports_aliases_and_attributes() -> None:
    names = gni_api.used_names(SOURCE)
    assert names == [
        "gni_lib.optim",
        "gni_lib.regularisers.explicit_regularizer",
        "gni_lib.regularisers.second_order_term",
        "gni_lib.get_device",
        "gni_lib.optim.PGD",
        "gni_lib.data.load_digits_split",
    ]
    assert "gni_lib.fake_name" not in names  # prose is not code


def test_resolve_names_the_defining_module() -> None:
    assert gni_api.resolve("gni_lib.get_device") == ("py:func", "gni_lib.device.get_device")
    assert gni_api.resolve("gni_lib.optim.PGD") == ("py:class", "gni_lib.optim.PGD")
    assert gni_api.resolve("gni_lib.optim") == ("py:mod", "gni_lib.optim")
    assert gni_api.resolve("gni_lib.no_such_thing") is None
    assert gni_api.resolve("gni_lib.models._closed_forms") is None  # private, though it exists


def test_every_chapter_lists_the_library_it_uses() -> None:
    for chapter in CHAPTERS:
        assert "```{gni-api-used}" in chapter.read_text(encoding="utf-8"), (
            f"{chapter.name}: put a {{gni-api-used}} directive after the set-up cell"
        )


def _public_objects() -> list[str]:
    names = []
    for info in pkgutil.iter_modules(gni_lib.__path__):
        module = importlib.import_module(f"gni_lib.{info.name}")
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if callable(obj) and getattr(obj, "__module__", "") == module.__name__:
                names.append(f"{module.__name__}.{name}")
    return names


def test_api_page_documents_every_public_function_and_class() -> None:
    page = HTML / "book" / "api.html"
    if not page.exists():
        pytest.skip("run `make book` first")
    html = page.read_text(encoding="utf-8")
    missing = [name for name in _public_objects() if f'id="{name}"' not in html]
    assert not missing, f"not on the API page: {missing}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_links_to_the_api_entries_it_uses(chapter: Path) -> None:
    page = HTML / "book" / f"{chapter.stem}.html"
    if not page.exists():
        pytest.skip("run `make book` first")
    html = page.read_text(encoding="utf-8")
    for name in gni_api.used_names(chapter.read_text(encoding="utf-8")):
        resolved = gni_api.resolve(name)
        if resolved is None or resolved[0] == "py:mod":
            continue
        assert f'href="api.html#{resolved[1]}"' in html, f"{chapter.name} does not link to {resolved[1]}"

"""Every chapter is a lecture a student reads at one sitting (STYLE.md, "A chapter is a lecture").

Checked on the chapter sources, with the limits of the house style:

* at most 32 000 characters of source;
* code cells of about 15 lines: the median cell at most 15 lines, none over 45;
* a figure of the idea early: the first cell that draws a figure starts within the
  first 40 % of the source (before the derivation of a chapter that has one);
* at least three exercises (STYLE.md, "A chapter", item 10);
* every directive is closed before the next section heading (an unclosed
  dropdown or figure swallows the sections after it without any error);
* the chapter closes with its generated verdict table: the last section is
  ``## Verdicts`` and holds the ``{verdict-table}`` directive.

A cell's lines are those of its body: the fences and a leading options block
(``---`` ... ``---`` or ``:tags:`` lines) are not counted. Each rule is also run on a
hand-made source that breaks it, so none of them can pass by matching nothing.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "book").glob("[0-9][0-9]-*.md"))

MAX_CHARACTERS = 32_000
MAX_MEDIAN_CELL = 15
MAX_CELL = 45
EARLY_FIGURE = 0.40
MIN_EXERCISES = 3

_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_FIGURE = re.compile(r"plt\.(subplots|figure|plot|imshow)\(|\.subplots\(|plot_[a-z_]+\(")
_SECTION = re.compile(r"^## +(.+?) *$", re.M)


def cell_bodies(source: str) -> list[tuple[int, list[str]]]:
    """(offset, body lines) of every code cell, without its options block."""
    cells = []
    for match in _CELL.finditer(source):
        lines = match.group(1).rstrip("\n").split("\n")
        if lines and lines[0].strip() == "---":
            end = lines.index("---", 1) if "---" in lines[1:] else 0
            lines = lines[end + 1 :]
        while lines and lines[0].startswith(":") and not lines[0].startswith("::"):
            lines = lines[1:]
        cells.append((match.start(), lines))
    return cells


def unclosed_fences(source: str) -> list[int]:
    """Line numbers of section headings (``## ``) that sit inside a directive or code fence."""
    stack: list[str] = []
    found = []
    for number, line in enumerate(source.split("\n"), 1):
        fence = re.match(r"^(`{3,}|:{3,})(.*)$", line)
        if fence:
            mark, info = fence.group(1), fence.group(2).strip()
            if stack and not info and mark[0] == stack[-1][0] and len(mark) >= len(stack[-1]):
                stack.pop()
            elif not (stack and stack[-1].startswith("`") and info):  # a fence line inside code is text
                stack.append(mark)
        elif line.startswith("## ") and stack:
            found.append(number)
            stack = []
    return found


def problems(source: str) -> list[str]:
    """What keeps ``source`` from being a one-sitting lecture (empty if nothing)."""
    found = []
    if len(source) > MAX_CHARACTERS:
        found.append(f"{len(source)} characters of source, more than {MAX_CHARACTERS}")
    cells = cell_bodies(source)
    if not cells:
        return found + ["no code cells"]
    lengths = [len(lines) for _, lines in cells]
    if statistics.median(lengths) > MAX_MEDIAN_CELL:
        found.append(f"the median code cell has {statistics.median(lengths)} lines, more than {MAX_MEDIAN_CELL}")
    for (offset, lines) in cells:
        if len(lines) > MAX_CELL:
            line_number = source.count("\n", 0, offset) + 1
            found.append(f"the code cell at line {line_number} has {len(lines)} lines, more than {MAX_CELL}")
    figures = [offset for offset, lines in cells if _FIGURE.search("\n".join(lines))]
    if not figures:
        found.append("no cell draws a figure")
    elif figures[0] > EARLY_FIGURE * len(source):
        found.append(
            f"the first figure starts at {figures[0] / len(source):.0%} of the source, "
            f"after the first {EARLY_FIGURE:.0%}"
        )
    exercises = len(re.findall(r"^(`{3,}|:{3,})\{exercise\}", source, re.M))
    if exercises < MIN_EXERCISES:
        found.append(f"{exercises} exercises, fewer than {MIN_EXERCISES}")
    for number in unclosed_fences(source):
        found.append(f"the heading at line {number} sits inside an unclosed directive")
    sections = list(_SECTION.finditer(source))
    if not sections or sections[-1].group(1) != "Verdicts" or "{verdict-table}" not in source[sections[-1].end() :]:
        found.append("the last section is not '## Verdicts' with the {verdict-table} directive")
    return found


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_chapter_is_one_lecture(chapter: Path) -> None:
    found = problems(chapter.read_text(encoding="utf-8"))
    assert not found, f"{chapter.name}: " + "; ".join(found)


_GOOD = (
    "# T\n\n```{code-cell} ipython3\nfig, ax = plt.subplots()\n```\n\ntext\n\n"
    "```{code-cell} ipython3\n---\ntags: [remove-cell]\n---\nx = 1\n```\n\n"
    + "words " * 40
    + "\n\n```{exercise}\n:label: ex-a\n\nA.\n```\n" * 3
    + "\n\n## Verdicts\n\n```{verdict-table}\n```\n"
)


def test_a_good_lecture_passes() -> None:
    assert problems(_GOOD) == []
    assert [len(lines) for _, lines in cell_bodies(_GOOD)] == [1, 1]


@pytest.mark.parametrize(
    "broken, message",
    [
        (_GOOD + "x" * MAX_CHARACTERS, "characters of source"),
        (_GOOD.replace("x = 1", "\n".join(["x = 1"] * (MAX_CELL + 1))), "more than 45"),
        (
            _GOOD.replace("x = 1", "\n".join(["x = 1"] * 20)).replace(
                "fig, ax = plt.subplots()", "fig, ax = plt.subplots()\n" + "y = 2\n" * 19
            ),
            "the median code cell",
        ),
        (_GOOD.replace("fig, ax = plt.subplots()", "y = 2"), "no cell draws a figure"),
        ("words " * 400 + _GOOD, "the first figure starts"),
        (_GOOD.replace("## Verdicts", "## Exercises"), "the last section"),
        (_GOOD.replace("```{exercise}", "```{note}", 1), "2 exercises, fewer than 3"),
        (_GOOD.replace("\n\n## Verdicts", "\n\n```{admonition} Note\n:class: dropdown\n\ntext\n\n## Verdicts"),
         "inside an unclosed directive"),
        (_GOOD.replace("{verdict-table}", "{note}"), "the last section"),
    ],
)
def test_each_rule_catches_its_breach(broken: str, message: str) -> None:
    assert any(message in problem for problem in problems(broken)), problems(broken)


def test_the_syllabus_assigns_every_exercise_and_only_real_ones() -> None:
    """Each exercise label of the chapters appears in the syllabus's weeks, and each one there exists."""
    labels = set()
    for chapter in CHAPTERS:
        labels |= set(re.findall(r"^:label: (ex-[\w-]+)$", chapter.read_text(encoding="utf-8"), re.M))
    assert len(labels) >= 3 * len(CHAPTERS)
    listed = set(re.findall(r"\{ref\}`(ex-[\w-]+)`", (REPO / "book" / "syllabus.md").read_text(encoding="utf-8")))
    assert not labels - listed, f"exercises the syllabus does not assign: {sorted(labels - listed)}"
    assert not listed - labels, f"the syllabus names exercises that do not exist: {sorted(listed - labels)}"

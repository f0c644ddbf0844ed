"""A report as a list of blocks, rendered to Markdown here and to HTML by :mod:`ffnet_deploy.reporting.html`.

One list of blocks (:class:`Heading`, :class:`Para`, :class:`Bullets`, :class:`Table`, :class:`Image`,
:class:`Code`) is the content; both renderings are made from it, so the Markdown file and the HTML page always say
the same thing. Inline text is a list of :data:`Span` (plain, bold, code, or a verdict style), each escaped for the
format it lands in. The terminal view of a :class:`Table` is :mod:`ffnet_deploy.reporting.console`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ffnet_deploy.reporting import markdown as md
from ffnet_deploy.reporting.text import one_line

Span = tuple[str, str]
"""Inline text: ``(kind, text)``, kind ``"text"``, ``"b"``, ``"code"`` or one of :data:`VERDICT_STYLES`."""

VERDICT_STYLES = ("ok", "bad", "warn", "muted")
"""Span kinds that colour a verdict on the terminal (green, red, yellow, dim); Markdown and HTML show their text."""

Cell = str | list[Span]
"""A table cell: text, or spans when part of it carries a style (``pass`` in green before a detail)."""


def plain(value: Any) -> Span:
    return ("text", str(value))


def bold(value: Any) -> Span:
    return ("b", str(value))


def code(value: Any) -> Span:
    return ("code", str(value))


def ok(value: Any) -> Span:
    return ("ok", str(value))


def bad(value: Any) -> Span:
    return ("bad", str(value))


def warn(value: Any) -> Span:
    return ("warn", str(value))


def muted(value: Any) -> Span:
    return ("muted", str(value))


def cell_text(cell: Cell) -> str:
    """The text of a cell, without its styles."""
    return cell if isinstance(cell, str) else "".join(text for _, text in cell)


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    spans: list[Span]
    css: str = ""  # a class for the HTML paragraph ("warn", "muted")


@dataclass
class Bullets:
    items: list[list[Span]]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    verdict_col: int | None = None  # coloured by verdict in HTML
    code_col: int | None = None  # identifiers, in a monospace font
    id: str = ""
    blank: str = ""  # a cell showing this (the "not measured" dash) is not put in code
    # What the terminal view also shows (the files have headings and paragraphs of their own for these).
    title: str = ""
    caption: list[str] = field(default_factory=list)  # lines under the table
    caption_left: bool = False  # notes that read as a list, left-aligned (default: centred)
    key_value: bool = False  # no header row; the first column names each row's field, in bold
    nowrap: set[int] = field(default_factory=set)  # columns never wrapped on the terminal
    row_styles: dict[int, str] = field(default_factory=dict)  # row index -> one of VERDICT_STYLES


@dataclass
class Image:
    alt: str
    rel: str  # path relative to the report


@dataclass
class Code:
    text: str


Block = Heading | Para | Bullets | Table | Image | Code


def markdown_spans(spans: Iterable[Span]) -> str:
    out = []
    for kind, text in spans:
        if not text:
            continue
        out.append(md.code(text) if kind == "code" else md.bold(text) if kind == "b" else md.text(text))
    return "".join(out)


def markdown_table(table: Table) -> list[str]:
    def cell(i: int, text: Cell) -> md.Md:
        if not isinstance(text, str):
            return md.Md(markdown_spans(text))
        return md.code(text, in_table=True) if i == table.code_col and text != table.blank else md.text(text)

    align = ["r" if i in table.numeric else "-" for i in range(len(table.headers))]
    return md.table(table.headers, ([cell(i, c) for i, c in enumerate(row)] for row in table.rows), align)


def render_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown (images linked as ``![alt](rel)``), ending in one newline."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += [md.heading(block.level, block.text), ""]
        elif isinstance(block, Para):
            lines += [markdown_spans(block.spans), ""]
        elif isinstance(block, Bullets):
            lines += ["- " + markdown_spans(item) for item in block.items] + [""]
        elif isinstance(block, Table):
            lines += markdown_table(block) + [""]
        elif isinstance(block, Image):
            lines += [f"![{md.text(block.alt)}]({one_line(block.rel).replace(' ', '%20')})", ""]
        elif isinstance(block, Code):
            lines += md.code_block(block.text) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"

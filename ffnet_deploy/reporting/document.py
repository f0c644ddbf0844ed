"""A report as a list of blocks, rendered to Markdown here and to HTML by :mod:`ffnet_deploy.reporting.html`.

One list of blocks (:class:`Heading`, :class:`Para`, :class:`Bullets`, :class:`Table`, :class:`Image`,
:class:`Code`) is the content; both renderings are made from it, so the Markdown file and the HTML page always say
the same thing. Inline text is a list of :data:`Span` (plain, bold or code), each escaped for the format it lands in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ffnet_deploy.reporting import markdown as md
from ffnet_deploy.reporting.text import one_line

Span = tuple[str, str]
"""Inline text: ``("text" | "b" | "code", text)``."""


def plain(value: Any) -> Span:
    return ("text", str(value))


def bold(value: Any) -> Span:
    return ("b", str(value))


def code(value: Any) -> Span:
    return ("code", str(value))


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
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    verdict_col: int | None = None  # coloured by verdict in HTML
    code_col: int | None = None  # identifiers, in a monospace font
    id: str = ""
    blank: str = ""  # a cell showing this (the "not measured" dash) is not put in code


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
    def cell(i: int, text: str) -> md.Md:
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

"""The one Markdown helper: escaping, inline code, fenced blocks, HTML comments and tables (GitHub-flavoured).

Every writer that builds Markdown (validate has none; bench ``results.md``, the mixer and peer tables, ``report
merge``, the pipeline's ``index.md``) passes user strings through :func:`text` or :func:`code` and builds tables with
:func:`table`. What a user string cannot do then:

- start HTML: ``<`` is escaped (``\\<img src=x onerror=...>`` shows as text in every Markdown viewer);
- break a table: ``|`` is escaped, and every line break becomes a space (:func:`ffnet_deploy.reporting.text.one_line`);
- leave a code span or fenced block: the fence is longer than the longest run of backticks inside;
- close the HTML comment of a first-line marker (``-->``).

Strings returned by these functions are :class:`Md`: already Markdown, so :func:`table` does not escape them again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from ffnet_deploy.reporting.text import one_line

_SPECIAL = re.compile(r"([\\`*\[\]<|])")


class Md(str):
    """Text that is Markdown already (escaped user text, code spans, bold): :func:`table` keeps it as it is."""

    __slots__ = ()


def text(value: Any) -> Md:
    """A user string as Markdown text: on one line, Markdown and HTML characters escaped."""
    if isinstance(value, Md):
        return value
    return Md(_SPECIAL.sub(r"\\\1", one_line(value)))


def bold(value: Any) -> Md:
    """``**text**`` (leading and trailing spaces kept outside the markers, which Markdown needs)."""
    raw = one_line(value)
    stripped = raw.strip()
    if not stripped:
        return Md(raw)
    lead, trail = raw[: len(raw) - len(raw.lstrip())], raw[len(raw.rstrip()):]
    return Md(f"{lead}**{text(stripped)}**{trail}")


def code(value: Any, in_table: bool = False) -> Md:
    """An inline code span of ``value`` on one line; its fence is one backtick longer than any run inside.

    Args:
        value: The text.
        in_table: The span sits in a table cell, where GitHub splits cells at every ``|``, even inside code.
    """
    raw = one_line(value)
    longest = max((len(m) for m in re.findall(r"`+", raw)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if raw.startswith("`") or raw.endswith("`") else ""
    if in_table:
        raw = raw.replace("|", "\\|")
    return Md(f"{fence}{pad}{raw}{pad}{fence}")


def code_block(value: Any) -> list[str]:
    """A fenced code block holding ``value`` on one line; the fence is longer than any run of backticks inside, so
    nothing in ``value`` can close it."""
    raw = one_line(value)
    longest = max((len(m) for m in re.findall(r"`+", raw)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, raw, fence]


def comment(value: Any) -> str:
    """``value`` for the inside of an HTML comment (``<!-- ... -->``): on one line, unable to close it."""
    return one_line(value).replace("--!>", "--!&gt;").replace("-->", "--&gt;")


def heading(level: int, value: Any) -> str:
    """``## value`` (``value`` escaped unless it is :class:`Md`)."""
    return "#" * level + " " + text(value)


def bullets(items: Iterable[Any]) -> list[str]:
    """``- item`` lines."""
    return ["- " + text(item) for item in items]


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], align: Sequence[str] | str | None = None,
          *, padded: bool = True) -> list[str]:
    """A GitHub table as lines.

    Args:
        headers: Column titles.
        rows: The cells; a ``str`` is escaped with :func:`text`, an :class:`Md` is kept, anything else is ``str()``-ed
            and escaped. A row shorter than the header is padded with empty cells.
        align: Per column ``"l"``, ``"r"`` (or ``"-"`` for the bare ``---``); one string like ``"llrr"`` or a list.
            Default: every column ``---``.
        padded: ``| a | b |`` (default) or ``|a|b|`` for the separator row: the layout earlier versions wrote,
            which tests and readers of the tables pin.
    """
    n = len(headers)
    marks = {"l": "---", "-": "---", "r": "---:", "c": ":---:"}
    spec = list(align) if align is not None else ["-"] * n
    rule = [marks[a] for a in spec] + ["---"] * (n - len(spec))
    lines = ["| " + " | ".join(text(h) for h in headers) + " |",
             ("| " + " | ".join(rule) + " |") if padded else ("|" + "|".join(rule) + "|")]
    for row in rows:
        cells = [text(c) for c in row] + [Md("")] * (n - len(row))
        lines.append("| " + " | ".join(cells) + " |")
    return lines

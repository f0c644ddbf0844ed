"""The terminal view of :mod:`ffnet_deploy.reporting.document`: the one place that draws a table or a line with rich.

Commands describe what they show (a :class:`~ffnet_deploy.reporting.document.Table`, a list of spans) and this module
draws it. Every string is put on one line (:func:`~ffnet_deploy.reporting.text.one_line`) and handed to rich as a
:class:`rich.text.Text`, never as markup: a path, a device name or an error message that holds ``[/]`` or
``ffnet-deploy[coreml]`` is shown as it is, with no escaping left to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ffnet_deploy.reporting.document import Cell, Span, Table
from ffnet_deploy.reporting.text import one_line

STYLES = {"text": "", "b": "bold", "code": "", "ok": "green", "bad": "red", "warn": "yellow", "muted": "dim",
          "success": "bold green", "alert": "bold red", "notice": "bold yellow"}
"""The rich style of each span kind and row style; ``success``, ``alert`` and ``notice`` are the terminal's own
emphasis (a verdict that must stand out, an error line, a notice or warning line)."""


def rich_text(spans: Cell | Iterable[Span], style: str = "") -> Any:
    """A :class:`rich.text.Text` of a string or of spans, each part on one line and styled by its kind."""
    from rich.text import Text

    if isinstance(spans, str):
        return Text(one_line(spans), style=style)
    return Text.assemble(*((one_line(text), STYLES.get(kind, "")) for kind, text in spans if text), style=style)


def rich_table(table: Table) -> Any:
    """The :class:`rich.table.Table` of ``table``: right-aligned numeric columns, the title above, the caption lines
    below, verdict styles on cells and rows."""
    from rich.table import Table as RichTable
    from rich.text import Text

    # rich styles a title or caption given as text, not one given as Text: the styles are named here
    caption = (Text("\n".join(one_line(line) for line in table.caption), style="table.caption") if table.caption
               else None)
    out = RichTable(title=rich_text(table.title, style="table.title") if table.title else None, caption=caption,
                    show_header=not table.key_value, caption_justify="left" if table.caption_left else "center")
    for i, header in enumerate(table.headers):
        out.add_column(rich_text(header), justify="right" if i in table.numeric else "left",
                       style="bold" if table.key_value and i == 0 else None, no_wrap=i in table.nowrap)
    for index, row in enumerate(table.rows):
        style = table.row_styles.get(index)
        out.add_row(*(rich_text(cell) for cell in row), style=STYLES.get(style, style) if style else None)
    return out


def print_table(console: Any, table: Table) -> None:
    """Draw ``table`` on a rich console."""
    console.print(rich_table(table))


def print_line(console: Any, spans: Cell | Iterable[Span], *, soft_wrap: bool = False) -> None:
    """Print one line of text or spans (no markup, no highlighting).

    Args:
        console: The rich console.
        spans: The line.
        soft_wrap: Never fold the line at the console's width (a message CI logs are searched for, an install hint
            that is copied from the terminal).
    """
    console.print(rich_text(spans), highlight=False, soft_wrap=soft_wrap)

"""HTML pages from :mod:`ffnet_deploy.reporting.document` blocks, through a jinja2 template with autoescaping.

The page (``templates/report.html.j2``) is self-contained: its style is inline, plots are embedded as
``data:image/png;base64`` URIs, it loads nothing from anywhere and runs no script, so it can be mailed, archived as a
CI artifact or opened from a file. Autoescaping is on for the whole template, so every string that comes from a
block (job reasons, device names, paths, versions) is escaped; the style sheet, the one string of ours inserted
as it is, is marked safe in the template.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ffnet_deploy.reporting.document import Block, Bullets, Code, Heading, Image, Para, Table, cell_text
from ffnet_deploy.reporting.text import one_line

TEMPLATE = "report.html.j2"


@cache
def environment():
    """The jinja2 environment: templates of this package, autoescape on every template, undefined names fatal."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(loader=FileSystemLoader(str(Path(__file__).with_name("templates"))), autoescape=True,
                       undefined=StrictUndefined, keep_trailing_newline=True)


def render_page(title: str, blocks: Sequence[Block], *, css: str, folder: Path | None = None,
                cell_class: Callable[[Table, int, str], list[str]] | None = None) -> str:
    """The page of ``blocks``.

    Args:
        title: The ``<title>``.
        blocks: The content.
        css: The style sheet (the caller's own text; inserted as it is).
        folder: Where image paths are relative to; each image is read and embedded (a missing one becomes a note).
        cell_class: Extra CSS classes of a table cell, from its table, column and text (verdict colours).
    """
    views = [_view(b, folder, cell_class) for b in blocks]
    return environment().get_template(TEMPLATE).render(title=title, blocks=views, css=css)


def _view(block: Block, folder: Path | None, cell_class) -> dict[str, Any]:
    if isinstance(block, Heading):
        return {"kind": "heading", "level": int(block.level), "text": block.text}
    if isinstance(block, Para):
        return {"kind": "para", "spans": block.spans, "css": block.css}
    if isinstance(block, Bullets):
        return {"kind": "bullets", "entries": block.items}
    if isinstance(block, Table):
        def classes(i: int, text: str | None = None) -> list[str]:
            names = []
            if i in block.numeric:
                names.append("num")
            if i == block.code_col and text is not None:
                names.append("id")
            if text is not None and cell_class is not None:
                names += cell_class(block, i, text)
            return names

        return {"kind": "table", "id": block.id,
                "headers": [{"text": h, "classes": classes(i)} for i, h in enumerate(block.headers)],
                "rows": [[{"text": cell_text(c), "classes": classes(i, cell_text(c))} for i, c in enumerate(row)]
                         for row in block.rows]}
    if isinstance(block, Image):
        return {"kind": "image", "alt": block.alt, "rel": block.rel, "uri": _data_uri(folder, block.rel)}
    if isinstance(block, Code):
        return {"kind": "code", "text": one_line(block.text)}
    raise TypeError(f"not a report block: {type(block).__name__}")


def _data_uri(folder: Path | None, rel: str) -> str | None:
    if folder is None:
        return None
    try:
        data = (Path(folder) / rel).read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")

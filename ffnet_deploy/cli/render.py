"""Cells of the CLI's tables: numbers as the terminal shows them. The tables themselves are
:class:`ffnet_deploy.reporting.document.Table` objects, drawn by :mod:`ffnet_deploy.reporting.console`."""

from __future__ import annotations

import math
from typing import Any

from ffnet_deploy.cli.console import console
from ffnet_deploy.reporting.console import print_line, print_table
from ffnet_deploy.reporting.document import Table


def num(value: Any, spec: str, suffix: str = "") -> str:
    """A number for a table cell, ``-`` when it is missing or not finite (``"nan"`` in a results file)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return f"{value:{spec}}{suffix}" if ok else "-"


def show(table: Table) -> None:
    """Draw a table on stdout."""
    print_table(console, table)


def say(*spans: tuple[str, str] | str, soft_wrap: bool = False) -> None:
    """One line on stdout from text and spans (a plain ``str`` is text)."""
    print_line(console, [("text", s) if isinstance(s, str) else s for s in spans], soft_wrap=soft_wrap)

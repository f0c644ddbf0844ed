"""User strings, made safe for the place they are written to.

A device name, a model name from an imported CSV, a checkpoint path or an error message is data. It must not become
markup (rich's ``[/]``, Markdown's ``|`` or raw HTML), a spreadsheet formula (``=HYPERLINK(...)``), a second line
that breaks out of a fenced block, or matplotlib mathtext (``$\\frac{$``). The Markdown side is
:mod:`ffnet_deploy.reporting.markdown`, plots are :mod:`ffnet_deploy.reporting.plots`; this module has the rest.
"""

from __future__ import annotations

import re
from typing import Any

_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection")."""


def one_line(value: Any) -> str:
    """``str(value)`` with every line break and control character replaced by a space: a user string never starts
    a new line in a log, a table or a report."""
    return _BREAKS.sub(" ", str(value))


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs: a string starting with ``= + - @``, a tab or a carriage return gets a
    leading ``'`` (OWASP's advice; the CSV writer quotes the rest). Numbers and ``None`` pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def console_text(value: Any) -> str:
    """A user string for rich: on one line, its ``[...]`` shown literally instead of read as markup."""
    from rich.markup import escape

    return escape(one_line(value))

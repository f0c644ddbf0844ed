"""The CLI's two consoles (stdout for results, stderr for progress and errors), ``--json`` output and the command line
of this invocation."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

NON_TTY_WIDTH = 160
"""Console width when the output is not a terminal (CI logs, pipes): rich's default of 80 columns would cut table
cells with an ellipsis. ``COLUMNS`` overrides it."""


def width(stream) -> int | None:
    """``None`` (the terminal's own width) on a terminal, else ``COLUMNS`` or :data:`NON_TTY_WIDTH`."""
    if getattr(stream, "isatty", lambda: False)():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else NON_TTY_WIDTH


console = Console(width=width(sys.stdout))
err_console = Console(stderr=True, width=width(sys.stderr))

ARGV: list[str] = []
"""The arguments of this invocation (set by :func:`ffnet_deploy.cli._main.main`), for results that record their
command."""


def invocation() -> str:
    """This command line as the user typed it, e.g. ``ffnet-deploy bench --variant ffnet_1``."""
    import shlex

    return shlex.join(["ffnet-deploy", *ARGV])


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (no colour, no wrapping), for ``--json``: strict JSON, non-finite numbers as
    ``"nan"``/``"inf"`` strings like every file (:mod:`ffnet_deploy.schemas`)."""
    from ffnet_deploy.schemas import jsonable

    sys.stdout.write(json.dumps(jsonable(data), indent=2, default=str, allow_nan=False) + "\n")

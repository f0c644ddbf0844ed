"""The entry point: run the app, and turn what escapes a command into one line and an exit code.

User errors (:class:`~ffnet_deploy.errors.FFNetDeployError`) print one red line and exit 1 from every command; usage
errors exit 2 (the policy: :mod:`ffnet_deploy.errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path
from typing import Any

import typer

from ffnet_deploy.cli.console import ARGV, err_console
from ffnet_deploy.cli.registry import app
from ffnet_deploy.errors import EXIT_OK, EXIT_USER_ERROR, FFNetDeployError
from ffnet_deploy.reporting.console import print_line


def click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``(usage-error types, abort types)`` of click, and of the copy of click that newer typer versions vendor."""
    import importlib

    usage, abort = [], []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(mod.ClickException)
        if hasattr(mod, "Abort"):
            abort.append(mod.Abort)
    return tuple(usage), (typer.Abort, *abort)


@functools.cache
def command() -> Any:
    """The app as a click command, built once a process.

    Calling the Typer ``app`` builds it again from every command's signature (evaluating their annotations), about
    40 ms each time: a process that calls :func:`main` many times (the tests, a fork server's children) paid that on
    every call. The command holds no state between calls (click makes a new context for each), and the help texts
    were already fixed when the commands were defined. With ``pretty_exceptions_enable=False`` typer's own call adds
    nothing else: a bug's traceback is Python's either way.
    """
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns the exit code (also used by tests).

    SIGINT, SIGTERM, SIGHUP and SIGQUIT are handled alike for every command (:mod:`ffnet_deploy.interrupts`):
    whatever was being written is cleaned up, one line says so, and the exit code is ``128 + signum``.
    """
    from ffnet_deploy.errors import Interrupted
    from ffnet_deploy.interrupts import handle_signals
    usage_errors, aborts = click_exception_types()
    ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        with handle_signals():
            rv = command()(args=argv, standalone_mode=False, prog_name="ffnet-deploy")
        return rv if isinstance(rv, int) else EXIT_OK
    except FFNetDeployError as err:
        error_line(str(err))
        return EXIT_USER_ERROR
    except Interrupted as err:
        error_line(str(err))
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        err = Interrupted(2)
        error_line(str(err))
        return err.exit_code
    except aborts:
        print_line(err_console, [("alert", "aborted")])
        return EXIT_USER_ERROR
    except usage_errors as err:
        err.show()
        return err.exit_code
    except OSError as err:
        message = filesystem_error(err)
        if message is None:
            raise  # not the machine's state: a bug, whose traceback is wanted
        error_line(message)
        return EXIT_USER_ERROR


# Errors of the machine's state, not of the tool: a full, read-only or forbidden file system.
_FILESYSTEM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def filesystem_error(err: OSError) -> str | None:
    """One line for an OSError of a full, read-only or forbidden file system, or ``None`` for any other.

    Writes through :mod:`ffnet_deploy.atomic` already fail with such a line; this catches the rest (a runtime or
    converter writing its own files). ``shutil.Error`` (copytree, e.g. coremltools copying a package) carries a list
    of ``(source, destination, reason)`` instead of an errno; the first reason is read.
    """
    import os
    import shutil

    from ffnet_deploy.atomic import os_reason, write_hint

    code, where = err.errno, err.filename
    if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list) and err.args[0]:
        _, where, reason = err.args[0][0]
        code = next((c for c in _FILESYSTEM_ERRNOS if f"[Errno {c}]" in str(reason)), None)
    if code not in _FILESYSTEM_ERRNOS:
        return None
    reason = f"{os_reason(OSError(code, os.strerror(code)))}; {write_hint(code)}"
    if not where:
        return reason
    path = Path(str(where))
    if path.exists():
        return f"cannot write {path}: {reason}"
    # a staging folder already removed on the way out: name the folder that holds it instead
    place = next((p for p in path.parents if p.exists()), path.parent)
    return f"cannot write in {place}: {reason}"


def error_line(message: str) -> None:
    """``error: <message>`` on stderr, on one line (messages quote extras like ``ffnet-deploy[coreml]``: text, never
    markup)."""
    print_line(err_console, [("alert", "error:"), ("text", f" {message}")], soft_wrap=True)


def entry() -> None:
    sys.exit(main())

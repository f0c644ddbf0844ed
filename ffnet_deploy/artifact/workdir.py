"""Atomic artifact directories: build in a private folder next to the output, then rename it into place.

An artifact directory either exists complete or not at all. Its work directory is named
``.<output>.tmp-<pid>-<token>``; a process killed with SIGKILL cannot remove its own, so the next export to the same
output removes it once that process is gone.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from ffnet_deploy.errors import ExportError


def check_output(output: Path, force: bool) -> None:
    """Refuse an existing output without ``force`` and an output whose folder cannot be written.

    Raises:
        ExportError: One message for each case, saying what to do.
    """
    if (output.exists() or output.is_symlink()) and not force:
        raise ExportError(f"export | {output} already exists; pass --force to replace it")
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"export | cannot create the output folder {parent}: {err.strerror}; choose a writable "
                          "--output") from None
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"export | cannot write to {parent} (permission denied); choose a writable --output")


def make_workdir(output: Path) -> Path:
    """Create the private temporary directory next to ``output`` that becomes it on success."""
    path = output.parent / f".{output.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.mkdir()
    except OSError as err:
        raise ExportError(f"export | cannot create {path}: {err.strerror}; choose a writable --output") from None
    return path


def remove_stale_workdirs(output: Path) -> list[Path]:
    """Delete temporary directories of earlier exports to ``output`` whose process no longer runs.

    Returns:
        The directories removed.
    """
    removed = []
    for path in output.parent.glob(f".{output.name}.*-*-*"):
        kind, _, rest = path.name[len(output.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def publish(workdir: Path, output: Path) -> None:
    """Rename ``workdir`` to ``output``; an existing ``output`` (``--force``) is moved aside first, then deleted.

    Raises:
        ExportError: If the rename fails (e.g. another process created ``output`` meanwhile).
    """
    old = None
    if output.exists() or output.is_symlink():
        old = output.parent / f".{output.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(output, old)
    try:
        os.rename(workdir, output)
    except OSError as err:
        if old is not None:
            os.rename(old, output)
        raise ExportError(f"export | cannot move the finished artifact to {output}: {err.strerror}") from None
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)

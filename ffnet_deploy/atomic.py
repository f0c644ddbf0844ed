"""Atomic file writes: a temporary file in the target's folder, renamed into place only once it is complete.

Everything the tool writes for a user (fused checkpoints, reports, benchmark results, TensorRT timing caches) goes
through :func:`atomic_path`, so an error or a kill never leaves a half-written file under the final name.
Whole artifact directories follow the same rule in :mod:`ffnet_deploy.export`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ffnet_deploy.errors import ConfigError, FFNetDeployError


@contextlib.contextmanager
def atomic_path(path: str | Path, component: str, error: type[FFNetDeployError] = ConfigError) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on any failure delete it.

    Args:
        path: The final file.
        component: Who writes, for the message (``"report"``, ``"checkpoint"``).
        error: The user-error type raised when the folder cannot be created or written.

    Raises:
        FFNetDeployError: (``error``) If the target folder is not writable.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise error(f"{component} | cannot write {path}: {err.strerror}; choose a writable path") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str, component: str, error: type[FFNetDeployError] = ConfigError) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path, component, error) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes, component: str, error: type[FFNetDeployError] = ConfigError) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, component, error) as tmp:
        tmp.write_bytes(data)
    return Path(path)

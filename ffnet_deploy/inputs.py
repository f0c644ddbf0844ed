"""Checks on the files a user names, made before anything opens them.

Opening a FIFO blocks until a writer appears, and reading a character device (``/dev/zero``, ``/dev/urandom``)
never ends, so a path that is not a regular file is refused from its metadata alone (:func:`os.stat`), before it is
opened. Every loader of user files (checkpoints, data sets) calls :func:`require_regular_file` first.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ffnet_deploy.errors import FFNetDeployError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def require_regular_file(path: str | os.PathLike[str], what: str,
                         error: type[FFNetDeployError] = FFNetDeployError) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` if it names an existing regular file (symlinks are followed).

    Args:
        path: The file the user gave.
        what: What the file is meant to be, for the message (``"checkpoint"``, ``"image list"``).
        error: The :class:`~ffnet_deploy.errors.FFNetDeployError` subclass to raise.

    Raises:
        FFNetDeployError: ``error``, one line: the path does not exist, is a directory, cannot be examined, or is a
            FIFO, device or socket.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; check the path") from None
    except OSError as err:  # permission denied on a parent, a symlink loop, a name too long
        raise error(f"{what} {path} cannot be read: {err.strerror or err}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is a directory; pass the {what} file inside it") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        raise error(f"{what} {path} is not a regular file (it is {kind}); pass the {what} file itself, saved to disk")
    return path


def read_bounded(path: str | os.PathLike[str], what: str, max_bytes: int,
                 error: type[FFNetDeployError] = FFNetDeployError) -> bytes:
    """The bytes of the regular file ``path``, refused when it holds more than ``max_bytes``.

    The size is checked from the metadata before the file is opened, and again while reading (a file that grows, or
    a sparse one whose size the metadata understates, stops at ``max_bytes + 1``), so no file read back costs more
    memory than its cap.

    Args:
        path: The file.
        what: What the file is meant to be, for the message (``"pipeline state"``).
        max_bytes: The largest size accepted.
        error: The :class:`~ffnet_deploy.errors.FFNetDeployError` subclass to raise.

    Raises:
        FFNetDeployError: ``error``, one line: what :func:`require_regular_file` refuses, a file above the cap, or one
            that cannot be read.
    """
    path = require_regular_file(path, what, error)
    limit = f"{what} {path} is larger than {_size(max_bytes)}, more than any {what} ffnet-deploy writes; pass the " \
            f"{what} file itself"
    try:
        if os.stat(path).st_size > max_bytes:
            raise error(limit)
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise error(f"{what} {path} cannot be read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise error(limit)
    return data


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"

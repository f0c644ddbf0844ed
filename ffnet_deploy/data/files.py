"""Opening the files of a data set without ever blocking: regular files only, checked before and after the open.

Sources read images through it and :func:`~ffnet_deploy.data.labels.read_labels_file` reads label maps through it,
so a FIFO or a device named like an image or a label map is refused instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ffnet_deploy.data.transform import ImageSkipped
from ffnet_deploy.errors import FFNetDeployError
from ffnet_deploy.inputs import require_regular_file


def sklearn_datasets_path(*parts: str) -> Path | None:
    """Where a data file that ships inside scikit-learn lies (``sklearn/datasets/<parts>``), found without importing
    scikit-learn: ``sklearn.datasets`` takes about 1.3 s to import, in every process that reads the digits or the
    sample photos. ``None`` without scikit-learn, or where a release keeps the file elsewhere (the callers then use
    scikit-learn's own loader)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), "datasets", *parts)
    return path if path.exists() else None


def regular_file_problem(path: Path) -> str | None:
    """Why ``path`` must not be opened as an image (FIFO, device, socket, unreadable), or ``None`` if it may be."""
    try:
        require_regular_file(path, "image")
    except FFNetDeployError as err:
        return str(err)
    return None


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for reading only if it is a regular file, without ever blocking.

    The scan already refused special files from their metadata; opening with ``O_NONBLOCK`` and checking the open
    descriptor closes the gap in which a file is swapped for a FIFO between the scan and the read.

    Raises:
        ImageSkipped: ``not_regular``, if the opened file is not a regular file.
        OSError: If it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                 | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageSkipped("not_regular", "not a regular file (a FIFO, device or socket); only files are read")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh

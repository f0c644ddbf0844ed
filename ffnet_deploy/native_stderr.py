"""What native (C++) code writes to file descriptor 2, captured.

ExecuTorch and LiteRT print CPU-detection and delegate-creation lines from C++ on every program or interpreter they
open; Python's ``sys.stderr`` never sees them, so they would cut through the CLI's one-line messages and progress
display. :func:`captured_stderr` swaps descriptor 2 for a temporary file inside a block and hands back the lines
that are not known noise, for an error message to quote.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def captured_stderr(noise: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """Collect what is written to descriptor 2 inside the block; the non-empty lines that contain none of ``noise``
    are appended to the yielded list when the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines += [line for line in text.splitlines() if line.strip() and not any(n in line for n in noise)]

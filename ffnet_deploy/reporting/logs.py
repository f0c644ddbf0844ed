"""Warnings for people: the same warning about thousands of files is shown a few times, then counted.

A folder of 100,000 corrupt images gave one warning per file (16 MB of stderr). :func:`repeats_limited`, which the
CLI holds around every command, lets the first :data:`FIRST` warnings of each message template through, says once
that the rest are counted, and drops them; the data sources already end every pass with one summary per reason
("N file(s) skipped as corrupt, e.g. ..."), and warnings that carry a count (``%d``) are such summaries, so they
always show. Library callers who configure logging themselves see every record.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

FIRST = 5
"""How many warnings of one template are shown before the rest are only counted."""

LOGGERS = ("ffnet_deploy.validate.data", "ffnet_deploy.data")
"""The loggers that warn once per file (the data sources)."""


class RepeatLimit(logging.Filter):
    """Pass the first ``first`` records of each message template; turn the next into a note; drop the rest."""

    def __init__(self, first: int = FIRST) -> None:
        super().__init__()
        self.first = first
        self.seen: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)
        if "%d" in template:  # a summary with its count
            return True
        n = self.seen.get(template, 0) + 1
        self.seen[template] = n
        if n <= self.first:
            return True
        if n == self.first + 1:
            prefix = template.split("|", 1)[0].strip() + " | " if "|" in template else ""
            record.msg = (f"{prefix}more warnings like the {self.first} above are not shown one by one; the count "
                          "by reason follows at the end of the pass")
            record.args = ()
            return True
        return False

    @property
    def dropped(self) -> int:
        return sum(max(0, n - self.first - 1) for n in self.seen.values())


@contextlib.contextmanager
def repeats_limited(first: int = FIRST, loggers: Sequence[str] = LOGGERS) -> Iterator[RepeatLimit]:
    """Within the block, the per-file loggers pass only the first ``first`` warnings of each template."""
    limit = RepeatLimit(first)
    targets = [logging.getLogger(name) for name in loggers]
    for logger in targets:
        logger.addFilter(limit)
    try:
        yield limit
    finally:
        for logger in targets:
            logger.removeFilter(limit)

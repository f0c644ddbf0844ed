"""How the CLI shows work in progress on stderr: status lines, bars, and the lines that stay.

Every producer reports through the event protocol of :mod:`ffnet_deploy.progress`; this module is the one place
that turns those into rich status lines and bars. A progress description is rich markup (``TextColumn`` reads it
so), so user text is escaped here with :func:`~ffnet_deploy.reporting.text.console_text`; lines that stay are drawn
by :func:`~ffnet_deploy.reporting.console.print_line`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ffnet_deploy.cli.console import err_console
from ffnet_deploy.progress import Events
from ffnet_deploy.reporting.console import print_line, rich_text
from ffnet_deploy.reporting.text import console_text


def log_warnings() -> None:
    """The package's logged warnings (a runtime's fallback, a skipped file) on stderr, unless a caller already
    routes them."""
    import logging

    logger = logging.getLogger("ffnet_deploy")
    if not logger.handlers:
        from rich.logging import RichHandler

        logger.addHandler(RichHandler(console=err_console, show_time=False, show_path=False))
        logger.setLevel(logging.WARNING)


class StatusLine(Events):
    """Progress events on a rich status line: steps are transient (the status line only); notes and warnings also
    stay, one dim or bold yellow line each."""

    def __init__(self, status: Any) -> None:
        self.status = status

    def step(self, done: float, total: float, label: str = "") -> None:
        self.status.update(rich_text(f"{label} {done:g}/{total:g}" if total > 0 else label))

    def note(self, text: str) -> None:
        self._line(text, [("muted", f"  {text}")])

    def warn(self, text: str) -> None:
        self._line(text, [("notice", text)])

    def _line(self, text: str, spans: list[tuple[str, str]]) -> None:
        self.status.update(rich_text(text))
        print_line(err_console, spans)


@contextmanager
def status(text: str) -> Iterator[StatusLine]:
    """A status line with a spinner while the block runs; its events sink."""
    with err_console.status(console_text(text)) as line:
        yield StatusLine(line)


def _live() -> bool:
    """Whether stderr can show a live bar: on a file or a pipe (a CI log) rich draws nothing but leaves one blank line
    when a transient bar ends, so there the bars are off and only the lines that stay are written."""
    return err_console.is_terminal


def _transient_bars(*, counted: bool, off: bool) -> Any:
    """A transient rich progress display on stderr: description, bar, ``done/total`` when ``counted``, time elapsed;
    drawn only when not ``off`` and stderr is a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), *((MofNCompleteColumn(),) if counted else ()),
               TimeElapsedColumn())
    return Progress(*columns, console=err_console, transient=True, disable=off or not _live())


class Bar(Events):
    """Progress events on one task of a transient rich bar: a step moves it (``total`` 0: no total known) and, with a
    label, names it; a note or a warning names it too and stays, one dim or bold yellow line (none when ``quiet``)."""

    def __init__(self, bar: Any, task: Any, quiet: bool = False) -> None:
        self.bar, self.task, self.quiet = bar, task, quiet

    def step(self, done: float, total: float, label: str = "") -> None:
        fields = {"description": console_text(label)} if label else {}
        self.bar.update(self.task, completed=done, total=total if total > 0 else None, **fields)

    def note(self, text: str) -> None:
        self._line(text, "muted")

    def warn(self, text: str) -> None:
        self._line(text, "notice")

    def _line(self, text: str, style: str) -> None:
        self.bar.update(self.task, description=console_text(text))
        if not self.quiet:
            print_line(err_console, [(style, text)])


@contextmanager
def bar(description: str, *, counted: bool = True, quiet: bool = False) -> Iterator[Bar]:
    """A transient bar while the block runs; its events sink. ``counted``: show ``done/total`` (images, steps);
    otherwise the bar alone (bench's fraction of its plan). ``quiet`` (``--json``): no bar and no lines."""
    with _transient_bars(counted=counted, off=quiet) as bars:
        yield Bar(bars, bars.add_task(console_text(description), total=None), quiet=quiet)


class PipelineBars(Events):
    """The pipeline's two bars: the stages, and the steps of the stage in progress; notes (and warnings) stay as
    dim lines unless the bars are off (``--quiet``, ``--json``)."""

    def __init__(self, bars: Any, stages: Sequence[str], show: bool) -> None:
        self.bars, self.stages, self.show = bars, tuple(stages), show
        self.overall = bars.add_task("stages", total=len(self.stages))
        self.nested = bars.add_task("", total=1, visible=False)

    def stage(self, name: str) -> None:
        index = self.stages.index(name)
        self.bars.update(self.overall, completed=index,
                         description=f"stage {index + 1}/{len(self.stages)}: {console_text(name)}")
        self.bars.update(self.nested, visible=False)

    def note(self, text: str) -> None:
        if self.show:
            print_line(self.bars.console, [("muted", text)])

    warn = note

    def step(self, done: float, total: float, label: str = "") -> None:
        self.bars.update(self.nested, description=f"  {console_text(label)}", completed=done, total=max(total, 1),
                         visible=True)

    def hide_stages(self) -> None:
        """The stages bar off (the Ray executor reports per job, not per stage)."""
        self.bars.update(self.overall, visible=False)


@contextmanager
def pipeline_bars(stages: Sequence[str], *, show: bool) -> Iterator[PipelineBars]:
    """The pipeline's bars while the block runs; yields their events sink."""
    with _transient_bars(counted=True, off=not show) as bars:
        yield PipelineBars(bars, stages, show)

"""How the CLI shows work in progress on stderr: status lines, bars, and the lines that stay.

Every producer reports through the event protocol of :mod:`ffnet_deploy.progress` (or, until it is converted, a
callback); this module is the one place that turns those into rich status lines and bars. A progress description
is rich markup (``TextColumn`` reads it so), so user text is escaped here with
:func:`~ffnet_deploy.reporting.text.console_text`; lines that stay are drawn by
:func:`~ffnet_deploy.reporting.console.print_line`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


@contextmanager
def count_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient bar of ``total`` items; yields ``update(done)``."""
    from rich.progress import Progress

    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task(console_text(description), total=total)
        yield lambda done: bar.update(task, completed=done)


@contextmanager
def step_bar(description: str) -> Iterator[Callable[[int, int, str], None]]:
    """A transient bar of steps whose count is learnt on the way; yields ``update(step, total, message)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(console_text(description), total=None)
        yield lambda step, total, message: bar.update(task, completed=step, total=total,
                                                      description=console_text(message))


@contextmanager
def bench_bar(*, quiet: bool) -> Iterator[tuple[Callable[[str], None], Callable[[str, float, float], None]]]:
    """The bench's bar; yields ``(log, progress)``: a log line also stays (dim) unless ``quiet`` (``--json``)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=quiet) as bar:
        task = bar.add_task("bench", total=1.0)

        def progress(description: str, done: float, total: float) -> None:
            bar.update(task, description=console_text(description), completed=done, total=total)

        def log(message: str) -> None:
            bar.update(task, description=console_text(message))
            if not quiet:
                print_line(err_console, [("muted", message)])

        yield log, progress


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not show) as bars:
        yield PipelineBars(bars, stages, show)

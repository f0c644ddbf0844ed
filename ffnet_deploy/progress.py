"""Progress events: the one protocol through which every command reports what it is doing.

A producer (the export, its exporters and quantizers, sensitivity, the pipeline) emits four kinds of events:

- ``stage(name)``: a named stage begins (``"trace"``, ``"convert"``, ``"validate"``); the export's and the pipeline's
  stages are also the fault points of the test hook (:func:`ffnet_deploy.interrupts.fault_point`), reached from
  these events, never from message text;
- ``step(done, total, label)``: numbers of the work in progress (``12`` of ``300`` calibration images), as numbers;
  ``total`` 0 for work of unknown size (the label alone says what is going on);
- ``note(text)``: one line for the log;
- ``warn(text)``: one line the user must notice.

The CLI renders them (rich status lines and bars); a Python caller passes nothing (:data:`NULL`), a sink of its
own, or a plain-text log (a ``Callable[[str], None]`` such as ``lines.append``, through :class:`TextLog`: notes and
warnings are written, stages and steps are transient and are not).

:class:`Events` is the base of the sinks here: calling one (``log("text")``) is :meth:`Events.note`, so that code
written against a plain-text log keeps working when it is handed a sink.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    """What a producer reports to (module docstring)."""

    def stage(self, name: str) -> None: ...

    def step(self, done: float, total: float, label: str = "") -> None: ...

    def note(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...


class Events:
    """A sink that ignores every event; subclasses override what they show. Calling it is :meth:`note`."""

    def stage(self, name: str) -> None:
        """A named stage begins."""

    def step(self, done: float, total: float, label: str = "") -> None:
        """``done`` of ``total`` units of ``label`` are done."""

    def note(self, text: str) -> None:
        """One line for the log."""

    def warn(self, text: str) -> None:
        """One line the user must notice."""

    def __call__(self, text: str) -> None:
        self.note(text)


NULL = Events()
"""The null sink: what a producer reports to when the caller passed nothing."""


class TextLog(Events):
    """A plain-text log as a sink: notes and warnings are written as they are; stages and steps are not."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def note(self, text: str) -> None:
        self.write(text)

    def warn(self, text: str) -> None:
        self.write(text)


class Forward(Events):
    """A sink that passes every event on to ``target``; subclasses add to one kind (e.g. a fault point per stage)."""

    def __init__(self, target: Progress) -> None:
        self.target = target

    def stage(self, name: str) -> None:
        self.target.stage(name)

    def step(self, done: float, total: float, label: str = "") -> None:
        self.target.step(done, total, label)

    def note(self, text: str) -> None:
        self.target.note(text)

    def warn(self, text: str) -> None:
        self.target.warn(text)


Sink = Progress | Callable[[str], None]
"""What a producer that also takes a plain-text log accepts (export, the quantization stages, sensitivity): a sink,
or a ``Callable[[str], None]`` that gets the notes and warnings (through :func:`as_progress`)."""


def as_progress(progress: Sink | None) -> Events:
    """The sink for what a caller passed: :data:`NULL` for ``None``, a plain-text log wrapped in :class:`TextLog`,
    a sink as it is (wrapped in :class:`Forward` when it is not an :class:`Events`, so that it can be called)."""
    if progress is None:
        return NULL
    if isinstance(progress, Events):
        return progress
    if isinstance(progress, Progress):
        return Forward(progress)
    return TextLog(progress)


_LIBRARY_OUTPUT: ContextVar[bool] = ContextVar("ffnet_deploy_library_output", default=True)

# torch's warnings that importing NNCF and torchao set off on a CPU machine (no CUDA runtime found; torchao's Enum
# registration deprecated): hidden inside library_output(False), shown as before everywhere else
_LIBRARY_WARNINGS = ("torch.utils.cpp_extension", "torch.utils._pytree")


@contextmanager
def logger_levels(names: Sequence[str], level: int) -> Iterator[None]:
    """The loggers ``names`` at ``level`` inside the block; their own levels put back after it."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, saved, strict=True):
            logger.setLevel(old)


@contextmanager
def library_output(shown: bool) -> Iterator[None]:
    """Whether the libraries' own progress bars and info lines (NNCF's) and the torch warnings of
    :data:`_LIBRARY_WARNINGS` are shown inside the block: ``pipeline --quiet`` and ``--json`` print nothing but their
    result, so they pass ``False``; the producers report their progress through this protocol either way."""
    token = _LIBRARY_OUTPUT.set(shown)
    try:
        with logger_levels(() if shown else _LIBRARY_WARNINGS, logging.ERROR):
            yield
    finally:
        _LIBRARY_OUTPUT.reset(token)


def library_output_shown() -> bool:
    """``False`` inside ``library_output(False)`` (:func:`library_output`)."""
    return _LIBRARY_OUTPUT.get()

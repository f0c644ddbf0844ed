"""Terminating signals become :class:`~ffnet_deploy.errors.Interrupted`, so that every command cleans up first.

While :func:`handle_signals` is active (the CLI holds it for the whole command; :func:`ffnet_deploy.export.export`
and :func:`ffnet_deploy.atomic.atomic_path` hold it for library users), SIGINT, SIGTERM, SIGHUP and SIGQUIT raise
``Interrupted(signum)`` in the main thread. It derives from :class:`BaseException`, so ``except Exception``
fallbacks cannot absorb it; the ``finally`` / ``except BaseException`` cleanups run, and the CLI prints one line and
exits ``128 + signum``. A second signal while the first is being cleaned up is ignored, so that cleanup finishes.

:func:`deferred` holds signals back during a critical section (publishing an artifact): one that arrives inside is
raised when the section ends, or earlier at :func:`raise_pending`, the last point before the irreversible step.

Test hook: the environment variable ``FFNET_DEPLOY_FAULT=POINT:SIGNAL`` (e.g. ``simplify:SIGTERM``,
``pipeline-validate:SIGKILL``) makes the process send ``SIGNAL`` to itself when it reaches the fault point ``POINT``
(:func:`fault_point`): the export's stages (``ffnet_deploy.export.STAGES``) and the pipeline's
(``pipeline-<stage>``, ``ffnet_deploy.pipeline.engine.STAGES``). The fault-injection tests use it to stop a command
at a known point; it is read in one place, :func:`fault_point`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Iterator

from ffnet_deploy.errors import Interrupted

SIGNALS: tuple[int, ...] = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
                                 if hasattr(signal, name))
"""The terminating signals turned into :class:`Interrupted`."""


FAULT_ENV = "FFNET_DEPLOY_FAULT"
"""Test hook (module docstring): ``POINT:SIGNAL`` sends ``SIGNAL`` to this process when it reaches ``POINT``."""


def fault_point(name: str) -> None:
    """Reach the fault point ``name``: the one place that reads :data:`FAULT_ENV` (module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, rest = spec.partition(":")
    sig, _, once = rest.partition(":")
    if point != name:
        return
    if once:  # POINT:SIGNAL:FILE fires once: in the first process to create FILE (a killed worker's retry goes on)
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), int(sig) if sig.isdigit() else getattr(signal, sig))
    time.sleep(30)  # the handler raises during the sleep (or SIGKILL ends the process); a test should not go on


class _State:
    depth = 0  # nesting of handle_signals(); handlers are installed by the outermost only
    raised = False  # a signal was raised already: later ones must not interrupt the cleanup
    deferring = 0  # nesting of deferred()
    pending: list[int] = []  # signals held back by deferred()


def _handler(signum: int, _frame: object) -> None:
    if _State.deferring:
        _State.pending.append(signum)
        return
    if _State.raised:
        return
    _State.raised = True
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Raise :class:`Interrupted` on SIGINT, SIGTERM, SIGHUP and SIGQUIT inside the block (main thread only).

    Nested uses are free: only the outermost installs and restores the handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal.signal works only in the main thread, and signals are delivered there anyway
        return
    if _State.depth:
        _State.depth += 1
        try:
            yield
        finally:
            _State.depth -= 1
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _State.depth, _State.raised, _State.pending = 1, False, []
    try:
        yield
    finally:
        _State.depth = 0
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """After the block, the calling thread has the alternate signal stack it had before it (Linux; elsewhere a no-op).

    OpenVINO's CPU plugin gives the thread that loads it into a ``Core`` (its first device query or compile) an
    alternate signal stack of its own, and puts back the one it found when that ``Core`` is freed. Two freed in the
    order they were made leave the thread on the first one's freed stack, and the next signal (Ctrl-C, a SIGTERM) then
    crashes the process with a SIGSEGV in the kernel's signal delivery, instead of raising :class:`Interrupted`: seen
    after ``validate`` of an fp32 and an fp16 OpenVINO artifact. With the block around each ``Core``'s loading, every
    ``Core`` finds, and later puts back, the thread's own stack, which stays valid.
    """
    stack = _signal_stack()
    try:
        yield
    finally:
        if stack is not None and _signal_stack() != stack:
            _set_signal_stack(stack)


_SS_DISABLE = 2  # stack_t.ss_flags: no alternate stack (Linux); SS_ONSTACK, the other flag, cannot be set


@functools.cache
def _sigaltstack():
    """libc's ``sigaltstack`` and Linux's ``stack_t``, or ``None`` elsewhere (another layout of ``stack_t``)."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.sigaltstack, StackT, ctypes.byref


def _signal_stack() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack as ``(address, flags, size)``; ``None`` if it cannot be read."""
    api = _sigaltstack()
    if api is None:
        return None
    call, stack_t, ref = api
    old = stack_t()
    if call(None, ref(old)) != 0:
        return None
    return old.ss_sp or 0, old.ss_flags, old.ss_size


def _set_signal_stack(stack: tuple[int, int, int]) -> None:
    api = _sigaltstack()
    if api is None:
        return
    call, stack_t, ref = api
    address, flags, size = stack
    call(ref(stack_t(address or None, flags & _SS_DISABLE, size)), None)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold signals back inside the block; raise the first one that arrived when it ends.

    Raises:
        Interrupted: At the end of the block, if a signal arrived inside it (and :func:`raise_pending` did not
            raise it already).
    """
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1
        if not _State.deferring:
            raise_pending()  # also over an error in flight: the user asked to stop, and must not see a mere failure


def raise_pending() -> None:
    """Raise the first signal :func:`deferred` held back, if any: call it just before an irreversible step.

    Raises:
        Interrupted: If a signal is pending.
    """
    if _State.pending and not _State.raised:
        signum = _State.pending[0]
        _State.pending = []
        _State.raised = True
        raise Interrupted(signum)
    _State.pending = []


def _default_signals_in_forked_child() -> None:
    # Backends fork helper processes while a command runs (OpenVINO's telemetry sender does). A child that inherited
    # these handlers would turn its parent's terminate() into an exception somewhere inside library code and outlive
    # it, hanging interpreter exit; children get the default actions instead.
    for s in SIGNALS:
        if signal.getsignal(s) is _handler:
            signal.signal(s, signal.SIG_DFL)
    _State.depth, _State.raised, _State.deferring, _State.pending = 0, False, 0, []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_signals_in_forked_child)

"""The one timing loop of the project: warmup, interleaved rounds, statistics, first inference, memory.

``ffnet-deploy bench``, the pipeline's bench stage, the export-time INT8 speed check and the studies all time through
:func:`measure`; nothing else in the project times inference in a loop of its own.

What one measurement does, for a group of contenders (runners, or plain calls, that are compared with each other):

1. **Load, one at a time.** Each contender's runner is activated and run once on its input; that wall time is the
   *first inference* (load + compile + first run). The resident memory the process gained at its peak during that
   step is the contender's *peak memory* (Linux: the kernel's high-water mark, reset before each load through
   ``/proc/self/clear_refs``; elsewhere the growth of ``ru_maxrss``, which can only grow, so it is a lower bound).
2. **Warmup**, untimed: each contender runs at least ``warmup`` times and for at least ``warmup_time_s`` seconds.
3. **Rounds, in blocks.** Every round runs each contender once, in turn (A, B, C, A, B, C, ...), so a slow phase of
   the machine hits all of them alike; that is how every ratio in this project is measured. Rounds go on until every
   contender has ``min_iters`` samples and the timed phase has lasted ``min_time_s`` (or ``max_time_s`` is reached,
   with at least 3 samples each). With ``blocks`` = k > 1 the timed phase is cut into k blocks, each with 1/k of
   those counts and times; the order of the contenders alternates from block to block (A, B, A, B, then B, A, B, A)
   and each contender's best sample of a block is its *block figure* (:attr:`Contender.block_best_ms`), from which
   :mod:`ffnet_deploy.runtimes.noise` takes paired ratios and the verdict. :func:`measure_groups` times several
   groups (contenders that must not share rounds, e.g. two runtimes' thread pools) in the same blocks: each block
   runs every group's rounds in turn, the groups' order alternating too, so that a ratio across groups is paired by
   block as well. The kernel's count of how long the timed threads waited for a CPU is kept per group
   (:class:`~ffnet_deploy.runtimes.noise.CpuWait`).
4. **Statistics** per contender over the timed samples: min, p50, p90, p99, mean, std and a trimmed mean that drops
   the 10 % highest and lowest samples (ModelBench's trimming).

Inputs are made once per contender, before any timing, and the same array is fed every time. Each sample of a
runner is its own :attr:`~ffnet_deploy.runtimes.base.BaseRunner.last_latency_ms`: the engine call alone, without the
runner's input checks. A :class:`CallContender` times a zero-argument call instead (wall time of the call), for
what is not a runner (a GEMM, eager PyTorch in a study).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.progress import NULL, Progress
from ffnet_deploy.runtimes.base import BaseRunner

TRIM = 0.10
"""Fraction of samples dropped at each end for the trimmed mean."""


@dataclass(frozen=True)
class Protocol:
    """How long and how often each contender runs (the ``bench`` options of the same names)."""

    warmup: int = 10
    warmup_time_s: float = 1.0
    min_iters: int = 50
    min_time_s: float = 5.0
    max_time_s: float | None = None  # stop the rounds here even if min_iters is not reached (min_samples reached)
    min_samples: int = 3  # samples every contender has before max_time_s may stop the rounds
    blocks: int = 1  # k blocks of rounds, the contenders' order alternating (1: one block, the plain loop)

    def __post_init__(self) -> None:
        # NaN compares False with everything: a NaN --min-time would never end the rounds, so finite is checked first.
        for name, flag in (("warmup_time_s", "--warmup-time"), ("min_time_s", "--min-time"),
                           ("max_time_s", "--max-time")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ConfigError(f"bench | {flag} must be a finite number of seconds, got {value!r}")
        for name, flag in (("warmup", "--warmup"), ("min_iters", "--min-iters"), ("min_samples", "min_samples"),
                           ("blocks", "--blocks")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"bench | {flag} must be a whole number, got {value!r}")
        if self.warmup < 0 or self.min_iters < 1 or self.warmup_time_s < 0 or self.min_time_s < 0:
            raise ConfigError("bench | --warmup and --warmup-time must be >= 0, --min-iters >= 1 and --min-time >= 0")
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise ConfigError("bench | --max-time must be a positive number of seconds")
        if self.blocks < 1:
            raise ConfigError(f"bench | --blocks must be at least 1, got {self.blocks}")
        if self.min_samples < 1:
            raise ConfigError(f"timing | min_samples must be at least 1, got {self.min_samples}")

    def to_dict(self) -> dict:
        return {**asdict(self), "interleaved": True, "trim": TRIM}


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """min, p50, p90, p99, mean, std (sample) and the trimmed mean of ``samples_ms``, in milliseconds."""
    if not samples_ms:
        raise ValueError("no samples")
    s = np.sort(np.asarray(samples_ms, dtype=np.float64))
    cut = int(len(s) * TRIM)
    kept = s[cut:len(s) - cut] if len(s) - 2 * cut > 0 else s
    return {"min": float(s[0]), "p50": float(np.percentile(s, 50)), "p90": float(np.percentile(s, 90)),
            "p99": float(np.percentile(s, 99)), "mean": float(s.mean()),
            "std": float(statistics.stdev(s)) if len(s) > 1 else 0.0, "trimmed_mean": float(kept.mean())}


# -- memory ---------------------------------------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """The resident memory a block of code added at its peak, in MB (``with PeakMemory() as m: ...; m.mb``)."""

    def __init__(self) -> None:
        self.mb: float | None = None
        self.method = "unavailable"

    def __enter__(self) -> PeakMemory:
        self._precise = False
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
            self._precise = _status_kb("VmHWM") is not None
        except OSError:
            pass
        self._start = _status_kb("VmRSS") if self._precise else _maxrss_kb()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = _status_kb("VmHWM") if self._precise else _maxrss_kb()
        if self._start is not None and end is not None:
            self.mb = max(0.0, (end - self._start) / 1024)
            self.method = "VmHWM" if self._precise else "ru_maxrss growth (lower bound)"


def _maxrss_kb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 1024 if sys.platform == "darwin" else float(value)  # macOS reports bytes


# -- measuring --------------------------------------------------------------------------------------------------------


@dataclass
class Contender:
    """One runner to time, with the input it is fed (made once, before any timing)."""

    name: str
    make_runner: Callable[[], BaseRunner]
    feed: dict[str, np.ndarray]
    runner: BaseRunner | None = None
    samples_ms: list[float] = field(default_factory=list)
    block_best_ms: list[float] = field(default_factory=list)  # the best sample of each block (NaN: none)
    first_inference_ms: float | None = None
    peak_rss_mb: float | None = None
    memory_method: str = ""
    execution_precision: str | None = None  # what the engine reports it runs (OpenVINO's inference precision)
    error: str | None = None
    owned: bool = True  # measure() loaded the runner, so it releases it (False for a runner handed in active)

    def load(self) -> None:
        """Build and activate the runner and run it once (the first inference)."""
        self.runner = self.make_runner()
        self.runner.activate()
        self.run_once()
        report_precision = getattr(self.runner, "actual_inference_precision", None)
        self.execution_precision = report_precision() if callable(report_precision) else None

    def run_once(self) -> float:
        """One inference; returns the engine's time for it in ms."""
        assert self.runner is not None
        self.runner.infer(self.feed)
        assert self.runner.last_latency_ms is not None
        return self.runner.last_latency_ms

    def pids(self) -> tuple[int, ...]:
        """Processes besides this one that run the contender (a timing worker's), for the CPU-wait count."""
        return ()

    def own_memory(self) -> tuple[float | None, str] | None:
        """The peak memory the contender's own process measured, where it is not this one (``None``: this one)."""
        return None

    def close(self) -> None:
        """Release the runner (errors while releasing are ignored: they must not hide the measurement)."""
        if self.runner is not None and self.runner.is_active:
            try:
                self.runner.deactivate()
            except Exception:  # noqa: BLE001
                pass


class CallContender(Contender):
    """A zero-argument call to time (its wall time per call), where there is no runner to time."""

    def __init__(self, name: str, call: Callable[[], object]) -> None:
        super().__init__(name, make_runner=_no_runner, feed={})
        self.call = call

    def load(self) -> None:
        self.run_once()

    def run_once(self) -> float:
        start = time.perf_counter()
        self.call()
        return (time.perf_counter() - start) * 1e3

    def close(self) -> None:
        pass


def _no_runner() -> BaseRunner:
    raise AssertionError("a CallContender has no runner")




def measure(contenders: Sequence[Contender], protocol: Protocol, progress: Progress = NULL) -> None:
    """Load, warm up and time ``contenders`` interleaved, filling each one's samples in place.

    A contender whose runner fails to load or run gets ``error`` set (one line) and drops out; the others go on.
    Every runner this function loaded is deactivated at the end, also on an interrupt. A contender handed in with an
    already active ``runner`` is used as it is (no first-inference or memory figures) and left active.

    ``progress`` gets ``step(done, total, label)``: ``0`` of ``1`` as each contender loads (``"loading <name>"``)
    and warms up (``"warmup <name>"``), then the fraction of the timed phase done (of ``1.0``, ``"timing <names>"``).
    """
    measure_groups([contenders], protocol, progress)


def measure_groups(groups: Sequence[Sequence[Contender]], protocol: Protocol, progress: Progress = NULL
                   ) -> list[float | None]:
    """:func:`measure` for several groups timed in the same blocks (module docstring, step 3).

    Returns, per group, the share of their running time the measured threads waited for a CPU during that group's
    rounds (``None`` where the kernel does not say).
    """
    from ffnet_deploy.runtimes.noise import CpuWait

    everyone = [c for group in groups for c in group]
    waits: list[CpuWait] = []
    try:
        for c in everyone:
            if c.runner is not None and c.runner.is_active:  # handed in active: the caller loads and releases it
                c.owned = False
                continue
            progress.step(0, 1, f"loading {c.name}")
            memory = PeakMemory()
            try:
                with memory:
                    start = time.perf_counter()
                    c.load()
                    c.first_inference_ms = (time.perf_counter() - start) * 1e3
            except Exception as err:  # noqa: BLE001 - one contender's failure is reported in its row
                c.error = _error_line(err)
                c.close()
                continue
            c.peak_rss_mb, c.memory_method = memory.mb, memory.method
            own = c.own_memory()
            if own is not None:  # a worker's memory, not this process's
                c.peak_rss_mb, c.memory_method = own
        for c in [c for c in everyone if c.error is None]:
            progress.step(0, 1, f"warmup {c.name}")
            count, start = 0, time.perf_counter()
            # --max-time bounds the warm-up too: a huge --warmup must not run for hours.
            while ((count < protocol.warmup or time.perf_counter() - start < protocol.warmup_time_s)
                   and (protocol.max_time_s is None or time.perf_counter() - start < protocol.max_time_s)):
                _guarded(c)
                count += 1
                if c.error:
                    break
        pids = [pid for c in everyone for pid in c.pids()]
        waits = [CpuWait(pids) for _ in groups]
        k = protocol.blocks
        order = list(range(len(groups)))
        for block in range(k):
            for g in (order if block % 2 == 0 else order[::-1]):
                live = [c for c in groups[g] if c.error is None]
                if not live:
                    continue
                if len(groups) > 1:  # one untimed round: the caches were another group's a moment ago
                    for c in live:
                        _guarded(c)
                    live = [c for c in live if c.error is None]
                with waits[g]:
                    _block(live if block % 2 == 0 else live[::-1], protocol, block, progress)
    finally:
        for c in everyone:
            if c.owned:
                c.close()
    return [w.share for w in waits] + [None] * (len(groups) - len(waits))


def _block(live: list[Contender], protocol: Protocol, block: int, progress: Progress) -> None:
    """One block of rounds of one group: 1/k of the protocol's iterations and times."""
    k = protocol.blocks
    min_iters = -(-protocol.min_iters // k)
    min_time = protocol.min_time_s / k
    max_time = protocol.max_time_s / k if protocol.max_time_s is not None else None
    min_samples = -(-protocol.min_samples // k)
    first = {id(c): len(c.samples_ms) for c in live}
    start = time.perf_counter()
    names = ", ".join(c.name for c in live)
    everyone = list(live)
    while live:
        elapsed = time.perf_counter() - start
        fewest = min(len(c.samples_ms) - first[id(c)] for c in live)
        if fewest >= min_iters and elapsed >= min_time:
            break
        if max_time is not None and elapsed >= max_time and fewest >= min_samples:
            break
        frac = min(fewest / min_iters, elapsed / min_time if min_time else 1.0)
        progress.step(min((block + min(frac, 1.0)) / k, 1.0), 1.0, f"timing {names}")
        for c in live:
            _guarded(c, record=True)
        live = [c for c in live if c.error is None]
    progress.step((block + 1) / k, 1.0, f"timing {names}")
    for c in everyone:
        mine = c.samples_ms[first[id(c)]:]
        c.block_best_ms.append(min(mine) if mine else float("nan"))


def _error_line(err: BaseException) -> str:
    from ffnet_deploy.errors import first_line

    return f"{type(err).__name__}: {first_line(err, default='')}".rstrip(": ")


def _guarded(c: Contender, record: bool = False) -> None:
    try:
        ms = c.run_once()
    except Exception as err:  # noqa: BLE001
        c.error = _error_line(err)
        return
    if record:
        c.samples_ms.append(ms)


def throughput(batch: int, p50_ms: float) -> float:
    """Images per second at a median latency of ``p50_ms`` per batch."""
    return batch * 1e3 / p50_ms if p50_ms > 0 and math.isfinite(p50_ms) else float("nan")

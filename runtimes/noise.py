"""Whether a timing comparison can be trusted: paired block ratios, the machine's load, and one verdict.

Every comparison the project prints (a bench row against its reference, INT8 against FP32 at export time, the
pipeline's "vs torch" and its recommendation) is judged here, by :func:`verdict`, and nowhere else.

**Paired blocks.** :func:`ffnet_deploy.runtimes.timing.measure_groups` splits the timed phase into ``k`` blocks; in
each block every contender runs a few interleaved rounds (the order of the contenders, and of the groups, alternates
from block to block), and the contender's figure for the block is its best (shortest) sample: a best-of-n that a
short burst of another process cannot move. The ratio of two contenders is then taken *per block*
(:func:`paired_ratio`): both figures of one block come from the same minute of the machine's life, so a slow phase
slows both. The median of the ``k`` block ratios is the ratio reported; their min-max range is its spread.

**Contention.** The kernel counts, per thread, the time it spent running and the time it waited on the run queue
for a CPU (``/proc/<pid>/task/<tid>/schedstat``). :class:`CpuWait` sums both over the measured processes' threads
for the timed phase: a share of waiting means other processes took the CPUs the measurement needed. The load average
(:func:`load_snapshot`) before and after a run is recorded beside it (it lags by about a minute, so it describes the
machine a run started on, not the seconds it took).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ffnet_deploy.environment import usable_cpus

STABLE = "stable"
NOISY = "noisy: rerun on a quiet machine"
VERDICTS = (STABLE, NOISY)
"""The two verdicts a comparison or a table gets (the same words in the terminal, JSON, Markdown and HTML)."""

MAX_SPREAD = 0.10
"""Block ratios may lie at most this fraction away from their median (±10 %)."""
MAX_WAIT = 0.10
"""The measured threads may have waited for a CPU at most this fraction of the time they ran."""
MIN_BLOCKS = 3
"""Fewer blocks than this give no spread to judge."""


def load_snapshot() -> dict[str, float] | None:
    """The 1-, 5- and 15-minute load averages (``os.getloadavg``), or ``None`` where the OS has none."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return None
    return {"1m": round(one, 2), "5m": round(five, 2), "15m": round(fifteen, 2)}


# -- run-queue waiting ------------------------------------------------------------------------------------------------


def _thread_times(pid: int) -> dict[int, tuple[int, int]]:
    """``tid -> (ns running, ns waiting for a CPU)`` of every thread of ``pid`` (empty where unreadable)."""
    out: dict[int, tuple[int, int]] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            ran, waited, _slices = (task / "schedstat").read_text().split()[:3]
            out[int(task.name)] = (int(ran), int(waited))
        except (OSError, ValueError):
            continue
    return out


class CpuWait:
    """How long the threads of some processes waited for a CPU, against how long they ran, between two samples.

    ``with CpuWait([os.getpid(), worker_pid]) as w: ...; w.share`` is the waiting time over the running time
    (``None`` where the kernel does not report it: not Linux, or no schedstat). Threads that start inside the block
    count from zero.
    """

    def __init__(self, pids: Iterable[int] = ()) -> None:
        self.pids = list(dict.fromkeys([os.getpid(), *pids]))
        self.ran_ns = 0
        self.waited_ns = 0
        self.available = False
        self._start: dict[tuple[int, int], tuple[int, int]] = {}

    def add(self, pid: int) -> None:
        """Also count ``pid`` (a worker started after the block began: it counts from now)."""
        if pid not in self.pids:
            self.pids.append(pid)
            self._start.update({(pid, t): v for t, v in _thread_times(pid).items()})

    def start(self) -> CpuWait:
        self._start = {(pid, t): v for pid in self.pids for t, v in _thread_times(pid).items()}
        self.available = bool(self._start)
        return self

    def stop(self) -> CpuWait:
        for pid in self.pids:
            for tid, (ran, waited) in _thread_times(pid).items():
                ran0, waited0 = self._start.get((pid, tid), (0, 0))
                self.ran_ns += max(0, ran - ran0)
                self.waited_ns += max(0, waited - waited0)
        return self

    def __enter__(self) -> CpuWait:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def share(self) -> float | None:
        if not self.available or self.ran_ns <= 0:
            return None
        return round(self.waited_ns / self.ran_ns, 4)


# -- ratios and the verdict -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedRatio:
    """``reference / contender`` per block (above 1: the contender is faster), their median and range."""

    median: float
    low: float
    high: float
    blocks: tuple[float, ...]
    label: str = ""  # "own" for :func:`own_spread`

    @property
    def crosses_one(self) -> bool:
        """Whether the range holds 1.0: the blocks do not agree on which of the two is faster."""
        return self.low <= 1.0 <= self.high

    @property
    def spread(self) -> float:
        """The largest distance of a block ratio from the median, as a fraction of the median."""
        if not self.median:
            return math.inf
        return max(self.high / self.median - 1.0, 1.0 - self.low / self.median)

    def to_dict(self) -> dict:
        return {"median": round(self.median, 4), "low": round(self.low, 4), "high": round(self.high, 4),
                "blocks": [round(b, 4) for b in self.blocks]}


def paired_ratio(reference_blocks_ms: Sequence[float], contender_blocks_ms: Sequence[float]) -> PairedRatio | None:
    """The per-block ratios ``reference / contender`` of two contenders timed in the same blocks.

    Blocks where either has no figure (``None``, NaN or not positive) are left out; ``None`` when none is left.
    """
    ratios = [r / c for r, c in zip(reference_blocks_ms, contender_blocks_ms, strict=False)
              if r is not None and c is not None and math.isfinite(r) and math.isfinite(c) and r > 0 and c > 0]
    if not ratios:
        return None
    return PairedRatio(statistics.median(ratios), min(ratios), max(ratios), tuple(ratios))


def own_spread(blocks_ms: Sequence[float]) -> PairedRatio | None:
    """A contender's block figures over their median (1.0 = the median block): how much its own time swung."""
    kept = [b for b in blocks_ms if b is not None and math.isfinite(b) and b > 0]
    if not kept:
        return None
    mid = statistics.median(kept)
    ratios = tuple(b / mid for b in kept)
    return PairedRatio(1.0, min(ratios), max(ratios), ratios, label="own")


@dataclass(frozen=True)
class Verdict:
    """``verdict`` is :data:`STABLE` or :data:`NOISY`; ``reasons`` say what made it noisy (empty when stable)."""

    verdict: str
    reasons: tuple[str, ...] = ()

    @property
    def stable(self) -> bool:
        return self.verdict == STABLE

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "reasons": list(self.reasons)}


def verdict(*ratios: PairedRatio | None, blocks: int | None = None, cpu_wait: float | None = None,
            load_before: float | None = None, load_after: float | None = None, cpus: int | None = None,
            own_threads: int = 0) -> Verdict:
    """Whether a comparison (or a table of them) is stable or noise.

    The rule, and why:

    - **fewer than** :data:`MIN_BLOCKS` **blocks** (``blocks``, or the ratio's own): noisy, there is no spread to
      judge a ratio by;
    - **block ratios spread more than ±10 %** (:data:`MAX_SPREAD`) around their median: noisy. Measured on a shared
      2-core machine, single blocks of one comparison spread 0.5-2x under load while best-of-3 paired ratios
      reproduced within about ±5 %: a wider spread means the machine changed under the measurement;
    - **the measured threads waited for a CPU more than 10 % of the time they ran** (:data:`MAX_WAIT`, the kernel's
      run-queue accounting, :class:`CpuWait`): noisy, other processes were taking the cores, and every time (not just
      the ratio) is then a time of a shared machine;
    - **the load average exceeds the usable CPUs**: before the run (``load_before`` > ``cpus``), or after it beyond
      what the run itself adds (``load_after`` > ``cpus`` + ``own_threads``): noisy, the machine was oversubscribed.

    Each of ``ratios`` is judged by its spread: a comparison's block ratios, and a row's own block figures over
    their median (:func:`own_spread`: under contention the times swing even where a ratio holds). Anything else is
    stable. A ratio is never judged on its size: a ratio near 1.0 can be stable (two contenders that
    are equally fast), and then it is reported as "no clear difference" (:func:`format_ratio`), never as a speedup.
    """
    reasons = []
    given = [r for r in ratios if r is not None]
    n = min((len(r.blocks) for r in given), default=blocks)
    if n is not None and n < MIN_BLOCKS:
        reasons.append(f"{n} block(s): fewer than {MIN_BLOCKS}, no spread to judge")
    for ratio in given:
        if len(ratio.blocks) >= 2 and ratio.spread > MAX_SPREAD:
            what = "block times" if ratio.label == "own" else "block ratios"
            reasons.append(f"{what} {ratio.low:.2f}-{ratio.high:.2f} spread ±{ratio.spread:.0%} around "
                           f"{ratio.median:.2f} (over ±{MAX_SPREAD:.0%})")
    if cpu_wait is not None and cpu_wait > MAX_WAIT:
        reasons.append(f"the timed threads waited for a CPU {cpu_wait:.0%} of the time they ran "
                       f"(over {MAX_WAIT:.0%}): other processes competed")
    cpus = cpus or usable_cpus()
    if load_before is not None and load_before > cpus:
        reasons.append(f"load average {load_before:.2f} before the run exceeds the {cpus} usable CPU(s)")
    if load_after is not None and load_after > cpus + own_threads:
        reasons.append(f"load average {load_after:.2f} after the run exceeds the {cpus} usable CPU(s) plus the "
                       f"run's own {own_threads} thread(s)")
    return Verdict(NOISY if reasons else STABLE, tuple(reasons))


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """A table's verdict from its rows': noisy when any row is (their reasons, each once)."""
    reasons = tuple(dict.fromkeys(r for v in verdicts for r in v.reasons))
    return Verdict(NOISY if reasons else STABLE, reasons)


def format_ratio(ratio: PairedRatio | None, unit: str = "×") -> str:
    """``"1.52× (1.45-1.60)"``, or ``"no clear difference (0.96-1.05×)"`` when the range holds 1.0: a ratio whose
    blocks disagree on which side is faster is never shown as a speedup (or a slowdown)."""
    if ratio is None:
        return "-"
    span = f"{ratio.low:.2f}–{ratio.high:.2f}"
    if ratio.crosses_one:
        return f"no clear difference ({span}{unit})"
    return f"{ratio.median:.2f}{unit} ({span})"

"""Real latencies for the report and plot tests: plain numpy calls timed by the project's timing loop."""

from __future__ import annotations

from collections.abc import Callable

from ffnet_deploy.runtimes.timing import CallContender, Protocol, latency_stats, measure


def call_timings(calls: dict[str, Callable[[], object]], warmup: int, rounds: int) -> dict[str, dict]:
    """Name -> latency statistics (``p50``, ``p90``, ...) and ``samples`` of each call, timed interleaved."""
    contenders = [CallContender(name, fn) for name, fn in calls.items()]
    measure(contenders, Protocol(warmup=warmup, warmup_time_s=0.0, min_iters=rounds, min_time_s=0.0))
    return {c.name: {**latency_stats(c.samples_ms), "samples": len(c.samples_ms)} for c in contenders}

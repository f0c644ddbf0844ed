"""Does ``ffnet-deploy bench`` report what a plain timing loop sees? The bench median against a bare loop over the
same ONNX Runtime session, in the same run.

Run: ``python -m ffnet_deploy.benchmarks.protocol_check [--variant ffnet_1] [--resolution 256] [--threads 2]
[--rounds 12] [--out DIR]``. Results land in ``DIR/protocol_check.{md,json}``.

One ONNX Runtime session of the exported model (random weights) is loaded once. Then, ``--rounds`` times, in turn:

* a plain loop: ``session.run(None, feed)`` timed with ``time.perf_counter``, as anyone would write it, 20 calls;
* the bench protocol (:func:`ffnet_deploy.runtimes.timing.measure`, 2 warmup calls, then at least 20 timed
  calls and 0.5 s) through the runner that owns that same session.

Short alternating blocks, many rounds: a slow phase of a shared machine (seen here: 10 s at +25 %) then hits both
alike instead of deciding the comparison. The medians of all samples of each side are compared.

The acceptance criterion of the bench issue: the bench median agrees with the plain loop's median within 15 %.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ffnet_deploy.runtimes.timing import Contender, Protocol, latency_stats, measure
from studies.common import run_standard

LOOP_CALLS = 20


def run(variant: str = "ffnet_1", resolution: int = 256, batch: int = 1, threads: int = 2, rounds: int = 12) -> dict:
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.runtimes import create_runner
    from ffnet_deploy.runtimes.onnxruntime import no_spinning

    with tempfile.TemporaryDirectory(prefix="ffnet-protocol-check-") as tmp:
        art = Path(tmp) / "onnx"
        export(ExportConfig("onnx", art, resolution=resolution, batch=batch, check_parity=False), None, variant)
        x = np.random.default_rng(0).standard_normal((batch, 3, resolution, resolution), dtype=np.float32)
        runner = create_runner("onnxruntime", art, threads=threads, session_options=no_spinning).activate()
        try:
            feed = {"images": x}
            session = runner.session
            for _ in range(10):
                session.run(None, feed)
            plain: list[float] = []
            bench: list[float] = []
            per_round = []
            for _ in range(rounds):
                loop = []
                for _ in range(LOOP_CALLS):
                    t0 = time.perf_counter()
                    session.run(None, feed)
                    loop.append((time.perf_counter() - t0) * 1e3)
                c = Contender("bench", lambda: runner, feed, runner=runner)
                measure([c], Protocol(warmup=2, warmup_time_s=0, min_iters=LOOP_CALLS, min_time_s=0.5))
                plain += loop
                bench += c.samples_ms
                per_round.append({"plain_p50": statistics.median(loop), "bench_p50": latency_stats(c.samples_ms)["p50"],
                                  "bench_iterations": len(c.samples_ms)})
        finally:
            runner.deactivate()
    p, b = statistics.median(plain), latency_stats(bench)["p50"]
    return {"variant": variant, "resolution": resolution, "batch": batch, "threads": threads, "rounds": per_round,
            "plain_median_ms": p, "bench_median_ms": b, "bench_over_plain": b / p,
            "within_15_percent": abs(b / p - 1) <= 0.15}


def to_markdown(r: dict) -> str:
    lines = [f"# Bench protocol vs a plain loop: {r['variant']} @ {r['resolution']}, batch {r['batch']}, "
             f"{r['threads']} threads, ONNX Runtime", "",
             "| round | plain loop p50 ms | bench p50 ms | bench iterations |", "|---:|---:|---:|---:|"]
    for i, row in enumerate(r["rounds"], 1):
        lines.append(f"| {i} | {row['plain_p50']:.2f} | {row['bench_p50']:.2f} | {row['bench_iterations']} |")
    lines += ["", f"Pooled: plain loop {r['plain_median_ms']:.2f} ms, bench {r['bench_median_ms']:.2f} ms, ratio "
              f"{r['bench_over_plain']:.3f}: {'within' if r['within_15_percent'] else 'NOT within'} 15 %."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    return run_standard("protocol_check", __doc__.splitlines()[0], run, to_markdown, argv, rounds=12)


if __name__ == "__main__":
    main()

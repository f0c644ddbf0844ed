"""Torch eager latency of a fused (reparameterized) FFNet against the unfused one, as a ratio from one run.

Run: ``python -m ffnet_deploy.benchmarks.reparam_latency [--variant ffnet_1] [--resolution 256] [--threads 2]
[--out DIR]``. Results land in ``DIR/reparam_latency.{md,json}`` (default ``./benchmarks/results``, relative to the
current directory; see :mod:`ffnet_deploy.benchmarks.common`). The official fuse gives 1.12x on ffnet_1 (FFNet
authors' number, quoted by the project's issue), which this compares against.
"""

from __future__ import annotations

import torch

from ffnet_deploy.models.ffnet import create_ffnet
from ffnet_deploy.models.reparam import reparam_report, reparameterize_model
from studies.common import interleaved_timing, run_standard


def run(variant: str = "ffnet_1", resolution: int = 256, batch: int = 1, threads: int = 2, rounds: int = 40,
        warmup: int = 5, seed: int = 0) -> dict:
    """Time unfused vs fused eager inference; return JSON-ready results including the speed-up ratio."""
    torch.manual_seed(seed)
    model = create_ffnet(variant).eval()
    fused = reparameterize_model(model)
    x = torch.randn(batch, 3, resolution, resolution)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # process-wide in torch: restored below so a caller's setting survives
    try:
        with torch.inference_mode():
            err = ((fused(x) - model(x)).abs().max() / model(x).abs().max()).item()
            timings = interleaved_timing({"unfused": lambda: model(x), "fused": lambda: fused(x)}, warmup=warmup,
                                         rounds=rounds)
    finally:
        torch.set_num_threads(previous)
    report = reparam_report(model, fused).to_dict()
    return {
        "variant": variant, "resolution": resolution, "batch": batch, "threads": threads, "rounds": rounds,
        "timings": timings, "speedup": timings["unfused"]["median_ms"] / timings["fused"]["median_ms"],
        "max_rel_error": err, "graph": report,
    }


def to_markdown(r: dict) -> str:
    t = r["timings"]
    b, a = r["graph"]["before"], r["graph"]["after"]
    return "\n".join([
        f"# Reparameterization speed-up, torch eager, {r['variant']} {r['resolution']}x{r['resolution']}, "
        f"batch {r['batch']}, {r['threads']} threads",
        "",
        "| model | median ms | p90 ms | min ms | modules | ops/forward | params |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| unfused | {t['unfused']['median_ms']:.2f} | {t['unfused']['p90_ms']:.2f} | {t['unfused']['min_ms']:.2f} "
        f"| {b['modules']} | {b['total_ops']} | {b['params']:,} |",
        f"| fused | {t['fused']['median_ms']:.2f} | {t['fused']['p90_ms']:.2f} | {t['fused']['min_ms']:.2f} "
        f"| {a['modules']} | {a['total_ops']} | {a['params']:,} |",
        "",
        f"**Speed-up (unfused / fused median): {r['speedup']:.2f}x** over {r['rounds']} interleaved rounds "
        f"(the official fuse: 1.12x). Max relative output difference: {r['max_rel_error']:.1e}.",
    ])


def main(argv: list[str] | None = None) -> dict:
    return run_standard("reparam_latency", __doc__.splitlines()[0], run, to_markdown, argv, rounds=40)


if __name__ == "__main__":
    main()

"""``ffnet-deploy bench``: latency, throughput, first inference, memory and roofline fraction; tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ffnet_deploy.artifact.precisions import baseline_precision, precision_names
from ffnet_deploy.cli.console import emit_json, invocation
from ffnet_deploy.cli.options import CheckpointOpt, JsonOpt, TrustOpt, VariantOpt, bench_runtimes_help
from ffnet_deploy.cli.progress import bar
from ffnet_deploy.cli.render import num, say, show
from ffnet_deploy.reporting.document import Table

_BENCH_PROTOCOL = "Protocol"


def bench(
    artifacts: Annotated[list[Path] | None, typer.Argument(help="Artifact directories written by 'ffnet-deploy "
                                                           "export' (or use --variant).", show_default=False)] = None,
    variant: VariantOpt = None,
    checkpoint: CheckpointOpt = None,
    runtimes: Annotated[str | None, typer.Option("--runtimes", help=bench_runtimes_help())] = None,
    precisions: Annotated[str | None, typer.Option("--precisions", help=f"Comma-separated: "
                                                   f"{', '.join(precision_names())} (default: "
                                                   f"{baseline_precision()}; artifacts: each one's own).")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", "-r", help="Input side for --variant "
                                                   "(default: the variant's).")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated (e.g. 1,8).")] = "1",
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads of one inference (default: every "
                                                "CPU this process may use).")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed iterations before timing.",
                                        rich_help_panel=_BENCH_PROTOCOL)] = 10,
    warmup_time: Annotated[float, typer.Option("--warmup-time", help="...and untimed seconds, at least.",
                                               rich_help_panel=_BENCH_PROTOCOL)] = 1.0,
    min_iters: Annotated[int, typer.Option("--min-iters", help="Timed iterations, at least.",
                                           rich_help_panel=_BENCH_PROTOCOL)] = 50,
    min_time: Annotated[float, typer.Option("--min-time", help="Timed seconds per group, at least.",
                                            rich_help_panel=_BENCH_PROTOCOL)] = 5.0,
    max_time: Annotated[float | None, typer.Option("--max-time", help="Stop a group's timing after this many "
                                                   "seconds even below --min-iters (at least 3 samples).",
                                                   rich_help_panel=_BENCH_PROTOCOL)] = None,
    blocks: Annotated[int, typer.Option("--blocks", help="Blocks the timing is cut into: each row's best time "
                                        "per block is paired across rows for the ratios and the noise verdict "
                                        "(at least 3 to judge).", rich_help_panel=_BENCH_PROTOCOL)] = 5,
    device_name: Annotated[str | None, typer.Option("--device-name", help="Name of this device in the results "
                                                    "(default: the host name).")] = None,
    compare_mixers: Annotated[bool, typer.Option("--compare-mixers", help="The ffnet_1 skeleton with each token "
                                                 "mixer (FFNified, self-attention, ConvNeXt) at several "
                                                 "resolutions.")] = False,
    mixer_resolutions: Annotated[str, typer.Option("--mixer-resolutions", help="Resolutions of "
                                                   "--compare-mixers.")] = "224,256,384,512",
    peers: Annotated[bool, typer.Option("--peers", help="The timm models FFNet competes with, at their own "
                                        "resolution (pip install 'ffnet-deploy\\[peers]').")] = False,
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration data for int8 rows of --variant "
                                              "(default: crops of scikit-learn's sample photos).")] = None,
    no_roofline: Annotated[bool, typer.Option("--no-roofline", help="Skip the GEMM probe of this CPU's "
                                              "achievable FLOP/s.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for results.json/.csv/.md and the "
                                             "plots (default: print only).")] = None,
    trust_checkpoint: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure latency: percentiles, throughput, first inference, memory, roofline fraction; tables and plots."""
    from ffnet_deploy.benchmarks.suite import (
        BenchRequest,
        bench_precisions,
        bench_scratch,
        check_out_folder,
        parse_batches,
        parse_list,
        runtime_names,
        write_outputs,
    )
    from ffnet_deploy.runtimes.timing import Protocol

    request = BenchRequest(
        artifacts=tuple(artifacts or ()), variant=variant, checkpoint=checkpoint,
        runtimes=parse_list(runtimes, runtime_names(), "--runtimes") or None,
        precisions=parse_list(precisions, bench_precisions(), "--precisions") or None, resolution=resolution,
        batches=parse_batches(batch), threads=threads,
        protocol=Protocol(warmup=warmup, warmup_time_s=warmup_time, min_iters=min_iters, min_time_s=min_time,
                          max_time_s=max_time, blocks=blocks),
        device_name=device_name, compare_mixers=compare_mixers,
        mixer_resolutions=parse_batches(mixer_resolutions, "--mixer-resolutions", "224,512"), peers=peers,
        calib=calib, roofline=not no_roofline, trust=trust_checkpoint)
    if out is not None:  # the request itself is checked by bench() before anything runs
        check_out_folder(out)
    with bar("bench", counted=False, quiet=as_json) as progress:
        result = bench_scratch(request, command=invocation(), progress=progress)
    written = write_outputs(result, out) if out is not None else {}
    if as_json:
        emit_json({**result.to_dict(), "written": {k: str(v) for k, v in written.items()}})
        return
    show(bench_table(result))
    for kind, path in written.items():
        say(f"wrote {kind}: {path}")


def bench_table(result: Any) -> Table:
    """The terminal view of a bench result: one line per row; why a row was skipped or failed goes in a caption."""
    from ffnet_deploy.benchmarks.results import execution_differs, fmt_ms, noise_text, ratio_text, roofline_text

    d = result.device
    roof = result.roofline or {}
    peaks = ", ".join(f"{k.split('_')[0]} {v:.0f}" for k, v in roof.items() if k.endswith(("_gflops", "_gops")) and v)
    headers = ["model", "runtime", "precision", "res", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "first ms",
               "peak MB", "roofline", "vs", "verdict"]
    table = Table(headers, [], numeric={i for i, h in enumerate(headers)
                                        if h not in ("model", "runtime", "precision", "vs", "verdict")},
                  title=f"{d.name}: {d.cpu}, {d.cores} cores" + (f"; GEMM peak G(FL)OP/s: {peaks}" if peaks else ""),
                  caption_left=True)
    notes = table.caption
    for row in result.rows:
        runtime = row.runtime + (f" {row.compute_units}" if row.compute_units else "")
        precision = row.precision + (f" (runs {row.execution_precision})" if execution_differs(row) else "")
        head = [row.model, runtime, precision, str(row.resolution), str(row.batch)]
        if row.status != "ok":
            notes.append(f"[{len(notes) + 1}] {row.model} {runtime} {row.precision}: {row.status}: {row.reason}")
            table.row_styles[len(table.rows)] = "muted"
            table.rows.append([*head, f"{row.status} [{len(notes)}]", *[""] * 8])
            continue
        lat = row.latency_ms
        if row.omp_wait_policy is not None and row.omp_wait_policy != "PASSIVE":
            notes.append(f"[{len(notes) + 1}] {row.model} {runtime}: OpenMP {row.omp_wait_policy}, not a reference")
        if row.verdict and row.verdict != "stable":
            table.row_styles[len(table.rows)] = "warn"
        table.rows.append([*head, fmt_ms(lat.get("p50")), fmt_ms(lat.get("p90")), fmt_ms(lat.get("p99")),
                           num(row.throughput_ips, ".1f"), fmt_ms(row.first_inference_ms), num(row.peak_rss_mb, ".0f"),
                           roofline_text(row), ratio_text(row), row.verdict or "-"])
    if any(r.verdict for r in result.rows):
        notes.append(noise_text(result.noise))
    return table

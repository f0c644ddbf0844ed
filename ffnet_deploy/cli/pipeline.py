"""``ffnet-deploy pipeline``: checkpoint to deployable report in one command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ffnet_deploy.artifact.formats import demo_formats, format_names
from ffnet_deploy.artifact.precisions import precision_names
from ffnet_deploy.cli.console import ARGV, emit_json, invocation
from ffnet_deploy.cli.options import CheckpointOpt, JsonOpt, TrustOpt, VariantOpt
from ffnet_deploy.cli.progress import pipeline_bars
from ffnet_deploy.cli.render import num, say, show
from ffnet_deploy.reporting.document import Cell, Table

_PIPELINE_BENCH = "Benchmark"


def pipeline(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Report folder to create (or continue "
                                                "with --resume).")] = None,
    checkpoint: CheckpointOpt = None,
    variant: VariantOpt = None,
    demo: Annotated[bool | None, typer.Option("--demo", help="Needs no files: train (or reuse the cached) digits "
                                              "model and run everything on labelled digits.")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="deploy.toml with the same settings; "
                                                     "command-line options override it.")] = None,
    formats: Annotated[str | None, typer.Option("--formats", help=f"Comma-separated: {', '.join(format_names())} "
                                                f"(default: all; the demo: {','.join(demo_formats())}).")] = None,
    precisions: Annotated[str | None, typer.Option("--precisions", help="Comma-separated: "
                                                   f"{', '.join(precision_names(stored=True))} (default: all).")
                          ] = None,
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration data for int8: an ImageFolder, a "
                                              "folder of images, or 'digits'.")] = None,
    calib_size: Annotated[int | None, typer.Option("--calib-size", help="Calibration images (default 300).")
                          ] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Validation data (labelled ImageFolder or "
                                                  "'digits' gives accuracy); default: --calib, else synthetic.")
                         ] = None,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", help="Validate on at most N images.")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", "-r", help="Input side (default: the "
                                                   "variant's).")] = None,
    bench_on: Annotated[bool | None, typer.Option("--bench/--no-bench", help="Time the artifacts that run here.",
                                                  rich_help_panel=_PIPELINE_BENCH)] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads of one inference.",
                                                rich_help_panel=_PIPELINE_BENCH)] = None,
    bench_iters: Annotated[int | None, typer.Option("--bench-iters", help="Timed iterations, at least (default "
                                                    "50).", rich_help_panel=_PIPELINE_BENCH)] = None,
    bench_time: Annotated[float | None, typer.Option("--bench-time", help="Timed seconds, at least (default 5).",
                                                     rich_help_panel=_PIPELINE_BENCH)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run in --output: redo only the stages whose "
                                         "inputs changed.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in an --output an earlier pipeline wrote "
                                        "(removes only the files it recorded writing, never an input).")] = False,
    plan: Annotated[bool, typer.Option("--plan", help="Print the job graph as JSON and run nothing.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run one job, e.g. onnx/int8 (repeatable), "
                                                   "into the same output layout.")] = None,
    executor: Annotated[str, typer.Option("--executor", help="Where the jobs run: local (this process) or ray (one "
                                          "Ray task per job; needs the ray extra).")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="With --executor ray: the cluster to "
                                                    "join (default: start a local Ray). --output must be a folder "
                                                    "every node sees.")] = None,
    ray_wait: Annotated[float, typer.Option("--ray-wait", help="With --executor ray: seconds a job waits for a "
                                            "node with its device (e.g. a Mac for Core ML latency) before it is "
                                            "skipped as unplaceable.")] = 60.0,
    emit: Annotated[str, typer.Option("--emit", help="With --plan: json (the job graph) or github-matrix (a "
                                      "GitHub Actions strategy.matrix, one entry per job).")] = "json",
    runner: Annotated[list[str] | None, typer.Option("--runner", help="With --emit github-matrix: the runs-on "
                                                     "labels of a device kind, KIND=LABEL[,LABEL] (repeatable; "
                                                     "kinds: cpu, mac, nvidia-gpu, android).")] = None,
    device_name: Annotated[str | None, typer.Option("--device-name", help="Name of this device in the report.")
                           ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress; only the summary line.")] = False,
    trust_checkpoint: TrustOpt = False,
    as_json: JsonOpt = False,
) -> int:
    """Checkpoint to deployable report in one command: inspect, reparameterize, export every format and precision,
    validate, benchmark, recommend, report (index.html). Exit 0 when everything passed, 1 when a parity check
    failed (the report is still written) or for a user error, 2 for usage errors."""
    from ffnet_deploy.pipeline.config import split_list

    cli_settings = {"output": output, "checkpoint": checkpoint, "variant": variant, "demo": demo,
                    "formats": split_list(formats), "precisions": split_list(precisions), "calib": calib,
                    "calib_size": calib_size, "eval_data": eval_data, "eval_limit": eval_limit,
                    "resolution": resolution, "bench": bench_on, "threads": threads, "min_iters": bench_iters,
                    "min_time_s": bench_time, "resume": resume or None, "force": force or None,
                    "only": tuple(only) if only else None, "trust": trust_checkpoint or None,
                    "device_name": device_name}
    # a user error raises FFNetDeployError and exits as from every command (main)
    return _pipeline(config_file, cli_settings, plan=plan, quiet=quiet, as_json=as_json, emit=emit,
                     runners=runner, executor=executor, ray_address=ray_address, ray_wait=ray_wait)


def _pipeline(config_file: Path | None, cli_settings: dict[str, Any], *, plan: bool, quiet: bool, as_json: bool,
              emit: str = "json", runners: list[str] | None = None, executor: str = "local",
              ray_address: str | None = None, ray_wait: float = 60.0) -> int:
    from ffnet_deploy.pipeline.config import (
        build_config,
        check_plan_options,
        github_matrix,
        parse_runners,
        plan_jobs,
        read_toml,
    )
    from ffnet_deploy.pipeline.distributed import check_executor_options
    from ffnet_deploy.pipeline.engine import STAGES, run_pipeline
    from ffnet_deploy.progress import library_output

    check_executor_options(executor, ray_address, ray_wait)
    check_plan_options(plan=plan, emit=emit, runners=runners)
    labels = parse_runners(runners)
    file_settings = read_toml(config_file) if config_file is not None else {}
    config = build_config(file_settings, cli_settings)
    if plan:
        graph = plan_jobs(config, ARGV)
        if emit == "github-matrix":  # one line: what a workflow step writes to $GITHUB_OUTPUT
            sys.stdout.write(json.dumps(github_matrix(graph, labels), separators=(",", ":")) + "\n")
        else:
            emit_json(graph)
        return 0
    with library_output(shown=not (quiet or as_json)), pipeline_bars(STAGES, show=not (quiet or as_json)) as ui:
        if executor == "ray":
            from ffnet_deploy.pipeline.distributed import run_on_ray

            ui.hide_stages()
            outcome = run_on_ray(config, address=ray_address, command=invocation(), log=ui.note,
                                 placement_timeout=ray_wait)
        else:
            outcome = run_pipeline(config, command=invocation(), ui=ui)
    if as_json:
        emit_json(outcome.results.to_dict())
    elif quiet:
        s = outcome.results.summary
        counts = (s.passed, s.failed, s.skipped, s.errors) if s is not None else (0, 0, 0, 0)
        say(f"{counts[0]} passed, {counts[1]} failed, {counts[2]} skipped, {counts[3]} errors: "
            f"{config.output / 'index.html'}")
    else:
        print_summary(outcome)
    return outcome.exit_code


_STATUS_STYLES = {"passed": "ok", "failed": "bad", "error": "bad", "skipped": "muted"}


def print_summary(outcome: Any) -> None:
    """A compact terminal view of the report: one line per job, then what to look at and where the report is."""
    from ffnet_deploy.pipeline.report import bench_noise, vs_torch_text
    from ffnet_deploy.pipeline.results import Summary

    results = outcome.results
    s = results.summary or Summary(jobs=len(results.jobs))
    variant = results.checkpoint.variant if results.checkpoint is not None else "model"
    rows: list[list[Cell]] = []
    for job in results.jobs:
        metrics = job.parity.metrics if job.parity is not None else {}
        bench = job.bench
        rows.append([job.id, [(_STATUS_STYLES.get(job.status, "text"), job.status)],
                     num(metrics.get("cosine_mean"), ".4f"), num(metrics.get("accuracy"), ".1f"),
                     num(metrics.get("accuracy_drop"), ".1f"), num(bench.p50_ms if bench else None, ".3g"),
                     vs_torch_text(bench, "x")])
    show(Table(["job", "status", "cosine", "accuracy %", "drop", "p50 ms", "vs torch"], rows,
               numeric={2, 3, 4, 5, 6}, nowrap=set(range(7)),
               title=f"{variant}: {s.passed} passed, {s.failed} failed, {s.skipped} skipped, {s.errors} errors"))
    noise = bench_noise(results)
    if noise:
        say(f"bench noise verdict: {noise}")
    say(("b", "What to look at"))
    for line in s.look_at:
        say(f"  - {line}")
    index = outcome.written.get("html")
    if index is not None:
        say(f"report: {index}")

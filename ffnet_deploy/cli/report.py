"""``ffnet-deploy report merge`` and ``report add``: tables across devices and runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ffnet_deploy.cli.console import emit_json, err_console, invocation
from ffnet_deploy.cli.options import JsonOpt
from ffnet_deploy.cli.render import say
from ffnet_deploy.errors import FFNetDeployError
from ffnet_deploy.reporting.console import print_line


def report_merge(
    inputs: Annotated[list[Path], typer.Argument(help="Bench result JSON files (results.json of 'ffnet-deploy "
                                                 "bench' or 'report add'), or pipeline output folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bench results: the Markdown table to write (CSV and "
                                      "PNG go next to it). Pipeline folders: the report folder to write.")],
    as_json: JsonOpt = False,
) -> int:
    """Merge results: bench JSONs into one table (rows variant x precision, columns devices), or the job
    folders of 'pipeline --only' runs into one report."""
    missing = next((p for p in inputs if not p.exists()), None)
    if missing is not None:  # before guessing from the others which kind of merge this is
        raise FFNetDeployError(f"report merge | {missing} does not exist; pass bench result files (results.json of "
                               "'ffnet-deploy bench' or 'report add') or pipeline output folders")
    folders = [p for p in inputs if p.is_dir()]
    if folders and len(folders) != len(inputs):
        raise FFNetDeployError("report merge | pass either bench result files or pipeline output folders, not both")
    if folders:
        from ffnet_deploy.cli.pipeline import print_summary
        from ffnet_deploy.pipeline.engine import merge_runs

        outcome = merge_runs(folders, out, command=invocation(), log=lambda m: print_line(err_console, m))
        if as_json:
            emit_json(outcome.results.to_dict())
        else:
            print_summary(outcome)
        return outcome.exit_code
    from ffnet_deploy.benchmarks.report import merge_files

    written = merge_files(inputs, out)
    if as_json:
        emit_json({k: str(v) for k, v in written.items()})
        return 0
    for kind, path in written.items():
        say(f"wrote {kind}: {path}")
    return 0


def report_add(
    csv_file: Annotated[Path, typer.Option("--csv", help="Measurements made elsewhere: columns variant, precision, "
                                           "compute_units, median_ms, source (optional: runtime, resolution, batch, "
                                           "p90_ms, notes). See docs/iphone.md; Android: README.")],
    device_name: Annotated[str, typer.Option("--device-name", help="The device they were measured on, e.g. "
                                             "'iPhone 12'.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Result JSON to write (default: "
                                             "<csv name>.json next to the CSV).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import measurements made elsewhere (Xcode's Core ML performance report on an iPhone, ExecuTorch's
    executor_runner or LiteRT's benchmark_model on an Android phone) as a bench result that 'report merge' takes;
    each row keeps its provenance and is marked as imported."""
    from ffnet_deploy.benchmarks.report import import_to_file

    target, result = import_to_file(csv_file, device_name, out, command=invocation())
    if as_json:
        emit_json({"written": str(target), "rows": len(result.rows)})
        return
    say(f"imported {len(result.rows)} row(s) measured on {device_name} -> {target}")

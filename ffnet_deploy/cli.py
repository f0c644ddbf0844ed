"""The ``ffnet-deploy`` command line.

The CLI is thin: each command parses options and calls a library function that a Python user can call the same way.
User errors (:class:`~ffnet_deploy.errors.FFNetDeployError`) print one red line and exit 1 from every command; usage
errors exit 2 (the policy: :mod:`ffnet_deploy.errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ffnet_deploy.artifact.formats import demo_formats, format_names, format_specs, listing, model_suffixes
from ffnet_deploy.artifact.precisions import baseline_precision, get_precision, precision_names
from ffnet_deploy.errors import EXIT_OK, EXIT_USER_ERROR, ConfigError, FFNetDeployError
from ffnet_deploy.progress import Events
from ffnet_deploy.reporting.text import console_text as _esc

app = typer.Typer(
    name="ffnet-deploy",
    help="Reparameterize, export, validate and benchmark FFNet checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
NON_TTY_WIDTH = 160
"""Console width when the output is not a terminal (CI logs, pipes): rich's default of 80 columns would cut table
cells with an ellipsis. ``COLUMNS`` overrides it."""


def _width(stream) -> int | None:
    """``None`` (the terminal's own width) on a terminal, else ``COLUMNS`` or :data:`NON_TTY_WIDTH`."""
    import os

    if getattr(stream, "isatty", lambda: False)():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else NON_TTY_WIDTH


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))

# Options shared by several commands.
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", "-c", help="FFNet checkpoint (.pth/.pth.tar), official or fused.")
]
VariantOpt = Annotated[
    str | None, typer.Option("--variant", "-v", help="FFNet variant; detected from the checkpoint when omitted.")
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-checkpoint", help="Unpickle the checkpoint without the weights-only allow-list. "
                 "Only for files you trust: a malicious pickle runs code."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


# -- help texts about formats, precisions and runtimes: from the registries (artifact.formats, artifact.precisions,
# the runners' capabilities), so that a registered format or precision shows up without editing this file.


def _formats_help() -> str:
    return f"{listing(format_names())}."


def _precision_help() -> str:
    """``--precision``: what the formats make and each format's default (fp16 for coreml and tensorrt)."""
    made = [p for p in precision_names(stored=True) if any(p in s.precisions for s in format_specs())]
    defaults: dict[str, list[str]] = {}
    for spec in format_specs():
        defaults.setdefault(spec.default_precision, []).append(spec.name)
    default = "; ".join(f"{p} for {listing(names, 'and')}" for p, names in defaults.items())
    calibrated = [f"{p} is {get_precision(p).summary}" for p in made if get_precision(p).calibrated]
    return f"{listing(made)} (default: {default}){''.join('; ' + c for c in calibrated)}."


def _target_help() -> str:
    return " ".join(s.quantizer.help for s in format_specs() if s.quantizer is not None and s.quantizer.help)


def _sensitivity_formats_help() -> str:
    ranked = [s for s in format_specs() if s.quantizer is not None and s.quantizer.sensitivity is not None]
    return f"Quantizer: {listing(f'{s.name} ({s.quantizer.sensitivity_label})' for s in ranked)}."


def _sensitivity_target_help() -> str:
    ranked = [s for s in format_specs() if s.quantizer is not None and s.quantizer.sensitivity is not None
              and s.quantizer.targets]
    return " ".join(f"{s.title}: {listing(s.quantizer.targets)} quantization scheme." for s in ranked)


def _bench_runtimes_help() -> str:
    from ffnet_deploy.benchmarks.suite import cpu_runtimes, runtime_names

    return (f"Comma-separated: {', '.join(runtime_names())} (default: {','.join(cpu_runtimes())}; artifacts: each "
            "one's own).")


def _sensitivity_default() -> tuple[str, str]:
    """``sensitivity``'s default ``--format`` and ``--target``: the first format whose quantizer ranks, and its
    default target."""
    spec = next(s for s in format_specs() if s.quantizer is not None and s.quantizer.sensitivity is not None)
    return spec.name, (spec.quantizer.targets or ("",))[0]


def _onnx_stage_formats() -> str:
    """The formats whose options include the ONNX stage's (``OnnxOptions``): they take --opset and --no-simplify."""
    from ffnet_deploy.exporters import EXPORTERS, OnnxOptions

    return ", ".join(n for n in format_names() if issubclass(EXPORTERS.get(n).options_class, OnnxOptions))


_ARGV: list[str] = []  # the arguments of this invocation (set by main), for results that record their command


def invocation() -> str:
    """This command line as the user typed it, e.g. ``ffnet-deploy bench --variant ffnet_1``."""
    import shlex

    return shlex.join(["ffnet-deploy", *_ARGV])


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (no colour, no wrapping), for ``--json``: strict JSON, non-finite numbers as
    ``"nan"``/``"inf"`` strings like every file (:mod:`ffnet_deploy.schemas`)."""
    from ffnet_deploy.schemas import jsonable

    sys.stdout.write(json.dumps(jsonable(data), indent=2, default=str, allow_nan=False) + "\n")


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the FFNet variants: size, compute, default resolution, and the published reference numbers."""
    from ffnet_deploy.checkpoints import describe_variants

    rows = describe_variants()
    if as_json:
        emit_json(rows)
        return
    table = Table(title="FFNet variants", caption="top-1 and iPhone 12 latency: published in the official FFNet "
                  "README (reference, not measured here)")
    for col, justify in [("variant", "left"), ("params (M)", "right"), ("GMACs", "right"), ("resolution", "right"),
                         ("crop_pct", "right"), ("top-1 %", "right"), ("iPhone 12 ms", "right")]:
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r["variant"], f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.2f}", str(r["resolution"]),
                      str(r["crop_pct"]), _fmt(r["top1"]), _fmt(r["iphone12_ms"]))
    console.print(table)


def _num(value: Any, spec: str, suffix: str = "") -> str:
    """A number for a table cell, ``-`` when it is missing or not finite (``"nan"`` in a results file)."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return f"{value:{spec}}{suffix}" if ok else "-"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


@app.command()
def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file to describe.")],
    variant: VariantOpt = None,
    trust_checkpoint: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Describe a checkpoint: container, detected variant, parameters, fused or not, sha256."""
    from ffnet_deploy.checkpoints import describe_checkpoint

    info = describe_checkpoint(checkpoint, variant, trust=trust_checkpoint)
    if as_json:
        emit_json(info)
        return
    table = Table(title=f"checkpoint {_esc(checkpoint)}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for k, v in info.items():  # a path or a recorded version may hold "[/]": text, never markup
        table.add_row(_esc(k), _esc(v))
    console.print(table)


@app.command()
def reparam(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Unfused FFNet checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the fused checkpoint.")],
    variant: VariantOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing fused checkpoint written by "
                                            "ffnet-deploy (nothing else).")] = False,
    trust_checkpoint: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fold every BatchNorm, branch, skip and layer scale; write a fused checkpoint that records its variant."""
    from ffnet_deploy.checkpoints import reparameterize_checkpoint

    result = reparameterize_checkpoint(checkpoint, output, variant, force=force, trust=trust_checkpoint)
    if as_json:
        emit_json(result)
        return
    before, after = result["report"]["before"], result["report"]["after"]
    table = Table(title=f"reparameterized {_esc(result['variant'])} -> {_esc(output)}")
    for col in ("", "before", "after"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("modules", str(before["modules"]), str(after["modules"]))
    table.add_row("parameters", f"{before['params']:,}", f"{after['params']:,}")
    table.add_row("ops per forward", str(before["total_ops"]), str(after["total_ops"]))
    for op in sorted(set(before["ops"]) | set(after["ops"])):
        table.add_row(f"  {op}", str(before["ops"].get(op, 0)), str(after["ops"].get(op, 0)))
    parity = result["parity"]
    table.add_row("max |fused - unfused| (logit range)", "",
                  f"{parity['max_abs_error']:.2e} ({parity['reference_range']:.3g})")
    console.print(table)


@app.command()
def validate(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifact directories (with manifest.json) or model files "
                                                    f"({', '.join(model_suffixes(main_only=True))}).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="The checkpoint the artifacts came from.")],
    variant: VariantOpt = None,
    data: Annotated[Path | None, typer.Option("--data", help="ImageFolder (one subfolder per class), or 'digits' "
                                              "(scikit-learn's digits, the held-out split).")] = None,
    label_map: Annotated[Path | None, typer.Option("--label-map", help="With --data: JSON {folder: index} or lines "
                                                   "'folder index' mapping folders to class indices.")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Folder of images without labels.")] = None,
    synthetic: Annotated[int | None, typer.Option("--synthetic", help="N random images.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use at most N inputs.")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per batch.")] = 8,
    precision_profile: Annotated[str, typer.Option("--precision-profile", help="auto (the manifest's precision), "
                                                   f"{listing(precision_names(stored=True))}.")] = "auto",
    tolerance: Annotated[list[str] | None, typer.Option("--tolerance", help="Override a threshold, repeatable: "
                         "atol_scale, max_abs_error, min_cosine, min_cosine_worst, min_psnr_db, min_top1_agreement, "
                         "min_top5_overlap, max_acc_drop, localize_sqnr_db (value or 'none').")] = None,
    report_path: Annotated[Path | None, typer.Option("--report", help="Write the JSON report to this file.")] = None,
    junit_path: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML to this file.")] = None,
    as_json: JsonOpt = False,
    localize: Annotated[bool, typer.Option("--localize", help="For failing artifacts, find the first FFNet block "
                                           "(ONNX/OpenVINO) or MIL op (Core ML) where the error grows.")] = False,
    runtime: Annotated[str | None, typer.Option("--runtime", help="Runner to use instead of the format's "
                                                "default.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --synthetic.")] = 0,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Do not check the artifacts' files against the "
                                            "sha256 their manifests recorded.")] = False,
    trust_checkpoint: TrustOpt = False,
) -> int:
    """Prove that artifacts compute what the PyTorch checkpoint computes; exit 1 if any check fails.

    An artifact that nothing on this machine can run (e.g. a TensorRT engine without a GPU) is reported as not run:
    the exit code is 0 when every other artifact passed (and at least one did), and the last line counts it.
    With --json the report is printed on stdout (and the exit code still says whether everything passed).
    """
    import logging

    from ffnet_deploy.data.sources import make_source
    from ffnet_deploy.validate.engine import validate as run_validation
    from ffnet_deploy.validate.report import (
        check_report_path,
        render,
        report_to_dict,
        summary_line,
        write_json,
        write_junit,
    )
    from ffnet_deploy.validate.tolerances import parse_tolerance_overrides

    # Refused before the (long) validation runs; the writers check again at the moment they rename.
    if report_path is not None:
        check_report_path(report_path, "json")
    if junit_path is not None:
        check_report_path(junit_path, "junit")

    logger = logging.getLogger("ffnet_deploy")
    if not logger.handlers:
        from rich.logging import RichHandler

        logger.addHandler(RichHandler(console=err_console, show_time=False, show_path=False))
        logger.setLevel(logging.WARNING)
    overrides = parse_tolerance_overrides(tolerance or [])
    source = make_source(data, images, synthetic, labels_file=label_map, limit=limit, seed=seed)
    from rich.progress import Progress

    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("validating", total=len(source))  # a count: --synthetic never lists its items
        report = run_validation(artifacts, checkpoint, variant, source, precision_profile, batch, localize, overrides,
                                trust=trust_checkpoint, runtime=runtime, verify=not no_verify,
                                progress=_Bar(bar, task))
    if report_path is not None:
        write_json(report, report_path)
    if junit_path is not None:
        write_junit(report, junit_path)
    if as_json:
        emit_json(report_to_dict(report))
        return 0 if report else 1
    render(report, console)
    report.raise_for_failures()
    console.print(summary_line(report), soft_wrap=True)
    return 0


@app.command("demo-checkpoint")
def demo_checkpoint(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the checkpoint to this file.")]
    = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --output checkpoint written by "
                                            "ffnet-deploy (nothing else).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train ffnet_digits on scikit-learn's digits (about a minute, cached): a real checkpoint to try every stage on.

    The checkpoint is unfused and has 10 classes; validate it with --data digits. Later runs take it from the cache
    ($FFNET_DEPLOY_CACHE, else ~/.cache/ffnet-deploy) at once.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ffnet_deploy.demo import demo_checkpoint as run_demo

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("training ffnet_digits", total=None)
        result = run_demo(output, force=force, progress=_Bar(bar, task))
    if as_json:
        emit_json(result.to_dict())
        return
    table = Table(title=f"demo checkpoint {_esc(result.path)}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("variant / classes", f"{result.recipe['variant']} / 10")
    table.add_row("test accuracy", f"{100 * result.test_accuracy:.1f}% (digits test split, 500 images)")
    seconds = "-" if result.train_seconds is None else f"{result.train_seconds:.1f}"
    table.add_row("training seconds", seconds + (" (earlier run)" if result.cached else ""))
    table.add_row("from cache", "yes" if result.cached else "no (trained now)")
    table.add_row("cache file", _esc(result.cache_path))
    console.print(table)


class _StatusLine(Events):
    """Progress events on a rich status line: steps are transient (the status line only); notes and warnings also
    stay, one dim or bold yellow line each."""

    def __init__(self, status: Any) -> None:
        self.status = status

    def step(self, done: float, total: float, label: str = "") -> None:
        from rich.markup import escape

        self.status.update(escape(f"{label} {done:g}/{total:g}" if total > 0 else label))

    def note(self, text: str) -> None:
        self._line(text, "[dim]  {}[/]")

    def warn(self, text: str) -> None:
        self._line(text, "[bold yellow]{}[/]")

    def _line(self, text: str, style: str) -> None:
        from rich.markup import escape

        self.status.update(escape(text))
        err_console.print(style.format(escape(text)), highlight=False)


class _Bar(Events):
    """Progress events on one task of a rich progress bar: a step moves it (``total`` 0: no total known) and names
    it; a note or a warning names it too and stays, one dim or bold yellow line (none when ``quiet``)."""

    def __init__(self, bar: Any, task: Any, quiet: bool = False) -> None:
        self.bar, self.task, self.quiet = bar, task, quiet

    def step(self, done: float, total: float, label: str = "") -> None:
        self.bar.update(self.task, completed=done, total=total if total > 0 else None, description=_esc(label))

    def note(self, text: str) -> None:
        self._line(text, "[dim]{}[/]")

    def warn(self, text: str) -> None:
        self._line(text, "[bold yellow]{}[/]")

    def _line(self, text: str, style: str) -> None:
        self.bar.update(self.task, description=_esc(text))
        if not self.quiet:
            err_console.print(style.format(_esc(text)), highlight=False)


_ONNX_PANEL = f"ONNX stage options ({_onnx_stage_formats()})"
_COREML_PANEL = "Core ML options"
_TRT_PANEL = "TensorRT options"
_QUANT_PANEL = "INT8 and compression options"

_EXPORT_HELP = f"Export a checkpoint to {listing([s.title for s in format_specs()])}, with a manifest and a parity " \
               """gate.

    INT8: --precision int8 --calib DATA calibrates (statistics cached per model, data, method and preprocessing) and
    gates the artifact with the int8 tolerance profile on the calibration or --eval-data images.

    Format options are refused for a format that does not take them (e.g. --dla-core with --format onnx).
    """


@app.command(help=_EXPORT_HELP)
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact directory to create.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=_formats_help())],
    checkpoint: CheckpointOpt = None,
    variant: VariantOpt = None,
    resolution: Annotated[int | None, typer.Option("--resolution", "-r", help="Input side, a multiple of 32 "
                                                   "(default: the variant's).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Fixed batch size.")] = 1,
    dynamic_batch: Annotated[str | None, typer.Option("--dynamic-batch", help="Dynamic batch MIN:OPT:MAX "
                                                      "(e.g. 1:8:32).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help=_precision_help())] = None,
    no_reparam: Annotated[bool, typer.Option("--no-reparam", help="Export the unfused model.")] = False,
    include_preprocessing: Annotated[bool, typer.Option("--include-preprocessing", help="Bake ImageNet "
                                                        "normalization into the ONNX graph.")] = False,
    input_range: Annotated[str, typer.Option("--input-range", help="With --include-preprocessing: 0-255 (uint8 "
                                             "input) or 0-1 (float input).")] = "0-255",
    # Format options: None (or False) means "not given", so that a flag given to a format that does not take it is
    # refused by name instead of silently ignored. Defaults live in the formats' options dataclasses.
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset, 13-21 (default 17).",
                                              rich_help_panel=_ONNX_PANEL)] = None,
    no_simplify: Annotated[bool, typer.Option("--no-simplify", help="Skip onnxsim.",
                                              rich_help_panel=_ONNX_PANEL)] = False,
    keep_onnx: Annotated[bool, typer.Option("--keep-onnx", help="Keep the intermediate model.onnx in the artifact "
                                            "directory.", rich_help_panel="OpenVINO options")] = False,
    coreml_input: Annotated[str | None, typer.Option("--coreml-input", help="Input type: image (RGB pixels, "
                                                     "default) or tensor.", rich_help_panel=_COREML_PANEL)] = None,
    class_labels: Annotated[str | None, typer.Option("--class-labels", help="Make a classifier with these labels: "
                                                     "'imagenet' or a file with one label per line.",
                                                     rich_help_panel=_COREML_PANEL)] = None,
    trt_workspace: Annotated[int | None, typer.Option("--trt-workspace", help="Workspace limit, MiB (default "
                                                      "4096).", rich_help_panel=_TRT_PANEL)] = None,
    dla_core: Annotated[int | None, typer.Option("--dla-core", help="Jetson DLA core (GPU fallback on).",
                                                 rich_help_panel=_TRT_PANEL)] = None,
    timing_cache: Annotated[Path | None, typer.Option("--timing-cache", help="Persistent timing cache file.",
                                                      rich_help_panel=_TRT_PANEL)] = None,
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration data: an ImageFolder, a folder of "
                                              "images, or 'digits' (its training split).",
                                              rich_help_panel=_QUANT_PANEL)] = None,
    calib_size: Annotated[int | None, typer.Option("--calib-size", help="Calibration images (default 300).",
                                                   rich_help_panel=_QUANT_PANEL)] = None,
    calib_method: Annotated[str | None, typer.Option("--calib-method", help="minmax (default), entropy or "
                                                     "percentile.", rich_help_panel=_QUANT_PANEL)] = None,
    target: Annotated[str | None, typer.Option("--target", help=_target_help(),
                                               rich_help_panel=_QUANT_PANEL)] = None,
    max_drop: Annotated[float | None, typer.Option("--max-drop", help="Accuracy budget in points on --eval-data: "
                                                   "keeps the most sensitive layer groups in float.",
                                                   rich_help_panel=_QUANT_PANEL)] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Labelled data (ImageFolder or 'digits') for "
                                                  "--max-drop and the INT8 parity gate.",
                                                  rich_help_panel=_QUANT_PANEL)] = None,
    calib_cache: Annotated[Path | None, typer.Option("--calib-cache", help="Folder of the calibration-statistics "
                                                     "cache (default: per model, under ~/.cache/ffnet-deploy).",
                                                     rich_help_panel=_QUANT_PANEL)] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="Core ML weight-only compression: int8, int4, "
                                                "palettize4 or palettize6.", rich_help_panel=_QUANT_PANEL)] = None,
    granularity: Annotated[str | None, typer.Option("--granularity", help="Core ML weights: per_channel or "
                                                    "per_block (default: per_block for int4, else per_channel).",
                                                    rich_help_panel=_QUANT_PANEL)] = None,
    no_parity: Annotated[bool, typer.Option("--no-parity", help="Skip the export-time parity gate.")] = False,
    keep_failed: Annotated[bool, typer.Option("--keep-failed", help="When the parity gate fails, keep the artifact "
                                              "in OUTPUT.failed/ for inspection (never deployable: its manifest "
                                              "records the failure).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing artifact directory written by "
                                            "ffnet-deploy (nothing else).")] = False,
    trust_checkpoint: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    # The help is _EXPORT_HELP, which names the formats from the registry.
    from ffnet_deploy.export import export as run_export
    from ffnet_deploy.export import parse_dynamic_batch
    from ffnet_deploy.exporters import build_options
    from ffnet_deploy.exporters.base import ExportConfig
    # Field names of the formats' options dataclasses (OnnxOptions, OpenVINOOptions, CoreMLOptions, TensorRTOptions).
    given = {"opset": opset, "simplify": False if no_simplify else None, "keep_onnx": True if keep_onnx else None,
             "input": coreml_input, "class_labels": class_labels, "workspace_mb": trt_workspace,
             "dla_core": dla_core, "timing_cache": timing_cache}
    options = build_options(fmt, {k: v for k, v in given.items() if v is not None})
    from ffnet_deploy.quantize.config import QuantizationConfig

    quant_given = {"calib": calib, "calib_size": calib_size, "method": calib_method, "target": target,
                   "max_drop": max_drop, "eval_data": eval_data, "cache_dir": calib_cache, "weights": weights,
                   "granularity": granularity}
    quant_given = {k: v for k, v in quant_given.items() if v is not None}
    config = ExportConfig(
        format=fmt, output=output, resolution=resolution, batch=batch,
        dynamic_batch=parse_dynamic_batch(dynamic_batch), precision=precision, reparameterize=not no_reparam,
        include_preprocessing=include_preprocessing, input_range=input_range, options=options,
        quantization=QuantizationConfig(**quant_given) if quant_given else None,
        check_parity=not no_parity, force=force, keep_failed=keep_failed,
    )
    from rich.markup import escape

    with err_console.status(f"exporting to {fmt}...") as status:
        result = run_export(config, checkpoint, variant, trust=trust_checkpoint, progress=_StatusLine(status))
    for notice in result.notices:
        err_console.print(f"[bold yellow]notice:[/] {escape(notice)}", highlight=False, soft_wrap=True)
    if as_json:
        emit_json(result.to_dict())
        return
    m = result.manifest
    table = Table(title=f"exported {_esc(m.variant)} -> {_esc(result.output)}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("format / precision", f"{m.format} / {m.precision}")
    table.add_row("artifact", _esc(f"{m.artifact.path} (sha256 {m.artifact.sha256[:16]}...)"))
    table.add_row("inputs", _esc(", ".join(f"{t.name} {t.describe()}" for t in m.inputs)))
    table.add_row("outputs", _esc(", ".join(f"{t.name} {t.describe()}" for t in m.outputs)))
    table.add_row("reparameterized", str(m.reparameterized))
    table.add_row("source checkpoint", m.source_checkpoint.sha256[:16] + "..." if m.source_checkpoint
                  else "[yellow]none (random weights)[/]")
    for check in result.parity:
        table.add_row("parity", ("[green]pass[/] " if check else "[red]FAIL[/] ") + escape(check.describe()))
    if not result.parity:
        table.add_row("parity", str(m.parity.get("skipped")))
    for field, value in quantization_rows(m.details.get("quantization") or m.details.get("compression")):
        table.add_row(field, escape(value))
    table.add_row("seconds", f"{result.seconds:.1f}")
    console.print(table)


@app.command()
def sensitivity(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="FFNet checkpoint to analyze.")],
    calib: Annotated[str, typer.Option("--calib", help="Calibration data: an ImageFolder, a folder of images, or "
                                       "'digits'.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=_sensitivity_formats_help())] = _sensitivity_default()[0],
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Labelled data (ImageFolder or 'digits') "
                                                  "to rank on; default: the calibration images.")] = None,
    variant: VariantOpt = None,
    resolution: Annotated[int | None, typer.Option("--resolution", "-r", help="Input side (default: the "
                                                   "variant's).")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", help="Calibration images.")] = 300,
    calib_method: Annotated[str, typer.Option("--calib-method", help="minmax, entropy or percentile.")] = "minmax",
    target: Annotated[str, typer.Option("--target", help=_sensitivity_target_help())] = _sensitivity_default()[1],
    calib_cache: Annotated[Path | None, typer.Option("--calib-cache", help="Calibration-statistics cache "
                                                     "folder.")] = None,
    trust_checkpoint: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Quantize one layer group at a time and rank the groups by the damage each does (logit SQNR, top-1, accuracy).

    The most harmful groups come first; export --max-drop keeps them in float, in this order, until the accuracy
    budget holds.
    """

    from ffnet_deploy.quantize.config import QuantizationConfig
    from ffnet_deploy.sensitivity import sensitivity_analysis

    quant = QuantizationConfig(calib=calib, calib_size=calib_size, method=calib_method, target=target,
                               eval_data=eval_data, cache_dir=calib_cache)
    with err_console.status("sensitivity analysis...") as status:
        report = sensitivity_analysis(checkpoint, variant, fmt, quant, resolution=resolution,
                                      trust=trust_checkpoint, log=_StatusLine(status))
    if as_json:
        emit_json(report.to_dict())
        return
    labelled = report.fp32_accuracy is not None
    table = Table(title=f"{report.backend} INT8 sensitivity, one layer group quantized at a time "
                  f"({report.images} images)", caption="ranked: most harmful first")
    for col in ("rank", "layer group", "logit SQNR dB", "top-1 agreement", *(("accuracy %", "drop") if labelled
                                                                             else ())):
        table.add_column(col, justify="left" if col == "layer group" else "right", no_wrap=col == "layer group")
    for i, e in enumerate(report.effects, 1):
        row = [str(i), e.group, f"{e.sqnr_db:.1f}", f"{e.top1_agreement:.3f}"]
        if labelled:
            row += [f"{e.accuracy:.2f}", f"{e.accuracy_drop:+.2f}"]
        table.add_row(*row)
    console.print(table)
    whole = f"all groups quantized: SQNR {report.int8_sqnr_db:.1f} dB, top-1 agreement {report.int8_top1_agreement:.3f}"
    if labelled:
        whole += f", accuracy {report.int8_accuracy:.2f} % (FP32 {report.fp32_accuracy:.2f} %)"
    console.print(whole)


_BENCH_PROTOCOL = "Protocol"


@app.command()
def bench(
    artifacts: Annotated[list[Path] | None, typer.Argument(help="Artifact directories written by 'ffnet-deploy "
                                                           "export' (or use --variant).", show_default=False)] = None,
    variant: VariantOpt = None,
    checkpoint: CheckpointOpt = None,
    runtimes: Annotated[str | None, typer.Option("--runtimes", help=_bench_runtimes_help())] = None,
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
    import shutil
    import tempfile

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ffnet_deploy.benchmarks.suite import (
        BenchRequest,
        bench_precisions,
        parse_batches,
        parse_list,
        runtime_names,
        write_outputs,
    )
    from ffnet_deploy.benchmarks.suite import bench as run_bench
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
        _check_bench_out(out)
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    work = Path(tempfile.mkdtemp(prefix="ffnet-bench-"))
    try:
        with Progress(*columns, console=err_console, transient=True, disable=as_json) as bar:
            task = bar.add_task("bench", total=1.0)
            result = run_bench(request, work, command=invocation(), progress=_Bar(bar, task, quiet=as_json))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    written = write_outputs(result, out) if out is not None else {}
    if as_json:
        emit_json({**result.to_dict(), "written": {k: str(v) for k, v in written.items()}})
        return
    console.print(bench_table(result))
    for kind, path in written.items():
        console.print(f"wrote {kind}: {_esc(path)}", highlight=False)


def bench_table(result: Any) -> Table:
    """The terminal view of a bench result: one line per row; why a row was skipped or failed goes in a caption."""
    from ffnet_deploy.benchmarks.results import execution_differs, fmt_ms, noise_text, ratio_text, roofline_text

    d = result.device
    roof = result.roofline or {}
    peaks = ", ".join(f"{k.split('_')[0]} {v:.0f}" for k, v in roof.items() if k.endswith(("_gflops", "_gops")) and v)
    # the device name and every row's names are the user's text: escaped, so "[/]" is shown, not read as markup
    table = Table(title=_esc(f"{d.name}: {d.cpu}, {d.cores} cores" + (f"; GEMM peak G(FL)OP/s: {peaks}" if peaks
                                                                      else "")))
    for col in ("model", "runtime", "precision", "res", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "first ms",
                "peak MB", "roofline", "vs", "verdict"):
        table.add_column(col, justify="left" if col in ("model", "runtime", "precision", "vs", "verdict")
                         else "right")
    notes: list[str] = []
    for row in result.rows:
        runtime = row.runtime + (f" {row.compute_units}" if row.compute_units else "")
        precision = row.precision + (f" (runs {row.execution_precision})" if execution_differs(row) else "")
        head = (_esc(row.model), _esc(runtime), _esc(precision), str(row.resolution), str(row.batch))
        if row.status != "ok":
            notes.append(f"[{len(notes) + 1}] {row.model} {runtime} {row.precision}: {row.status}: {row.reason}")
            table.add_row(*head, f"{row.status} [{len(notes)}]", *[""] * 8, style="dim")
            continue
        lat = row.latency_ms
        if row.omp_wait_policy is not None and row.omp_wait_policy != "PASSIVE":
            notes.append(f"[{len(notes) + 1}] {row.model} {runtime}: OpenMP {row.omp_wait_policy}, not a reference")
        table.add_row(*head, fmt_ms(lat.get("p50")), fmt_ms(lat.get("p90")), fmt_ms(lat.get("p99")),
                      _num(row.throughput_ips, ".1f"), fmt_ms(row.first_inference_ms), _num(row.peak_rss_mb, ".0f"),
                      _esc(roofline_text(row)), _esc(ratio_text(row)), _esc(row.verdict or "-"),
                      style="yellow" if row.verdict and row.verdict != "stable" else None)
    if any(r.verdict for r in result.rows):
        notes.append(noise_text(result.noise))
    if notes:
        from rich.markup import escape

        table.caption = escape("\n".join(notes))
        table.caption_justify = "left"
    return table


def _check_bench_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder holding results files ffnet-deploy did not write."""
    from ffnet_deploy.atomic import replace_refusal
    from ffnet_deploy.benchmarks.plots import not_our_plot
    from ffnet_deploy.benchmarks.results import not_written_by_bench
    from ffnet_deploy.benchmarks.suite import PLOT_NAMES

    if out.exists() and not out.is_dir():
        raise FFNetDeployError(f"bench | --out {out} is a file; pass a folder for the results")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # found now, not after the measurements
        raise FFNetDeployError(f"bench | --out {out} cannot be created: {blocker} is a file; pass another folder")
    # checked again when each file is written; here, before anything is measured
    verdicts = {**{f"results.{kind}": not_written_by_bench for kind in ("json", "csv", "md")},
                **{f"{name}.png": not_our_plot for name in PLOT_NAMES}}
    for name, verdict in verdicts.items():
        reason = replace_refusal(out / name, verdict)
        if reason:
            raise FFNetDeployError(f"bench | refusing to overwrite {out / name}: {reason}; choose another --out "
                                   "folder")


report_app = typer.Typer(help="Tables across devices: merge bench results, import measurements made elsewhere.",
                         no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("merge")
def report_merge(
    inputs: Annotated[list[Path], typer.Argument(help="Bench result JSON files (results.json of 'ffnet-deploy "
                                                 "bench' or 'report add'), or pipeline output folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bench results: the Markdown table to write (CSV and "
                                      "PNG go next to it). Pipeline folders: the report folder to write.")],
    as_json: JsonOpt = False,
) -> int:
    """Merge results: bench JSONs into one table (rows variant x precision, columns devices), or the job
    folders of 'pipeline --only' runs into one report."""
    folders = [p for p in inputs if p.is_dir()]
    if folders and len(folders) != len(inputs):
        raise FFNetDeployError("report merge | pass either bench result files or pipeline output folders, not both")
    if folders:
        from ffnet_deploy.pipeline.engine import merge_runs

        outcome = merge_runs(folders, out, command=invocation(), log=lambda m: err_console.print(m))
        if as_json:
            emit_json(outcome.results.to_dict())
        else:
            _print_pipeline_summary(outcome)
        return outcome.exit_code
    from ffnet_deploy.benchmarks.report import merge_files

    written = merge_files(inputs, out)
    if as_json:
        emit_json({k: str(v) for k, v in written.items()})
        return 0
    for kind, path in written.items():
        console.print(f"wrote {kind}: {_esc(path)}", highlight=False)
    return 0


@report_app.command("add")
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
    from ffnet_deploy.atomic import write_text
    from ffnet_deploy.benchmarks.report import import_measurements
    from ffnet_deploy.benchmarks.results import not_written_by_bench

    if not device_name.strip():
        raise FFNetDeployError("report add | --device-name must not be empty, e.g. --device-name 'iPhone 12'")
    result = import_measurements(csv_file, device_name, command=invocation())
    target = out or csv_file.with_suffix(".json")
    if target.resolve() == csv_file.resolve():
        raise FFNetDeployError("report add | --out would overwrite the CSV; choose a .json path")
    write_text(target, result.to_json(), "report add", may_replace=not_written_by_bench)
    if as_json:
        emit_json({"written": str(target), "rows": len(result.rows)})
        return
    console.print(f"imported {len(result.rows)} row(s) measured on {_esc(device_name)} -> {_esc(target)}",
                  highlight=False)


_PIPELINE_BENCH = "Benchmark"


@app.command()
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
    from ffnet_deploy.pipeline.config import EMITS, build_config, github_matrix, parse_runners, plan_jobs, read_toml
    from ffnet_deploy.pipeline.distributed import EXECUTORS
    from ffnet_deploy.pipeline.engine import STAGES, run_pipeline

    if executor not in EXECUTORS:
        raise ConfigError(f"pipeline | --executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if ray_address and executor != "ray":
        raise ConfigError("pipeline | --ray-address applies to --executor ray; add it")
    if not (math.isfinite(ray_wait) and ray_wait > 0):
        raise ConfigError(f"pipeline | --ray-wait {ray_wait}: pass a positive number of seconds")
    if emit not in EMITS:
        raise ConfigError(f"pipeline | --emit {emit!r}: choose one of {', '.join(EMITS)}")
    if (emit != "json" or runners) and not plan:
        raise ConfigError(f"pipeline | {'--runner' if runners else '--emit'} applies to --plan; add --plan")
    if runners and emit != "github-matrix":
        raise ConfigError("pipeline | --runner applies to --emit github-matrix; add it")
    labels = parse_runners(runners)
    file_settings = read_toml(config_file) if config_file is not None else {}
    config = build_config(file_settings, cli_settings)
    if plan:
        graph = plan_jobs(config, _ARGV)
        if emit == "github-matrix":  # one line: what a workflow step writes to $GITHUB_OUTPUT
            sys.stdout.write(json.dumps(github_matrix(graph, labels), separators=(",", ":")) + "\n")
        else:
            emit_json(graph)
        return 0
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    show = not (quiet or as_json)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not show) as bars:
        overall = bars.add_task("stages", total=len(STAGES))
        nested = bars.add_task("", total=1, visible=False)

        class _UI(Events):
            def stage(self, name: str) -> None:
                index = STAGES.index(name)
                bars.update(overall, completed=index, description=f"stage {index + 1}/{len(STAGES)}: {name}")
                bars.update(nested, visible=False)

            def note(self, text: str) -> None:
                if show:
                    bars.console.print(f"[dim]{escape(text)}[/]", highlight=False)

            warn = note

            def step(self, done: float, total: float, label: str = "") -> None:
                bars.update(nested, description=f"  {escape(label)}", completed=done, total=max(total, 1),
                            visible=True)

        if executor == "ray":
            from ffnet_deploy.pipeline.distributed import run_on_ray

            bars.update(overall, visible=False)
            outcome = run_on_ray(config, address=ray_address, command=invocation(), log=_UI().note,
                                 placement_timeout=ray_wait)
        else:
            outcome = run_pipeline(config, command=invocation(), ui=_UI())
    if as_json:
        emit_json(outcome.results.to_dict())
    elif quiet:
        s = outcome.results.summary
        counts = (s.passed, s.failed, s.skipped, s.errors) if s is not None else (0, 0, 0, 0)
        console.print(f"{counts[0]} passed, {counts[1]} failed, {counts[2]} skipped, {counts[3]} errors: "
                      f"{_esc(config.output / 'index.html')}", highlight=False)
    else:
        _print_pipeline_summary(outcome)
    return outcome.exit_code


def _print_pipeline_summary(outcome: Any) -> None:
    """A compact terminal view of the report: one line per job, then what to look at and where the report is."""
    from ffnet_deploy.pipeline.report import bench_noise, vs_torch_text
    from ffnet_deploy.pipeline.results import Summary

    results = outcome.results
    s = results.summary or Summary(jobs=len(results.jobs))
    variant = results.checkpoint.variant if results.checkpoint is not None else "model"
    table = Table(title=f"{_esc(variant)}: {s.passed} passed, {s.failed} failed, {s.skipped} skipped, "
                  f"{s.errors} errors")
    for col in ("job", "status", "cosine", "accuracy %", "drop", "p50 ms", "vs torch"):
        table.add_column(col, justify="left" if col in ("job", "status") else "right", no_wrap=True)
    style = {"passed": "green", "failed": "red", "error": "red", "skipped": "dim"}
    for job in results.jobs:
        metrics = job.parity.metrics if job.parity is not None else {}
        bench = job.bench
        table.add_row(_esc(job.id), f"[{style.get(job.status, '')}]{job.status}[/]",
                      _num(metrics.get("cosine_mean"), ".4f"), _num(metrics.get("accuracy"), ".1f"),
                      _num(metrics.get("accuracy_drop"), ".1f"), _num(bench.p50_ms if bench else None, ".3g"),
                      _esc(vs_torch_text(bench, "x")))
    console.print(table)
    noise = bench_noise(results)
    if noise:
        console.print(f"bench noise verdict: {_esc(noise)}", highlight=False)
    console.print("[bold]What to look at[/]")
    for line in s.look_at:
        console.print(f"  - {_esc(line)}", highlight=False)
    index = outcome.written.get("html")
    if index is not None:
        console.print(f"report: {_esc(index)}", highlight=False)


def quantization_rows(record: dict | None) -> list[tuple[str, str]]:
    """Rows of the export table that say what INT8 quantization or compression did (from the manifest's record)."""
    if not record:
        return []
    rows = []
    calib = record.get("calibration") or {}
    if calib.get("num_images"):
        rows.append(("calibration", f"{calib['num_images']} images of {calib.get('data') or 'the cached set'}, "
                                    f"{record.get('method')}, {record.get('calibration_seconds', 0):.1f} s"))
    cache = record.get("statistics_cache")
    if cache:
        rows.append(("statistics cache", f"{'hit' if cache['hit'] else 'written'}: {cache['path']}"))
    if "quantized_groups" in record:
        floats = record.get("float_groups") or []
        rows.append(("layer groups", f"{len(record['quantized_groups'])} quantized, {len(floats)} in float"
                                     + (f" ({', '.join(floats)})" if floats else "")))
    speed = record.get("speedup_vs_fp32")
    if speed:
        from ffnet_deploy.runtimes.noise import PairedRatio, format_ratio

        ratio = f"{speed['speedup']:.2f}x"
        if speed.get("low") is not None:
            ratio = format_ratio(PairedRatio(speed["speedup"], speed["low"], speed["high"], ()), "x")
        rows.append(("INT8 vs FP32 here", f"{speed['int8_ms']:.2f} ms vs {speed['fp32_ms']:.2f} ms "
                                          f"({ratio}; {speed.get('verdict') or 'not judged'})"))
    for key in ("weights", "activations", "minimum_deployment_target"):
        if record.get(key) not in (None, False):
            rows.append((key.replace("_", " "), str(record[key])))
    return rows


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``(usage-error types, abort types)`` of click, and of the copy of click that newer typer versions vendor."""
    import importlib

    usage, abort = [], []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(mod.ClickException)
        if hasattr(mod, "Abort"):
            abort.append(mod.Abort)
    return tuple(usage), (typer.Abort, *abort)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns the exit code (also used by tests).

    SIGINT, SIGTERM, SIGHUP and SIGQUIT are handled alike for every command (:mod:`ffnet_deploy.interrupts`):
    whatever was being written is cleaned up, one line says so, and the exit code is ``128 + signum``.
    """
    from ffnet_deploy.errors import Interrupted
    from ffnet_deploy.interrupts import handle_signals
    usage_errors, aborts = _click_exception_types()
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        with handle_signals():
            rv = app(args=argv, standalone_mode=False, prog_name="ffnet-deploy")
        return rv if isinstance(rv, int) else EXIT_OK
    except FFNetDeployError as err:
        _error_line(str(err))
        return EXIT_USER_ERROR
    except Interrupted as err:
        _error_line(str(err))
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        err = Interrupted(2)
        _error_line(str(err))
        return err.exit_code
    except aborts:
        err_console.print("[bold red]aborted[/]")
        return EXIT_USER_ERROR
    except usage_errors as err:
        err.show()
        return err.exit_code
    except OSError as err:
        message = _filesystem_error(err)
        if message is None:
            raise  # not the machine's state: a bug, whose traceback is wanted
        _error_line(message)
        return EXIT_USER_ERROR


# Errors of the machine's state, not of the tool: a full, read-only or forbidden file system.
_FILESYSTEM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _filesystem_error(err: OSError) -> str | None:
    """One line for an OSError of a full, read-only or forbidden file system, or ``None`` for any other.

    Writes through :mod:`ffnet_deploy.atomic` already fail with such a line; this catches the rest (a runtime or
    converter writing its own files). ``shutil.Error`` (copytree, e.g. coremltools copying a package) carries a list
    of ``(source, destination, reason)`` instead of an errno; the first reason is read.
    """
    import os
    import shutil

    from ffnet_deploy.atomic import os_reason, write_hint

    code, where = err.errno, err.filename
    if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list) and err.args[0]:
        _, where, reason = err.args[0][0]
        code = next((c for c in _FILESYSTEM_ERRNOS if f"[Errno {c}]" in str(reason)), None)
    if code not in _FILESYSTEM_ERRNOS:
        return None
    reason = f"{os_reason(OSError(code, os.strerror(code)))}; {write_hint(code)}"
    if not where:
        return reason
    path = Path(str(where))
    if path.exists():
        return f"cannot write {path}: {reason}"
    # a staging folder already removed on the way out: name the folder that holds it instead
    place = next((p for p in path.parents if p.exists()), path.parent)
    return f"cannot write in {place}: {reason}"


def _error_line(message: str) -> None:
    # escape: messages quote extras like "ffnet-deploy[coreml]", which rich would eat as markup
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

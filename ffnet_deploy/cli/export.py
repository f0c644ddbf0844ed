"""``ffnet-deploy export``: a checkpoint to a deployable artifact, with a manifest and a parity gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ffnet_deploy.artifact.formats import format_specs, listing
from ffnet_deploy.cli.console import emit_json, err_console
from ffnet_deploy.cli.options import (
    CheckpointOpt,
    JsonOpt,
    TrustOpt,
    VariantOpt,
    formats_help,
    onnx_stage_formats,
    precision_help,
    target_help,
)
from ffnet_deploy.cli.progress import status
from ffnet_deploy.cli.render import show
from ffnet_deploy.reporting.console import print_line
from ffnet_deploy.reporting.document import Cell, Table, bad, ok, plain, warn

_ONNX_PANEL = f"ONNX stage options ({onnx_stage_formats()})"
_COREML_PANEL = "Core ML options"
_TRT_PANEL = "TensorRT options"
_QUANT_PANEL = "INT8 and compression options"

HELP = f"Export a checkpoint to {listing([s.title for s in format_specs()])}, with a manifest and a parity " \
               """gate.

    INT8: --precision int8 --calib DATA calibrates (statistics cached per model, data, method and preprocessing) and
    gates the artifact with the int8 tolerance profile on the calibration or --eval-data images.

    Format options are refused for a format that does not take them (e.g. --dla-core with --format onnx).
    """


def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact directory to create.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=formats_help())],
    checkpoint: CheckpointOpt = None,
    variant: VariantOpt = None,
    resolution: Annotated[int | None, typer.Option("--resolution", "-r", help="Input side, a multiple of 32 "
                                                   "(default: the variant's).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Fixed batch size.")] = 1,
    dynamic_batch: Annotated[str | None, typer.Option("--dynamic-batch", help="Dynamic batch MIN:OPT:MAX "
                                                      "(e.g. 1:8:32).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help=precision_help())] = None,
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
    target: Annotated[str | None, typer.Option("--target", help=target_help(),
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
    # The help is HELP, which names the formats from the registry.
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
    with status(f"exporting to {fmt}...") as progress:
        result = run_export(config, checkpoint, variant, trust=trust_checkpoint, progress=progress)
    for notice in result.notices:
        print_line(err_console, [("notice", "notice:"), ("text", f" {notice}")], soft_wrap=True)
    if as_json:
        emit_json(result.to_dict())
        return
    show(export_table(result))


def export_table(result: Any) -> Table:
    """What an export made: the manifest's main fields, each parity check, what quantization did, the time."""
    from ffnet_deploy.quantize.stages import describe_record

    m = result.manifest
    rows: list[list[Cell]] = [
        ["format / precision", f"{m.format} / {m.precision}"],
        ["artifact", f"{m.artifact.path} (sha256 {m.artifact.sha256[:16]}...)"],
        ["inputs", ", ".join(f"{t.name} {t.describe()}" for t in m.inputs)],
        ["outputs", ", ".join(f"{t.name} {t.describe()}" for t in m.outputs)],
        ["reparameterized", str(m.reparameterized)],
        ["source checkpoint", m.source_checkpoint.sha256[:16] + "..." if m.source_checkpoint
         else [warn("none (random weights)")]],
    ]
    rows += [["parity", [ok("pass") if check else bad("FAIL"), plain(f" {check.describe()}")]]
             for check in result.parity]
    if not result.parity:
        rows.append(["parity", str(m.parity.get("skipped"))])
    rows += [[field, value] for field, value in describe_record(m.details.get("quantization")
                                                                 or m.details.get("compression"))]
    rows.append(["seconds", f"{result.seconds:.1f}"])
    return Table(["field", "value"], rows, title=f"exported {m.variant} -> {result.output}", key_value=True)

"""``ffnet-deploy sensitivity``: rank the layer groups by the damage quantizing each one does."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ffnet_deploy.cli.console import emit_json
from ffnet_deploy.cli.options import (
    JsonOpt,
    TrustOpt,
    VariantOpt,
    sensitivity_default,
    sensitivity_formats_help,
    sensitivity_target_help,
)
from ffnet_deploy.cli.progress import status
from ffnet_deploy.cli.render import say, show
from ffnet_deploy.reporting.document import Table


def sensitivity(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="FFNet checkpoint to analyze.")],
    calib: Annotated[str, typer.Option("--calib", help="Calibration data: an ImageFolder, a folder of images, or "
                                       "'digits'.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=sensitivity_formats_help())] = sensitivity_default()[0],
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Labelled data (ImageFolder or 'digits') "
                                                  "to rank on; default: the calibration images.")] = None,
    variant: VariantOpt = None,
    resolution: Annotated[int | None, typer.Option("--resolution", "-r", help="Input side (default: the "
                                                   "variant's).")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", help="Calibration images.")] = 300,
    calib_method: Annotated[str, typer.Option("--calib-method", help="minmax, entropy or percentile.")] = "minmax",
    target: Annotated[str, typer.Option("--target", help=sensitivity_target_help())] = sensitivity_default()[1],
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
    with status("sensitivity analysis...") as progress:
        report = sensitivity_analysis(checkpoint, variant, fmt, quant, resolution=resolution,
                                      trust=trust_checkpoint, log=progress)
    if as_json:
        emit_json(report.to_dict())
        return
    labelled = report.fp32_accuracy is not None
    headers = ["rank", "layer group", "logit SQNR dB", "top-1 agreement", *(("accuracy %", "drop") if labelled
                                                                            else ())]
    rows = []
    for i, e in enumerate(report.effects, 1):
        row = [str(i), e.group, f"{e.sqnr_db:.1f}", f"{e.top1_agreement:.3f}"]
        if labelled:
            row += [f"{e.accuracy:.2f}", f"{e.accuracy_drop:+.2f}"]
        rows.append(row)
    show(Table(headers, rows, numeric=set(range(len(headers))) - {1}, nowrap={1},
               title=f"{report.backend} INT8 sensitivity, one layer group quantized at a time ({report.images} images)",
               caption=["ranked: most harmful first"]))
    whole = f"all groups quantized: SQNR {report.int8_sqnr_db:.1f} dB, top-1 agreement {report.int8_top1_agreement:.3f}"
    if labelled:
        whole += f", accuracy {report.int8_accuracy:.2f} % (FP32 {report.fp32_accuracy:.2f} %)"
    say(whole)

"""``ffnet-deploy validate``: prove that artifacts compute what the checkpoint computes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ffnet_deploy.artifact.formats import listing, model_suffixes
from ffnet_deploy.artifact.precisions import precision_names
from ffnet_deploy.cli.console import console, emit_json
from ffnet_deploy.cli.options import JsonOpt, TrustOpt, VariantOpt
from ffnet_deploy.cli.progress import bar, log_warnings


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

    log_warnings()
    overrides = parse_tolerance_overrides(tolerance or [])
    source = make_source(data, images, synthetic, labels_file=label_map, limit=limit, seed=seed)
    with bar("validating") as progress:
        report = run_validation(artifacts, checkpoint, variant, source, precision_profile, batch, localize, overrides,
                                trust=trust_checkpoint, runtime=runtime, verify=not no_verify, progress=progress)
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

"""Full-size FFNet to LiteRT (.tflite, XNNPACK): export time, file size, delegation and parity, FP32 and INT8.

The model is ffnet_1 with random weights whose BatchNorm statistics are re-estimated on photo crops (so activations
have a trained model's ranges), exported with the project's own ``export`` (``--format litert``, its parity gate and
delegation check included), then compared with the PyTorch model in ``ai_edge_litert``'s interpreter on other photo
crops. FP32 parity is max |tflite - torch| over the logit range (the fp32 profile allows 1e-4). INT8 (``--int8``) is
calibrated on photo crops and judged by cosine and top-1 agreement (random weights have no labels). No timing of
inference: x86 XNNPACK says nothing about a phone.

    python -m studies.litert_export [--variant ffnet_1] [--resolution 256] [--images 16] [--int8] [--calib 32]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from studies import common


def _one(precision: str, work: Path, checkpoint: Path, resolution: int, crops: Path, calib: Path | None,
         calib_size: int) -> dict:
    from ffnet_deploy.data.sources import source_from_spec
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.quantize.config import QuantizationConfig
    from ffnet_deploy.validate.engine import validate

    quantization = None
    if precision == "int8":
        quantization = QuantizationConfig(calib=str(calib), calib_size=calib_size, cache_dir=work / "cache")
    start = time.perf_counter()
    result = export(ExportConfig("litert", work / precision, resolution=resolution, precision=precision,
                                 quantization=quantization, check_parity=precision == "fp32"), checkpoint)
    wall = time.perf_counter() - start
    m = result.manifest
    # INT8 of random weights is judged on the photo crops below (its 256-image synthetic gate is skipped: random
    # logits are close to ties, so top-1 agreement there says little).
    gate = result.parity[0] if result.parity else None
    report = validate([result.output], checkpoint, source=source_from_spec(str(crops)))
    (art,) = report.artifacts
    size = result.artifact.stat().st_size
    check = next(c for c in art.checks if c.name == "delegation")
    out = {
        "precision": precision, "export_seconds": round(wall, 1), "convert_seconds": m.details["convert_seconds"],
        "tflite_bytes": size, "tflite_mb": round(size / 1e6, 2),
        "delegation": common.delegation_summary(m.details),
        "delegation_check": check.to_dict(),
        "gate": None if gate is None else {"status": gate.status, "profile": gate.profile.name,
                                           **common.parity_numbers(gate.metrics), "samples": gate.metrics.num_samples},
        "photos": {"status": art.status, "images": art.metrics.num_samples, **common.parity_numbers(art.metrics),
                   "cosine_mean": art.metrics.cosine_mean, "cosine_min": art.metrics.cosine_min,
                   "top1_agreement": art.metrics.top1_agreement},
        "io": m.details["io"],
        "versions": dict(m.versions),
    }
    if precision == "int8":
        q = m.details["quantization"]
        out["quantization"] = {"calibration_images": q["calibration"]["num_images"],
                               "quantize_seconds": q["quantize_seconds"], "recipe": q["recipe"]}
    return out


def run(variant: str = "ffnet_1", resolution: int = 256, images: int = 16, int8: bool = False,
        calib_size: int = 32) -> dict:
    from ffnet_deploy.data.photos import photo_bn_checkpoint, photo_crops

    with tempfile.TemporaryDirectory(prefix="litert-study-") as tmp:
        work = Path(tmp)
        checkpoint = photo_bn_checkpoint(variant, work / f"{variant}.pth", resolution=resolution)
        crops = photo_crops(work / "crops", images, resolution, seed=1)
        calib = photo_crops(work / "calib", calib_size, resolution, seed=2) if int8 else None
        rows = [_one("fp32", work, checkpoint, resolution, crops, None, calib_size)]
        if int8:
            rows.append(_one("int8", work, checkpoint, resolution, crops, calib, calib_size))
        return {"variant": variant, "resolution": resolution, "results": rows}


def to_markdown(r: dict) -> str:
    lines = [
        f"# LiteRT export of {r['variant']} at {r['resolution']} px (XNNPACK delegate)",
        "",
        "| precision | export (s, gate included) | conversion (s) | .tflite size | XNNPACK partitions | delegated "
        "nodes | nodes outside | max abs error / logit range (gate) | same on photo crops | cosine mean / min | "
        "top-1 agreement |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for x in r["results"]:
        d, g, p = x["delegation"], x["gate"], x["photos"]
        outside = common.outside_delegate(d["not_delegated"])
        gate = ("not run (judged on the crops)" if g is None else
                f"{g['relative_to_range']:.1e} ({g['max_abs_error']:.1e} of {g['logit_range']:.2f}, {g['profile']} "
                f"profile: {g['status']})")
        lines.append(
            f"| {x['precision']} | {x['export_seconds']:.1f} | {x['convert_seconds']:.1f} | {x['tflite_mb']:.2f} MB "
            f"| {d['delegated_subgraphs']} | {d['delegated_nodes']} | {d['not_delegated_nodes']} ({outside}) | "
            f"{gate} | {p['relative_to_range']:.1e} ({p['images']} crops, {p['status']}) | "
            f"{p['cosine_mean']:.6f} / {p['cosine_min']:.6f} | {p['top1_agreement']:.3f} |")
    lines.append("")
    for x in r["results"]:
        lines.append(f"- {x['precision']}: delegation check read from the .tflite: {x['delegation_check']['message']}.")
        if "quantization" in x:
            q = x["quantization"]
            lines.append(f"- int8: {q['recipe']}; calibrated on {q['calibration_images']} photo crops, quantization "
                         f"step {q['quantize_seconds']:.1f} s; input/output int8 with (scale, zero_point) "
                         f"{x['io']['input']['scale']:.4g}/{x['io']['input']['zero_point']} and "
                         f"{x['io']['output']['scale']:.4g}/{x['io']['output']['zero_point']}.")
    versions = r["results"][0]["versions"]
    lines += [
        "",
        "The fp32 profile allows 1e-4 of the logit range. INT8 of random weights is judged on the crops by the int8 "
        "profile (top-1 agreement >= 0.97), and fails it as a matter of course: random weights give near-tied logits, "
        "so a small error swaps the top class; the cosine is what says how close the numbers are (the INT8 accuracy "
        "of a trained model is measured on the digits model in tests/exporters/test_litert.py). Versions: "
        + common.versions_line(versions)
        + ".",
        "",
        "Timings are of a busy 2-core machine shared with other work (several engineers' tests and exports ran at the "
        "same time): export times are inflated, a rough size of the export cost, not a benchmark.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = common.export_study_parser(__doc__.splitlines()[0])
    parser.add_argument("--int8", action="store_true", help="also export and check full-integer INT8")
    parser.add_argument("--calib", type=int, default=32, help="photo crops to calibrate INT8 on")
    args = common.add_output_options(parser).parse_args(argv)
    result = run(args.variant, args.resolution, args.images, args.int8, args.calib)
    common.print_and_write(f"litert_export_{args.variant}", result, to_markdown, args)
    return result


if __name__ == "__main__":
    main()

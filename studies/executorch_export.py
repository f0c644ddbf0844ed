"""Full-size FFNet to ExecuTorch (.pte, XNNPACK delegate): export time, file size, delegation and FP32 parity.

The model is ffnet_1 with random weights whose BatchNorm statistics are re-estimated on photo crops (so activations
have a trained model's ranges), exported with the project's own ``export`` (``--format executorch``, its parity gate
included), then compared with the PyTorch model in ``executorch.runtime`` on photo crops. Parity is max |pte - torch|
over the logit range (the fp32 profile allows 1e-4). No timing of inference: x86 XNNPACK says nothing about a phone.

    python -m studies.executorch_export [--variant ffnet_1] [--resolution 256] [--images 16]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from studies import common


def run(variant: str = "ffnet_1", resolution: int = 256, images: int = 16) -> dict:
    from ffnet_deploy.data.photos import photo_bn_checkpoint, photo_crops
    from ffnet_deploy.data.sources import source_from_spec
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.validate.engine import validate

    with tempfile.TemporaryDirectory(prefix="et-study-") as tmp:
        work = Path(tmp)
        checkpoint = photo_bn_checkpoint(variant, work / f"{variant}.pth", resolution=resolution)
        start = time.perf_counter()
        result = export(ExportConfig("executorch", work / "et", resolution=resolution), checkpoint)
        wall = time.perf_counter() - start
        m = result.manifest
        gate = result.parity[0]
        crops = photo_crops(work / "crops", images, resolution, seed=1)
        report = validate([result.output], checkpoint, source=source_from_spec(str(crops)))
        (art,) = report.artifacts
        size = result.artifact.stat().st_size
        check = next(c for c in art.checks if c.name == "delegation")
        return {
            "variant": variant, "resolution": resolution,
            "export_seconds": round(wall, 1), "lower_seconds": m.details["lower_seconds"],
            "pte_bytes": size, "pte_mb": round(size / 1e6, 2),
            "delegation": common.delegation_summary(m.details),
            "pte_delegation_check": check.to_dict(),
            "gate": {"status": gate.status, **common.parity_numbers(gate.metrics), "samples": gate.metrics.num_samples},
            "photos": {"status": art.status, "images": art.metrics.num_samples, **common.parity_numbers(art.metrics),
                       "cosine_min": art.metrics.cosine_min, "top1_agreement": art.metrics.top1_agreement},
            "versions": dict(m.versions),
        }


def to_markdown(r: dict) -> str:
    d, g, p = r["delegation"], r["gate"], r["photos"]
    outside = common.outside_delegate(d["not_delegated"])
    return "\n".join([
        f"# ExecuTorch export of {r['variant']} at {r['resolution']} px (fp32, XNNPACK delegate)",
        "",
        "| export (s, gate included) | lowering (s) | .pte size | delegated subgraphs | delegated nodes | "
        "nodes outside | max abs error / logit range (gate, synthetic) | same on photo crops | cosine min |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        f"| {r['export_seconds']:.1f} | {r['lower_seconds']:.1f} | {r['pte_mb']:.2f} MB | {d['delegated_subgraphs']} | "
        f"{d['delegated_nodes']} | {d['not_delegated_nodes']} ({outside}) | {g['relative_to_range']:.1e} "
        f"({g['max_abs_error']:.1e} of {g['logit_range']:.2f}) | {p['relative_to_range']:.1e} "
        f"({p['images']} crops) | {p['cosine_min']:.8f} |",
        "",
        f"Delegation check read from the .pte: {r['pte_delegation_check']['message']}.",
        f"Parity: {g['status']} (gate), {p['status']} (validate on photo crops); the fp32 profile allows 1e-4 of the "
        "logit range. Versions: " + common.versions_line(r["versions"]) + ".",
        "",
        "Timings are of a busy 2-core machine shared with other work: a rough size of the export cost, not a "
        "benchmark.",
    ])


def main(argv: list[str] | None = None) -> dict:
    args = common.add_output_options(common.export_study_parser(__doc__.splitlines()[0])).parse_args(argv)
    result = run(args.variant, args.resolution, args.images)
    common.print_and_write(f"executorch_export_{args.variant}", result, to_markdown, args)
    return result


if __name__ == "__main__":
    main()

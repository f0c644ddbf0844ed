"""Library functions behind the ``models``, ``inspect`` and ``reparam`` commands: describe the variants and a checkpoint
file, and reparameterize a checkpoint file (with a parity check of the fused model).

Each returns plain, JSON-ready data so that the CLI only renders it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ffnet_deploy.atomic import replace_refusal
from ffnet_deploy.errors import CheckpointError
from ffnet_deploy.hashing import sha256_file
from ffnet_deploy.models.checkpoint import (
    file_metadata,
    inspect_checkpoint,
    open_checkpoint,
    save_checkpoint,
)
from ffnet_deploy.models.config import PUBLISHED, VARIANTS
from ffnet_deploy.models.ffnet import count_macs, create_ffnet
from ffnet_deploy.models.reparam import reparam_report, reparameterize_model
from ffnet_deploy.models.stats import count_params
from ffnet_deploy.validate.metrics import compare_outputs
from ffnet_deploy.validate.tolerances import FP32, evaluate_checks


def describe_variants(include_test: bool = False) -> list[dict]:
    """One row per variant: parameters, GMACs at the default resolution, and the published reference numbers.

    Only the published variants are listed unless ``include_test`` (then ``ffnet_test`` and ``ffnet_digits`` too).

    Parameters and MACs are computed from the model built on the meta device, not copied from the paper.
    """
    rows = []
    for name, cfg in VARIANTS.items():
        if name not in PUBLISHED and not include_test:
            continue
        with torch.device("meta"):
            model = create_ffnet(name)
        rows.append({
            "variant": name,
            "params": count_params(model),
            "gmacs": count_macs(model, cfg.resolution) / 1e9,
            "resolution": cfg.resolution,
            "crop_pct": cfg.crop_pct,
            "layer_scale": cfg.layer_scale,
            "top1": cfg.top1,
            "iphone12_ms": cfg.iphone12_ms,
        })
    return rows


def describe_checkpoint(path: str | Path, variant: str | None = None, *, trust: bool = False,
                        sha256: str | None = None) -> dict:
    """Container type, detected variant, parameter count, MACs at the variant's resolution, fused or not, and sha256
    of a checkpoint file (``sha256``: the file's, when the caller hashed it already)."""
    info = inspect_checkpoint(path, variant, trust=trust)
    macs = {}
    if info.variant is not None:
        from ffnet_deploy.models.config import get_config

        resolution = get_config(info.variant).resolution
        gmacs = count_macs(create_ffnet(info.variant, num_classes=max(info.num_classes, 1), deploy=info.fused),
                           resolution) / 1e9
        macs = {"resolution": resolution, "gmacs": round(gmacs, 4)}
    return {
        "path": str(info.path),
        "container": info.container,
        "variant": info.variant,
        "fused": info.fused,
        "num_classes": info.num_classes,
        "params": info.num_params,
        "tensors": len(info.state_dict),
        "stripped_prefix": info.stripped_prefix,
        "written_by": "ffnet-deploy " + info.metadata["version"] if info.metadata.get("version") else None,
        "sha256": sha256 or sha256_file(path),
        "size_bytes": Path(path).stat().st_size,
        **macs,
    }


def not_our_fused_checkpoint(path: Path) -> str | None:
    """Why ``path`` is not a fused checkpoint written by ffnet-deploy (``None``: it is one, ``--force`` may replace it).

    Read with the weights-only loader, so nothing in a stranger's file runs.
    """
    meta = file_metadata(path)
    if meta is None or meta.get("fused") is not True:
        return "it is not a fused checkpoint written by ffnet-deploy reparam"
    return None


def _check_reparam_output(checkpoint: Path, output: Path, force: bool) -> None:
    """Refuse, before any work, an output that is the input or that must not be replaced."""
    same = output.resolve() == checkpoint.resolve()
    if not same and output.exists() and checkpoint.exists():
        same = os.path.samefile(output, checkpoint)  # hard links
    if same:
        raise CheckpointError(f"reparam | --output {output} is the input checkpoint; choose another file")
    if not (output.exists() or output.is_symlink()):
        return
    if not force:
        raise CheckpointError(f"reparam | {output} already exists; pass --force to overwrite it")
    reason = replace_refusal(output, not_our_fused_checkpoint)
    if reason:
        raise CheckpointError(f"reparam | refusing to overwrite {output}: {reason}; --force replaces only a fused "
                              "checkpoint written by ffnet-deploy, so choose another file")


@torch.no_grad()
def reparameterize_checkpoint(checkpoint: str | Path, output: str | Path, variant: str | None = None, *,
                              force: bool = False, trust: bool = False, resolution: int | None = None) -> dict:
    """Load, fuse, verify and save a checkpoint.

    The fused model is checked against the unfused one on a random batch before anything is written. The output is
    never the input checkpoint; an existing output is refused, and with ``force`` replaced only if it is a fused
    checkpoint written by ffnet-deploy (its ``ffnet_deploy`` metadata says so), checked again at the moment of the
    rename. Signals clean up the temporary file (:mod:`ffnet_deploy.interrupts`).

    Returns:
        JSON-ready summary: variant, output path, the before/after report, and the parity metrics of the fused
        model against the unfused one (the validate engine's metric names, judged by the fp32 profile).
    """
    output = Path(output)
    _check_reparam_output(Path(checkpoint), output, force)
    loaded = open_checkpoint(checkpoint, variant, trust=trust)
    model = loaded.model
    if model.deploy:
        raise CheckpointError(f"{checkpoint} is already fused; nothing to reparameterize")
    fused = reparameterize_model(model)
    res = resolution or min(model.cfg.resolution, 128)
    x = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(0))
    metrics = compare_outputs(model(x).double().numpy(), fused(x).double().numpy())
    failed = [c.message for c in evaluate_checks(metrics, FP32) if not c.passed]
    if failed:
        raise CheckpointError(f"reparameterization of {checkpoint} changed the outputs: {'; '.join(failed)}")
    save_checkpoint(fused, output, source=loaded.sha256, may_replace=not_our_fused_checkpoint, overwrite=force)
    return {
        "variant": model.cfg.name,
        "output": str(output),
        "source_sha256": loaded.sha256,
        "output_sha256": sha256_file(output),
        "parity": metrics.to_dict(),
        "report": reparam_report(model, fused).to_dict(),
    }

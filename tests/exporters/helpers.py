"""Shared helpers of the exporter tests: run an export of the tiny variant and read what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ffnet_deploy.export import ExportResult, export
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.models.checkpoint import load_ffnet


def run_export(tmp_path: Path, fmt: str, checkpoint: Path | None, name: str | None = None, **options) -> ExportResult:
    """Export ``checkpoint`` (the ffnet_test fixture, usually) to ``tmp_path/name``."""
    out = tmp_path / (name or f"{fmt}-artifact")
    return export(ExportConfig(fmt, out, **options), checkpoint, None if checkpoint else "ffnet_test")


def manifest(path: Path) -> dict:
    """The ``manifest.json`` of an artifact directory, as written (plain JSON)."""
    return json.loads((path / "manifest.json").read_text())


def gate_checks(m: dict) -> list[dict]:
    """The export parity gate's per-target results recorded in manifest ``m``."""
    return m["parity"]["checks"]


def gate_of(folder: Path, checkpoint: Path) -> dict:
    """The export parity gate's block (``parity`` in a manifest) for the published artifact ``folder``: the gate
    :func:`~ffnet_deploy.export.export` runs before it publishes (the validate engine's ``gate_artifact`` on
    ``gate_source``'s images, the precision's profile), run on it now with the options its manifest records. For an
    artifact made with the gate off, as the pipeline makes them (its validate stage checks them after)."""
    from ffnet_deploy.artifact.manifest import read_manifest
    from ffnet_deploy.export import gate_source
    from ffnet_deploy.quantize.config import QuantizationConfig
    from ffnet_deploy.validate.engine import gate_artifact

    m = read_manifest(folder)
    q = m.options["quantization"] or {}
    config = ExportConfig(m.format, folder, precision=m.precision,
                          quantization=QuantizationConfig(calib=q.get("calib"), calib_size=q.get("calib_size"),
                                                          eval_data=q.get("eval_data")))
    source, _ = gate_source(config, m)
    return gate_artifact(folder, load_ffnet(checkpoint), manifest=m, samples=m.options["parity_samples"],
                         source=source).to_dict()


def gate_max_rel(check: dict) -> float:
    """Max |artifact - torch| over the reference logits' range, from one gate result (see :func:`gate_checks`).

    Relative to the range, not per logit: the gate's per-logit ``max_rel_error`` is dominated by logits near zero.
    """
    metrics = check["metrics"]
    return metrics["max_abs_error"] / metrics["reference_range"]


@torch.no_grad()
def torch_logits(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    """Logits of the unfused checkpoint model on normalized input ``x``."""
    model = load_ffnet(checkpoint)
    return model(torch.from_numpy(x)).numpy()


def max_rel(out: np.ndarray, ref: np.ndarray) -> float:
    """Max |out - ref| / max |ref|, the parity metric of the acceptance criteria."""
    return float(np.max(np.abs(out.astype(np.float64) - ref)) / np.max(np.abs(ref)))

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


def assert_pipeline_times_on_host(tmp_path: Path, checkpoint: Path, fmt: str) -> None:
    """A phone format's fp32 job runs export -> validate -> bench in the pipeline with no special case, and its bench
    entry and its recommendation say the timing is this host's, not the phone's."""
    from ffnet_deploy.cli import main

    out = tmp_path / "pipe"
    code = main(["pipeline", "-c", str(checkpoint), "-o", str(out), "--formats", fmt, "--precisions", "fp32",
                 "--bench-iters", "3", "--bench-time", "0", "--threads", "1", "--quiet"])
    results = json.loads((out / "results.json").read_text())
    assert code == 0, results["summary"]
    (job,) = results["jobs"]
    assert (job["id"], job["status"]) == (f"{fmt}-fp32", "passed")
    assert job["bench"]["runtime"] == fmt and job["bench"]["p50_ms"] > 0
    assert job["bench"]["host_measurement"].startswith("host measurement")
    (rec,) = [r for r in results["recommendations"] if r["runtime"] == fmt]
    assert rec["job"] == f"{fmt}-fp32" and "not device latency" in rec["why"]
    assert any("timed on this host, not on the device it is for" in line for line in results["summary"]["look_at"])

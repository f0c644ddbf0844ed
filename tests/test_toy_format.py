"""The guard of "a format is one room": a toy format (one exporter, one runner) and a toy precision with its own
tolerance profile, declared only in the test folder (tests/toy_format.py), go through export -> validate -> bench ->
pipeline --plan without any other source file knowing them; afterwards the registries hold the built-ins again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffnet_deploy.artifact.formats import FORMATS, format_names
from ffnet_deploy.artifact.inspect import inspect_precision
from ffnet_deploy.artifact.manifest import ManifestError, read_manifest
from ffnet_deploy.artifact.precisions import PRECISIONS
from ffnet_deploy.cli import main
from ffnet_deploy.export import export
from ffnet_deploy.exporters import EXPORTERS
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.runtimes import RUNTIMES
from tests import toy_format as toy

TESTS = Path(__file__).resolve().parent


def _snapshot() -> dict[str, list[str]]:
    return {"formats": FORMATS.names(), "exporters": EXPORTERS.names(), "runtimes": RUNTIMES.names(),
            "precisions": PRECISIONS.names()}


def test_toy_format_round_trip(tmp_path, test_checkpoint, capsys):
    assert Path(toy.__file__).resolve().parent == TESTS  # the whole format lives in the test folder
    before = _snapshot()
    assert toy.FORMAT_NAME not in before["formats"] and toy.PRECISION_NAME not in before["precisions"]
    fp24, fp32 = tmp_path / "toy-fp24", tmp_path / "toy-fp32"
    with toy.registered():
        assert format_names()[-1] == toy.FORMAT_NAME  # declared order: after the built-ins

        # -- export: the CLI (with its parity gate on the toy runner and the toy profile), and the library
        code = main(["export", "-c", str(test_checkpoint), "--format", toy.FORMAT_NAME, "--precision",
                     toy.PRECISION_NAME, "-o", str(fp24), "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0, out
        assert (out["format"], out["precision"]) == (toy.FORMAT_NAME, toy.PRECISION_NAME)
        gate = out["parity"]
        assert [(g["runtime"], g["profile"]["name"], g["status"]) for g in gate] == [
            (toy.RUNTIME_NAME, toy.PRECISION_NAME, "passed")]
        result = export(ExportConfig(toy.FORMAT_NAME, fp32), test_checkpoint)
        assert result.manifest.precision == "fp32" and result.artifact == fp32 / toy.MODEL_FILE
        manifest = read_manifest(fp24)  # the manifest reader accepts the registered format and precision
        assert (manifest.format, manifest.precision) == (toy.FORMAT_NAME, toy.PRECISION_NAME)
        assert inspect_precision(fp24 / toy.MODEL_FILE, toy.FORMAT_NAME).precision == toy.PRECISION_NAME

        # -- validate: directories and a bare model file (its suffix names the format, the folder's manifest is used)
        code = main(["validate", str(fp24), str(fp32), str(fp24 / toy.MODEL_FILE), "-c", str(test_checkpoint),
                     "--synthetic", "8", "--json"])
        report = json.loads(capsys.readouterr().out)
        assert code == 0, report
        rows = [(a["format"], a["runtime"], a["profile"]["name"], a["status"]) for a in report["artifacts"]]
        assert rows == [(toy.FORMAT_NAME, toy.RUNTIME_NAME, toy.PRECISION_NAME, "passed"),
                        (toy.FORMAT_NAME, toy.RUNTIME_NAME, "fp32", "passed"),
                        (toy.FORMAT_NAME, toy.RUNTIME_NAME, toy.PRECISION_NAME, "passed")]
        assert "confirmed by the model (its metadata says fp24)" in report["artifacts"][0]["profile_reason"]
        assert toy.FP24.tolerance.min_cosine == report["artifacts"][0]["profile"]["min_cosine"]
        # --precision-profile takes the toy precision too
        code = main(["validate", str(fp32), "-c", str(test_checkpoint), "--synthetic", "4", "--precision-profile",
                     toy.PRECISION_NAME, "--json"])
        assert code == 0 and json.loads(capsys.readouterr().out)["artifacts"][0]["profile"]["name"] == "fp24"

        # -- bench: a tiny time budget through the CLI, and the roofline fraction of the toy precision
        code = main(["bench", str(fp24), str(fp32), "--threads", "1", "--warmup", "1", "--warmup-time", "0",
                     "--min-iters", "3", "--min-time", "0", "--no-roofline", "--json"])
        bench = json.loads(capsys.readouterr().out)
        assert code == 0, bench
        assert [(r["runtime"], r["precision"], r["status"]) for r in bench["rows"]] == [
            (toy.RUNTIME_NAME, toy.PRECISION_NAME, "ok"), (toy.RUNTIME_NAME, "fp32", "ok")]
        assert all(r["iterations"] >= 3 and r["latency_ms"]["p50"] > 0 for r in bench["rows"])
        from ffnet_deploy.benchmarks.roofline import Roofline
        from ffnet_deploy.benchmarks.suite import artifact_jobs, run_jobs
        from ffnet_deploy.runtimes.timing import Protocol

        roof = Roofline(threads=1, fp32_gflops=100.0, bf16_gflops=None, int8_gops=None, engine={}, shape=(1, 1, 1),
                        seconds=0.0)
        rows = run_jobs(artifact_jobs([fp24], threads=1), Protocol(warmup=1, warmup_time_s=0, min_iters=3,
                                                                   min_time_s=0), roofline=roof)
        assert rows[0].status == "ok" and rows[0].roofline_fraction is not None and rows[0].roofline_fraction > 0

        # -- pipeline --plan: the toy jobs, where they run, what they need
        code = main(["pipeline", "-c", str(test_checkpoint), "-o", str(tmp_path / "pipe"), "--formats",
                     toy.FORMAT_NAME, "--precisions", f"fp32,{toy.PRECISION_NAME}", "--plan"])
        plan = json.loads(capsys.readouterr().out)
        assert code == 0, plan
        assert [(j["id"], j["runs_on"], j["needs"]) for j in plan["jobs"]] == [
            ("toy-fp32", toy.RUNS_ON, ["inspect", "reparameterize"]),
            ("toy-fp24", toy.RUNS_ON, ["inspect", "reparameterize"])]
    # Scoped: the built-in registries are back, and nothing reads the toy artifact any more.
    assert _snapshot() == before
    with pytest.raises(ManifestError, match="field 'format' is 'toy'; expected one of onnx, openvino, coreml, "
                                            "tensorrt"):
        read_manifest(fp24)

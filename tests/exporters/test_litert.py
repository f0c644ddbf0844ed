"""LiteRT exporter: a real .tflite through litert-torch, parity in ``ai_edge_litert``'s interpreter, delegation recorded
and gated (the check shared with ExecuTorch), full-integer INT8 calibrated on the digits and judged by the int8
profile, a malformed or relabelled model refused in one line, the missing extra in one line, the pipeline's job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ffnet_deploy.artifact.inspect import inspect_precision
from ffnet_deploy.cli import main
from ffnet_deploy.errors import ConfigError, ParityError
from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.hashing import sha256_file
from ffnet_deploy.quantize.config import QuantizationConfig
from tests.exporters.helpers import gate_checks, gate_max_rel, gate_of, manifest, run_export
from tests.extras import LITERT_EXTRA, needs
from tests.session_builds import DEMO_RUN, demo_run_int8

pytestmark = needs("litert_torch", "ai_edge_quantizer", "ai_edge_litert.interpreter", reason=LITERT_EXTRA)

# on one xdist worker, so that its module fixtures and litert's first-call set-up are made once a run (README,
# Tests); the tests of the demo run's artifacts are in that run's group instead (a test has one group: xdist joins
# the names of every group mark it carries, the module's too)
EXPORT_GROUP = pytest.mark.xdist_group("litert-export")

ROOT = Path(__file__).resolve().parents[2]


def _check(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory, test_checkpoint):
    """One fp32 export of ffnet_test (about 10 s), shared by the tests below."""
    return run_export(tmp_path_factory.mktemp("litert-fp32"), "litert", test_checkpoint)


@EXPORT_GROUP
def test_fp32_export_parity_manifest_and_delegation(fp32_artifact):
    out, m = fp32_artifact.output, manifest(fp32_artifact.output)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.tflite"]
    assert (m["format"], m["precision"], m["artifact"]["path"]) == ("litert", "fp32", "model.tflite")
    assert m["artifact"]["sha256"] == sha256_file(out / "model.tflite")
    assert m["versions"]["litert-torch"] == "0.10.0" and m["versions"]["ai-edge-litert"] == "2.3.0"
    assert m["inputs"][0]["shape"] == [1, 3, 64, 64]  # NCHW, as PyTorch's
    assert m["details"]["io"]["input"] == {"dtype": "float32", "scale": 0.0, "zero_point": 0}
    # One XNNPACK partition holds every node: convolutions, depthwise convolutions and GELUs included.
    delegation = m["details"]["delegation"]
    assert delegation["delegated_subgraphs"] == 1 and delegation["not_delegated_nodes"] == 0
    ops = delegation["operators"]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "GELU"} <= set(ops)
    assert all(v["not_delegated"] == 0 and v["delegated"] > 0 for v in ops.values())
    # The gate ran in the LiteRT interpreter, passed the fp32 profile, and read the delegation from the file.
    (gate,) = gate_checks(m)
    assert (gate["runtime"], gate["profile"]["name"], gate["status"]) == ("litert", "fp32", "passed")
    assert gate_max_rel(gate) <= 1e-4
    check = _check(gate, "delegation")
    assert check["passed"] and check["value"] == 0 and "1 XNNPACK call" in check["detail"]
    found = inspect_precision(out / "model.tflite", "litert")
    assert found.precision == "fp32" and "float32 weights" in found.evidence


@EXPORT_GROUP
def test_unsupported_settings_are_one_line(tmp_path, test_checkpoint):
    with pytest.raises(ConfigError, match=r"^litert export \| --dynamic-batch is not supported"):
        run_export(tmp_path, "litert", test_checkpoint, dynamic_batch=(1, 2, 4))
    with pytest.raises(ConfigError, match=r"^litert export \| --include-preprocessing is not supported"):
        run_export(tmp_path, "litert", test_checkpoint, include_preprocessing=True)
    with pytest.raises(ConfigError, match=r"--calib-method entropy is not available"):
        run_export(tmp_path, "litert", test_checkpoint, precision="int8",
                   quantization=QuantizationConfig(calib="digits", method="entropy"))
    assert not list(tmp_path.iterdir())


@EXPORT_GROUP
def test_malformed_and_relabelled_models_are_refused_in_one_line(tmp_path, fp32_artifact, test_checkpoint, capfd):
    """Through the CLI: a file named .tflite that is not one (garbage, or garbage after a TFL3 identifier, which
    LiteRT's verifier refuses) fails validation in one line, no traceback; a .tflite renamed .onnx is refused by its
    content, and so is an ONNX graph renamed .tflite."""
    real = (fp32_artifact.output / "model.tflite").read_bytes()
    onnx = run_export(tmp_path, "onnx", test_checkpoint).artifact
    cases = {"garbage.tflite": os.urandom(300), "fake.tflite": b"\0\0\0\0TFL3" + b"\x07" * 200,
             "cut.tflite": real[:len(real) // 2], "relabelled.onnx": real, "onnx.tflite": onnx.read_bytes()}
    said = {"garbage.tflite": "is not a LiteRT model (.tflite: no TFL3 file identifier)",
            "fake.tflite": "not a valid Flatbuffer", "cut.tflite": "not a valid Flatbuffer",
            "relabelled.onnx": "holds a LiteRT model, but its suffix .onnx says onnx",
            "onnx.tflite": "holds an ONNX model, but its suffix .tflite says litert"}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        code = main(["validate", str(path), "-c", str(test_checkpoint), "--synthetic", "2"])
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1, (name, err)
        assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert said[name] in lines[0] and str(path) in lines[0], (name, lines[0])
        if name.endswith(".tflite") and name != "onnx.tflite":
            assert "re-export it with 'ffnet-deploy export --format litert'" in lines[0]
            assert inspect_precision(path, "litert").precision is None  # the reader says so, it does not crash


@EXPORT_GROUP
def test_missing_extra_is_one_line(tmp_path, test_checkpoint):
    """Without the litert extra (its imports made to fail by a sitecustomize in a subprocess) the export names it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "BLOCKED = ('litert_torch', 'ai_edge_litert', 'ai_edge_quantizer')\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'No module named {name!r} (blocked by the test)')\n"
        "sys.meta_path.insert(0, _Block())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "ffnet_deploy", "export", "-c", str(test_checkpoint), "--format",
                           "litert", "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert "pip install 'ffnet-deploy[litert]'" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------------
# INT8 on the digits model: the demo run's (tests/session_builds.py) litert-int8 job, the same export a user's
# `pipeline --demo` makes (300 calibration digits), shared with the pipeline's tests instead of converted again here
# --------------------------------------------------------------------------------------------------------------------


def _int8(out: Path, checkpoint: Path, cache: Path, calib_size: int = 100):
    return export(ExportConfig("litert", out, precision="int8",
                               quantization=QuantizationConfig(calib="digits", calib_size=calib_size, cache_dir=cache)),
                  checkpoint)


@pytest.fixture
def int8_digits(demo_run):
    return demo_run_int8(demo_run, "litert-int8")


@pytest.mark.xdist_group(DEMO_RUN)
def test_int8_digits_export_and_accuracy(int8_digits, demo_run, demo_checkpoint_path, capsys, tmp_path):
    output, m, cache = int8_digits
    assert m["precision"] == "int8" and sorted(p.name for p in output.iterdir()) == ["manifest.json", "model.tflite"]
    q = m["details"]["quantization"]
    assert q["backend"] == "litert/ai-edge-quantizer" and q["calibration"]["num_images"] == 300
    assert "GELU float" in q["recipe"] and m["versions"]["ai-edge-quantizer"] == "0.10.0"
    assert q["statistics_cache"]["hit"] is False and cache.name == "litert.calibration.json" and cache.is_file()
    assert cache.is_relative_to(demo_run[0] / ".pipeline" / "calibration")
    # Full integer: the app feeds int8 and reads int8, with these (scale, zero point) pairs.
    io = m["details"]["io"]
    assert io["input"]["dtype"] == io["output"]["dtype"] == "int8" and io["input"]["scale"] > 0
    found = inspect_precision(output / m["artifact"]["path"], "litert")
    assert found.precision == "int8" and "int8 weights" in found.evidence
    # With GELU float, XNNPACK takes the whole graph: one partition, nothing outside.
    assert m["details"]["delegation"]["delegated_subgraphs"] == 1
    assert m["details"]["delegation"]["not_delegated"] == {}
    # The export gate (which the pipeline leaves to its validate stage) passes it with the int8 profile.
    (gate,) = gate_checks({"parity": gate_of(output, demo_checkpoint_path)})
    assert (gate["runtime"], gate["status"], gate["profile"]["name"]) == ("litert", "passed", "int8")
    assert _check(gate, "delegation")["passed"]
    # validate on the 500 held-out digits: the int8 profile (agreement, accuracy drop within 1 point) holds
    report = tmp_path / "report.json"
    code = main(["validate", str(output), "-c", str(demo_checkpoint_path), "--data", "digits", "--report",
                 str(report)])
    capsys.readouterr()
    (art,) = json.loads(report.read_text())["artifacts"]
    assert code == 0, art["failures"]
    assert (art["runtime"], art["profile"]["name"], art["status"]) == ("litert", "int8", "passed")
    assert art["metrics"]["num_samples"] == 500 and art["metrics"]["acc_drop"] <= 1.0  # points
    assert _check(art, "delegation")["passed"]


@pytest.mark.xdist_group(DEMO_RUN)
def test_int8_statistics_cache_is_hit_and_the_export_reproduces(int8_digits, demo_checkpoint_path, tmp_path):
    """An export with a copy of the pipeline's calibration cache reuses the statistics (no images run) and writes the
    same bytes as the pipeline did from its fused checkpoint: the FP32 conversion is deterministic, so the key (its
    sha256) is stable."""
    output, m, cache = int8_digits
    (tmp_path / "cache").mkdir()
    shutil.copy2(cache, tmp_path / "cache" / cache.name)
    again = _int8(tmp_path / "again", demo_checkpoint_path, tmp_path / "cache", calib_size=300)
    q = manifest(again.output)["details"]["quantization"]
    assert q["statistics_cache"]["hit"] is True
    assert sha256_file(again.artifact) == sha256_file(output / m["artifact"]["path"])


@EXPORT_GROUP
def test_delegation_gate_fails_when_gelu_is_quantized(tmp_path, demo_checkpoint_path, monkeypatch):
    """XNNPACK has no int8 GELU: with the GELUs quantized they fall out of the delegate and the graph splits. The
    numbers still pass the int8 profile, and the gate fails in one line naming the operator; nothing is published."""
    from ffnet_deploy.exporters.litert import LiteRTExporter

    monkeypatch.setattr(LiteRTExporter, "quantize_gelu", True)
    with pytest.raises(ParityError) as err:
        _int8(tmp_path / "gelu-int8", demo_checkpoint_path, tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and "delegation = " in message
    assert "convolution/GELU outside the delegate: GELU x" in message
    assert "XNNPACK calls" in message  # several partitions
    assert "top1_agreement" in message  # the numeric checks are still listed: it computes the right numbers
    assert not (tmp_path / "gelu-int8").exists()


# --------------------------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------------------------


@EXPORT_GROUP
def test_pipeline_plan_lists_the_phone_job(tmp_path, test_checkpoint, capsys):
    """``--formats litert`` is a pipeline format; its plan job runs on Linux (parity, host timing) and names the
    phone's own job after it: push the model, time it with benchmark_model, import the CSV with report add."""
    code = main(["pipeline", "-c", str(test_checkpoint), "-o", str(tmp_path / "pipe"), "--formats", "litert",
                 "--precisions", "fp32,int8", "--calib", "digits", "--plan"])
    plan = json.loads(capsys.readouterr().out)
    assert code == 0, plan
    assert [j["id"] for j in plan["jobs"]] == ["litert-fp32", "litert-int8"]
    for job in plan["jobs"]:
        assert job["format"] == "litert" and "Android phone" in job["runs_on"]
        device = job["device_job"]
        assert device["id"] == f"{job['id']}-device" and device["needs"] == [job["id"]]
        artifact = tmp_path / "pipe" / "artifacts" / job["id"] / "model.tflite"
        assert device["steps"][0] == f"adb push {artifact} /data/local/tmp/{job['id']}.tflite"
        assert f"benchmark_model --graph=/data/local/tmp/{job['id']}.tflite" in device["steps"][1]
        assert "--use_xnnpack=true" in device["steps"][1]
        assert device["steps"][-1].startswith("ffnet-deploy report add --csv phone.csv")

"""What validation trusts, end to end on real ffnet_test artifacts: the precision is read from the model and
cross-checked with the manifest, the manifest's hashes are checked before any file is used, and an artifact that
nothing here can run is reported as not run rather than failed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ffnet_deploy.artifact.inspect import ArtifactIntegrityError
from ffnet_deploy.cli import main
from ffnet_deploy.data import SyntheticSource
from ffnet_deploy.errors import ParityError
from ffnet_deploy.hashing import sha256_file
from ffnet_deploy.validate.engine import resolve_artifact, validate
from tests.test_validate_cli import exported_artifact


@pytest.fixture(scope="module")
def onnx_artifact(onnx_export) -> Path:
    """A real ONNX export of ffnet_test, with its export-time parity gate on (the gate must not trip on hashes): the
    session's shared one (tests/conftest.py), read only; :func:`perturb` works on copies."""
    result = onnx_export
    assert result.manifest.parity["passed"] is True
    assert "manifest precision fp32, confirmed by the model" in result.parity[0].profile_reason
    return result.output


def perturb(src: Path, dst: Path, factor: float, rehash: bool = True, precision: str | None = None) -> Path:
    """Copy an ONNX artifact, scale the first Conv weight by ``factor``, and optionally re-record its hashes (so the
    manifest describes the changed file) and change the manifest's precision."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    name = next(n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits)
    inits[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[name]) * np.float32(factor), name))
    onnx.save(model, str(dst / "model.onnx"))
    manifest = json.loads((dst / "manifest.json").read_text())
    if rehash:
        manifest["files"]["model.onnx"] = manifest["artifact"]["sha256"] = sha256_file(dst / "model.onnx")
    if precision is not None:
        manifest["precision"] = precision
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


# --------------------------------------------------------------------------------------------------------------------
# 1. The precision comes from the model, not from the manifest alone
# --------------------------------------------------------------------------------------------------------------------


def test_a_manifest_that_claims_int8_cannot_loosen_the_profile(tmp_path, onnx_artifact, test_checkpoint, capsys):
    source = SyntheticSource(16)
    honest = perturb(onnx_artifact, tmp_path / "honest", 1.02)
    # The premise: this perturbation is within what the int8 profile allows, and far outside the fp32 one.
    loose = validate([honest], test_checkpoint, source=source, precision_profile="int8")
    assert loose, loose.failures()
    report = validate([honest], test_checkpoint, source=source)
    (result,) = report.artifacts
    assert not report and result.precision == "fp32" and result.failures[0].startswith("max_abs_error")
    assert result.profile_reason.startswith("manifest precision fp32, confirmed by the model (float32 weights")

    lie = perturb(onnx_artifact, tmp_path / "lie", 1.02, precision="int8")  # only the precision is untrue
    report = validate([lie], test_checkpoint, source=source)
    (result,) = report.artifacts
    assert not report and result.status == "failed" and result.metrics is None  # refused before it ran
    assert result.failures == [result.failures[0]]
    assert result.failures[0].startswith("manifest precision int8 does not match the model: model.onnx is fp32 "
                                         "(float32 weights")
    assert "contradicts the model" in result.profile_reason and result.profile.name == "fp32"
    assert main(["validate", str(lie), "-c", str(test_checkpoint), "--synthetic", "4"]) == 1
    err = capsys.readouterr().err
    assert "manifest precision int8 does not match the model: model.onnx is fp32" in " ".join(err.split())


# --------------------------------------------------------------------------------------------------------------------
# 2. The manifest's hashes are checked before any file is used
# --------------------------------------------------------------------------------------------------------------------


def test_a_file_that_does_not_match_its_manifest_is_refused(tmp_path, onnx_artifact, test_checkpoint, capsys):
    tampered = perturb(onnx_artifact, tmp_path / "m", 1.5, rehash=False)
    recorded = json.loads((tampered / "manifest.json").read_text())["files"]["model.onnx"]
    with pytest.raises(ArtifactIntegrityError) as err:
        resolve_artifact(tampered, verify=True)
    message = (f"validate | {tampered / 'model.onnx'} does not match its manifest (sha256 "
               f"{sha256_file(tampered / 'model.onnx')[:12]}... != {recorded[:12]}... recorded); "
               "re-export it or pass --no-verify")
    assert str(err.value) == message
    # validate reports it as that artifact's failure, never runs it, and still validates the others.
    report = validate([tampered, onnx_artifact], test_checkpoint, source=SyntheticSource(2))
    refused, good = report.artifacts
    assert not report and refused.failures == [message] and refused.metrics is None and good.passed
    # A model file inside the directory is covered by the same manifest.
    inside = validate([tampered / "model.onnx"], test_checkpoint, source=SyntheticSource(2)).artifacts[0]
    assert inside.status == "failed" and "does not match its manifest" in inside.failures[0]

    # CI keeps its reports: both are written although an artifact was refused, and every artifact is in them.
    second = perturb(onnx_artifact, tmp_path / "m2", 1.5, rehash=False)
    junit, report_path = tmp_path / "j.xml", tmp_path / "refused.json"
    assert main(["validate", str(tampered), str(second), "-c", str(test_checkpoint), "--synthetic", "2",
                 "--junit", str(junit), "--report", str(report_path)]) == 1
    err = capsys.readouterr().err
    assert "does not match its manifest" in err and "--no-verify" in err and "Traceback" not in err
    data = json.loads(report_path.read_text())
    assert [a["status"] for a in data["artifacts"]] == ["failed", "failed"]
    assert all("does not match its manifest" in a["failures"][0] for a in data["artifacts"])
    assert junit.read_text().count("does not match its manifest") >= 2
    # --no-verify validates it anyway, and parity then tells what the change did.
    report = tmp_path / "r.json"
    assert main(["validate", str(tampered), "-c", str(test_checkpoint), "--synthetic", "2", "--no-verify",
                 "--report", str(report)]) == 1
    assert "failed parity" in capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["settings"]["verify"] is False and data["artifacts"][0]["failures"][0].startswith("max_abs_error")
    # The untouched artifact verifies and passes.
    assert main(["validate", str(onnx_artifact), "-c", str(test_checkpoint), "--synthetic", "2"]) == 0


# --------------------------------------------------------------------------------------------------------------------
# 3. Nothing here can run it: "not run", not failed
# --------------------------------------------------------------------------------------------------------------------


def _unavailable(runtime: str) -> str | None:
    from ffnet_deploy.runtimes import RUNTIMES, load_all

    load_all()
    return RUNTIMES.get(runtime).unavailable_reason()


def test_a_bare_engine_without_tensorrt_is_not_run(tmp_path, onnx_artifact, test_checkpoint, capsys):
    reason = _unavailable("tensorrt")
    if reason is None:
        pytest.skip("TensorRT runs on this machine: the engine would be loaded (and this fake one refused)")
    engine = tmp_path / "device" / "model.engine"  # as copied off a Jetson: no ONNX, no build script, no manifest
    engine.parent.mkdir()
    engine.write_bytes(b"\0" * 256)
    junit, report = tmp_path / "r.xml", tmp_path / "r.json"
    rc = main(["validate", str(onnx_artifact), str(engine), "-c", str(test_checkpoint), "--synthetic", "2",
               "--junit", str(junit), "--report", str(report)])
    out = capsys.readouterr().out
    assert rc == 0, out  # everything that could run passed; the summary says what did not
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[-1] == "1 artifact(s) passed; 1 not run on this machine (see NOT RUN above)"
    assert f"NOT RUN {engine}: tensorrt cannot run here: {reason}" in out
    if "pip install" in reason:
        assert "pip install 'ffnet-deploy[tensorrt]'" in out  # not eaten as rich markup
    data = json.loads(report.read_text())
    assert data["passed"] is True and [a["status"] for a in data["artifacts"]] == ["passed", "not run"]
    import xml.etree.ElementTree as ET

    suite = ET.parse(junit).getroot().findall("testsuite")[1]
    assert suite.find("testcase/skipped").get("message").startswith("not run: tensorrt cannot run here")
    # Alone, it proves nothing: exit 1, and the one line says nothing could be run.
    assert main(["validate", str(engine), "-c", str(test_checkpoint), "--synthetic", "2"]) == 1
    assert "none of the 1 artifact(s) could be run on this machine" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML itself runs on macOS")
def test_core_ml_forced_off_macos_is_not_run(tmp_path_factory, test_checkpoint):
    pytest.importorskip("coremltools")
    art = exported_artifact(tmp_path_factory, test_checkpoint, "coreml", "fp32")
    report = validate([art], test_checkpoint, source=SyntheticSource(2), runtime="coreml")
    (result,) = report.artifacts
    assert result.status == "not run" and result.failures == [] and result.metrics is None
    assert result.not_run.startswith("coreml cannot run here")
    assert not report
    with pytest.raises(ParityError, match="could be run on this machine"):
        report.raise_for_failures()

"""The export gate is the validate engine: same metric fields, the artifact precision's profile, int8 included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ffnet_deploy.artifact.manifest import FileRef, read_manifest, write_manifest
from ffnet_deploy.data import EvalTransform, ImageFolderSource, SyntheticSource
from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.hashing import sha256_file
from ffnet_deploy.models.checkpoint import open_checkpoint
from ffnet_deploy.validate.engine import gate_artifact, validate
from ffnet_deploy.validate.report import report_to_dict
from tests.test_validate_cli import photo_data, probe_checkpoint  # noqa: F401, F811 - fixtures shared with the CLI tests

pytestmark = [pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
              pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")]


@pytest.fixture(scope="module")
def onnx_artifact(onnx_export) -> Path:
    return onnx_export.output  # the session's shared default ONNX export of ffnet_test (tests/conftest.py)


def test_gate_and_validate_report_the_same_metric_fields(onnx_artifact, test_checkpoint):
    gate = json.loads((onnx_artifact / "manifest.json").read_text())["parity"]
    report = report_to_dict(validate([onnx_artifact], test_checkpoint, source=SyntheticSource(4)))
    gated, validated = gate["checks"][0], report["artifacts"][0]
    assert gate["passed"] is True and gated["passed"] is True and validated["passed"] is True
    assert set(gated) == set(validated)
    assert set(gated["metrics"]) == set(validated["metrics"])
    assert [c["name"] for c in gated["checks"]] == [c["name"] for c in validated["checks"]] == ["finite",
                                                                                              "max_abs_error"]
    assert gated["profile"] == validated["profile"] and gated["profile"]["name"] == "fp32"
    assert gated["profile_reason"] == validated["profile_reason"]
    assert validated["profile_reason"].startswith("manifest precision fp32, confirmed by the model (float32 weights")
    assert gated["path"] == "model.onnx" and gated["runtime"] == "onnxruntime"
    assert gate["data"]["kind"] == "synthetic" and gate["data"]["num_images"] == 2


def test_fp16_artifact_is_gated_by_the_fp16_profile(tmp_path, test_checkpoint):
    result = export(ExportConfig("openvino", tmp_path / "ov16", precision="fp16"), test_checkpoint)
    (check,) = result.manifest.parity["checks"]
    assert check["profile"]["name"] == "fp16"
    assert check["profile_reason"].startswith("manifest precision fp16, confirmed by the model (f16 weight constants")
    assert {c["name"] for c in check["checks"]} == {"finite", "cosine_mean", "top1_agreement"}
    assert result.parity[0].passed


def _quantized_copy(fp32_dir: Path, out: Path, checkpoint: Path, calib: Path) -> Path:
    """An int8 artifact made by hand: onnxruntime's quantize_static (QDQ, U8S8) of the exported fp32 graph.

    Depthwise convs stay in float (the usual first fix for depthwise-heavy networks; the INT8 issue studies it).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    cfg = open_checkpoint(checkpoint).model.cfg
    batches = ImageFolderSource(calib).batches(EvalTransform.for_config(cfg), 1)

    class Reader(CalibrationDataReader):
        def get_next(self):
            b = next(batches, None)
            return None if b is None else {"images": b.images}

    graph = onnx.load(str(fp32_dir / "model.onnx")).graph
    depthwise = [n.name for n in graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    out.mkdir()
    quantize_static(str(fp32_dir / "model.onnx"), str(out / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=depthwise)
    m = read_manifest(fp32_dir)
    m = m.with_updates(precision="int8", artifact=FileRef("model.onnx", sha256_file(out / "model.onnx")),
                       files={"model.onnx": sha256_file(out / "model.onnx")}, parity={})
    write_manifest(m, out)
    return out


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, probe_checkpoint, photo_data) -> Path:
    root = tmp_path_factory.mktemp("int8")
    export(ExportConfig("onnx", root / "fp32"), probe_checkpoint)
    return _quantized_copy(root / "fp32", root / "int8", probe_checkpoint, photo_data["folder"])


def test_int8_profile_judges_a_quantize_static_model(int8_artifact, probe_checkpoint, photo_data):
    source = ImageFolderSource(photo_data["folder"])
    (r,) = validate([int8_artifact], probe_checkpoint, source=source).artifacts
    assert r.precision == "int8" and r.profile.name == "int8"
    assert r.profile_reason.startswith("manifest precision int8, confirmed by the model (quantized ops: ")
    assert [c.name for c in r.checks] == ["finite", "top1_agreement", "acc_drop"]  # labelled: accuracy drop too
    assert [c.threshold for c in r.checks[1:]] == [0.97, 1.0]
    assert r.passed, r.failures  # a healthy int8 model of a model with real margins passes its profile
    # Quantization error is far outside what fp32 allows: the same file under the fp32 profile fails.
    (strict,) = validate([int8_artifact], probe_checkpoint, source=ImageFolderSource(photo_data["folder"]),
                         precision_profile="fp32").artifacts
    assert not strict and "max_abs_error" in strict.failures[0]
    assert strict.profile_reason == "--precision-profile fp32"

    # The export gate applies the same int8 profile to it (synthetic pixels: no labels, so no accuracy check).
    gate = gate_artifact(int8_artifact, open_checkpoint(probe_checkpoint).model, samples=4)
    assert [g.profile.name for g in gate.results] == ["int8"]
    assert [c.name for c in gate.results[0].checks] == ["finite", "top1_agreement"]


def test_broken_int8_model_fails_the_int8_profile(tmp_path, int8_artifact, probe_checkpoint, photo_data):
    """A quantized model whose classifier scales are wrong must fail even the loose int8 profile."""
    import onnx
    from onnx import numpy_helper

    broken = tmp_path / "broken"
    shutil.copytree(int8_artifact, broken)
    model = onnx.load(str(broken / "model.onnx"))
    changed = 0
    for init in model.graph.initializer:
        if init.name == "head.weight_scale":
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((arr * -1.0).astype(arr.dtype), init.name))
            changed += 1
    assert changed == 1
    onnx.save(model, str(broken / "model.onnx"))
    # verify=False: the file no longer has its recorded hash; what is studied here is the int8 profile's verdict.
    (r,) = validate([broken], probe_checkpoint, source=ImageFolderSource(photo_data["folder"]),
                    verify=False).artifacts
    assert not r and r.profile.name == "int8"
    assert {c.name for c in r.checks if not c.passed} >= {"top1_agreement"}

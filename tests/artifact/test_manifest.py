"""The typed manifest: round trip, schema-1 compatibility, and one clear line for every broken field."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from ffnet_deploy.artifact.manifest import (
    SCHEMA,
    BatchSpec,
    FileRef,
    Manifest,
    ManifestError,
    Preprocessing,
    TensorSpec,
    parse_manifest,
    read_manifest,
    write_manifest,
)
from ffnet_deploy.errors import FFNetDeployError

# A manifest exactly as the first stage's exporters wrote it (schema 1: no tensor roles), for a Core ML classifier.
SCHEMA1_COREML = {
    "schema": "ffnet-deploy/manifest/1",
    "format": "coreml",
    "precision": "fp16",
    "variant": "ffnet_test",
    "resolution": 64,
    "num_classes": 1000,
    "batch": 1,
    "inputs": [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "image-rgb"}],
    "outputs": [{"name": "classLabel", "shape": [], "dtype": "string"},
                {"name": "classLabel_probs", "shape": [1000], "dtype": "dict[string,float64]"}],
    "preprocessing": {"baked": True, "input_range": "0-255", "mean": [0.485, 0.456, 0.406],
                      "std": [0.229, 0.224, 0.225], "crop_pct": 0.9, "interpolation": "bicubic"},
    "reparameterized": True,
    "random_weights": False,
    "source_checkpoint": {"path": "ffnet_test.pth.tar", "sha256": "ab" * 32},
    "artifact": {"path": "model.mlpackage", "sha256": "cd" * 32},
    "files": {"model.mlpackage/Manifest.json": "ef" * 32},
    "versions": {"ffnet_deploy": "0.1.0", "coremltools": "8.3.0"},
    "export_seconds": 3.2,
    "created": "2026-11-20T10:00:00+00:00",
    "parity": {"passed": True, "checks": []},
    "options": {"format": "coreml"},
    "details": {"minimum_deployment_target": "iOS16"},
    "notices": [],
    "license": "Apache-2.0",
    "command": None,
}

SCHEMA1_ONNX_DYNAMIC = {
    **copy.deepcopy(SCHEMA1_COREML),
    "format": "onnx", "precision": "fp32",
    "batch": {"min": 1, "opt": 4, "max": 8},
    "inputs": [{"name": "images", "shape": [None, 3, 64, 64], "dtype": "float32"}],
    "outputs": [{"name": "logits", "shape": [None, 1000], "dtype": "float32"}],
    "preprocessing": {**SCHEMA1_COREML["preprocessing"], "baked": False, "input_range": "normalized"},
    "artifact": {"path": "model.onnx", "sha256": "12" * 32},
    "block_outputs": {"patch_embed": "/patch_embed/patch_embed.2/Conv_output_0"},
}


def make_manifest() -> Manifest:
    return Manifest(
        format="openvino", precision="fp16", variant="ffnet_test", resolution=64, num_classes=10,
        batch=BatchSpec.fixed(2),
        inputs=(TensorSpec("images", (2, 3, 64, 64), np.dtype(np.uint8), "tensor"),),
        outputs=(TensorSpec("logits", (2, 10), "float32", "logits"),),
        preprocessing=Preprocessing("0-255", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 0.9),
        artifact=FileRef("model.xml", "00" * 32), source_checkpoint=FileRef("c.pth", "11" * 32),
        block_outputs={"stages.0.0": "t0"}, details={"weights": "fp16"}, notices=("note",),
    )


def test_round_trip_through_a_file(tmp_path):
    m = make_manifest()
    write_manifest(m, tmp_path)
    back = read_manifest(tmp_path)
    assert back == m  # directory is not part of equality
    assert back.directory == tmp_path and back.model_path == tmp_path / "model.xml"
    assert back.schema == SCHEMA and json.loads((tmp_path / "manifest.json").read_text())["schema"] == SCHEMA
    assert back.input.np_dtype == np.uint8 and back.result_output.name == "logits"
    assert read_manifest(tmp_path / "manifest.json") == m  # the file path works too


def test_schema1_coreml_classifier_loads_with_roles_from_dtypes(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(SCHEMA1_COREML))
    m = read_manifest(tmp_path)
    assert m.schema == "ffnet-deploy/manifest/1" and m.format == "coreml" and m.precision == "fp16"
    assert [t.role for t in m.outputs] == ["label", "probabilities"]
    assert m.input.role == "image" and m.input.np_dtype is None
    assert m.result_output.name == "classLabel_probs"  # a classifier is compared through its probabilities
    assert m.batch == BatchSpec.fixed(1) and m.preprocessing.baked


def test_schema1_dynamic_onnx_loads_and_rewrites_as_current_schema(tmp_path):
    m = parse_manifest(SCHEMA1_ONNX_DYNAMIC, "old.json")
    assert m.batch == BatchSpec(1, 4, 8, True) and m.input.shape == (None, 3, 64, 64)
    assert m.result_output.role == "logits" and m.block_outputs == SCHEMA1_ONNX_DYNAMIC["block_outputs"]
    d = m.to_dict()
    assert d["schema"] == SCHEMA and d["batch"] == {"min": 1, "opt": 4, "max": 8}
    assert d["outputs"][0]["role"] == "logits"
    assert parse_manifest(d) == m


def _broken(tmp_path, text: str) -> str:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FFNetDeployError)
    assert "\n" not in message and str(tmp_path / "manifest.json") in message
    return message


def _edited(**changes) -> str:
    data = copy.deepcopy(SCHEMA1_ONNX_DYNAMIC)
    for key, value in changes.items():
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


_DELETE = object()


def test_invalid_json(tmp_path):
    assert "is not valid JSON" in _broken(tmp_path, '{"format": "onnx",')


def test_not_an_object(tmp_path):
    assert "must be a JSON object, got a list" in _broken(tmp_path, "[1, 2]")


def test_missing_precision(tmp_path):
    assert "field 'precision' is missing" in _broken(tmp_path, _edited(precision=_DELETE))


def test_unknown_precision(tmp_path):
    msg = _broken(tmp_path, _edited(precision="int4"))
    assert "field 'precision' is 'int4'; expected one of fp32, fp16, int8" in msg


def test_wrong_shape_type(tmp_path):
    bad = [{"name": "images", "shape": "1x3x64x64", "dtype": "float32"}]
    assert "field 'inputs[0].shape' must be a list of ints or nulls" in _broken(tmp_path, _edited(inputs=bad))
    bad = [{"name": "images", "shape": [1, 3, 64.5, 64], "dtype": "float32"}]
    assert "field 'inputs[0].shape'" in _broken(tmp_path, _edited(inputs=bad))


@pytest.mark.parametrize(("changes", "expected"), [
    ({"format": "tflite"}, "field 'format' is 'tflite'"),
    ({"resolution": "256"}, "field 'resolution' must be an integer"),
    ({"resolution": True}, "field 'resolution' must be an integer"),
    ({"num_classes": 0}, "field 'num_classes' must be at least 1"),
    ({"batch": [1, 2]}, "field 'batch' must be an int or an object"),
    ({"batch": {"min": 4, "opt": 2, "max": 8}}, "field 'batch' needs min <= opt <= max"),
    ({"outputs": []}, "field 'outputs' must not be empty"),
    ({"outputs": ["logits"]}, "field 'outputs[0]' must be an object"),
    ({"outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float32", "role": "scores"}]},
     "field 'outputs[0].role' is 'scores'"),
    ({"preprocessing": {"input_range": "0-255"}}, "field 'preprocessing.mean' is missing"),
    ({"artifact": {"sha256": "00"}}, "field 'artifact.path' is missing"),
    ({"block_outputs": {"stages.0.0": 3}}, "field 'block_outputs' must be an object of strings"),
    ({"schema": "ffnet-deploy/manifest/9"}, "field 'schema' is 'ffnet-deploy/manifest/9'"),
    ({"variant": None}, "field 'variant' must be a string, got null"),
])
def test_every_broken_field_is_named(tmp_path, changes, expected):
    assert expected in _broken(tmp_path, _edited(**changes))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ManifestError, match="cannot read|not valid JSON"):
        read_manifest(tmp_path)


def test_tensor_spec_accepts_and_describes():
    spec = TensorSpec("images", (None, 3, 64, 64), np.float32)
    assert spec.dtype == "float32" and spec.describe() == "(?, 3, 64, 64) float32"
    assert spec.accepts(np.zeros((5, 3, 64, 64))) and not spec.accepts(np.zeros((5, 3, 32, 64)))
    assert not spec.accepts(np.zeros((3, 64, 64)))

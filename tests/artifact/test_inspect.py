"""Precision read from the artifact files themselves, and the manifest's recorded hashes checked against them.

Small ONNX graphs and OpenVINO XML files are written here to pin each rule; real artifacts of every format (exported
once per session, shared with the validate tests) check that each exporter's output is read as what it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ffnet_deploy.artifact.inspect import (
    UNKNOWN,
    ArtifactIntegrityError,
    detect_precision,
    inspect_precision,
    precision_mismatch,
    verify_files,
)
from ffnet_deploy.artifact.manifest import read_manifest
from tests.test_validate_cli import exported_artifact

# --------------------------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------------------------


def conv_graph(path: Path, weight_dtype=np.float32, cast_to: int | None = None, qdq: bool = False) -> Path:
    """A one-Conv ONNX graph: fp32 weights, fp16 weights, fp32 weights cast to ``cast_to``, or a Q/DQ pair."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), weight_dtype), "w")
    nodes, inits, x = [], [w], "x"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        x = "xd"
    if cast_to is not None:
        nodes += [helper.make_node("Cast", [x], ["xc"], to=cast_to),
                  helper.make_node("Cast", ["w"], ["wc"], to=cast_to)]
        x, weight = "xc", "wc"
    else:
        weight = "w"
    nodes.append(helper.make_node("Conv", [x, weight], ["y"]))
    elem = TensorProto.FLOAT16 if weight_dtype == np.float16 or cast_to == TensorProto.FLOAT16 else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem if cast_to is None else
                                                                         TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_rules(tmp_path):
    fp32 = inspect_precision(conv_graph(tmp_path / "a.onnx"), "onnx")
    assert fp32.precision == "fp32" and fp32.evidence.startswith("float32 weights (100% of weight values)")
    fp16 = inspect_precision(conv_graph(tmp_path / "b.onnx", np.float16), "onnx")
    assert fp16.precision == "fp16" and fp16.evidence == "float16 weights (100% of weight values)"
    mixed = inspect_precision(conv_graph(tmp_path / "c.onnx", cast_to=TensorProto.FLOAT16), "onnx")
    assert mixed.precision == "fp16" and "2 Cast op(s) to float16" in mixed.evidence
    q = inspect_precision(conv_graph(tmp_path / "d.onnx", qdq=True), "onnx")
    assert q.precision == "int8" and q.evidence == "quantized ops: DequantizeLinear, QuantizeLinear"
    assert detect_precision(tmp_path / "d.onnx", "onnx") == "int8"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    assert not inspect_precision(junk, "onnx").known and detect_precision(junk, "onnx") == UNKNOWN
    assert not inspect_precision(tmp_path / "missing.onnx", "onnx").known


# --------------------------------------------------------------------------------------------------------------------
# OpenVINO IR
# --------------------------------------------------------------------------------------------------------------------


def ir(path: Path, *layers: tuple[str, str | None, str]) -> Path:
    """A minimal IR XML with ``(type, element_type, shape)`` layers (only what the reader looks at)."""
    body = "".join(f'<layer id="{i}" name="l{i}" type="{t}" version="opset1">'
                   + (f'<data element_type="{et}" shape="{shape}" offset="0" size="1"/>' if et else "") + "</layer>"
                   for i, (t, et, shape) in enumerate(layers))
    path.write_text(f'<?xml version="1.0"?><net name="m" version="11"><layers>{body}</layers><edges/></net>')
    return path


def test_openvino_rules(tmp_path):
    assert detect_precision(ir(tmp_path / "a.xml", ("Const", "f32", "64,3,3,3"), ("Const", "i64", "4")),
                            "openvino") == "fp32"
    half = inspect_precision(ir(tmp_path / "b.xml", ("Const", "f16", "64,3,3,3"), ("Convert", None, ""),
                                ("Const", "f32", "64")), "openvino")
    assert half.precision == "fp16" and half.evidence.startswith("f16 weight constants, compressed (96%")
    fq = inspect_precision(ir(tmp_path / "c.xml", ("Const", "f32", "64,3,3,3"), ("FakeQuantize", None, "")),
                           "openvino")
    assert fq.precision == "int8" and fq.evidence == "1 FakeQuantize op(s)"
    assert detect_precision(ir(tmp_path / "d.xml", ("Const", "u8", "64,3,3,3"), ("Const", "f32", "64")),
                            "openvino") == "int8"
    (tmp_path / "bad.xml").write_text("<net><layers>")
    assert not inspect_precision(tmp_path / "bad.xml", "openvino").known


# --------------------------------------------------------------------------------------------------------------------
# Every exporter's output is read as the precision it was exported at
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "precision", "evidence"), [
    ("onnx", "fp32", "float32 weights"),
    ("openvino", "fp32", "f32 weight constants"),
    ("openvino", "fp16", "f16 weight constants, compressed"),
    ("coreml", "fp32", "float32 compute"),
    ("coreml", "fp16", "float16 compute"),
    ("tensorrt", "fp16", "build_engine.sh builds with --fp16 from an fp32 graph"),
    ("tensorrt", "fp32", "build_engine.sh has no reduced-precision flag"),
])
def test_exported_artifacts_are_read_as_exported(tmp_path_factory, test_checkpoint, fmt, precision, evidence):
    if fmt == "coreml":
        pytest.importorskip("coremltools")
    if fmt == "openvino":
        pytest.importorskip("openvino")
    art = exported_artifact(tmp_path_factory, test_checkpoint, fmt, precision)
    m = read_manifest(art)
    found = inspect_precision(art if fmt == "tensorrt" else art / m.artifact.path, fmt)
    assert found.precision == precision == m.precision, found
    assert found.evidence.startswith(evidence), found.evidence
    assert precision_mismatch(m.precision, found) is None
    if fmt == "tensorrt":  # the engine's precision; its ONNX is the fp32 graph it is built from
        assert detect_precision(art / "model.onnx", "onnx") == "fp32"
        assert precision_mismatch("int8", found).startswith(f"manifest precision int8 does not match the model: "
                                                            f"{art.name} is {precision}")


def test_a_lone_engine_is_not_inspected(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    found = inspect_precision(engine, "tensorrt")
    assert not found.known and "serialized TensorRT engine is not inspected" in found.evidence
    assert precision_mismatch("fp16", found) is None  # nothing to contradict: the caller warns instead


# --------------------------------------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------------------------------------


def test_verify_files_refuses_a_changed_or_missing_file(tmp_path_factory, tmp_path, test_checkpoint):
    art = tmp_path / "m"
    shutil.copytree(exported_artifact(tmp_path_factory, test_checkpoint, "onnx", "fp32"), art)
    manifest = read_manifest(art)
    assert verify_files(manifest) == 1  # model.onnx, listed under files and as the artifact
    recorded = manifest.files["model.onnx"]
    with (art / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactIntegrityError) as err:
        verify_files(manifest)
    message = str(err.value)
    assert message.startswith(f"validate | {art / 'model.onnx'} does not match its manifest (sha256 ")
    assert f" != {recorded[:12]}... recorded); re-export it or pass --no-verify" in message
    assert "\n" not in message
    (art / "model.onnx").unlink()
    with pytest.raises(ArtifactIntegrityError, match="model.onnx is listed in its manifest but missing"):
        verify_files(manifest, component="onnxruntime")


def test_verify_files_covers_packages_and_skips_the_timing_cache(tmp_path_factory, tmp_path, test_checkpoint):
    pytest.importorskip("coremltools")
    art = tmp_path / "cml"
    shutil.copytree(exported_artifact(tmp_path_factory, test_checkpoint, "coreml", "fp32"), art)
    assert verify_files(read_manifest(art)) >= 3  # every file inside the package, and the package's tree hash
    weights = next((art / "model.mlpackage").rglob("weight.bin"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\1")
    with pytest.raises(ArtifactIntegrityError, match=r"weight.bin does not match its manifest"):
        verify_files(read_manifest(art))

    trt = tmp_path / "trt"
    shutil.copytree(exported_artifact(tmp_path_factory, test_checkpoint, "tensorrt", "fp16"), trt)
    # The device's build updates the timing cache next to the artifact: a build cache, not part of the model.
    data = json.loads((trt / "manifest.json").read_text())
    data["files"]["timing.cache"] = "0" * 64
    (trt / "manifest.json").write_text(json.dumps(data))
    (trt / "timing.cache").write_bytes(b"updated by trtexec")
    assert verify_files(read_manifest(trt)) == 2  # model.onnx and build_engine.sh

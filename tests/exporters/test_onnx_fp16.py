"""ONNX fp16 export: float16 weights behind float32 ``images``/``logits``, gated and validated as fp16."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ffnet_deploy.cli import main
from ffnet_deploy.exporters.onnx import OnnxOptions
from ffnet_deploy.runtimes import create_runner
from tests.exporters.helpers import gate_checks, manifest, run_export, torch_logits

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def exports(tmp_path_factory, test_checkpoint, onnx_export):
    """The fp16 and fp32 ONNX exports of the ffnet_test checkpoint (64 px), each through its parity gate; the fp32 one
    is the session's shared default export (ffnet_test's resolution is 64)."""
    root = tmp_path_factory.mktemp("onnx-fp16")
    fp16 = run_export(root, "onnx", test_checkpoint, "fp16", precision="fp16", resolution=64).output
    fp32 = onnx_export.output
    assert manifest(fp32)["inputs"][0]["shape"] == [1, 3, 64, 64]
    return fp16, fp32


def _infer(artifact, x: np.ndarray) -> np.ndarray:
    with create_runner("onnxruntime", artifact) as runner:
        return runner.infer({"images": x})["logits"]


def test_fp16_export_passes_its_gate_and_records_the_conversion(exports):
    fp16, fp32 = exports
    m, m32 = manifest(fp16), manifest(fp32)
    assert m["precision"] == "fp16" and m["parity"]["passed"] is True
    assert [(c["precision"], c["profile"]["name"]) for c in gate_checks(m)] == [("fp16", "fp16")]
    assert "confirmed by the model (float16 weights" in gate_checks(m)[0]["profile_reason"]
    assert m["inputs"] == m32["inputs"] and m["outputs"] == m32["outputs"]  # the spec does not change
    assert m["block_outputs"] == m32["block_outputs"]
    record = m["details"]["fp16"]
    assert record["converter"].startswith("onnxruntime.transformers.float16.convert_float_to_float16")
    assert record["keep_io_types"] is True and record["kept_fp32_ops"] == []
    assert set(record["initializers"]) == {"float16"}
    assert m["details"]["op_counts"]["Cast"] == 2  # float32 -> float16 after images, back before logits

    graph = onnx.load(str(fp16 / "model.onnx"))
    onnx.checker.check_model(graph, full_check=True)  # nodes sorted again after the converter appends its Casts
    assert graph.graph.initializer and {t.data_type for t in graph.graph.initializer} == {FLOAT16}
    assert [i.type.tensor_type.elem_type for i in graph.graph.input] == [FLOAT]
    assert [o.type.tensor_type.elem_type for o in graph.graph.output] == [FLOAT]


def test_fp16_output_is_close_to_torch_and_differs_from_fp32(exports, test_checkpoint):
    fp16, fp32 = exports
    x = np.random.default_rng(11).standard_normal((1, 3, 64, 64), dtype=np.float32)
    got, got32 = _infer(fp16, x), _infer(fp32, x)
    ref = torch_logits(test_checkpoint, x).astype(np.float64).ravel()
    out = got.astype(np.float64).ravel()
    assert got.dtype == np.float32 and got.shape == (1, 1000)
    assert float(out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref))) > 0.999
    assert not np.array_equal(got, got32)  # the weights really are float16


def test_validate_applies_the_fp16_profile(exports, test_checkpoint, capsys):
    fp16, _ = exports
    code = main(["validate", str(fp16), "-c", str(test_checkpoint), "--synthetic", "4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"] is True
    (result,) = report["artifacts"]
    assert result["precision"] == "fp16" and result["profile"]["name"] == "fp16"
    assert result["profile_reason"].startswith("manifest precision fp16, confirmed by the model")


def test_fp16_with_baked_preprocessing_and_gelu_op(tmp_path, test_checkpoint):
    """uint8 input stays uint8 (only float inputs get a Cast), and the opset-20 Gelu op converts too."""
    out = run_export(tmp_path, "onnx", test_checkpoint, precision="fp16", resolution=64, include_preprocessing=True,
                     options=OnnxOptions(opset=20)).output
    m = manifest(out)
    assert m["parity"]["passed"] is True and m["inputs"][0]["dtype"] == "uint8"
    assert m["details"]["op_counts"]["Gelu"] == 11
    graph = onnx.load(str(out / "model.onnx"))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize(("args", "message"), [
    (["--calib", "digits"], "--calib applies to --precision int8"),
    (["--target", "cpu"], "--target applies to --precision int8"),
    (["--weights", "int8"], "does not take --weights"),
])
def test_int8_flags_are_refused_in_one_line(tmp_path, capsys, precision, args, message):
    out = tmp_path / "out"
    code = main(["export", "--variant", "ffnet_test", "--output", str(out), "--format", "onnx", "--precision",
                 precision, *args])
    err = capsys.readouterr().err
    assert code == 1, err
    assert message in err.replace("\n", " ") and "Traceback" not in err
    assert not out.exists()

"""OpenVINO exporter: real OpenVINO parity, FP16 weight compression, I/O and block names identical to the ONNX."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

from ffnet_deploy.runtimes import create_runner
from tests.exporters.helpers import max_rel, run_export, torch_logits


def test_openvino_fp32_parity_and_names_match_onnx(tmp_path, test_checkpoint):
    result = run_export(tmp_path, "openvino", test_checkpoint, dynamic_batch=(1, 2, 4))
    out, m = result.output, result.manifest
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    assert m["artifact"]["path"] == "model.xml" and "openvino" in m["versions"]
    assert m["parity"]["passed"] is True and m["parity"]["checks"][0]["runtime"] == "openvino"
    onnx_m = run_export(tmp_path, "onnx", test_checkpoint, dynamic_batch=(1, 2, 4)).manifest
    assert m["inputs"] == onnx_m["inputs"] and m["outputs"] == onnx_m["outputs"]
    assert m["block_outputs"] == onnx_m["block_outputs"]

    compiled = ov.Core().compile_model(str(out / "model.xml"), "CPU")
    assert compiled.input(0).any_name == "images" and compiled.output(0).any_name == "logits"
    assert str(compiled.input(0).get_partial_shape()) == "[?,3,64,64]"

    x = np.random.default_rng(11).standard_normal((3, 3, 64, 64), dtype=np.float32)
    with create_runner("openvino", out, inference_precision="f32") as runner:
        got = runner.infer({"images": x})["logits"]
    assert max_rel(got, torch_logits(test_checkpoint, x)) < 1e-4
    with create_runner("openvino", out, extra_outputs=list(m["block_outputs"].values())) as runner:
        blocks = runner.infer({"images": x})
    assert set(m["block_outputs"].values()) <= set(blocks)


def test_openvino_fp16_compresses_weights(tmp_path, test_checkpoint):
    fp32 = run_export(tmp_path, "openvino", test_checkpoint, name="fp32")
    fp16 = run_export(tmp_path, "openvino", test_checkpoint, name="fp16", precision="fp16")
    assert fp16.manifest["precision"] == "fp16" and fp16.manifest["details"]["weights"] == "fp16"
    size32 = (fp32.output / "model.bin").stat().st_size
    size16 = (fp16.output / "model.bin").stat().st_size
    assert size16 < 0.6 * size32
    check = fp16.parity[0]
    assert check.passed and 0 < check.max_rel < 1e-2  # rounded weights: not bit-identical, still close


def test_openvino_rejects_unknown_precision(tmp_path, test_checkpoint):
    from ffnet_deploy.errors import ConfigError

    with pytest.raises(ConfigError, match="precision 'int4' is not supported; choose one of: fp32, fp16"):
        run_export(tmp_path, "openvino", test_checkpoint, precision="int4")
    assert not (tmp_path / "openvino-artifact").exists()

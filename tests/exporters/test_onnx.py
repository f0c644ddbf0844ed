"""ONNX exporter: real ONNX Runtime parity, block-output map, dynamic batch, baked preprocessing, GELU, onnxsim."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from ffnet_deploy.exporters.onnx import OnnxOptions
from ffnet_deploy.models.checkpoint import load_ffnet
from ffnet_deploy.runtimes import create_runner
from tests.exporters.helpers import gate_checks, gate_max_rel, manifest, max_rel, run_export, torch_logits


def test_onnx_parity_and_manifest(onnx_export, test_checkpoint):
    result = onnx_export
    out = result.output
    m = manifest(out)
    assert (out / "model.onnx").is_file() and m == result.manifest.to_dict()
    assert m["format"] == "onnx" and m["precision"] == "fp32" and m["variant"] == "ffnet_test"
    assert m["inputs"] == [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "float32", "role": "tensor"}]
    assert m["outputs"] == [{"name": "logits", "shape": [1, 1000], "dtype": "float32", "role": "logits"}]
    assert m["reparameterized"] is True and m["random_weights"] is False
    assert m["preprocessing"]["baked"] is False and m["preprocessing"]["input_range"] == "normalized"
    assert len(m["source_checkpoint"]["sha256"]) == 64 and len(m["artifact"]["sha256"]) == 64
    assert {"ffnet_deploy", "torch", "onnx", "onnxruntime"} <= set(m["versions"])
    assert m["parity"]["passed"] is True and gate_max_rel(gate_checks(m)[0]) < 1e-4
    assert m["details"]["simplified"] is True
    assert m["options"]["options"] == {"opset": 17, "simplify": True}  # the format defaults, recorded
    graph = onnx.load(str(out / "model.onnx"))
    assert graph.opset_import[0].version == 17

    x = np.random.default_rng(7).standard_normal((1, 3, 64, 64), dtype=np.float32)
    with create_runner("onnxruntime", out) as runner:
        got = runner.infer({"images": x})["logits"]
    assert max_rel(got, torch_logits(test_checkpoint, x)) < 1e-4


def test_block_outputs_are_the_block_tensors(onnx_export, test_checkpoint):
    """Each block_outputs tensor, read from ONNX Runtime, equals that block's output in PyTorch."""
    out = onnx_export.output
    blocks = manifest(out)["block_outputs"]
    model = load_ffnet(test_checkpoint)
    expected_keys = ["patch_embed"] + [f"stages.{s}.{b}" for s, st in enumerate(model.stages) for b in range(len(st))]
    assert list(blocks) == expected_keys
    captured = {}
    hooks = [model.patch_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("patch_embed", o))]
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            key = f"stages.{s}.{b}"
            hooks.append(block.register_forward_hook(lambda m, i, o, key=key: captured.__setitem__(key, o)))
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        model(torch.from_numpy(x))
    with create_runner("onnxruntime", out, extra_outputs=list(blocks.values())) as runner:
        got = runner.infer({"images": x})
    for key, tensor in blocks.items():
        assert max_rel(got[tensor], captured[key].numpy().astype(np.float64)) < 1e-4, key


def test_dynamic_batch(tmp_path, test_checkpoint):
    result = run_export(tmp_path, "onnx", test_checkpoint, dynamic_batch=(1, 2, 4))
    m = manifest(result.output)
    assert m["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert m["inputs"][0]["shape"] == [None, 3, 64, 64] and m["outputs"][0]["shape"] == [None, 1000]
    assert m["parity"]["passed"] is True and m["parity"]["data"]["batch"] == 2  # gated at the opt batch
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64), dtype=np.float32)
    with create_runner("onnxruntime", result.output) as runner:
        got = runner.infer({"images": x})["logits"]
    assert got.shape == (3, 1000) and max_rel(got, torch_logits(test_checkpoint, x)) < 1e-4


@pytest.mark.parametrize(("input_range", "dtype"), [("0-255", np.uint8), ("0-1", np.float32)])
def test_include_preprocessing(tmp_path, test_checkpoint, input_range, dtype):
    result = run_export(tmp_path, "onnx", test_checkpoint, include_preprocessing=True, input_range=input_range)
    m = manifest(result.output)
    assert m["preprocessing"]["baked"] is True and m["preprocessing"]["input_range"] == input_range
    assert m["inputs"][0]["dtype"] == np.dtype(dtype).name
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    feed = pixels if input_range == "0-255" else (pixels / 255.0).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    normalized = ((pixels / 255.0 - mean) / std).astype(np.float32)
    result_b2 = run_export(tmp_path, "onnx", test_checkpoint, name="b2", batch=2, include_preprocessing=True,
                           input_range=input_range)
    with create_runner("onnxruntime", result_b2.output) as runner:
        got = runner.infer({"images": feed})["logits"]
    assert max_rel(got, torch_logits(test_checkpoint, normalized)) < 1e-4


def test_gelu_form_is_recorded_and_fused(tmp_path, test_checkpoint, onnx_export):
    gelu17 = manifest(onnx_export.output)["details"]["gelu"]
    assert gelu17["exported_form"].startswith("erf decomposition") and gelu17["count"] == 11
    assert gelu17["onnxruntime"]["fused_gelu_nodes"] == 11 and gelu17["onnxruntime"]["all_fused"]
    op20 = manifest(run_export(tmp_path, "onnx", test_checkpoint, name="op20", options=OnnxOptions(opset=20)).output)
    gelu20 = op20["details"]["gelu"]
    assert gelu20["exported_form"].startswith("onnx Gelu op") and gelu20["onnxruntime"]["all_fused"]


def test_onnxsim_failure_keeps_unsimplified_graph(tmp_path, test_checkpoint, onnx_export, monkeypatch):
    import onnxsim

    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    result = run_export(tmp_path, "onnx", test_checkpoint)
    m = manifest(result.output)
    assert m["details"]["simplified"] is False and "simulated onnxsim crash" in m["details"]["simplify_note"]
    assert any("kept the unsimplified graph" in n for n in result.notices)
    assert m["parity"]["passed"] is True
    simplified = manifest(onnx_export.output)  # the same export with onnxsim working
    assert simplified["details"]["simplified"] is True
    # What onnxsim folds away (the exporter's Constant nodes) is still there in the kept graph.
    assert m["details"]["op_counts"]["Constant"] > simplified["details"]["op_counts"]["Constant"]


def test_no_reparam_exports_the_unfused_graph(tmp_path, test_checkpoint, onnx_export):
    fused = manifest(onnx_export.output)
    unfused = manifest(run_export(tmp_path, "onnx", test_checkpoint, name="unfused", reparameterize=False).output)
    assert unfused["reparameterized"] is False and unfused["parity"]["passed"] is True
    assert unfused["details"]["op_counts"]["Conv"] > fused["details"]["op_counts"]["Conv"]
    assert list(unfused["block_outputs"]) == list(fused["block_outputs"])

"""OpenVINO exporter: real OpenVINO parity, FP16 weight compression, I/O and block names identical to the ONNX."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

from ffnet_deploy.cli import main
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.exporters.onnx import OnnxOptions, export_onnx_stage
from ffnet_deploy.exporters.openvino import STAGE_SCRATCH, OpenVINOOptions
from ffnet_deploy.hashing import sha256_file
from ffnet_deploy.models.checkpoint import load_ffnet
from ffnet_deploy.models.reparam import reparameterize_model
from ffnet_deploy.runtimes import create_runner
from tests.exporters.helpers import gate_checks, gate_max_rel, manifest, max_rel, run_export, torch_logits


def test_openvino_fp32_parity_and_names_match_onnx(tmp_path, test_checkpoint):
    result = run_export(tmp_path, "openvino", test_checkpoint, dynamic_batch=(1, 2, 4))
    out, m = result.output, manifest(result.output)
    # Without --keep-onnx the intermediate ONNX stage (and its scratch folder) is gone.
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    assert m["details"]["onnx_kept"] is False and m["options"]["options"]["keep_onnx"] is False
    assert m["artifact"]["path"] == "model.xml" and "openvino" in m["versions"]
    assert m["parity"]["passed"] is True and gate_checks(m)[0]["runtime"] == "openvino"
    onnx_m = manifest(run_export(tmp_path, "onnx", test_checkpoint, dynamic_batch=(1, 2, 4)).output)
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
    m16 = manifest(fp16.output)
    assert m16["precision"] == "fp16" and m16["details"]["weights"] == "fp16"
    size32 = (fp32.output / "model.bin").stat().st_size
    size16 = (fp16.output / "model.bin").stat().st_size
    assert size16 < 0.6 * size32
    (check,) = gate_checks(m16)
    assert check["passed"] and 0 < gate_max_rel(check) < 1e-2  # rounded weights: not bit-identical, still close


def test_openvino_rejects_unknown_precision(tmp_path, test_checkpoint):
    from ffnet_deploy.errors import ConfigError

    with pytest.raises(ConfigError, match="precision 'int4' is not supported; choose one of: fp32, fp16"):
        run_export(tmp_path, "openvino", test_checkpoint, precision="int4")
    assert not (tmp_path / "openvino-artifact").exists()


def test_keep_onnx_keeps_the_stage_with_its_sha256(tmp_path, test_checkpoint, capsys):
    """--keep-onnx leaves the ONNX stage that was converted next to the IR, listed in the manifest's files."""
    import json

    import onnx
    import onnxruntime as ort

    out = tmp_path / "ov"
    rc = main(["export", "-c", str(test_checkpoint), "-f", "openvino", "-o", str(out), "--keep-onnx", "--opset", "20",
               "--json"])
    data = json.loads(capsys.readouterr().out)  # --json: stdout is one JSON document
    m = manifest(out)
    assert rc == 0 and data["manifest"] == m
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.bin", "model.onnx", "model.xml"]
    assert m["files"]["model.onnx"] == sha256_file(out / "model.onnx") and set(m["files"]) == {
        "model.bin", "model.onnx", "model.xml"}
    assert m["artifact"]["path"] == "model.xml" and m["details"]["onnx_kept"] is True
    assert m["options"]["options"] == {"opset": 20, "simplify": True, "keep_onnx": True}
    graph = onnx.load(str(out / "model.onnx"))
    assert graph.opset_import[0].version == 20 and m["details"]["gelu"]["exported_form"].startswith("onnx Gelu op")
    # The kept graph is the one the IR came from: it holds the same block tensors and reproduces PyTorch.
    assert set(m["block_outputs"].values()) <= {o for n in graph.graph.node for o in n.output}
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 64), dtype=np.float32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert max_rel(session.run(["logits"], {"images": x})[0], torch_logits(test_checkpoint, x)) < 1e-4


def test_openvino_converts_the_onnx_exporters_stage(tmp_path, test_checkpoint, onnx_export):
    """One ONNX stage feeds both formats: its block_outputs are the ONNX export's and the OpenVINO export's."""
    model = reparameterize_model(load_ffnet(test_checkpoint))
    config = ExportConfig("openvino", tmp_path / "unused", resolution=64)
    (tmp_path / "stage").mkdir()
    stage = export_onnx_stage(model, config, OpenVINOOptions(keep_onnx=True), tmp_path / "stage", lambda _: None)
    assert stage.path == tmp_path / "stage" / "model.onnx" and stage.path.is_file()
    assert stage.options == OnnxOptions()  # the stage records only its own part of the options
    onnx_m = manifest(onnx_export.output)
    ov_m = manifest(run_export(tmp_path, "openvino", test_checkpoint).output)
    assert list(stage.block_outputs) == list(onnx_m["block_outputs"]) == list(ov_m["block_outputs"])
    assert stage.block_outputs == onnx_m["block_outputs"] == ov_m["block_outputs"]
    assert [s.to_dict() for s in stage.inputs] == onnx_m["inputs"] == ov_m["inputs"]
    assert stage.details["op_counts"] == onnx_m["details"]["op_counts"] == ov_m["details"]["op_counts"]
    assert not list(tmp_path.rglob(STAGE_SCRATCH))

"""Acceptance at scale: official-format ffnet_1 @256 and ffnet_4 @384, batch 2, ONNX Runtime and OpenVINO FP32
reproduce the PyTorch logits within 1e-4 relative. One export per format and variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.models.checkpoint import load_ffnet
from ffnet_deploy.runtimes import create_runner
from tests.conftest import official_state_dict, write_checkpoint
from tests.exporters.helpers import gate_checks, gate_max_rel, manifest, max_rel


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "resolution"), [("ffnet_1", 256), ("ffnet_4", 384)])
def test_official_checkpoint_onnx_and_openvino_parity(tmp_path, variant, resolution):
    checkpoint = write_checkpoint(tmp_path / f"{variant}.pth.tar", official_state_dict(variant))
    model = load_ffnet(checkpoint)
    x = np.random.default_rng(0).standard_normal((2, 3, resolution, resolution), dtype=np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    for fmt, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        config = ExportConfig(fmt, tmp_path / fmt, resolution=resolution, batch=2, parity_samples=1)
        result = export(config, checkpoint)
        m = manifest(result.output)
        assert m["variant"] == variant and m["inputs"][0]["shape"] == [2, 3, resolution, resolution]
        (check,) = gate_checks(m)
        assert check["passed"] and gate_max_rel(check) < 1e-4
        options = {"inference_precision": "f32"} if runtime == "openvino" else {}
        with create_runner(runtime, result.output, **options) as runner:
            got = runner.infer({"images": x})["logits"]
        error = max_rel(got, reference)
        print(f"{variant}@{resolution} {runtime}: max rel error {error:.2e}")
        assert error < 1e-4

"""The TensorRT runner. Needs an NVIDIA GPU with the tensorrt package; skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes import create_runner
from ffnet_deploy.runtimes.tensorrt import TensorRTRunner
from tests.runtimes.conftest import torch_logits


def build_engine_dir(onnx_dir: Path, tmp_path: Path) -> Path:
    """Build an fp32 engine from the ONNX file with the TensorRT builder (batch 1..4, opt 2)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((onnx_dir / "model.onnx").read_bytes()), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shape = tuple(network.get_input(0).shape)[1:]
    profile.set_shape("images", (1, *shape), (2, *shape), (4, *shape))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    directory = tmp_path / "trt"
    directory.mkdir()
    (directory / "model.engine").write_bytes(bytes(engine))
    return directory


def test_unavailable_reason_is_specific():
    reason = TensorRTRunner.unavailable_reason()
    if reason is not None:
        assert "tensorrt" in reason or "GPU" in reason


def test_artifact_is_required_and_missing_engine_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="model.engine"):
        create_runner("tensorrt", None)
    if TensorRTRunner.unavailable_reason() is None:
        with pytest.raises(RuntimeBackendError, match="no model file"):
            create_runner("tensorrt", tmp_path).activate()


@pytest.mark.gpu
def test_engine_matches_torch(onnx_dir, tmp_path, fused_model, images):
    reason = TensorRTRunner.unavailable_reason()
    if reason:
        pytest.skip(f"tensorrt: {reason}")
    engine_dir = build_engine_dir(onnx_dir, tmp_path)
    with create_runner("tensorrt", engine_dir) as runner:
        assert runner.input_metadata()["images"].shape == (None, 3, 64, 64)
        out = runner.infer(images)["logits"]
    np.testing.assert_allclose(out, torch_logits(fused_model, images), rtol=1e-3, atol=1e-3)


def test_threads_are_accepted_and_recorded_as_not_applying(every_cpu, tmp_path):
    runner = create_runner("tensorrt", tmp_path, threads=2)
    assert runner.threads == 2
    assert runner.notices == ["threads=2 does not apply: TensorRT executes the network on the GPU"]
    with pytest.raises(ConfigError, match="session_options is not supported"):
        create_runner("tensorrt", tmp_path, session_options=lambda options: None)

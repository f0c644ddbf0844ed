"""The torch reference runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes import create_runner
from tests.runtimes.conftest import torch_logits


def test_in_memory_model_matches_direct_call(fused_model, images):
    with create_runner("torch", None, model=fused_model) as runner:
        meta = runner.input_metadata()["images"]
        assert meta.shape == (None, 3, 64, 64)
        out = runner.infer({"images": images})
    np.testing.assert_array_equal(out["logits"], torch_logits(fused_model, images))
    assert runner.last_latency_ms > 0


def test_checkpoint_path_loads_with_load_ffnet(test_checkpoint, images):
    from ffnet_deploy.models.checkpoint import load_ffnet

    expected = torch_logits(load_ffnet(test_checkpoint), images)
    with create_runner("torch", test_checkpoint) as runner:
        got = runner.infer(images)["logits"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=0)


def test_extra_outputs_return_block_tensors(fused_model, images):
    with create_runner("torch", None, model=fused_model, extra_outputs=["patch_embed", "stages.1.0"]) as runner:
        out = runner.infer(images)
        assert runner.output_names() == ["logits", "patch_embed", "stages.1.0"]
    with torch.inference_mode():
        pe = fused_model.patch_embed(torch.from_numpy(images))
    np.testing.assert_array_equal(out["patch_embed"], pe.numpy())
    assert out["stages.1.0"].shape[0] == 2 and out["stages.1.0"].ndim == 4


def test_unknown_extra_output_and_missing_model(fused_model):
    with pytest.raises(RuntimeBackendError, match="stages.9.9"):
        create_runner("torch", None, model=fused_model, extra_outputs=["stages.9.9"]).activate()
    with pytest.raises(ConfigError, match="needs a checkpoint"):
        create_runner("torch", None)


def test_wrong_resolution_is_rejected(fused_model):
    with create_runner("torch", None, model=fused_model) as runner:
        with pytest.raises(RuntimeBackendError, match=r"'images' expects \(\?, 3, 64, 64\).*\(1, 3, 32, 32\)"):
            runner.infer(np.zeros((1, 3, 32, 32), np.float32))


def test_threads_apply_during_inference_only(every_cpu, fused_model, images):
    """torch's thread count is process-wide: the runner sets it for each inference and restores it after."""
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    seen = []
    handle = fused_model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        with create_runner("torch", None, model=fused_model, threads=threads) as runner:
            out = runner.infer(images)["logits"]
    finally:
        handle.remove()
    assert seen == [threads] and torch.get_num_threads() == before
    np.testing.assert_array_equal(out, torch_logits(fused_model, images, threads=threads))


def test_session_options_hook_is_refused(fused_model):
    with pytest.raises(ConfigError, match=r"torch \| session_options is not supported"):
        create_runner("torch", None, model=fused_model, session_options=lambda options: None)

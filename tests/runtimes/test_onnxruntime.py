"""The ONNX Runtime runner."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes import create_runner
from tests.runtimes.conftest import torch_logits


def test_directory_and_file_give_same_outputs(onnx_dir, fused_model, images):
    expected = torch_logits(fused_model, images)
    for artifact in (onnx_dir, onnx_dir / "model.onnx"):
        with create_runner("onnxruntime", artifact, threads=1) as runner:
            assert runner.model_path == onnx_dir / "model.onnx"
            meta = runner.input_metadata()["images"]
            assert meta.shape == (None, 3, 64, 64)  # dynamic batch reported as None
            assert meta.dtype == "float32" and meta.np_dtype == np.float32
            out = runner.infer({"images": images})
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("level", ["disabled", "basic", "extended", "all"])
def test_optimization_levels_agree(onnx_dir, fused_model, images, level):
    with create_runner("onnxruntime", onnx_dir, graph_optimization_level=level) as runner:
        out = runner.infer(images)["logits"]
    np.testing.assert_allclose(out, torch_logits(fused_model, images), rtol=1e-4, atol=1e-4)


def test_extra_outputs_return_intermediate_tensors(onnx_dir, fused_model, images):
    import onnx
    import torch

    graph = onnx.load(str(onnx_dir / "model.onnx")).graph
    convs = [n.output[0] for n in graph.node if n.op_type == "Conv"]
    adds = [n.output[0] for n in graph.node if n.op_type == "Add"]
    wanted = [adds[0], convs[0]]
    with create_runner("onnxruntime", onnx_dir, extra_outputs=wanted) as runner:
        assert runner.output_names() == ["logits", *wanted]
        out = runner.infer(images)
    # The first Conv of the graph is the stem conv: its tensor must equal torch's, which proves the extra output is
    # addressed by name and not by position.
    with torch.inference_mode():
        stem = fused_model.patch_embed[0](torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(out[convs[0]], stem, rtol=1e-4, atol=1e-4)
    assert out[adds[0]].shape[0] == 2 and np.isfinite(out[adds[0]]).all()


def test_errors_are_clear(onnx_dir, tmp_path):
    with pytest.raises(RuntimeBackendError, match="no_such_tensor"):
        create_runner("onnxruntime", onnx_dir, extra_outputs=["no_such_tensor"]).activate()
    with pytest.raises(RuntimeBackendError, match="not available"):
        create_runner("onnxruntime", onnx_dir, providers=["NoSuchExecutionProvider"]).activate()
    with pytest.raises(ConfigError, match="graph_optimization_level"):
        create_runner("onnxruntime", onnx_dir, graph_optimization_level="max")
    with pytest.raises(RuntimeBackendError, match="no model file"):
        create_runner("onnxruntime", tmp_path).activate()


def test_threads_set_intra_op_threads_and_the_hook_gets_the_session_options(every_cpu, onnx_dir, fused_model,
                                                                           images):
    import onnxruntime as ort

    seen = []

    def hook(options):
        # The runner's own settings are in place when the hook runs, so it can read or override them.
        seen.append((type(options), options.intra_op_num_threads, options.inter_op_num_threads))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    with create_runner("onnxruntime", onnx_dir, threads=2, session_options=hook) as runner:
        effective = runner.session.get_session_options()
        out = runner.infer(images)["logits"]
    assert seen == [(ort.SessionOptions, 2, 1)]
    assert effective.intra_op_num_threads == 2 and effective.inter_op_num_threads == 1
    assert effective.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    np.testing.assert_allclose(out, torch_logits(fused_model, images), rtol=1e-4, atol=1e-4)


def test_without_threads_onnxruntime_keeps_its_defaults(every_cpu, onnx_dir):
    with create_runner("onnxruntime", onnx_dir) as runner:
        effective = runner.session.get_session_options()
    assert effective.intra_op_num_threads == 0 and effective.inter_op_num_threads == 0  # 0: ORT chooses


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs CPU affinity and 2 CPUs")
def test_without_threads_a_process_kept_to_one_cpu_gets_one_thread(every_cpu, onnx_dir, images):
    """ONNX Runtime sizes its default pool by the machine's cores, not by the CPUs the process may use (taskset, a
    container's cpuset): the runner asks for as many threads as those CPUs."""
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everything)})
    try:
        with create_runner("onnxruntime", onnx_dir) as runner:
            effective = runner.session.get_session_options()
            runner.infer(images)
    finally:
        os.sched_setaffinity(0, everything)
    assert effective.intra_op_num_threads == 1 and effective.inter_op_num_threads == 1


def test_session_options_must_be_callable(onnx_dir):
    with pytest.raises(ConfigError, match="session_options must be a callable"):
        create_runner("onnxruntime", onnx_dir, session_options={"intra_op_num_threads": 1})

"""The OpenVINO runner."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes import create_runner
from tests.runtimes.conftest import torch_logits

pytest.importorskip("openvino")


def test_f32_is_the_default_and_really_runs_f32(openvino_dir, fused_model, images):
    with create_runner("openvino", openvino_dir, threads=1) as runner:
        assert runner.actual_inference_precision() == "f32"
        meta = runner.input_metadata()["images"]
        assert meta.shape == (None, 3, 64, 64)
        out = runner.infer({"images": images})["logits"]
    # bf16 execution would miss this by orders of magnitude (about 1e-2 relative).
    np.testing.assert_allclose(out, torch_logits(fused_model, images), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_reduced_precision_hints_run_and_differ(openvino_dir, fused_model, images, precision):
    expected = torch_logits(fused_model, images)
    with create_runner("openvino", openvino_dir, inference_precision=precision) as runner:
        out = runner.infer(images)["logits"]
        actual = runner.actual_inference_precision()
    cos = float(np.sum(out * expected) / np.linalg.norm(out) / np.linalg.norm(expected))
    assert cos > 0.99
    if precision == "bf16" or "16" in actual:
        # When the hint takes effect the result is not bit-exact f32.
        assert np.abs(out - expected).max() > 1e-6


def test_onnx_file_and_extra_outputs(onnx_dir, openvino_dir, images):
    import onnx

    graph = onnx.load(str(onnx_dir / "model.onnx")).graph
    # Block outputs (the channel mixer's residual Add) survive OpenVINO's fusions with their ONNX names.
    names = [n.output[0] for n in graph.node if n.op_type == "Add" and n.name.endswith("channel_mixer/Add")][:2]
    assert len(names) == 2
    with create_runner("onnxruntime", onnx_dir, extra_outputs=names) as ref:
        expected = ref.infer(images)
    with create_runner("openvino", openvino_dir, extra_outputs=names) as runner:
        assert runner.output_names()[1:] == names
        out = runner.infer(images)
    for name in names:
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-4, atol=1e-4)
    with create_runner("openvino", onnx_dir / "model.onnx") as runner:
        np.testing.assert_allclose(runner.infer(images)["logits"], expected["logits"], rtol=1e-4, atol=1e-4)


def test_errors_are_clear(openvino_dir):
    with pytest.raises(ConfigError, match="inference_precision"):
        create_runner("openvino", openvino_dir, inference_precision="int4")
    with pytest.raises(RuntimeBackendError, match="GPU"):
        create_runner("openvino", openvino_dir, device="GPU").activate()
    with pytest.raises(RuntimeBackendError, match="nope"):
        create_runner("openvino", openvino_dir, extra_outputs=["nope"]).activate()


# OpenVINO's CPU plugin counts the CPUs it may use once, when a process first loads it, and caps a thread request
# there: in a pinned xdist worker (tests/conftest.py) that is one CPU whatever the affinity is later. So this case runs
# in a process of its own, started with every CPU (every_cpu), and reports what it saw.
THREADS_CASE = r"""
import json, sys

import numpy as np
import openvino.properties as props

from ffnet_deploy.runtimes import create_runner

folder, images, out = sys.argv[1:]
seen = []


def hook(config):
    seen.append({"is_dict": isinstance(config, dict), "threads": config.get(props.inference_num_threads()),
                 "has_precision_hint": props.hint.inference_precision() in config})
    config[props.inference_num_threads()] = 1  # the hook edits the dict compile_model receives


with create_runner("openvino", folder, threads=2) as runner:
    plain = runner.compiled.get_property(props.inference_num_threads())
with create_runner("openvino", folder, threads=2, session_options=hook) as runner:
    hooked = runner.compiled.get_property(props.inference_num_threads())
    np.save(out, runner.infer(np.load(images))["logits"])
print(json.dumps({"plain": plain, "hooked": hooked, "seen": seen}))
"""


def test_threads_and_the_hook_reach_compile_model(every_cpu, openvino_dir, fused_model, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run([sys.executable, "-c", THREADS_CASE, str(openvino_dir), str(tmp_path / "images.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["plain"] == 2 and seen["hooked"] == 1
    assert len(seen["seen"]) == 1 and seen["seen"][0]["is_dict"]
    assert seen["seen"][0]["threads"] == 2 and seen["seen"][0]["has_precision_hint"]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), torch_logits(fused_model, images), rtol=1e-4, atol=1e-4)


def test_runners_freed_in_the_order_they_were_made_leave_signals_working(openvino_dir, server, tmp_path):
    """OpenVINO's CPU plugin gives the thread that loads it a signal stack of its own and puts back the one it found
    when its Core is freed: two runners freed first-made-first left the thread on a freed stack, and the next SIGTERM
    crashed the process (SIGSEGV, seen after ``validate`` of an fp32 and an fp16 IR) instead of raising Interrupted.
    In a forked child (a crash there is the child's), with Python's faulthandler stack in place as pytest has it."""
    setup = f"""
import faulthandler, os, signal, time
faulthandler.enable()
from ffnet_deploy.errors import Interrupted
from ffnet_deploy.interrupts import _signal_stack, handle_signals
from ffnet_deploy.runtimes import create_runner
before = _signal_stack()
first = create_runner("openvino", {str(openvino_dir)!r}, threads=1).activate()
second = create_runner("openvino", {str(openvino_dir)!r}, threads=1).activate()
first.deactivate()
second.deactivate()
assert _signal_stack() == before, (before, _signal_stack())
try:
    with handle_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
except Interrupted:
    raise SystemExit(7)
"""
    code, log = server.run(None, tmp_path, setup=setup)
    assert code == 7, (code, log)


def test_signal_stack_kept_puts_the_threads_stack_back():
    import ctypes

    from ffnet_deploy.interrupts import _set_signal_stack, _signal_stack, signal_stack_kept

    before = _signal_stack()
    if before is None:
        pytest.skip("reads the signal stack on Linux only")
    memory = ctypes.create_string_buffer(65536)
    address = ctypes.addressof(memory)
    try:
        with signal_stack_kept():
            _set_signal_stack((address, 0, 65536))
            assert _signal_stack() == (address, 0, 65536)
        assert _signal_stack() == before
    finally:
        _set_signal_stack(before)  # before ``memory`` can be freed

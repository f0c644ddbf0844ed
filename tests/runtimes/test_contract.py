"""One contract, every runtime: each registered runner that can run here is checked the same way.

Runners that cannot run on this machine (no GPU for TensorRT, no macOS for Core ML) skip with their own
``unavailable_reason()``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ffnet_deploy.errors import RuntimeBackendError
from ffnet_deploy.runtimes import RUNNER_MODULES, RUNTIMES, create_runner, load_all
from tests.runtimes.conftest import RES, torch_logits

load_all()
TESTS_DIR = Path(__file__).resolve().parent

# Tolerance per runtime: max |out - torch| / max |torch| on the fp32 artifact.
TOLERANCE = {"torch": 0.0, "onnxruntime": 1e-4, "openvino": 1e-4, "tensorrt": 1e-3, "coreml": 1e-2,
             "coreml-reference": 1e-4}


def _artifact(name: str, request: pytest.FixtureRequest):
    """(artifact, options) for runtime ``name``, built from the session fixtures."""
    if name == "torch":
        return None, {"model": request.getfixturevalue("fused_model")}
    if name == "onnxruntime":
        return request.getfixturevalue("onnx_dir"), {}
    if name == "openvino":
        return request.getfixturevalue("openvino_dir"), {}
    if name in ("coreml", "coreml-reference"):
        return request.getfixturevalue("coreml_dir"), {}
    if name == "tensorrt":
        from tests.runtimes.test_tensorrt import build_engine_dir

        return build_engine_dir(request.getfixturevalue("onnx_dir"), request.getfixturevalue("tmp_path")), {}
    raise AssertionError(f"no contract artifact for runtime {name!r}: add one here")


@pytest.mark.parametrize("name", RUNTIMES.names())
def test_runner_contract(name, request, fused_model, images):
    cls = RUNTIMES.get(name)
    reason = cls.unavailable_reason()
    if reason:
        pytest.skip(f"{name}: {reason}")
    artifact, options = _artifact(name, request)
    runner = create_runner(name, artifact, **options)
    assert not runner.is_active
    with pytest.raises(RuntimeBackendError, match="not active"):
        runner.deactivate()
    with runner:
        assert runner.is_active
        with pytest.raises(RuntimeBackendError, match="already active"):
            runner.activate()
        meta = runner.input_metadata()
        assert list(meta) == ["images"]
        assert meta["images"].shape[1:] == (3, RES, RES) and meta["images"].dtype == np.float32
        assert "logits" in runner.output_names()

        bad = np.zeros((1, 3, RES // 2, RES // 2), np.float32)
        with pytest.raises(RuntimeBackendError) as err:
            runner.infer({"images": bad})
        message = str(err.value)
        assert "'images'" in message and f"3, {RES}, {RES}" in message and f"(1, 3, {RES // 2}, {RES // 2})" in message
        with pytest.raises(RuntimeBackendError, match="missing"):
            runner.infer({"pixels": images})

        out = runner.infer({"images": images})
        assert runner.last_latency_ms is not None and runner.last_latency_ms > 0
        logits = out["logits"]
        ref = torch_logits(fused_model, images)
        assert logits.shape == ref.shape
        err_rel = float(np.abs(logits.astype(np.float64) - ref).max() / np.abs(ref).max())
        assert err_rel <= TOLERANCE[name], f"{name}: relative error {err_rel:.2e}"
    assert not runner.is_active
    with pytest.raises(RuntimeBackendError, match="not active"):
        runner.infer({"images": images})


def test_every_runtime_has_a_test_module():
    """Adding a runtime means adding its test: tests/runtimes/test_<module>.py for every runner module."""
    missing = [m for m in RUNNER_MODULES if not (TESTS_DIR / f"test_{m}.py").is_file()]
    assert not missing, f"runner modules without tests: {missing}"
    modules = {RUNTIMES.get(n).__module__.rsplit(".", 1)[-1] for n in RUNTIMES.names()}
    assert modules <= set(RUNNER_MODULES), f"registered runtimes from unlisted modules: {modules - set(RUNNER_MODULES)}"
    assert set(RUNTIMES.names()) == {"torch", "onnxruntime", "openvino", "tensorrt", "coreml", "coreml-reference"}

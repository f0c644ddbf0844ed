"""One contract, every runtime: each registered runner that can run here is checked the same way.

Runners that cannot run on this machine (no GPU for TensorRT, no macOS for Core ML) skip with their own
``unavailable_reason()``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from ffnet_deploy.environment import usable_cpus
from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes import RUNNER_MODULES, RUNTIMES, create_runner, load_all
from tests.runtimes.conftest import RES, torch_logits

load_all()
TESTS_DIR = Path(__file__).resolve().parent

# Tolerance per runtime: max |out - torch| / max |torch| on the fp32 artifact.
TOLERANCE = {"torch": 0.0, "onnxruntime": 1e-4, "openvino": 1e-4, "tensorrt": 1e-3, "coreml": 1e-2,
             "coreml-reference": 1e-4, "executorch": 1e-4, "litert": 1e-4}


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
    if name == "executorch":
        return request.getfixturevalue("executorch_dir"), {}
    if name == "litert":
        return request.getfixturevalue("litert_dir"), {}
    if name == "tensorrt":
        from tests.runtimes.test_tensorrt import build_engine_dir

        return build_engine_dir(request.getfixturevalue("onnx_dir"), request.getfixturevalue("tmp_path")), {}
    raise AssertionError(f"no contract artifact for runtime {name!r}: add one here")


# the programs ExecuTorch lowers and the models litert-torch converts are made on their exporter tests' worker
_GROUPS = {"executorch": "executorch-export", "litert": "litert-export"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(_GROUPS[n])) if n in _GROUPS else n
                                  for n in RUNTIMES.names()])
def test_runner_contract(name, request, fused_model, images):
    cls = RUNTIMES.get(name)
    reason = cls.unavailable_reason()
    if reason:
        pytest.skip(f"{name}: {reason}")
    artifact, options = _artifact(name, request)
    runner = create_runner(name, artifact, threads=1, **options)
    assert runner.threads == 1
    assert not runner.is_active
    with pytest.raises(RuntimeBackendError, match="not active"):
        runner.deactivate()
    with runner:
        assert runner.is_active
        with pytest.raises(RuntimeBackendError, match="already active"):
            runner.activate()
        meta = runner.input_metadata()
        assert list(meta) == ["images"]
        assert meta["images"].shape[1:] == (3, RES, RES) and meta["images"].dtype == "float32"
        assert "logits" in runner.output_names()

        bad = np.zeros((1, 3, RES // 2, RES // 2), np.float32)
        with pytest.raises(RuntimeBackendError) as err:
            runner.infer({"images": bad})
        message = str(err.value)
        assert "'images'" in message and f"3, {RES}, {RES}" in message and f"(1, 3, {RES // 2}, {RES // 2})" in message
        with pytest.raises(RuntimeBackendError, match="missing"):
            runner.infer({"pixels": images})
        with pytest.raises(RuntimeBackendError, match=r"'images' expects float32, got int64"):
            runner.infer({"images": images.astype(np.int64)})

        out = runner.infer({"images": images})
        assert runner.last_latency_ms is not None and runner.last_latency_ms > 0
        logits = out["logits"]
        ref = torch_logits(fused_model, images, threads=1)  # the runner ran on 1 thread: torch must match exactly
        assert logits.shape == ref.shape
        err_rel = float(np.abs(logits.astype(np.float64) - ref).max() / np.abs(ref).max())
        assert err_rel <= TOLERANCE[name], f"{name}: relative error {err_rel:.2e}"
    assert not runner.is_active
    with pytest.raises(RuntimeBackendError, match="not active"):
        runner.infer({"images": images})


COMMON_OPTIONS = ("threads", "session_options", "manifest", "name")


@pytest.mark.parametrize("name", RUNTIMES.names())
def test_every_runner_takes_the_common_options(name, tmp_path):
    """``threads``, ``session_options``, ``manifest`` and ``name`` mean the same on every runner, installed or not."""
    cls = RUNTIMES.get(name)
    params = inspect.signature(cls.__init__).parameters
    for option in COMMON_OPTIONS:
        assert option in params and params[option].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {option}"
        assert params[option].default is None, f"{name}: {option} must default to None"
    # Constructing never loads the engine, so this runs even where the runtime cannot.
    artifact, options = (None, {"model": object()}) if not cls.needs_artifact else (tmp_path, {})
    runner = create_runner(name, artifact, threads=1, **options)
    assert runner.threads == 1 and runner.manifest is None
    assert all("threads=1" in notice for notice in runner.notices)
    # More threads than this process may use is capped with a notice, never refused (a config from a bigger box).
    limit = usable_cpus()
    capped = create_runner(name, artifact, threads=limit + 1, **options)
    assert capped.threads == limit
    assert any(f"--threads {limit + 1}" in notice and f"running with {limit}" in notice for notice in capped.notices)
    with pytest.raises(ConfigError, match="threads must be a positive int"):
        create_runner(name, artifact, threads=0, **options)
    if cls.session_options_kind is None:
        with pytest.raises(ConfigError, match=f"{name} \\| session_options is not supported"):
            create_runner(name, artifact, session_options=lambda o: None, **options)
    else:
        create_runner(name, artifact, session_options=lambda o: None, **options)


@pytest.mark.parametrize("name", [n for n in RUNTIMES.names() if RUNTIMES.get(n).needs_artifact])
def test_artifact_required_message_is_the_same_for_every_runner(name):
    with pytest.raises(ConfigError) as err:
        create_runner(name, None)
    message = str(err.value)
    assert message.startswith(f"{name} | needs an artifact: a model") and message.endswith(
        "or an artifact directory written by 'ffnet-deploy export'; got None")
    assert RUNTIMES.get(name).model_suffixes[0] in message


def test_every_runtime_has_a_test_module():
    """Adding a runtime means adding its test: tests/runtimes/test_<module>.py for every runner module."""
    missing = [m for m in RUNNER_MODULES if not (TESTS_DIR / f"test_{m}.py").is_file()]
    assert not missing, f"runner modules without tests: {missing}"
    modules = {RUNTIMES.get(n).__module__.rsplit(".", 1)[-1] for n in RUNTIMES.names()}
    assert modules <= set(RUNNER_MODULES), f"registered runtimes from unlisted modules: {modules - set(RUNNER_MODULES)}"
    assert set(RUNTIMES.names()) == {"torch", "onnxruntime", "openvino", "tensorrt", "coreml", "coreml-reference",
                                     "executorch", "litert"}

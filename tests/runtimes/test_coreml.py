"""The native Core ML runner. Prediction needs macOS; elsewhere only its refusal is checked."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes import create_runner
from ffnet_deploy.runtimes.coreml import CoreMLRunner
from tests.runtimes.conftest import torch_logits


def test_options_are_validated(coreml_dir):
    with pytest.raises(ConfigError, match="compute_units"):
        create_runner("coreml", coreml_dir, compute_units="GPU_ONLY")


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the refusal on non-macOS systems")
def test_refuses_clearly_off_macos(coreml_dir):
    assert "macOS" in CoreMLRunner.unavailable_reason()
    with pytest.raises(RuntimeBackendError, match="needs macOS.*coreml-reference"):
        create_runner("coreml", coreml_dir).activate()


@pytest.mark.macos
@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML prediction needs macOS")
def test_prediction_matches_torch_and_the_reference_interpreter(coreml_dir, fused_model, images):
    with create_runner("coreml", coreml_dir, compute_units="CPU_ONLY") as runner:
        out = runner.infer(images)["logits"]
    with create_runner("coreml-reference", coreml_dir) as runner:
        reference = runner.infer(images)["logits"]
    np.testing.assert_allclose(out, torch_logits(fused_model, images), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out, reference, rtol=1e-3, atol=1e-3)


def test_threads_are_accepted_and_recorded_as_not_applying(every_cpu, coreml_dir):
    runner = create_runner("coreml", coreml_dir, threads=2)
    assert runner.threads == 2
    assert runner.notices == ["threads=2 does not apply: Core ML schedules CPU, GPU and Neural Engine work itself"]
    assert create_runner("coreml", coreml_dir).notices == []
    with pytest.raises(ConfigError, match="session_options is not supported"):
        create_runner("coreml", coreml_dir, session_options=lambda options: None)

"""Package import side effects: the coremltools log filters installed by ``ffnet_deploy/__init__.py``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ffnet_deploy  # noqa: F401  (installs the filters)

CLI = Path(sys.executable).with_name("ffnet-deploy")

# What coremltools 8/9 log at import (coremltools/_deps/__init__.py), formatted the way it formats them.
SKLEARN_NOISE = ("scikit-learn version 1.9.1 is not supported. Minimum required version: 0.17. Maximum required "
                 "version: 1.5.1. Disabling scikit-learn conversion API.")
TORCH_NOISE = ("Torch version 2.14.1+cu130 has not been tested with coremltools. You may run into unexpected errors. "
               "Torch 2.7.0 is the most recent version that has been tested.")


def _passes(message: str) -> bool:
    record = logging.LogRecord("coremltools", logging.WARNING, __file__, 1, message, None, None)
    return bool(logging.getLogger("coremltools").filter(record))


def test_only_the_known_coremltools_noise_is_dropped():
    assert not _passes(SKLEARN_NOISE) and not _passes(TORCH_NOISE)
    # Anything else coremltools says still reaches the user, including other packages' version warnings.
    assert _passes("TensorFlow version 2.99.0 has not been tested with coremltools. You may run into unexpected "
                   "errors. TensorFlow 2.12.0 is the most recent version that has been tested.")
    assert _passes("Tuple detected at graph output. This will be flattened in the converted model.")
    assert _passes(TORCH_NOISE + " And something new.")


def test_coreml_export_prints_no_version_noise(tmp_path):
    pytest.importorskip("coremltools")
    if not CLI.exists():
        pytest.skip(f"needs the installed console script next to the interpreter ({CLI})")
    env = {**os.environ, "CI": "true"}
    proc = subprocess.run([str(CLI), "export", "-v", "ffnet_test", "--format", "coreml", "-o", str(tmp_path / "m")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "is not supported. Minimum required version" not in proc.stderr
    assert "has not been tested with coremltools" not in proc.stderr
    assert "Failed to load _ML" not in proc.stderr or sys.platform == "darwin"
    assert (tmp_path / "m" / "model.mlpackage").is_dir()



def test_quiet_library_output_hides_the_torch_warnings_of_the_int8_backends(caplog):
    """Under ``library_output(False)`` (``pipeline --quiet``/``--json``) the warnings importing NNCF and torchao set
    off on a CPU machine are hidden; outside it, and on any other logger, they show as before."""
    from ffnet_deploy.progress import library_output

    def said(name: str, message: str) -> bool:
        caplog.clear()
        logging.getLogger(name).warning(message)
        return message in caplog.text

    cuda = "No CUDA runtime is found, using CUDA_HOME='/usr/local'"
    enum_warning = "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile"
    with caplog.at_level(logging.WARNING):
        levels = [logging.getLogger(n).level for n in ("torch.utils.cpp_extension", "torch.utils._pytree")]
        assert said("torch.utils.cpp_extension", cuda) and said("torch.utils._pytree", enum_warning)
        with library_output(False):
            assert not said("torch.utils.cpp_extension", cuda) and not said("torch.utils._pytree", enum_warning)
            assert said("torch.fx", "another torch warning")
        assert said("torch.utils.cpp_extension", cuda)
        assert [logging.getLogger(n).level for n in ("torch.utils.cpp_extension", "torch.utils._pytree")] == levels

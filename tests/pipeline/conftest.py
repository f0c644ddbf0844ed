"""Pipeline output folders made once per session: tests copy them (:func:`copy_run`) instead of running new ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# P of issue 18 on the digits demo model, kept small: ONNX fp32 + int8, 64 calibration images, 100 evaluation images.
ARGS = ["--formats", "onnx", "--precisions", "fp32,int8", "--calib", "digits", "--calib-size", "64", "--eval-data",
        "digits", "--eval-limit", "100", "--no-bench", "--quiet"]


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of the output folder ``src`` at ``dst`` (links kept as links), to resume or tamper with."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, demo_checkpoint_path) -> Path:
    """BASE of issue 18: one complete ``pipeline -c digits.pth`` run of :data:`ARGS` (both jobs pass)."""
    from ffnet_deploy.cli import main

    out = tmp_path_factory.mktemp("pipeline-base") / "base"
    assert main(["pipeline", "-c", str(demo_checkpoint_path), "-o", str(out), *ARGS]) == 0
    return out


@pytest.fixture(scope="session")
def failing_run(tmp_path_factory, demo_checkpoint_path) -> tuple[Path, list[str]]:
    """A complete run whose onnx-int8 really fails parity (calibrated on one black image), and its arguments."""
    from PIL import Image

    from ffnet_deploy.cli import main

    folder = tmp_path_factory.mktemp("pipeline-failing")
    calib = folder / "black"
    calib.mkdir()
    Image.new("RGB", (32, 32)).save(calib / "black.png")
    args = ["-c", str(demo_checkpoint_path), "--formats", "onnx", "--precisions", "fp32,int8", "--calib", str(calib),
            "--calib-size", "1", "--eval-data", "digits", "--eval-limit", "200", "--no-bench", "--quiet"]
    out = folder / "run"
    assert main(["pipeline", *args, "-o", str(out)]) == 1
    return out, args


# The single local run that merged --only runs and a Ray run are compared with: ONNX fp32 + int8, 128 calibration
# images, 200 evaluation images.
SINGLE_ARGS = ["--formats", "onnx", "--precisions", "fp32,int8", "--calib", "digits", "--calib-size", "128",
               "--eval-data", "digits", "--eval-limit", "200", "--no-bench", "--quiet"]


@pytest.fixture(scope="session")
def single_run(tmp_path_factory, demo_checkpoint_path) -> Path:
    """One complete local ``pipeline`` run of :data:`SINGLE_ARGS` on the demo checkpoint. Read only: copy it
    (:func:`copy_run`) to change it."""
    from ffnet_deploy.cli import main

    out = tmp_path_factory.mktemp("pipeline-single") / "single"
    assert main(["pipeline", "--checkpoint", str(demo_checkpoint_path), *SINGLE_ARGS, "--output", str(out)]) == 0
    return out

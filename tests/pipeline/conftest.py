"""Pipeline output folders made once per test run (tests/session_builds.py): tests copy them (:func:`copy_run`)
instead of running new ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.session_builds import BASE_ARGS, SINGLE_ARGS, folder_of, shared, shared_root

ARGS = BASE_ARGS  # BASE's arguments (tests/session_builds.py says what they are)
__all__ = ["ARGS", "SINGLE_ARGS", "copy_run"]  # SINGLE_ARGS is imported from here by the pipeline tests


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of the output folder ``src`` at ``dst`` (links kept as links), to resume or tamper with."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, demo_checkpoint_path) -> Path:
    """BASE of issue 18: one complete ``pipeline -c digits.pth`` run of :data:`ARGS` (both jobs pass)."""
    root = shared_root(tmp_path_factory)
    shared(root, "base-run")
    return folder_of(root, "base-run") / "base"


@pytest.fixture(scope="session")
def failing_run(tmp_path_factory, demo_checkpoint_path) -> tuple[Path, list[str]]:
    """A complete run whose onnx-int8 really fails parity (calibrated on one black image), and its arguments."""
    root = shared_root(tmp_path_factory)
    value = shared(root, "failing-run")
    return folder_of(root, "failing-run") / "run", value["args"]


@pytest.fixture(scope="session")
def single_run(tmp_path_factory, demo_checkpoint_path) -> Path:
    """One complete local ``pipeline`` run of :data:`SINGLE_ARGS` on the demo checkpoint. Read only: copy it
    (:func:`copy_run`) to change it."""
    root = shared_root(tmp_path_factory)
    shared(root, "single-run")
    return folder_of(root, "single-run") / "single"

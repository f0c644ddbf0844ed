"""Atomic writes: the final name only ever holds a complete file."""

from __future__ import annotations

import pytest

from ffnet_deploy.atomic import atomic_path, write_bytes, write_text
from ffnet_deploy.errors import CheckpointError, ConfigError


def test_success_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text(target, "one", "test")
    write_bytes(target, b"two", "test")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_path(target, "test") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("mid-write")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_unwritable_folder_is_the_given_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"report \| cannot write"):
        write_text(blocker / "r.json", "{}", "report")
    with pytest.raises(CheckpointError, match="cannot write"):
        write_bytes(blocker / "c.pth", b"", "checkpoint", CheckpointError)

"""require_regular_file: every path that is not a regular file is refused from its metadata, before any open."""

from __future__ import annotations

import os

import pytest

from ffnet_deploy.errors import CheckpointError, FFNetDeployError
from ffnet_deploy.inputs import require_regular_file


def test_regular_file_and_symlink_to_it_pass(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    assert require_regular_file(str(f), "image list") == f
    (tmp_path / "link").symlink_to(f)
    assert require_regular_file(tmp_path / "link", "image list") == tmp_path / "link"


@pytest.mark.parametrize(("make", "match"), [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "is a directory"),
    (lambda p: (p / "dangling").symlink_to(p / "nowhere") or p / "dangling", "does not exist"),
])
def test_missing_and_directories(tmp_path, make, match):
    with pytest.raises(FFNetDeployError, match=match) as err:
        require_regular_file(make(tmp_path), "data set")
    assert str(err.value).startswith("data set ") and "\n" not in str(err.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
def test_fifo_and_devices_are_refused_with_the_callers_error_type(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(CheckpointError, match=r"checkpoint .*pipe is not a regular file \(it is a FIFO"):
        require_regular_file(tmp_path / "pipe", "checkpoint", CheckpointError)
    if os.path.exists("/dev/zero"):
        with pytest.raises(CheckpointError, match="it is a character device"):
            require_regular_file("/dev/zero", "checkpoint", CheckpointError)

"""Atomic writes: the final name only ever holds a complete file, with normal permissions, and replaces only what
the caller recognises."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ffnet_deploy.atomic import (
    atomic_path,
    exchange,
    lock_path,
    locked,
    removed_on_failure,
    rename_noreplace,
    write_bytes,
    write_text,
)
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


# --------------------------------------------------------------------------------------------------------------------
# Permissions, full disks, replace rules and the rename primitives
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield 0o644
    os.umask(previous)


def test_files_get_the_umask_permissions(tmp_path, umask_022):
    assert stat.S_IMODE(write_text(tmp_path / "a.txt", "x", "test").stat().st_mode) == umask_022
    os.umask(0o027)
    assert stat.S_IMODE(write_bytes(tmp_path / "b.bin", b"x", "test").stat().st_mode) == 0o640


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("method", ["write_text", "write_bytes", "open"])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, method):
    """Whatever write call fails inside the block, the user gets the file and the reason, and no temporary."""
    target = tmp_path / "out.json"
    target.write_text("previous")
    monkeypatch.setattr(Path, method, _enospc)
    with pytest.raises(ConfigError) as info:
        if method == "open":
            with atomic_path(target, "report") as tmp, tmp.open("wb") as f:
                f.write(b"x")
        else:
            write_text(target, "new", "report") if method == "write_text" else write_bytes(target, b"n", "report")
    assert str(info.value) == (f"report | cannot write {target}: no space left on device; free some space or choose "
                               "another folder")
    monkeypatch.undo()
    assert target.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_full_disk_at_the_rename(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(CheckpointError, match=r"^checkpoint \| cannot write .*c.pth: no space left on device"):
        write_bytes(tmp_path / "c.pth", b"x", "checkpoint", CheckpointError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [OSError, KeyboardInterrupt])
def test_removed_on_failure_takes_back_only_the_folders_it_made(tmp_path, failure):
    made = tmp_path / "a" / "b" / "out"
    with pytest.raises(failure), removed_on_failure(made) as folder:
        folder.mkdir(parents=True)
        (folder / "plot.png").write_bytes(b"x")
        raise failure()
    assert list(tmp_path.iterdir()) == []  # a/ and a/b/ were made in the block too
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(failure), removed_on_failure(mine / "out") as folder:
        folder.mkdir()
        raise failure()
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(failure), removed_on_failure(mine):
        raise failure()
    assert (mine / "notes.txt").read_text() == "keep me"
    with removed_on_failure(tmp_path / "kept") as folder:
        folder.mkdir()
    assert folder.is_dir()


@pytest.mark.parametrize("existing", ["foreign-file", "directory", "symlink"])
def test_may_replace_refuses_what_it_does_not_recognise(tmp_path, existing):
    target = tmp_path / "r.json"
    if existing == "foreign-file":
        target.write_text("precious")
    elif existing == "directory":
        target.mkdir()
    else:
        (tmp_path / "elsewhere").write_text("precious")
        target.symlink_to(tmp_path / "elsewhere")

    def only_ours(path: Path) -> str | None:
        return None if path.read_text() == "ours" else "it is not ours"

    before = {p.name: p.is_dir() or p.read_text() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match=r"^report \| refusing to overwrite .*r.json: it is (not ours|a directory|a "
                                          r"symbolic link); choose another file$"):
        write_text(target, "new", "report", may_replace=only_ours)
    assert {p.name: p.is_dir() or p.read_text() for p in tmp_path.iterdir()} == before
    if existing == "foreign-file":
        target.write_text("ours")
        write_text(target, "new", "report", may_replace=only_ours)
        assert target.read_text() == "new"


def test_rename_noreplace_refuses_an_empty_directory(tmp_path):
    """``os.rename(dir, empty_dir)`` succeeds on Linux; the no-replace rename must not."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "f").write_text("x")
    dst.mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert (src / "f").exists() and list(dst.iterdir()) == []
    dst.rmdir()
    rename_noreplace(src, dst)
    assert (dst / "f").read_text() == "x" and not src.exists()


def test_exchange_swaps_or_says_it_cannot(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").touch()
    if exchange(a, b):
        assert (b / "from-a").exists() and not (a / "from-a").exists()
    else:
        assert (a / "from-a").exists()


def test_lock_is_exclusive_between_processes_and_leaves_no_file(tmp_path):
    target = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from ffnet_deploy.atomic import locked
        with locked({str(target)!r}):
            print("held", flush=True)
            time.sleep(1.5)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with locked(target):
        waited = time.monotonic() - start
        assert lock_path(target).exists()
    holder.wait(timeout=30)
    assert waited > 0.5 and not lock_path(target).exists() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# Reports: only over a report of ours, never inside an artifact
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_report():
    from ffnet_deploy.validate.engine import ValidationReport

    return ValidationReport([], {"variant": "ffnet_test"}, {"kind": "synthetic", "num_images": 0}, {}, {},
                            seconds=0.1)


def _write_report(kind, report, path):
    from ffnet_deploy.validate.report import write_json, write_junit

    return (write_json if kind == "json" else write_junit)(report, path)


@pytest.mark.parametrize("kind", ["json", "junit"])
@pytest.mark.parametrize("victim", ["checkpoint", "other-json", "other-report-kind", "directory", "model-in-artifact",
                                    "new-file-in-artifact"])
def test_reports_never_overwrite_what_is_not_theirs(tmp_path, tiny_report, test_checkpoint, kind, victim):
    import shutil

    other_kind = "junit" if kind == "json" else "json"
    path = tmp_path / "victim"
    if victim == "checkpoint":
        shutil.copy(test_checkpoint, path)
    elif victim == "other-json":
        path.write_text('{"schema": "someone-else/1", "passed": true}\n')
    elif victim == "other-report-kind":
        _write_report(other_kind, tiny_report, path)
    elif victim == "directory":
        path.mkdir()
    else:
        art = tmp_path / "artifact"
        art.mkdir()
        (art / "manifest.json").write_text("{}")
        path = art / "model.onnx"
        if victim == "model-in-artifact":
            path.write_bytes(b"onnx")
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"^report \| (refusing to overwrite .*victim: it is|.*model.onnx is inside "
                                          r"the artifact directory)") as info:
        _write_report(kind, tiny_report, path)
    assert "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot


@pytest.mark.parametrize("kind", ["json", "junit"])
def test_a_report_replaces_its_own_kind(tmp_path, tiny_report, kind, umask_022):
    path = tmp_path / f"r.{kind}"
    _write_report(kind, tiny_report, path)
    assert stat.S_IMODE(path.stat().st_mode) == umask_022
    first = path.read_bytes()
    tiny_report.seconds = 2.0
    _write_report(kind, tiny_report, path)
    assert path.read_bytes() != first and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_validate_cli_refuses_a_report_path_before_validating(tmp_path, test_checkpoint, capsys):
    import shutil

    from ffnet_deploy.cli import main

    victim = tmp_path / "victim.pth.tar"
    shutil.copy(test_checkpoint, victim)
    before = victim.read_bytes()
    for flag in ("--report", "--junit"):
        code = main(["validate", str(tmp_path / "no-artifact"), "-c", str(victim), "--synthetic", "1", flag,
                     str(victim)])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "refusing to overwrite" in err
    assert victim.read_bytes() == before


# --------------------------------------------------------------------------------------------------------------------
# Fused checkpoints: never over the input, only over a fused checkpoint of ours, byte-identical
# --------------------------------------------------------------------------------------------------------------------


def _reparam(src, out, force=False):
    from ffnet_deploy.checkpoints import reparameterize_checkpoint

    return reparameterize_checkpoint(src, out, force=force)


@pytest.mark.parametrize("case", ["input", "input-via-symlink", "input-via-hardlink", "foreign-checkpoint",
                                  "text-file", "directory", "unfused-checkpoint-of-ours"])
def test_reparam_force_replaces_only_a_fused_checkpoint_of_ours(tmp_path, test_checkpoint, case):
    import shutil

    from ffnet_deploy import create_ffnet, save_checkpoint

    src = tmp_path / "model.pth.tar"
    shutil.copy(test_checkpoint, src)
    out = tmp_path / "out.pth"
    if case == "input":
        out = src
    elif case == "input-via-symlink":
        out.symlink_to(src)
    elif case == "input-via-hardlink":
        os.link(src, out)
    elif case == "foreign-checkpoint":
        shutil.copy(test_checkpoint, out)
    elif case == "text-file":
        out.write_text("my notes")
    elif case == "directory":
        out.mkdir()
        (out / "keep").write_text("x")
    else:
        save_checkpoint(create_ffnet("ffnet_test"), out)
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=r"^reparam \| (--output .* is the input checkpoint|refusing to "
                                              r"overwrite .*out.pth: it is (not a fused checkpoint written by "
                                              r"ffnet-deploy reparam|a directory|a symbolic link))") as info:
        _reparam(src, out, force=True)
    assert "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot


def test_reparam_output_is_reproducible_and_replaceable_with_force(tmp_path, test_checkpoint, umask_022):
    import hashlib

    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    _reparam(test_checkpoint, a)
    _reparam(test_checkpoint, b)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert stat.S_IMODE(a.stat().st_mode) == umask_022
    with pytest.raises(CheckpointError, match="already exists; pass --force"):
        _reparam(test_checkpoint, a)
    _reparam(test_checkpoint, a, force=True)  # a fused checkpoint of ours: --force may replace it
    assert a.read_bytes() == b.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth"]


def test_reparam_full_disk_is_one_line(tmp_path, test_checkpoint, monkeypatch):
    real_open = Path.open

    class Full:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, _data):
            _enospc()

    def open_(self, mode="r", *args, **kwargs):
        return Full() if self.name.endswith(".tmp") and "w" in mode else real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(CheckpointError) as info:
        _reparam(test_checkpoint, tmp_path / "fused.pth")
    assert str(info.value) == (f"checkpoint | cannot write {tmp_path / 'fused.pth'}: no space left on device; free "
                               "some space or choose another folder")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """SIGKILL leaves the temporary; the next write removes it, but never one a live writer holds locked."""
    target = tmp_path / "r.json"
    stale, live = tmp_path / ".r.json.deadbeef.tmp", tmp_path / ".r.json.0badf00d.tmp"
    unrelated = tmp_path / ".r.json.backup.tmp"
    for p in (stale, live, unrelated):
        p.write_text("partial")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, time
        fd = os.open({str(live)!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        write_text(target, "{}", "report")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, unrelated.name])

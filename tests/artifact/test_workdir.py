"""Publishing artifact directories (ffnet_deploy/artifact/workdir.py): what --force may replace, concurrent exports,
lock-based stale cleanup, and recovery from a crash in the middle of a replacement."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ffnet_deploy.artifact import workdir as wd
from ffnet_deploy.artifact.manifest import read_manifest
from ffnet_deploy.artifact.workdir import artifact_refusal, check_output, publish, recover, remove_stale_workdirs
from ffnet_deploy.cli import main
from ffnet_deploy.errors import ExportError
from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a file's sha256, ``dir`` or ``-> target`` for a link."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_complete(directory: Path) -> None:
    """A readable manifest whose every listed file is there with its sha256, and nothing unlisted."""
    m = read_manifest(directory)
    for name, sha in m.files.items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == sha, name
    assert artifact_refusal(directory) is None


@pytest.fixture(scope="module")
def artifact_template(tmp_path_factory, test_checkpoint) -> Path:
    """One real onnx artifact of ffnet_test, copied by the tests that need an existing output."""
    out = tmp_path_factory.mktemp("template") / "art"
    export(ExportConfig("onnx", out, check_parity=False), test_checkpoint)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Item 1: --force replaces only an artifact directory, never an input or the user's files
# --------------------------------------------------------------------------------------------------------------------

REFUSALS = {
    "output-is-checkpoint-folder": r"is or holds the input",
    "output-is-checkpoint": r"is or holds the input",
    "output-is-ancestor-of-checkpoint": r"is or holds the input",
    "output-is-dot": r"is the current folder or one that holds it",
    "output-is-parent-of-cwd": r"is the current folder or one that holds it",
    "plain-folder-of-user-files": r"refusing to replace .*: it has no manifest.json that ffnet-deploy can read",
    "artifact-with-a-user-file": r"refusing to replace .*: it holds notes.txt, which its manifest does not list",
    "foreign-manifest": r"refusing to replace .*: it has no manifest.json that ffnet-deploy can read",
    "a-file": r"refusing to replace .*: it is not a directory",
    "symlink-to-artifact": r"refusing to replace .*: it is a symbolic link",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_force_refuses_everything_but_an_artifact_directory(tmp_path, test_checkpoint, artifact_template,
                                                            monkeypatch, case):
    home = tmp_path / "home"
    data = home / "data"
    data.mkdir(parents=True)
    ckpt = data / "model.pth.tar"
    shutil.copy(test_checkpoint, ckpt)
    (data / "notes.txt").write_text("the user's own file")
    output = {"output-is-checkpoint-folder": data, "output-is-checkpoint": ckpt, "output-is-ancestor-of-checkpoint":
              home, "output-is-dot": Path("."), "output-is-parent-of-cwd": Path("..")}.get(case, home / "out")
    monkeypatch.chdir(data if case in ("output-is-dot", "output-is-parent-of-cwd") else tmp_path)
    if case == "plain-folder-of-user-files":
        (home / "out").mkdir()
        (home / "out" / "thesis.tex").write_text("x")
    elif case in ("artifact-with-a-user-file", "symlink-to-artifact"):
        shutil.copytree(artifact_template, home / "real-art" if case == "symlink-to-artifact" else home / "out")
        if case == "symlink-to-artifact":
            (home / "out").symlink_to(home / "real-art")
        else:
            (home / "out" / "notes.txt").write_text("mine")
    elif case == "foreign-manifest":
        (home / "out").mkdir()
        (home / "out" / "manifest.json").write_text('{"name": "my web app"}')
    elif case == "a-file":
        (home / "out").write_text("precious")
    before = snapshot(tmp_path)
    with pytest.raises(ExportError, match=REFUSALS[case]) as info:
        export(ExportConfig("onnx", output, force=True), ckpt)
    assert "\n" not in str(info.value)
    assert snapshot(tmp_path) == before


def test_cli_force_into_the_checkpoint_folder_is_refused(tmp_path, test_checkpoint, capsys):
    """The reported case: ``export -c dir/model.pth.tar -o dir --force`` deleted the checkpoint and its folder."""
    shutil.copy(test_checkpoint, tmp_path / "model.pth.tar")
    (tmp_path / "other.txt").write_text("x")
    before = snapshot(tmp_path)
    for output in (tmp_path, tmp_path / "model.pth.tar"):
        code = main(["export", "-c", str(tmp_path / "model.pth.tar"), "-o", str(output), "-f", "onnx", "--force"])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "is or holds the input" in err
    assert snapshot(tmp_path) == before


def test_force_replaces_an_artifact_directory(tmp_path, test_checkpoint, artifact_template):
    out = tmp_path / "art"
    shutil.copytree(artifact_template, out)
    (tmp_path / "neighbour.txt").write_text("x")
    result = export(ExportConfig("onnx", out, force=True, check_parity=False, dynamic_batch=(1, 1, 2)),
                    test_checkpoint)
    assert result.manifest.batch.dynamic
    assert_complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "neighbour.txt"]


# --------------------------------------------------------------------------------------------------------------------
# Item 3: publishing re-checks at the rename; two exports at once: exactly one wins
# --------------------------------------------------------------------------------------------------------------------


def test_publish_refuses_what_appeared_meanwhile(tmp_path, artifact_template):
    work, out = tmp_path / "work", tmp_path / "out"
    shutil.copytree(artifact_template, work)
    out.mkdir()  # os.rename(dir, empty_dir) would succeed and silently replace it
    with pytest.raises(ExportError, match="appeared while this export ran"):
        publish(work, out)
    assert list(out.iterdir()) == [] and work.is_dir()
    (out / "user.txt").write_text("x")
    with pytest.raises(ExportError, match="refusing to replace .*it has no manifest.json"):
        publish(work, out, force=True)
    assert [p.name for p in out.iterdir()] == ["user.txt"] and work.is_dir()


RACER = """
import os, time
from pathlib import Path
import ffnet_deploy.export as E

real = E.publish
def gated(workdir, output, force=False):
    Path(os.environ["MINE"]).touch()  # this export is finished and about to publish
    while not all(Path(p).exists() for p in os.environ["READY"].split(os.pathsep)):  # ... and so is the other one
        time.sleep(0.05)
    return real(workdir, output, force)
E.publish = gated
"""


def test_two_exports_to_one_output_one_wins(tmp_path, test_checkpoint, server):
    """Two CLI exports in processes of their own (forked from the fork server, tests/forkserver.py), each held just
    before publishing until the other is there too."""
    folder = tmp_path / "folder"
    folder.mkdir()
    out = folder / "art"
    ready = [tmp_path / "ready-0", tmp_path / "ready-1"]
    args = ["export", "-c", str(test_checkpoint), "-o", str(out), "-f", "onnx", "--no-parity"]
    children = [server.start(args, tmp_path, {"MINE": str(mine), "READY": os.pathsep.join(map(str, ready))},
                             setup=RACER) for mine in ready]
    results = [server.wait(child) for child in children]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    errors = [line for line in loser.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "appeared while this export ran" in errors[0], loser
    assert "Traceback" not in loser
    assert_complete(out)
    assert [p.name for p in folder.iterdir()] == ["art"]  # the loser left nothing behind


# --------------------------------------------------------------------------------------------------------------------
# Item 4: liveness is the work directory's lock, not its PID
# --------------------------------------------------------------------------------------------------------------------

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_stale_cleanup_trusts_locks_not_pids(tmp_path):
    # A live export in another PID namespace: its folder names a PID that does not exist here.
    live = tmp_path / ".out.tmp-999999999-live"
    dead_named_alive = tmp_path / f".out.tmp-{os.getpid()}-dead"  # a PID that runs here, but nobody holds the lock
    dead = tmp_path / ".out.tmp-999999998-dead"
    other = tmp_path / ".other.tmp-999999999-dead"
    for d in (live, dead_named_alive, dead, other):
        d.mkdir()
        (d / "model.onnx").write_text("partial")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed = remove_stale_workdirs(tmp_path / "out")
        assert sorted(removed) == sorted([dead_named_alive, dead])
        assert (live / "model.onnx").exists() and other.exists()
    finally:
        holder.kill()
        holder.wait()
    assert remove_stale_workdirs(tmp_path / "out") == [live]  # its process is gone: now it is stale


def test_own_work_directory_is_locked_while_it_lives(tmp_path):
    out = tmp_path / "out"
    with wd.workdir_for(out) as work:
        fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        assert recover(out) == [] and work.is_dir()
    assert work.is_dir()  # the block ended normally: the caller published or removes it
    assert recover(out) == [work]


# --------------------------------------------------------------------------------------------------------------------
# Item 5: a crash between the two renames of the fallback never costs the only complete copy
# --------------------------------------------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: nothing of publish's own rollback runs for it."""


def _crash_between_renames(monkeypatch):
    real = wd._rename

    def rename(src: Path, dst: Path) -> None:
        real(src, dst)
        if ".old-" in dst.name:
            raise Crash

    monkeypatch.setattr(wd, "exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    monkeypatch.setattr(wd, "_rename", rename)


@pytest.mark.parametrize("then", ["failing-force-export", "export-without-force", "recover"])
def test_crash_between_renames_then_a_failing_export_keeps_the_old_artifact(tmp_path, test_checkpoint,
                                                                            artifact_template, monkeypatch, then):
    out = tmp_path / "art"
    shutil.copytree(artifact_template, out)
    old = snapshot(out)
    _crash_between_renames(monkeypatch)
    with pytest.raises(Crash):
        export(ExportConfig("onnx", out, force=True, check_parity=False), test_checkpoint)
    monkeypatch.undo()
    assert not out.exists() and [p.name.split("-")[0] for p in tmp_path.iterdir()] == [".art.old"]
    if then == "failing-force-export":
        with pytest.raises(Exception, match="does not fit ffnet_1"):
            export(ExportConfig("onnx", out, force=True), test_checkpoint, "ffnet_1")
    elif then == "export-without-force":
        with pytest.raises(ExportError, match="already exists"):
            export(ExportConfig("onnx", out), test_checkpoint)
    else:
        assert recover(out) == []
    assert snapshot(out) == old and [p.name for p in tmp_path.iterdir()] == ["art"]


def test_fallback_replacement_without_exchange(tmp_path, test_checkpoint, artifact_template, monkeypatch):
    out = tmp_path / "art"
    shutil.copytree(artifact_template, out)
    monkeypatch.setattr(wd, "exchange", lambda a, b: False)
    export(ExportConfig("onnx", out, force=True, check_parity=False, dynamic_batch=(1, 1, 2)), test_checkpoint)
    assert_complete(out)
    assert read_manifest(out).batch.dynamic and [p.name for p in tmp_path.iterdir()] == ["art"]


def test_check_output_returns_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output(Path("new"), False) == tmp_path / "new"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# Signals during publishing: raised before the rename (nothing published) or after it (published, and said so)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["during-the-check", "during-the-rename"])
def test_signal_while_publishing(tmp_path, artifact_template, monkeypatch, when):
    import signal

    from ffnet_deploy.errors import Interrupted
    from ffnet_deploy.interrupts import handle_signals

    work, out = tmp_path / ".out.tmp-1-x", tmp_path / "out"
    shutil.copytree(artifact_template, work)
    name = "_check_replaceable" if when == "during-the-check" else "rename_noreplace"
    real = getattr(wd, name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # held back by publish: the step still completes
        return real(*args, **kwargs)

    monkeypatch.setattr(wd, name, signalled)
    with pytest.raises(Interrupted) as info, handle_signals():
        publish(work, out)
    if when == "during-the-check":
        assert str(info.value) == "interrupted by SIGTERM; nothing was written"
        assert not out.exists() and work.is_dir()
    else:
        assert str(info.value) == f"interrupted by SIGTERM; the artifact was already complete in {out}"
        assert_complete(out) and not work.exists()

"""Issue 18, cases 1, 2, 4 and 21: ``report merge`` trusts no job record, ``--force`` removes only what the pipeline
recorded, one pipeline at a time per output folder, and an interrupt says what was kept.

Each test failed before its fix (a file outside ``--out`` written, a user's file or the input checkpoint deleted, two
pipelines writing one folder, "nothing was written" after finished stages). They copy one small pipeline run (ONNX
FP32 of the digits model, ``--no-bench``) instead of running their own where they can.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from ffnet_deploy.cli import main

pytest.importorskip("onnxruntime")


def one_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and "Traceback" not in err


def _args(checkpoint: Path, out: Path, *more: str) -> list[str]:
    return ["pipeline", "--checkpoint", str(checkpoint), "--formats", "onnx", "--precisions", "fp32", "--eval-data",
            "digits", "--eval-limit", "50", "--no-bench", "--output", str(out), "--quiet", *more]


@pytest.fixture(scope="session")
def onnx_run(tmp_path_factory, demo_checkpoint_path) -> Path:
    """One complete pipeline output folder (read-only: tests copy it with :func:`copy_run`)."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    assert main(_args(demo_checkpoint_path, out)) == 0
    return out


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1: report merge trusts no job record ---------------------------------------------------------------------------


def test_1_merge_refuses_a_symlinked_artifact_folder(onnx_run, tmp_path, capsys):
    src = copy_run(onnx_run, tmp_path / "in")
    secret = tmp_path / "secret"
    shutil.move(src / "artifacts" / "onnx-fp32", secret)  # a complete artifact, but in someone else's folder
    (src / "artifacts" / "onnx-fp32").symlink_to(secret, target_is_directory=True)
    code = main(["report", "merge", str(src), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and "symbolic link" in err, err
    assert not (tmp_path / "merged" / "artifacts" / "onnx-fp32").exists()
    assert not (tmp_path / "merged" / "index.html").exists()


def test_1_merge_refuses_a_symlinked_artifact_file(onnx_run, tmp_path, capsys):
    src = copy_run(onnx_run, tmp_path / "in")
    model = src / "artifacts" / "onnx-fp32" / "model.onnx"
    shutil.move(model, tmp_path / "elsewhere.onnx")
    model.symlink_to(tmp_path / "elsewhere.onnx")
    code = main(["report", "merge", str(src), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and "symbolic link" in err, err
    assert not (tmp_path / "merged" / "artifacts" / "onnx-fp32").exists()


def test_1_merge_verifies_artifacts_against_their_manifests(onnx_run, tmp_path, capsys):
    src = copy_run(onnx_run, tmp_path / "in")
    with open(src / "artifacts" / "onnx-fp32" / "model.onnx", "ab") as f:
        f.write(b"tampered")
    code = main(["report", "merge", str(src), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and "model.onnx" in err and "sha256" in err, err
    assert not (tmp_path / "merged" / "artifacts" / "onnx-fp32").exists()
    assert not (tmp_path / "merged" / "index.html").exists()


@pytest.mark.parametrize("path", ["plots", "artifacts/onnx-fp16", "."])
def test_1_a_record_names_only_its_own_artifact_folder(onnx_run, tmp_path, capsys, path):
    src = copy_run(onnx_run, tmp_path / "in")
    record_path = src / "jobs" / "onnx-fp32.json"
    record = json.loads(record_path.read_text())
    record["artifact"]["path"] = path
    record_path.write_text(json.dumps(record))
    if path == "artifacts/onnx-fp16":
        shutil.copytree(src / "artifacts" / "onnx-fp32", src / path)
    code = main(["report", "merge", str(src), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and "artifacts/onnx-fp32" in err, err
    assert not (tmp_path / "merged" / "index.html").exists()


def test_1_merge_never_writes_through_a_symlink_in_out(onnx_run, tmp_path, capsys):
    src = copy_run(onnx_run, tmp_path / "in")
    out = copy_run(onnx_run, tmp_path / "merged")  # an earlier merge, whose artifacts/ was made a link elsewhere
    prod = tmp_path / "prod"
    prod.mkdir()
    (prod / "keep.txt").write_text("a user's file")
    shutil.rmtree(out / "artifacts")
    (out / "artifacts").symlink_to(prod, target_is_directory=True)
    code = main(["report", "merge", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and "symbolic link" in err, err
    assert tree(prod) == {"keep.txt": b"a user's file"}


# -- 2: --force removes only what the pipeline recorded -------------------------------------------------------------


def test_2_force_keeps_the_input_checkpoint_inside_the_output(onnx_run, tmp_path, demo_checkpoint_path):
    f = copy_run(onnx_run, tmp_path / "f")
    mine = f / "checkpoint" / "my_model.pth"
    shutil.copy(demo_checkpoint_path, mine)
    before = mine.read_bytes()
    assert main(_args(mine, f, "--force")) == 0
    assert mine.read_bytes() == before
    assert (f / "artifacts" / "onnx-fp32" / "manifest.json").is_file()


def test_2_a_planted_state_does_not_delete_user_files(onnx_run, tmp_path, demo_checkpoint_path, capsys):
    f = tmp_path / "f"
    user = {"plots/my_plot.png": b"\x89PNG mine", "checkpoint/best_model.pth": b"my weights",
            "artifacts/mine/notes.txt": b"my notes"}
    for rel, data in user.items():
        (f / rel).parent.mkdir(parents=True, exist_ok=True)
        (f / rel).write_bytes(data)
    (f / ".pipeline").mkdir()
    shutil.copy(onnx_run / ".pipeline" / "state.json", f / ".pipeline" / "state.json")  # planted
    args = _args(demo_checkpoint_path, f, "--force")
    args.remove("--quiet")
    assert main(args) == 0
    assert {rel: (f / rel).read_bytes() for rel in user} == user
    assert "kept" in capsys.readouterr().err  # and says so


@pytest.mark.parametrize("name", ["checkpoint", ".pipeline", "jobs"])
def test_2_force_refuses_symlinks_before_deleting_anything(onnx_run, tmp_path, demo_checkpoint_path, capsys, name):
    f = copy_run(onnx_run, tmp_path / "f")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(f / name, elsewhere)
    (elsewhere / "user.txt").write_text("a user's file")
    (f / name).symlink_to(elsewhere, target_is_directory=True)
    before, outside = tree(f), tree(elsewhere)
    code = main(_args(demo_checkpoint_path, f, "--force"))
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and "symbolic link" in err and name in err, err
    assert tree(f) == before and tree(elsewhere) == outside


def test_2_force_removes_what_it_recorded_and_keeps_what_changed(onnx_run, tmp_path, demo_checkpoint_path):
    f = copy_run(onnx_run, tmp_path / "f")
    (f / "artifacts" / "onnx-fp32" / "notes.txt").write_text("mine")  # in a recorded artifact: not ours to delete
    args = _args(demo_checkpoint_path, f, "--force")
    args[args.index("fp32")] = "fp16"
    assert main(args) == 0
    assert not (f / "jobs" / "onnx-fp32.json").exists()  # recorded and unchanged: removed
    assert (f / "artifacts" / "onnx-fp32" / "notes.txt").read_text() == "mine"  # changed since: kept, as export does
    assert (f / "artifacts" / "onnx-fp16" / "manifest.json").is_file()
    results = json.loads((f / "results.json").read_text())
    assert [j["id"] for j in results["jobs"]] == ["onnx-fp16"]


def test_2_force_keeps_a_recorded_file_given_as_the_checkpoint(onnx_run, tmp_path):
    """The pipeline wrote checkpoint/fused.pth and recorded it, but this run reads it: an input is never removed."""
    f = copy_run(onnx_run, tmp_path / "f")
    fused = f / "checkpoint" / "fused.pth"
    before = fused.read_bytes()
    assert main(_args(fused, f, "--force")) == 0
    assert fused.read_bytes() == before


# -- 4: one pipeline per output folder ------------------------------------------------------------------------------


def test_4_a_second_pipeline_on_the_same_output_is_refused(onnx_run, tmp_path, demo_checkpoint_path, capsys, server):
    """The first pipeline is a process of its own (forked from the fork server, tests/forkserver.py); the second,
    started while the first validates, runs in this one."""
    f = copy_run(onnx_run, tmp_path / "f")
    first = _args(demo_checkpoint_path, f, "--force")
    first.remove("--quiet")
    first[first.index("50")] = "300"  # validation long enough for the second one to start meanwhile
    child = server.start(first, tmp_path, {"COLUMNS": "200"})
    child.wait_for_line("onnx-fp32: exporting")
    try:
        code = main(_args(demo_checkpoint_path, f, "--force"))
        err = capsys.readouterr().err
    finally:
        first_code, log = server.wait(child)
    assert code == 1 and one_line(err) and "another pipeline" in err, err
    assert first_code == 0, log[-2000:]
    results = json.loads((f / "results.json").read_text())
    assert [j["status"] for j in results["jobs"]] == ["passed"]


def test_4_merge_into_a_running_pipelines_output_is_refused(onnx_run, tmp_path, capsys):
    from ffnet_deploy.pipeline.engine import output_lock

    src = copy_run(onnx_run, tmp_path / "in")
    out = copy_run(onnx_run, tmp_path / "out")
    before = tree(out)
    with output_lock(out, "pipeline"):
        code = main(["report", "merge", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and "another pipeline" in err, err
    assert tree(out) == before


# -- 21: an interrupt says what was kept -----------------------------------------------------------------------------


def test_21_interrupt_says_what_was_kept(onnx_run, tmp_path, demo_checkpoint_path):
    from ffnet_deploy.errors import Interrupted
    from ffnet_deploy.pipeline.config import PipelineConfig
    from ffnet_deploy.pipeline.engine import run_pipeline

    f = copy_run(onnx_run, tmp_path / "f")

    from ffnet_deploy.progress import Events

    class StopAtValidate(Events):
        def stage(self, name):
            if name == "validate":
                raise Interrupted(signal.SIGINT)  # where the signal handler would raise it

    config = PipelineConfig(output=f, checkpoint=demo_checkpoint_path, formats=("onnx",), precisions=("fp32",),
                            eval_data="digits", eval_limit=50, bench=False, resume=True)
    with pytest.raises(Interrupted) as caught:
        run_pipeline(config, ui=StopAtValidate())
    message = str(caught.value)
    assert "nothing was written" not in message, message
    assert "onnx-fp32" in message and "export" in message and "--resume" in message, message
    assert (f / "artifacts" / "onnx-fp32" / "manifest.json").is_file()

"""--resume trusts nothing it reads back (issue 18 items 3, 5-9): a kill at any stage, another checkpoint, an edited
state, a new resolution, a plain rerun, and an artifact whose content is not what its name and manifest say.

Every case copies a session run (tests/pipeline/conftest.py) instead of running a fresh pipeline where it can.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ffnet_deploy.cli import main
from tests.pipeline.conftest import ARGS, copy_run

REPORT_FILES = ("index.md", "index.html", "results.json", "junit.xml")


def assert_report_holds(out: Path) -> dict | None:
    """The report of ``out`` never names an artifact its folder does not hold: every artifact that ``results.json``
    and ``jobs/*.json`` name is intact (files match the manifest) and is the one they recorded (sha256); a report
    file without ``results.json`` beside it is a leftover of another run. Returns the results (``None``: no report).
    """
    from ffnet_deploy.artifact.inspect import verify_files
    from ffnet_deploy.artifact.manifest import read_manifest

    def check(job: dict, where: str) -> None:
        if not job.get("artifact") or job["status"] not in ("exported", "passed", "failed"):
            return
        folder = out / job["artifact"]["path"]
        assert (folder / "manifest.json").is_file(), f"{where}: {job['id']} names {folder}, which is gone"
        manifest = read_manifest(folder)
        verify_files(manifest, folder, "test")
        assert manifest.artifact.sha256 == job["export"]["sha256"], \
            f"{where}: {job['id']} names an artifact the folder does not hold (sha256 differs)"

    results = None
    if (out / "results.json").is_file():
        results = json.loads((out / "results.json").read_text())
        for job in results["jobs"]:
            check(job, "results.json")
            assert (out / "jobs" / f"{job['id']}.json").is_file()
    else:
        assert not [n for n in REPORT_FILES if (out / n).exists()], "a report without its results.json"
    for path in sorted((out / "jobs").glob("*.json")) if (out / "jobs").is_dir() else []:
        check(json.loads(path.read_text()), str(path.relative_to(out)))
    return results


def _pipeline(checkpoint: Path, out: Path, *extra: str, args: list[str] = ARGS) -> int:
    return main(["pipeline", "-c", str(checkpoint), "-o", str(out), *args, *extra])


def _jobs(out: Path) -> dict[str, dict]:
    return {j["id"]: j for j in json.loads((out / "results.json").read_text())["jobs"]}


# -- item 5: jobs of another run are never current --------------------------------------------------------------------


def test_resume_with_another_checkpoint_drops_the_old_jobs(base_run, tmp_path, demo_checkpoint_path):
    """Another checkpoint (the fused copy of the same model: another file, another sha256) and only fp32: onnx-int8
    was made from the old checkpoint and is not requested, so it is in neither the report nor jobs/."""
    out = copy_run(base_run, tmp_path / "k")
    other = shutil.copy(base_run / "checkpoint" / "fused.pth", tmp_path / "other.pth")
    args = [a if a != "fp32,int8" else "fp32" for a in ARGS]
    assert _pipeline(Path(other), out, "--resume", args=args) == 0
    results = assert_report_holds(out)
    from ffnet_deploy.hashing import sha256_file

    assert results["checkpoint"]["sha256"] == sha256_file(other)
    assert [j["id"] for j in results["jobs"]] == ["onnx-fp32"]
    assert sorted(p.name for p in (out / "jobs").iterdir()) == ["onnx-fp32.json"]
    assert "onnx-int8" not in (out / "index.md").read_text()
    # the artifact itself is the tool's and stays; a later run of that job makes it again
    assert (out / "artifacts" / "onnx-int8" / "manifest.json").is_file()


def test_resume_with_fewer_jobs_reports_only_those(base_run, tmp_path, demo_checkpoint_path):
    out = copy_run(base_run, tmp_path / "k")
    args = [a if a != "fp32,int8" else "fp32" for a in ARGS]
    assert _pipeline(demo_checkpoint_path, out, "--resume", args=args) == 0
    assert list(_jobs(out)) == ["onnx-fp32"]
    assert not (out / "jobs" / "onnx-int8.json").exists()
    # the records of the job left out are kept in the state: asking for it again reuses its export
    assert _pipeline(demo_checkpoint_path, out, "--resume") == 0
    assert _jobs(out)["onnx-int8"]["export"]["reused"] is True


# -- item 6: an edited state is not trusted --------------------------------------------------------------------------


def test_edited_verdict_in_the_state_is_revalidated(failing_run, tmp_path, capsys):
    """The failing int8's validate record edited to pass (as a CI cache from another branch could hold): --resume
    validates it again and reports the real failure."""
    base, args = failing_run
    out = copy_run(base, tmp_path / "k")
    state_path = out / ".pipeline" / "state.json"
    state = json.loads(state_path.read_text())
    record = state["stages"]["validate:onnx-int8"]
    assert record["outputs"]["verdict"] == "fail"
    record["outputs"].update(verdict="pass", failures=[])
    state_path.write_text(json.dumps(state))
    capsys.readouterr()
    assert main(["pipeline", *args, "-o", str(out), "--resume"]) == 1
    jobs = _jobs(out)
    assert jobs["onnx-int8"]["status"] == "failed" and jobs["onnx-int8"]["parity"]["verdict"] == "fail"
    assert jobs["onnx-fp32"]["status"] == "passed"
    assert "onnx-int8: validation unchanged, reused" not in capsys.readouterr().err


def test_edited_metrics_are_not_reported(base_run, tmp_path, demo_checkpoint_path):
    out = copy_run(base_run, tmp_path / "k")
    state_path = out / ".pipeline" / "state.json"
    state = json.loads(state_path.read_text())
    real = state["stages"]["validate:onnx-fp32"]["outputs"]["metrics"]["accuracy"]
    state["stages"]["validate:onnx-fp32"]["outputs"]["metrics"]["accuracy"] = 12.5
    state["stages"]["inspect"]["outputs"]["params"] = 1
    state_path.write_text(json.dumps(state))
    assert _pipeline(demo_checkpoint_path, out, "--resume") == 0
    results = json.loads((out / "results.json").read_text())
    assert _jobs(out)["onnx-fp32"]["parity"]["metrics"]["accuracy"] == real
    assert results["checkpoint"]["params"] > 1


def test_untouched_state_is_still_reused(base_run, tmp_path, demo_checkpoint_path, capsys):
    out = copy_run(base_run, tmp_path / "k")
    capsys.readouterr()
    assert main(["pipeline", "-c", str(demo_checkpoint_path), "-o", str(out), *[a for a in ARGS if a != "--quiet"],
                 "--resume"]) == 0
    err = capsys.readouterr().err
    assert err.count("export unchanged, reused") == 2 and err.count("validation unchanged, reused") == 2


# -- item 7: the calibration cache is keyed per model ----------------------------------------------------------------


def test_resume_with_a_new_resolution_recalibrates_int8(base_run, tmp_path, demo_checkpoint_path):
    out = copy_run(base_run, tmp_path / "k")
    assert _pipeline(demo_checkpoint_path, out, "--resume", "--resolution", "64") == 0
    jobs = _jobs(out)
    assert {k: j["status"] for k, j in jobs.items()} == {"onnx-fp32": "passed", "onnx-int8": "passed"}, \
        {k: j["reason"] for k, j in jobs.items()}
    for job in ("onnx-fp32", "onnx-int8"):
        assert json.loads((out / "artifacts" / job / "manifest.json").read_text())["resolution"] == 64
    assert_report_holds(out)


# -- item 8: a reused failure keeps its reason ------------------------------------------------------------------------


def test_plain_resume_keeps_the_failure_reason(failing_run, tmp_path):
    base, args = failing_run
    out = copy_run(base, tmp_path / "k")
    first = _jobs(out)["onnx-int8"]
    assert first["status"] == "failed" and first["reason"]
    assert main(["pipeline", *args, "-o", str(out), "--resume"]) == 1
    again = json.loads((out / "results.json").read_text())
    assert _jobs(out)["onnx-int8"]["reason"] == first["reason"]
    assert f"onnx-int8 failed: {first['reason']}" in again["summary"]["look_at"]
    assert not [line for line in again["summary"]["look_at"] if line.endswith("failed: None")]


# -- item 9: the format comes from the file's content -----------------------------------------------------------------


def test_onnx_relabelled_as_a_tensorrt_engine_is_refused(failing_run, tmp_path, demo_checkpoint_path, capsys):
    """The failing int8 ONNX renamed model.engine, its manifest saying format tensorrt (hashes consistent): it used to
    be NOT RUN on this machine (no TensorRT), so validate exited 0."""
    base, _ = failing_run
    art = shutil.copytree(base / "artifacts" / "onnx-int8", tmp_path / "trt")
    (art / "model.onnx").rename(art / "model.engine")
    manifest = json.loads((art / "manifest.json").read_text())
    sha = manifest["artifact"]["sha256"]
    manifest.update(format="tensorrt", artifact={"path": "model.engine", "sha256": sha},
                    files={"model.engine": sha})
    (art / "manifest.json").write_text(json.dumps(manifest))
    passing = base / "artifacts" / "onnx-fp32"
    capsys.readouterr()
    # next to a passing artifact: "1 passed, 1 not run" exited 0
    code = main(["validate", str(passing), str(art), "-c", str(demo_checkpoint_path), "--data", "digits", "--limit",
                 "50"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code != 0 and "Traceback" not in text, text
    lines = [line for line in text.splitlines() if "holds an ONNX model" in line]
    assert lines and "says tensorrt" in lines[0], text
    # the bare file alone (no manifest next to it) is refused alike
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(art / "model.engine", bare / "model.engine")
    capsys.readouterr()
    code = main(["validate", str(passing), str(bare / "model.engine"), "-c", str(demo_checkpoint_path),
                 "--synthetic", "4"])
    text = "".join(capsys.readouterr())
    assert code != 0 and "holds an ONNX model" in text and "Traceback" not in text, text


def test_real_artifacts_still_validate(base_run, demo_checkpoint_path):
    from ffnet_deploy.artifact.formats import content_format
    from ffnet_deploy.validate.engine import validate

    fp32 = base_run / "artifacts" / "onnx-fp32"
    assert content_format(fp32 / "model.onnx") == "onnx" and content_format(fp32 / "manifest.json") is None
    report = validate([fp32, fp32 / "model.onnx"], demo_checkpoint_path)
    assert [r.status for r in report.artifacts] == ["passed", "passed"]

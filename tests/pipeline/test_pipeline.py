"""``ffnet-deploy pipeline`` end to end on the digits demo model: real exports, real validation, real timing."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffnet_deploy.artifact.formats import demo_formats, get_format
from ffnet_deploy.cli import main
from tests.pipeline.conftest import SINGLE_ARGS
from tests.session_builds import DEMO_BENCH as FAST_BENCH
from tests.session_builds import DEMO_RUN, shared, shared_root

pytest.importorskip("openvino")
pytest.importorskip("coremltools")


def _demo_jobs() -> int:
    """How many jobs the demo runs here: 13, or 11 without the litert extra."""
    return sum(len(get_format(f).precisions) for f in demo_formats())


# The tests of the session's demo run (the demo_run fixture, tests/conftest.py) go to one xdist worker (``--dist
# loadgroup``), in this order: one resumes it in place, one runs a second pipeline on its folder.
DEMO_RUN_GROUP = pytest.mark.xdist_group(DEMO_RUN)


@DEMO_RUN_GROUP
def test_demo_passes_parity_everywhere_with_accuracy(demo_run):
    out, code, _ = demo_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "ffnet-deploy/pipeline/1"  # the one schema-ID spelling (was ffnet-deploy.pipeline/1)
    jobs = {j["id"]: j for j in results["jobs"]}
    expected = {f"{f}-{p}" for f in ("onnx", "openvino", "coreml") for p in ("fp32", "fp16", "int8")}
    # the precisions ExecuTorch and LiteRT make; no skipped fp16 job; LiteRT when its extra is installed (CI has it)
    expected |= {f"{f}-{p}" for f in ("executorch", "litert") for p in ("fp32", "int8") if f in demo_formats()}
    assert set(jobs) == expected
    for job in jobs.values():
        assert job["status"] == "passed", (job["id"], job["reason"])
        parity = job["parity"]
        assert parity["verdict"] == "pass" and parity["profile"] == job["precision"]
        # labelled digits: every artifact has an accuracy within the int8 budget of the reference
        assert parity["metrics"]["reference_accuracy"] >= 97
        assert parity["metrics"]["accuracy_drop"] <= 1.0
        assert (out / job["artifact"]["manifest"]).is_file()
    assert jobs["coreml-int8"]["parity"]["runtime"] == "coreml-reference"
    assert results["data"]["labelled"] is True


@DEMO_RUN_GROUP
def test_demo_quiet_prints_the_summary_line_alone(demo_run, tmp_path_factory):
    """``--quiet`` (README: "prints one summary line"): nothing else on stdout or stderr, neither the pipeline's
    progress nor the libraries' (NNCF's bars and info lines, torch's warnings on importing NNCF and torchao, the
    native lines of ExecuTorch and LiteRT)."""
    out, code, _ = demo_run
    printed = shared(shared_root(tmp_path_factory), "demo-run")
    assert code == 0
    assert printed["stdout"] == f"{_demo_jobs()} passed, 0 failed, 0 skipped, 0 errors: {out / 'index.html'}\n"
    assert printed["stderr"] == "", printed["stderr"]


@DEMO_RUN_GROUP
def test_demo_report_folder(demo_run):
    out, _, _ = demo_run
    for name in ("index.md", "index.html", "results.json", "junit.xml"):
        assert (out / name).is_file(), name
    import xml.etree.ElementTree as ET

    root = ET.parse(out / "junit.xml").getroot()
    # the one JUnit layout: a suite per job (13 with LiteRT's extra), a case per gated check, nothing failed
    suites = root.findall("testsuite")
    assert len(suites) == _demo_jobs() and int(root.get("failures")) == 0 and int(root.get("errors")) == 0
    assert all(int(s.get("tests")) >= 1 for s in suites)
    html = (out / "index.html").read_text()
    assert "onnx-int8" in html and "data:image/png;base64," in html


@DEMO_RUN_GROUP
def test_recommendation_is_the_fastest_that_passed(demo_run):
    out, _, _ = demo_run
    results = json.loads((out / "results.json").read_text())
    for rec in results["recommendations"]:
        timed = [j for j in results["jobs"] if get_format(j["format"]).bench_runtime == rec["runtime"]
                 and j["status"] == "passed" and (j.get("bench") or {}).get("p50_ms")]
        if rec["runtime"] == "coreml":
            assert rec["job"] is None and "macOS" in rec["why"]  # no Core ML latency on Linux
            continue
        assert timed, rec
        fastest = min(timed, key=lambda j: j["bench"]["p50_ms"])
        fp32 = next(j for j in timed if j["precision"] == "fp32")
        if rec["speedup_low"] is not None and rec["speedup_low"] <= 1.0:
            # the blocks disagree on which is faster: the FP32 artifact, and the recommendation says why
            assert rec["job"] == fp32["id"] and "not clearly faster" in rec["why"]
            fastest = fp32
        assert rec["job"] == fastest["id"]
        assert rec["speedup_vs_fp32"] == pytest.approx(fp32["bench"]["p50_ms"] / fastest["bench"]["p50_ms"])
        assert rec["verdict"] in ("stable", "noisy: rerun on a quiet machine")
        # every speedup is against the same eager-PyTorch measurement of this run
        assert all(j["bench"]["torch_p50_ms"] == timed[0]["bench"]["torch_p50_ms"] for j in timed)
        # ... and that baseline ran with its OpenMP pool told not to spin, in a worker process
        assert all(j["bench"]["torch_omp_wait_policy"] == "PASSIVE" for j in timed)
        assert all(j["bench"]["verdict"] in ("stable", "noisy: rerun on a quiet machine") for j in timed)


@DEMO_RUN_GROUP
@pytest.mark.parametrize("fmt", ["executorch", "litert"])
def test_phone_formats_run_in_the_pipeline_timed_on_this_host(demo_run, fmt):
    """A phone format's jobs run export -> validate -> bench in the pipeline with no special case, and their bench
    entries and the recommendation say the timing is this host's, not the phone's."""
    if fmt not in demo_formats():
        pytest.skip(f"the {fmt} extra is not installed, so the demo runs no {fmt} job")
    out, code, _ = demo_run
    results = json.loads((out / "results.json").read_text())
    assert code == 0, results["summary"]
    jobs = {j["id"]: j for j in results["jobs"] if j["format"] == fmt}
    assert set(jobs) == {f"{fmt}-{p}" for p in get_format(fmt).precisions}
    for job in jobs.values():
        assert job["status"] == "passed", job
        assert job["bench"]["runtime"] == fmt and job["bench"]["p50_ms"] > 0
        assert job["bench"]["host_measurement"].startswith("host measurement")
    (rec,) = [r for r in results["recommendations"] if r["runtime"] == fmt]
    assert rec["job"] in jobs and "not device latency" in rec["why"]
    assert any("timed on this host, not on the device it is for" in line for line in results["summary"]["look_at"])


@DEMO_RUN_GROUP
def test_resume_reuses_everything_unchanged(demo_run, demo_result, every_cpu, monkeypatch, capsys):
    # every_cpu: the run was made on every CPU, and the bench's thread count is part of what it reuses
    out, _, _ = demo_run
    monkeypatch.setenv("FFNET_DEPLOY_CACHE", str(demo_result.path.parent.parent))
    before = {p: p.stat().st_mtime_ns for p in (out / "artifacts").rglob("manifest.json")}
    code = main(["pipeline", "--demo", "--output", str(out), "--resume", *FAST_BENCH])
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("export unchanged, reused") == _demo_jobs()
    assert "validation unchanged" in err and "bench: unchanged" in err
    assert {p: p.stat().st_mtime_ns for p in (out / "artifacts").rglob("manifest.json")} == before


@DEMO_RUN_GROUP
def test_existing_output_needs_resume_or_force(demo_run, capsys):
    out, _, _ = demo_run
    assert main(["pipeline", "--demo", "--output", str(out)]) == 1
    assert "--resume" in capsys.readouterr().err


@pytest.fixture
def digits_checkpoint(demo_checkpoint_path, tmp_path):
    return demo_checkpoint_path


def _comparable(results: dict) -> dict:
    """What must agree between a single run and merged --only runs (times and paths aside)."""
    jobs = {}
    for j in results["jobs"]:
        parity = j["parity"] or {}
        jobs[j["id"]] = {"status": j["status"], "sha256": (j["export"] or {}).get("sha256"),
                         "verdict": parity.get("verdict"), "metrics": parity.get("metrics")}
    return {"jobs": jobs, "recommendations": results["recommendations"], "checkpoint": results["checkpoint"]["sha256"]}


def test_only_jobs_merge_to_the_single_run(tmp_path, digits_checkpoint, single_run, monkeypatch):
    common = ["--checkpoint", str(digits_checkpoint), *SINGLE_ARGS]  # single_run is `pipeline *common` (conftest)

    plan_out = subprocess.run([sys.executable, "-m", "ffnet_deploy", "pipeline", *common, "--output",
                               str(tmp_path / "x"), "--plan"], capture_output=True, text=True, check=True).stdout
    plan = json.loads(plan_out)
    assert [j["id"] for j in plan["jobs"]] == ["onnx-fp32", "onnx-int8"]
    assert "calibration" in plan["jobs"][1]["needs"] and "--only onnx/int8" in plan["jobs"][1]["command"]
    assert not (tmp_path / "x").exists()  # --plan runs nothing

    # The CI matrix: each entry's command runs on its own runner (here: its own folder), into the same layout.
    matrix_out = subprocess.run([sys.executable, "-m", "ffnet_deploy", "pipeline", *common, "--output",
                                 "out/pipeline", "--plan", "--emit", "github-matrix"], capture_output=True, text=True,
                                check=True, cwd=tmp_path).stdout
    assert len(matrix_out.strip().splitlines()) == 1  # one line, as $GITHUB_OUTPUT takes it
    include = json.loads(matrix_out)["include"]
    assert [(e["job"], e["device"], e["runs-on"]) for e in include] == [
        ("onnx-fp32", "cpu", "ubuntu-latest"), ("onnx-int8", "cpu", "ubuntu-latest")]
    runners = []
    for entry in include:
        words = shlex.split(entry["command"])
        assert words[0] == "ffnet-deploy" and words[-2:] == ["--only", entry["job"].replace("-", "/")]
        runner = tmp_path / f"runner-{entry['job']}"
        runner.mkdir()
        monkeypatch.chdir(runner)
        assert main(words[1:]) == 0
        runners.append(runner / "out" / "pipeline")
    monkeypatch.chdir(tmp_path)
    a, b = runners
    assert [j["id"] for j in json.loads((a / "results.json").read_text())["jobs"]] == ["onnx-fp32"]
    assert main(["report", "merge", str(a), str(b), "--out", str(tmp_path / "merged")]) == 0
    single = json.loads((single_run / "results.json").read_text())
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert _comparable(merged) == _comparable(single)
    assert (tmp_path / "merged" / "artifacts" / "onnx-int8" / "manifest.json").is_file()
    assert (tmp_path / "merged" / "index.html").is_file()


def test_interrupt_during_calibration_then_resume_keeps_the_exports(tmp_path, digits_checkpoint, server):
    """Both runs are processes of their own (forked from the fork server, tests/forkserver.py). Run in this process,
    the resume left it so that a later test's SIGTERM to itself (tests/artifact/test_workdir.py) ended it with a
    segmentation fault."""
    out = tmp_path / "run"
    cmd = ["pipeline", "--checkpoint", str(digits_checkpoint), "--formats", "onnx,openvino", "--precisions",
           "fp32,int8", "--calib", "digits", "--eval-data", "digits", "--eval-limit", "100", "--no-bench", "--output",
           str(out)]
    child = server.start(cmd, tmp_path, {"COLUMNS": "200"})
    child.wait_for_line("onnx-int8: exporting")  # calibration starts now: onnx-fp32 is done
    time.sleep(0.5)
    os.kill(child.pid, signal.SIGINT)
    code, log = server.wait(child)
    assert code == 128 + signal.SIGINT, log[-2000:]
    assert (out / "artifacts" / "onnx-fp32" / "manifest.json").is_file()
    assert not (out / "artifacts" / "onnx-int8").exists()  # nothing half-written
    fp32_mtime = (out / "artifacts" / "onnx-fp32" / "manifest.json").stat().st_mtime_ns

    code, err = server.run([*cmd, "--resume"], tmp_path, {"COLUMNS": "200"})
    assert code == 0, err[-2000:]
    assert "onnx-fp32: export unchanged, reused" in err
    assert "onnx-int8: exporting" in err
    assert (out / "artifacts" / "onnx-fp32" / "manifest.json").stat().st_mtime_ns == fp32_mtime
    results = json.loads((out / "results.json").read_text())
    assert {j["id"]: j["status"] for j in results["jobs"]} == {
        "onnx-fp32": "passed", "onnx-int8": "passed", "openvino-fp32": "passed", "openvino-int8": "passed"}


def test_parity_failure_exits_1_and_still_writes_the_report(tmp_path, digits_checkpoint):
    """INT8 calibrated on a single black image: the activation ranges are wrong, the artifact really fails."""
    from PIL import Image

    calib = tmp_path / "black"
    calib.mkdir()
    Image.new("RGB", (32, 32)).save(calib / "black.png")
    out = tmp_path / "run"
    code = main(["pipeline", "--checkpoint", str(digits_checkpoint), "--formats", "onnx", "--precisions",
                 "fp32,int8", "--calib", str(calib), "--calib-size", "1", "--eval-data", "digits", "--eval-limit",
                 "200", "--no-bench", "--output", str(out), "--quiet"])
    results = json.loads((out / "results.json").read_text())
    status = {j["id"]: j["status"] for j in results["jobs"]}
    assert status == {"onnx-fp32": "passed", "onnx-int8": "failed"}, results["jobs"]
    assert code == 1 and results["summary"]["exit_code"] == 1
    assert (out / "index.html").is_file() and (out / "junit.xml").is_file()


@pytest.mark.parametrize("args, message", [
    (["--formats", "onnx,pdf"], "--formats"),
    (["--precisions", "fp64"], "--precisions"),
    (["--only", "onnx/bf16"], "--only"),
    (["--emit", "github-matrix"], "--emit applies to --plan"),
    (["--plan", "--emit", "yaml"], "choose one of json, github-matrix"),
    (["--plan", "--runner", "mac=macos-14"], "--runner applies to --emit github-matrix"),
    (["--plan", "--emit", "github-matrix", "--runner", "phone=pixel"], "unknown device kind 'phone'"),
    (["--plan", "--emit", "github-matrix", "--runner", "mac"], "KIND=LABEL"),
])
def test_user_errors_exit_1_with_one_line(tmp_path, digits_checkpoint, capsys, args, message):
    code = main(["pipeline", "--checkpoint", str(digits_checkpoint), "--output", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_github_matrix_runner_labels(tmp_path, digits_checkpoint, capsys):
    code = main(["pipeline", "--checkpoint", str(digits_checkpoint), "--output", str(tmp_path / "o"), "--formats",
                 "onnx,coreml,tensorrt", "--precisions", "fp32", "--plan", "--emit", "github-matrix",
                 "--runner", "nvidia-gpu=self-hosted, jetson", "--runner", "mac=macos-14"])
    include = json.loads(capsys.readouterr().out)["include"]
    assert code == 0 and not (tmp_path / "o").exists()
    assert {e["job"]: (e["device"], e["runs-on"]) for e in include} == {
        "onnx-fp32": ("cpu", "ubuntu-latest"), "coreml-fp32": ("mac", "macos-14"),
        "tensorrt-fp32": ("nvidia-gpu", ["self-hosted", "jetson"])}
    for entry in include:  # the options that shape the matrix do not reach the jobs' commands
        assert "--emit" not in entry["command"] and "--runner" not in entry["command"]
        assert entry["command"].endswith(f"--only {entry['job'].replace('-', '/')}")


def test_missing_checkpoint_and_foreign_output(tmp_path, capsys):
    assert main(["pipeline", "--checkpoint", str(tmp_path / "none.pth"), "--output", str(tmp_path / "o")]) == 1
    assert "no such file" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["pipeline", "--demo", "--output", str(foreign)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("left", [[".run.lock"], [".run.lock", ".state.json.lock"], [".state.json.lock"]])
def test_a_run_killed_before_its_state_leaves_a_folder_that_counts_as_empty(tmp_path, left):
    """Killed after it locked its output (and, seen in a Ray job's folder on Ctrl-C, while it held the lock of the
    state it was writing): only empty lock files stay, and the next run takes the folder as new."""
    from ffnet_deploy.pipeline.config import PipelineConfig
    from ffnet_deploy.pipeline.engine import check_output

    out = tmp_path / "run"
    (out / ".pipeline").mkdir(parents=True)
    for name in left:
        (out / ".pipeline" / name).touch()
    assert check_output(PipelineConfig(output=out)) is False  # empty: no earlier run, nothing refused


@pytest.mark.parametrize("planted", ["notes.lock", ".notes.txt", ".x.lock:full"])
def test_a_state_folder_with_anything_else_is_refused(tmp_path, planted):
    from ffnet_deploy.errors import ConfigError
    from ffnet_deploy.pipeline.config import PipelineConfig
    from ffnet_deploy.pipeline.engine import check_output

    out = tmp_path / "run"
    (out / ".pipeline").mkdir(parents=True)
    (out / ".pipeline" / ".run.lock").touch()
    name, _, full = planted.partition(":")
    (out / ".pipeline" / name).write_text("keep me" if full else "")
    with pytest.raises(ConfigError, match="is not empty and was not written by"):
        check_output(PipelineConfig(output=out))


def test_device_name_and_a_new_resolution_on_resume(tmp_path, digits_checkpoint):
    out = tmp_path / "o"
    base = ["pipeline", "--checkpoint", str(digits_checkpoint), "--output", str(out), "--formats", "onnx",
            "--precisions", "fp32", "--no-bench", "--device-name", "bench box"]
    assert main(base) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["device"]["name"] == "bench box" and results["checkpoint"]["resolution"] == 32
    assert main([*base, "--resume", "--resolution", "64"]) == 0  # the inspect record depends on the resolution
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint"]["resolution"] == 64
    assert json.loads((out / "artifacts" / "onnx-fp32" / "manifest.json").read_text())["resolution"] == 64


def test_output_that_cannot_be_created_is_one_line(tmp_path, digits_checkpoint, capsys):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    out = tmp_path / "file.txt" / "run"
    assert main(["pipeline", "--checkpoint", str(digits_checkpoint), "--output", str(out), "--formats", "onnx",
                 "--no-bench"]) == 1
    err = capsys.readouterr().err
    assert f"cannot create {out / '.pipeline'}: not a directory" in err and "Traceback" not in err


@pytest.mark.parametrize("existing", [False, True])
def test_full_disk_at_the_start_leaves_the_folder_as_it_was(tmp_path, digits_checkpoint, capsys, full_disk,
                                                            existing):
    out = tmp_path / "o"
    if existing:
        out.mkdir()  # an empty folder is claimed; a stray .pipeline/ would make the next run refuse it
    code = main(["pipeline", "--checkpoint", str(digits_checkpoint), "--output", str(out), "--formats", "onnx",
                 "--no-bench"])
    err = capsys.readouterr().err
    assert code != 0 and "no space left on device" in err and "Traceback" not in err
    assert (list(out.iterdir()) == []) if existing else not out.exists()


def test_toml_config_and_cli_override(tmp_path, digits_checkpoint):
    from ffnet_deploy.pipeline.config import build_config, read_toml

    toml = tmp_path / "deploy.toml"
    toml.write_text(f'checkpoint = "{digits_checkpoint}"\noutput = "out"\nformats = ["onnx", "openvino"]\n'
                    'precisions = ["fp32"]\nbench = false\nbench_iters = 7\ntrust_checkpoint = false\n')
    config = build_config(read_toml(toml), {"precisions": ("fp32", "int8"), "calib": "digits"})
    assert config.output == tmp_path / "out" and config.formats == ("onnx", "openvino")
    assert config.precisions == ("fp32", "int8") and config.bench is False and config.min_iters == 7
    toml.write_text('checkpont = "x"\noutput = "o"\n')
    from ffnet_deploy.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key.*checkpont"):
        read_toml(toml)


def test_missing_backend_is_skipped_not_fatal(tmp_path, digits_checkpoint):
    """TensorRT is not installed here: its jobs are skipped with the reason, and the run still passes."""
    out = tmp_path / "run"
    code = main(["pipeline", "--checkpoint", str(digits_checkpoint), "--formats", "onnx,tensorrt", "--precisions",
                 "fp32", "--eval-limit", "50", "--no-bench", "--output", str(out), "--quiet"])
    results = json.loads((out / "results.json").read_text())
    jobs = {j["id"]: j for j in results["jobs"]}
    if jobs["tensorrt-fp32"]["status"] == "skipped":
        assert "tensorrt" in jobs["tensorrt-fp32"]["reason"]
    assert jobs["onnx-fp32"]["status"] == "passed" and code == 0


def test_python_api_matches_the_files(tmp_path, digits_checkpoint):
    from ffnet_deploy.pipeline.config import PipelineConfig
    from ffnet_deploy.pipeline.engine import run_pipeline

    outcome = run_pipeline(PipelineConfig(output=tmp_path / "api", checkpoint=Path(digits_checkpoint),
                                          formats=("onnx",), precisions=("fp32",), eval_limit=50, bench=False))
    assert outcome.exit_code == 0
    assert json.loads((tmp_path / "api" / "results.json").read_text())["jobs"] == \
        json.loads(outcome.results.to_json())["jobs"]


def test_missing_calibration_folder_is_a_user_error(tmp_path, digits_checkpoint, capsys):
    out = tmp_path / "o"
    code = main(["pipeline", "--checkpoint", str(digits_checkpoint), "--output", str(out), "--formats", "onnx",
                 "--precisions", "int8", "--calib", str(tmp_path / "nope")])
    assert code == 1 and "--calib" in capsys.readouterr().err
    assert not out.exists()


@DEMO_RUN_GROUP
def test_pipeline_artifacts_validate_against_the_users_checkpoint_without_a_provenance_warning(demo_run,
                                                                                               demo_checkpoint_path):
    """The pipeline exports from the fused checkpoint it made; the manifest says which checkpoint that came from,
    so validating against the user's own (unfused) checkpoint is recognised as the same weights."""
    from ffnet_deploy.artifact.manifest import read_manifest
    from ffnet_deploy.hashing import sha256_file
    from ffnet_deploy.validate.engine import validate

    out, _, _ = demo_run
    artifact = out / "artifacts" / "onnx-fp32"
    src = read_manifest(artifact).source_checkpoint
    assert src.derived_from == sha256_file(demo_checkpoint_path) and src.sha256 != src.derived_from
    report = validate([artifact], demo_checkpoint_path)
    assert report and not [w for w in report.artifacts[0].warnings if "exported from checkpoint" in w]


def test_the_bench_stage_counts_the_artifacts_it_times(tmp_path, digits_checkpoint, capsys):
    code = main(["pipeline", "--checkpoint", str(digits_checkpoint), "--formats", "onnx", "--precisions", "fp32",
                 "--eval-data", "digits", "--eval-limit", "64", "--output", str(tmp_path / "o"), *FAST_BENCH])
    assert code == 0
    assert "bench: 1 artifact(s) and eager PyTorch" in capsys.readouterr().err

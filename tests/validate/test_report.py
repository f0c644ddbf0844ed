"""JSON report (versioned schema), JUnit XML (parsed back with the standard parser) and the rich table."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from rich.console import Console

from ffnet_deploy.environment import environment_info
from ffnet_deploy.errors import ConfigError, ParityError
from ffnet_deploy.validate.engine import ArtifactResult, ValidationReport
from ffnet_deploy.validate.localize import LayerSQNR, Localization
from ffnet_deploy.validate.metrics import compare_outputs
from ffnet_deploy.validate.report import (
    SCHEMA,
    junit_tree,
    render,
    report_to_dict,
    short_name,
    summary_line,
    write_json,
    write_junit,
)
from ffnet_deploy.validate.tolerances import FP16, FP32, evaluate_checks
from tests.test_validate_cli import assert_valid_junit


def _artifact(name, ref, out, profile, labels=None, errors=(), localization=None) -> ArtifactResult:
    m = compare_outputs(ref, out, labels)
    return ArtifactResult(name, name, "onnx", "onnxruntime", profile.name, profile, m, evaluate_checks(m, profile),
                          list(errors), localization=localization)


@pytest.fixture
def report() -> ValidationReport:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(8, 20)) * 3
    labels = ref.argmax(1)
    loc = Localization("blocks", 30.0, [LayerSQNR("patch_embed", np.inf, "t0", (1, 16, 16, 16)),
                                        LayerSQNR("stages.2.0", -12.0, "t1", (1, 64, 4, 4))])
    good = _artifact("out/good", ref, ref + 1e-6, FP32, labels)
    half = _artifact("out/half", ref, ref + rng.normal(size=ref.shape) * 1e-3, FP16, labels)
    bad = _artifact("out/bad", ref, np.where(np.arange(20) == 3, np.nan, ref * 1.5), FP32, labels, localization=loc)
    dead = ArtifactResult("out/dead", "out/dead", "tensorrt", "tensorrt", "fp16", FP16,
                          errors=["cannot load: tensorrt cannot run here: needs an NVIDIA GPU"])
    data = {"kind": "synthetic", "num_images": 8, "fingerprint": "ab" * 32, "skipped": {"corrupt": 0,
            "unsupported": 0}}
    return ValidationReport([good, half, bad, dead], {"variant": "ffnet_test", "resolution": 64}, data,
                            environment_info(), {"batch": 8}, seconds=1.5)


def test_json_report_schema_and_strictness(tmp_path, report):
    path = write_json(report, tmp_path / "sub" / "report.json")
    text = path.read_text()

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(text, parse_constant=no_constants)  # strict: NaN/Inf were written as strings
    assert data["schema"] == SCHEMA == "ffnet-deploy/validate-report/1"
    assert data["passed"] is False
    assert set(data) >= {"reference", "data", "environment", "settings", "artifacts", "failures", "created"}
    assert data["environment"]["versions"]["numpy"] == np.__version__
    names = [a["name"] for a in data["artifacts"]]
    assert names == ["out/good", "out/half", "out/bad", "out/dead"]
    good, half, bad, dead = data["artifacts"]
    assert good["passed"] and half["passed"] and not bad["passed"] and not dead["passed"]
    assert bad["metrics"]["nonfinite"] == 8
    assert {c["name"]: c["passed"] for c in bad["checks"]} == {"finite": False, "max_abs_error": False}
    assert bad["localization"]["first_below"] == "stages.2.0"
    assert dead["metrics"] is None and dead["errors"][0].startswith("cannot load")
    assert len(data["failures"]) == 3 and data["failures"][-1].startswith("out/dead: cannot load")
    assert good["metrics"]["ref_top1"] == 100.0 and good["metrics"]["acc_drop"] == 0.0
    assert report_to_dict(report)["artifacts"][0]["profile"]["atol_scale"] == 1e-4


def test_junit_parses_into_the_expected_cases(tmp_path, report):
    path = write_junit(report, tmp_path / "junit.xml")
    root = assert_valid_junit(path)
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["out/good", "out/half", "out/bad", "out/dead"]
    cases = {name: {c.get("name"): c for c in s.findall("testcase")} for name, s in suites.items()}
    # one case per gated check; an informational metric is a property and a note, never a skipped case
    assert {"finite", "max_abs_error"} <= set(cases["out/good"]) and "cosine_mean" not in cases["out/good"]
    assert cases["out/good"]["max_abs_error"].find("failure") is None
    good_props = {p.get("name"): p.get("value") for p in suites["out/good"].find("properties")}
    assert "metric.cosine_mean" in good_props and "metric.psnr_db" in good_props  # fp32 does not gate cosine
    assert "cosine_mean = " in suites["out/good"].find("system-out").text
    assert "cosine_mean" in cases["out/half"] and cases["out/half"]["cosine_mean"].find("skipped") is None  # fp16 does
    assert root.get("skipped") == "0" and not root.findall(".//skipped")  # a passing report skips nothing
    bad = cases["out/bad"]
    assert bad["finite"].find("failure") is not None and bad["max_abs_error"].find("failure") is not None
    assert suites["out/bad"].get("failures") == "2" and "stages.2.0" in suites["out/bad"].find("system-out").text
    assert cases["out/dead"]["load_and_run"].find("error").get("message").startswith("cannot load")
    assert root.get("failures") == "2" and root.get("errors") == "1"
    assert all(c.get("classname") == name for name, cs in cases.items() for c in cs.values())
    props = {p.get("name"): p.get("value") for p in suites["out/half"].find("properties")}
    assert props["precision"] == "fp16" and props["data_fingerprint"] == "ab" * 32
    assert junit_tree(report).getroot().tag == "testsuites"


def test_writes_are_atomic(tmp_path, report, monkeypatch):
    target = tmp_path / "report.json"
    previous = write_json(report, target).read_text()  # only a report written here may be replaced

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ConfigError, match="cannot write .*report.json: disk full"):
        write_json(report, target)
    assert target.read_text() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


def test_unwritable_destination_is_a_config_error(tmp_path, report):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write"):
        write_junit(report, blocker / "junit.xml")


def test_table_shows_every_artifact_and_failure(report):
    console = Console(record=True, width=200)
    render(report, console)
    text = console.export_text()
    header = next(line for line in text.splitlines() if "metric" in line)
    assert [w for w in header.replace("┃", " ").split() if w != "metric"] == ["good", "half", "bad", "dead"]
    assert text.count("PASS") == 2 and "FAIL out/bad: finite" in text
    assert "≥ 0.999500" in text  # the fp16 threshold is shown next to its value
    assert "first block below 30 dB: stages.2.0" in text
    assert "top-1 drop" in text  # labels present -> accuracy rows


def test_short_names():
    assert short_name("/a/b/onnx-fp32") == "onnx-fp32"
    assert short_name("/a/b/model.onnx") == "b/model.onnx"
    assert short_name("/a/art/model.mlpackage") == "art/model.mlpackage"


# --------------------------------------------------------------------------------------------------------------------
# Artifacts that nothing here can run; markup in messages
# --------------------------------------------------------------------------------------------------------------------

HINT = "tensorrt cannot run here: the tensorrt package is not installed (pip install 'ffnet-deploy[tensorrt]')"


@pytest.fixture
def partly_run() -> ValidationReport:
    """One artifact that passed, and a bare engine that nothing on this machine can run."""
    ref = np.random.default_rng(3).normal(size=(4, 10))
    good = _artifact("out/[good]", ref, ref, FP32)
    engine = ArtifactResult("out/model.engine", "out/model.engine", "tensorrt", "tensorrt", "fp32", FP32,
                            not_run=HINT, warnings=["see [bold]this[/] literally"])
    data = {"kind": "synthetic", "num_images": 4, "fingerprint": "cd" * 32, "skipped": {}}
    return ValidationReport([good, engine], {"variant": "ffnet_test", "resolution": 64}, data, {}, {}, seconds=0.5)


def test_not_run_is_neither_failed_nor_passed(tmp_path, partly_run):
    good, engine = partly_run.artifacts
    assert (good.status, engine.status) == ("passed", "not run")
    assert not engine and engine.failures == [] and "not run: tensorrt cannot run here" in engine.describe()
    # The report passes (exit 0) because nothing failed and something passed; it still lists what was not run.
    assert partly_run and partly_run.failures() == [] and partly_run.not_run() == [f"out/model.engine: {HINT}"]
    partly_run.raise_for_failures()
    assert "1 artifact(s) passed" in summary_line(partly_run) and "1 not run" in summary_line(partly_run)
    # Nothing run at all is not a pass: no artifact was checked.
    only = ValidationReport([engine], {}, {}, {})
    assert not only and only.failures() == []
    with pytest.raises(ParityError, match=r"none of the 1 artifact\(s\) could be run on this machine.*tensorrt"):
        only.raise_for_failures()
    # A failure still wins over a not-run artifact.
    broken = ArtifactResult("x", "x", "onnx", "onnxruntime", "fp32", FP32, errors=["cannot load: y"])
    assert not ValidationReport([good, engine, broken], {}, {}, {})

    data = json.loads(write_json(partly_run, tmp_path / "r.json").read_text())
    assert data["passed"] is True and data["not_run"] == [f"out/model.engine: {HINT}"]
    assert [(a["status"], a["passed"]) for a in data["artifacts"]] == [("passed", True), ("not run", False)]
    assert data["artifacts"][1]["not_run"] == HINT and data["artifacts"][1]["failures"] == []

    root = assert_valid_junit(write_junit(partly_run, tmp_path / "r.xml"))
    engine_suite = root.findall("testsuite")[1]
    skipped = engine_suite.find("testcase[@name='load_and_run']/skipped")
    assert skipped is not None and skipped.get("message") == f"not run: {HINT}"
    assert (root.get("failures"), root.get("errors"), engine_suite.get("skipped")) == ("0", "0", "1")


def test_table_escapes_markup_in_messages(partly_run):
    console = Console(record=True, width=300)
    render(partly_run, console)
    console.print(summary_line(partly_run))
    text = console.export_text()
    assert "pip install 'ffnet-deploy[tensorrt]'" in text  # rich would otherwise eat "[tensorrt]" as a tag
    assert f"NOT RUN out/model.engine: {HINT}" in text
    assert "see [bold]this[/] literally" in text and "[good]" in text
    assert "1 not run on this machine" in [line for line in text.splitlines() if line.strip()][-1]
    assert "profile out/[good]: fp32" in text

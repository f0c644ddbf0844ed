"""Property tests over every typed reader (issue 18): state, job record, pipeline results, bench results,
calibration cache, deploy.toml, the report CSV and the validate report.

Any JSON value, any one-place mutation of a valid file (a value replaced by any JSON value, a key removed) and any
bytes go through the command that reads that file: either the command accepts it, or it exits non-zero with one
line on stderr, never a traceback. The readers without a command of their own (the calibration cache, the validate
report) are called directly: they return, or raise their one error type with one line.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffnet_deploy.cli import main
from ffnet_deploy.errors import CalibrationError, ConfigError
from tests.test_hostile_results import _bench, _cache_key, _job, one_line, pipeline_folder

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

EDGES = st.sampled_from([10**400, -(10**400), 2**63, -1, 0, -5.0, float("nan"), float("inf"), "", "\n", "nan",
                         "[/]", "fp32", "onnx", "../x", True, None])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | EDGES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | EDGES.filter(
        lambda e: isinstance(e, str)), inner, max_size=4),
    max_leaves=12,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw, valid: object) -> str:
    """The text of ``valid`` with one place changed, or any JSON value, or any bytes (as latin-1 text)."""
    kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "any", "bytes"]))
    if kind == "any":
        return json.dumps(draw(JSON))
    if kind == "bytes":
        return draw(st.binary(max_size=64)).decode("latin-1")
    doc = copy.deepcopy(valid)
    path = draw(st.sampled_from(_paths(doc)))
    if not path:
        return json.dumps(draw(JSON))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if kind == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON)
    return json.dumps(doc)


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogatepass"))


def assert_refused_in_one_line_or_accepted(code: int, err: str, refused: tuple[int, ...] = (1,)) -> None:
    assert "Traceback" not in err
    if code != 0:
        assert code in refused and one_line(err), (code, err)


STATE = {"schema": "ffnet-deploy/pipeline-state/1", "stages": {
    "inspect": {"inputs": "0" * 64, "outputs": {"path": "m.pth", "sha256": "ab" * 32, "variant": "ffnet_digits",
                                                 "fused": False, "num_classes": 10, "params": 1000,
                                                 "resolution": 32}},
    "validate:onnx-fp32": {"inputs": "1" * 64, "outputs": {"verdict": "pass", "metrics": {"cosine_mean": 1.0}}},
    "bench": {"inputs": "2" * 64, "outputs": {"onnx-fp32": {"runtime": "onnxruntime", "p50_ms": 1.0}}}}}


@SETTINGS
@given(mutated(STATE))
def test_state(capsys, text):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = pipeline_folder(root)
        _write(out / ".pipeline" / "state.json", text)
        (root / "model.pth").write_bytes(b"junk: the run stops at the checkpoint at the latest")
        code = main(["pipeline", "--checkpoint", str(root / "model.pth"), "--output", str(out), "--resume",
                     "--formats", "onnx", "--precisions", "fp32", "--no-bench", "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and one_line(err), (code, err)


@SETTINGS
@given(mutated(_job()))
def test_job_record(capsys, text):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = pipeline_folder(root, jobs={"onnx-fp32": text})
        code = main(["report", "merge", str(folder), "--out", str(root / "merged")])
        assert_refused_in_one_line_or_accepted(code, capsys.readouterr().err)


RESULTS = {"schema": "ffnet-deploy/pipeline/1", "command": "c", "device": {"name": "box", "cores": 2},
           "checkpoint": {"path": "model.pth", "sha256": "ab" * 32, "variant": "ffnet_digits", "params": 10},
           "settings": {"formats": ["onnx"]}, "data": {"eval": "digits", "labelled": True},
           "jobs": [_job()], "summary": {"jobs": 1, "skipped": 1, "look_at": []}}


@SETTINGS
@given(mutated(RESULTS))
def test_pipeline_results(capsys, text):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = pipeline_folder(root, results=text)
        code = main(["report", "merge", str(folder), "--out", str(root / "merged")])
        assert_refused_in_one_line_or_accepted(code, capsys.readouterr().err)


@SETTINGS
@given(mutated(_bench()))
def test_bench_results(capsys, text):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root / "results.json", text)
        code = main(["report", "merge", str(root / "results.json"), "--out", str(root / "t.md")])
        assert_refused_in_one_line_or_accepted(code, capsys.readouterr().err)


CELLS = st.sampled_from(["ffnet_1", "fp16", "ALL", "1.2", "Xcode", "224", "1", "", "-3", "nan", "x,y", '"', "=1+1",
                         "CPU_ONLY", "int8", "0"]) | st.text(max_size=6)
COLUMNS = st.sampled_from(["variant", "precision", "compute_units", "median_ms", "source", "resolution", "batch",
                           "p90_ms", "notes", "other", ""])


@SETTINGS
@given(st.lists(COLUMNS, min_size=1, max_size=9), st.lists(st.lists(CELLS, max_size=10), max_size=4),
       st.booleans())
def test_report_csv(capsys, header, rows, full_header):
    import csv
    import io

    if full_header:
        header = ["variant", "precision", "compute_units", "median_ms", "source", *header]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root / "phone.csv", buf.getvalue())
        code = main(["report", "add", "--csv", str(root / "phone.csv"), "--device-name", "phone"])
        assert_refused_in_one_line_or_accepted(code, capsys.readouterr().err)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '""'


TOML_KEYS = st.sampled_from(["checkpoint", "output", "variant", "formats", "precisions", "calib", "calib_size",
                             "eval_data", "eval_limit", "resolution", "bench", "threads", "bench_iters", "bench_time",
                             "demo", "trust_checkpoint", "device_name", "unknown_key"])
TOML_VALUES = st.recursive(st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=8)
                           | EDGES.filter(lambda e: e is not None and not (isinstance(e, int) and abs(e) >= 2**63)),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@SETTINGS
@given(st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=5), st.booleans(), st.binary(max_size=40))
def test_deploy_toml(capsys, table, as_bytes, raw):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        body = {"checkpoint": "model.pth", "output": "out", **table}
        text = raw.decode("latin-1") if as_bytes else "".join(f"{k} = {_toml_value(v)}\n" for k, v in body.items())
        _write(root / "deploy.toml", text)
        code = main(["pipeline", "--config", str(root / "deploy.toml"), "--plan"])
        captured = capsys.readouterr()
        assert_refused_in_one_line_or_accepted(code, captured.err, refused=(1,))


def _valid_cache() -> dict:
    from ffnet_deploy.quantize.calibration import CACHE_SCHEMA

    return {"schema": CACHE_SCHEMA, "backend": "onnxruntime", "key": _cache_key().to_dict(), "data": {},
            "seconds": 1.5, "created": "2026-12-01T00:00:00+00:00", "statistics": {"ranges": {"x": [-1.0, 2.0]}}}


@SETTINGS
@given(mutated(_valid_cache()))
def test_calibration_cache(text):
    from ffnet_deploy.quantize.calibration import StatisticsCache

    with tempfile.TemporaryDirectory() as tmp:
        cache = StatisticsCache(Path(tmp), "onnxruntime")
        _write(cache.path_for(_cache_key().model_sha256), text)
        try:
            entry = cache.lookup(_cache_key())
        except CalibrationError as err:
            assert "\n" not in str(err) and str(err).startswith("calibration cache ")
            return
        if entry is not None:  # a hit: what the quantizer reads is there and typed
            ranges = entry.statistics["ranges"]
            assert all(isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo)
                       and math.isfinite(hi) for lo, hi in ranges.values())


def _valid_report() -> dict:
    return {"schema": "ffnet-deploy/validate-report/1", "passed": True, "created": "2026-12-01T00:00:00+00:00",
            "seconds": 1.0, "reference": {}, "data": {}, "environment": {}, "settings": {},
            "artifacts": [{"name": "a", "path": "a", "format": "onnx", "runtime": "onnxruntime", "precision": "fp32",
                           "status": "passed", "passed": True, "metrics": {"psnr_db": "inf"},
                           "checks": [{"name": "finite", "value": 0, "threshold": 0, "op": "<=", "passed": True}]}],
            "failures": [], "not_run": []}


@SETTINGS
@given(mutated(_valid_report()))
def test_validate_report(text):
    from ffnet_deploy.validate.report import read_report

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.json"
        _write(path, text)
        try:
            read_report(path)
        except ConfigError as err:
            assert "\n" not in str(err)


@pytest.mark.parametrize("make, reader", [("state", None), ("results", None)])
def test_valid_fixtures_are_accepted(tmp_path, capsys, make, reader):
    """The valid documents the mutations start from are accepted as they are."""
    from ffnet_deploy.pipeline.results import read_results, read_state

    path = tmp_path / f"{make}.json"
    path.write_text(json.dumps(STATE if make == "state" else RESULTS))
    (read_state if make == "state" else read_results)(path)

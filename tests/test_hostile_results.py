"""Issue 18, cases 13-16 and 18: files read back and user strings are untrusted input (case 19, one warning per
corrupt file, is in tests/data/test_hostile.py).

Every file the tool reads back (state.json, job records, results JSON, bench results, calibration caches,
deploy.toml) goes through its typed reader: whatever is wrong is one line and a non-zero exit, never a traceback.
User strings (device names, CSV fields, paths) are data wherever they land: rich, matplotlib, Markdown, CSV.
Each case here failed (a traceback, or a wrong file accepted) before the typed readers and the reporting package.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from ffnet_deploy.cli import main
from ffnet_deploy.errors import CalibrationError

OLD_STATE = "ffnet-deploy.pipeline-state/1"  # the dot spellings of earlier versions: the fixtures use them, as
OLD_JOB = "ffnet-deploy.pipeline-job/1"  # files of a run made before the typed readers would
OLD_RESULTS = "ffnet-deploy.pipeline/1"
OLD_BENCH = "ffnet-deploy.bench/1"


def one_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and "Traceback" not in err


def _job(jid: str = "onnx-fp32", **changes) -> dict:
    fmt, _, precision = jid.partition("-")
    return {"schema": OLD_JOB, "id": jid, "format": fmt, "precision": precision, "status": "skipped",
            "reason": "no backend here", "artifact": None, "export": None, "parity": None, "bench": None, **changes}


def pipeline_folder(root: Path, name: str = "run", jobs: dict[str, object] | None = None,
                    results: object | None = None) -> Path:
    """A pipeline output folder as an earlier version wrote it: results.json, jobs/, .pipeline/state.json."""
    folder = root / name
    (folder / "jobs").mkdir(parents=True)
    (folder / ".pipeline").mkdir()
    (folder / ".pipeline" / "state.json").write_text(json.dumps({"schema": OLD_STATE, "stages": {}}))
    for jid, record in (jobs if jobs is not None else {"onnx-fp32": _job()}).items():
        (folder / "jobs" / f"{jid}.json").write_text(record if isinstance(record, str) else json.dumps(record))
    if results is None:
        results = {"schema": OLD_RESULTS, "command": "ffnet-deploy pipeline", "device": {"name": "box"},
                   "checkpoint": {"path": "model.pth", "sha256": "ab" * 32, "variant": "ffnet_digits"},
                   "settings": {"formats": ["onnx"]}, "jobs": []}
    (folder / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
    return folder


def test_fixture_folder_merges(tmp_path, capsys):
    """The well-formed fixture (dot-spelled schemas of an earlier version) merges: the cases below differ from it
    in one thing each."""
    out = tmp_path / "merged"
    assert main(["report", "merge", str(pipeline_folder(tmp_path)), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "ffnet-deploy/pipeline/1" and [j["id"] for j in results["jobs"]] == ["onnx-fp32"]
    assert json.loads((out / "jobs" / "onnx-fp32.json").read_text())["schema"] == "ffnet-deploy/pipeline-job/1"


# -- 13: hostile JSON -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state, field", [
    ("[]", "JSON object"),
    (json.dumps({"schema": OLD_STATE, "stages": [1, 2]}), "stages"),
    (json.dumps({"schema": OLD_STATE, "stages": {"inspect": "a string"}}), "stages.inspect"),
    (json.dumps({"schema": OLD_STATE, "stages": {"validate:onnx-fp32": {"inputs": "x", "outputs": []}}}),
     "stages.validate:onnx-fp32.outputs"),
    (json.dumps({"schema": OLD_STATE, "stages": {"inspect": {"inputs": "x", "outputs": {"variant": 3}}}}),
     "stages.inspect.outputs"),
    ("{not json", "not valid JSON"),
])
def test_13_hostile_state_is_one_line_before_any_work(tmp_path, capsys, state, field):
    out = pipeline_folder(tmp_path)
    (out / ".pipeline" / "state.json").write_text(state)
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"not read: the state is refused first")
    code = main(["pipeline", "--checkpoint", str(ckpt), "--output", str(out), "--resume", "--formats", "onnx",
                 "--precisions", "fp32", "--no-bench"])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and "state.json" in err and field in err, err
    assert not (out / "artifacts").exists()


@pytest.mark.parametrize("record, field", [
    ({k: v for k, v in _job().items() if k != "format"}, "'format' is missing"),
    ([_job()], "JSON object"),
    (_job(format="evil", id="evil-fp32"), "'format' is 'evil'"),
    (_job(status="exploded"), "'status'"),
    (_job(id="../../settings"), "id '../../settings' must be <format>-<precision>"),
    (_job(artifact={"path": "../prod-artifact"}), "artifact.path"),
    ("", "not valid JSON"),
])
def test_13_hostile_job_record_is_one_line(tmp_path, capsys, record, field):
    jid = record.get("id", "onnx-fp32") if isinstance(record, dict) else "onnx-fp32"
    folder = pipeline_folder(tmp_path, jobs={Path(jid).name: record})
    code = main(["report", "merge", str(folder), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and field in err, err
    assert not (tmp_path / "merged" / "index.html").exists()


@pytest.mark.parametrize("results, field", [
    ("{", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"schema": OLD_RESULTS, "settings": {}}), "'checkpoint' is missing"),
    (json.dumps({"schema": OLD_RESULTS, "checkpoint": {"path": "m", "sha256": "ab", "variant": "v"},
                 "jobs": [_job(format="evil", id="evil-fp32")]}), "jobs[0].format"),
    (json.dumps({"schema": OLD_RESULTS, "checkpoint": "model.pth"}), "'checkpoint' must be an object"),
    (json.dumps({"schema": "someone-else/1", "checkpoint": {}}), "not an ffnet-deploy pipeline results"),
])
def test_13_hostile_merged_results_is_one_line(tmp_path, capsys, results, field):
    folder = pipeline_folder(tmp_path, results=results)
    code = main(["report", "merge", str(folder), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and "results.json" in err and field in err, err


def _bench(**row_changes) -> dict:
    row = {"model": "ffnet_1", "runtime": "onnxruntime", "precision": "fp32", "resolution": 256,
           "latency_ms": {"p50": 1.5, "p90": 1.7}, "iterations": 50, **row_changes}
    return {"schema": OLD_BENCH, "command": "ffnet-deploy bench", "created": "2026-12-01T00:00:00+00:00",
            "device": {"name": "box", "cpu": "x86"}, "protocol": None, "roofline": None, "rows": [row]}


@pytest.mark.parametrize("data, field", [
    (_bench(latency_ms={"p50": "fast"}), "rows[0].latency_ms.p50"),
    ({**_bench(), "device": None}, "'device' must be an object"),
    (_bench(model=["ffnet_1"]), "rows[0].model"),
    (_bench(latency_ms={"p50": float("nan")}), "rows[0].latency_ms.p50"),
    (_bench(latency_ms={"p50": -5}), "rows[0].latency_ms.p50"),
    (_bench(status="great"), "rows[0].status"),
    (_bench(resolution=True), "rows[0].resolution"),
    ({**_bench(), "roofline": {"fp32_gflops": "x"}}, "roofline"),
])
def test_13_hostile_bench_result_is_one_line(tmp_path, capsys, data, field):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    code = main(["report", "merge", str(path), "--out", str(tmp_path / "table.md")])
    err = capsys.readouterr().err
    assert code == 1 and one_line(err) and field in err, err
    assert not (tmp_path / "table.md").exists()


def test_13_old_bench_results_still_merge_and_are_still_ours(tmp_path):
    from ffnet_deploy.benchmarks.results import not_written_by_bench

    old = tmp_path / "old" / "results.json"
    old.parent.mkdir()
    old.write_text(json.dumps(_bench(), indent=2))  # the dot spelling and json.dumps spacing of earlier versions
    assert not_written_by_bench(old) is None  # a rerun of bench may replace it
    assert main(["report", "merge", str(old), "--out", str(tmp_path / "t.md")]) == 0
    assert "1.50" in (tmp_path / "t.md").read_text()


# -- 14: poisoned calibration cache -----------------------------------------------------------------------------------


def _cache_key():
    from ffnet_deploy.quantize.calibration import CacheKey

    return CacheKey(model_sha256="a" * 64, method="minmax", data_fingerprint="d" * 64, num_images=10,
                    preprocessing={"resolution": 64})


@pytest.mark.parametrize("change, field", [
    ({"seconds": "abc"}, "'seconds'"),
    ({"seconds": None}, "'seconds'"),
    ({"statistics": {}}, "statistics.ranges"),
    ({"statistics": {"ranges": {"x": [1, 2, 3]}}}, "statistics.ranges.x"),
    ({"statistics": {"ranges": {"x": ["a", "b"]}}}, "statistics.ranges.x"),
    ({"statistics": {"ranges": [[1, 2]]}}, "statistics.ranges"),
    ({"key": []}, "'key'"),
    ({"statistics": {"ranges": {"x": ["nan", 1]}}}, "statistics.ranges.x"),
])
def test_14_poisoned_calibration_cache_is_one_line(tmp_path, change, field):
    from ffnet_deploy.quantize.calibration import StatisticsCache

    cache = StatisticsCache(tmp_path, "onnxruntime")
    entry = cache.store(_cache_key(), {"ranges": {"x": [-1.0, 2.0]}}, 1.5)
    stored = json.loads(entry.path.read_text())
    entry.path.write_text(json.dumps({**stored, **change}))
    with pytest.raises(CalibrationError) as err:
        cache.lookup(_cache_key())
    assert "\n" not in str(err.value) and field in str(err.value) and str(entry.path) in str(err.value)


def test_14_a_good_cache_is_still_a_hit(tmp_path):
    from ffnet_deploy.quantize.calibration import StatisticsCache

    cache = StatisticsCache(tmp_path, "onnxruntime")
    cache.store(_cache_key(), {"ranges": {"x": [-1.0, 2.0]}}, 1.5)
    entry = cache.lookup(_cache_key())
    assert entry.hit and entry.statistics == {"ranges": {"x": [-1.0, 2.0]}} and entry.seconds == 1.5


# -- 15: deploy.toml types --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, key", [
    ('bench_iters = "5"', "bench_iters"),
    ('bench_time = "x"', "bench_time"),
    ("bench_time = nan", "bench_time"),
    ('resolution = "abc"', "resolution"),
    ("resolution = -32", "resolution"),
    ("resolution = 0", "resolution"),
    ("device_name = {x = 1}", "device_name"),
    ('threads = "lots"', "threads"),
    ("eval_limit = -5", "eval_limit"),
    ("formats = [1, 2]", "formats"),
])
def test_15_deploy_toml_types_are_one_line(tmp_path, capsys, line, key):
    toml = tmp_path / "deploy.toml"
    toml.write_text(f'checkpoint = "model.pth"\noutput = "out"\n{line}\n')
    code = main(["pipeline", "--config", str(toml), "--plan"])
    captured = capsys.readouterr()
    assert code == 1 and one_line(captured.err) and key in captured.err and captured.out == "", captured.err


def test_15_demo_false_as_a_string_is_refused_not_true(tmp_path, capsys):
    toml = tmp_path / "deploy.toml"
    toml.write_text('output = "out"\ndemo = "false"\n')
    assert main(["pipeline", "--config", str(toml), "--plan"]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "'demo' must be true or false" in err


@pytest.mark.parametrize("args, flag", [
    (["--resolution", "-32"], "--resolution"),
    (["--resolution", "0"], "--resolution"),
    (["--eval-limit", "-5"], "--eval-limit"),
    (["--bench-time", "nan"], "--bench-time"),
    (["--calib-size", "0"], "--calib-size"),
])
def test_15_out_of_range_options_are_refused_before_any_export(tmp_path, capsys, args, flag):
    code = main(["pipeline", "--checkpoint", str(tmp_path / "model.pth"), "--output", str(tmp_path / "o"), "--plan",
                 *args])
    captured = capsys.readouterr()
    assert code == 1 and one_line(captured.err) and flag in captured.err and captured.out == ""


def test_15_config_that_is_not_a_regular_file(tmp_path, capsys):
    import os

    fifo = tmp_path / "deploy.toml"
    os.mkfifo(fifo)  # reading it would block forever
    assert main(["pipeline", "--config", str(fifo), "--plan"]) == 1
    assert "not a regular file" in capsys.readouterr().err
    assert main(["pipeline", "--config", "/dev/zero", "--plan"]) == 1
    assert "not a regular file" in capsys.readouterr().err
    big = tmp_path / "big.toml"
    with big.open("wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GB that cost nothing to make, and are not read
    assert main(["pipeline", "--config", str(big), "--plan"]) == 1
    assert "larger than" in capsys.readouterr().err


# -- 16: markup in user strings ---------------------------------------------------------------------------------------

FAST = ["--warmup", "1", "--warmup-time", "0", "--min-iters", "3", "--min-time", "0", "--no-roofline", "--threads",
        "1"]


def test_16_device_name_markup_in_bench(tmp_path, capsys):
    out = tmp_path / "res"
    code = main(["bench", "--variant", "ffnet_test", "--resolution", "64", "--runtimes", "torch", "--device-name",
                 "[/]", "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0 and "[/]" in captured.out and "Traceback" not in captured.err
    assert json.loads((out / "results.json").read_text())["device"]["name"] == "[/]"


def test_16_device_name_mathtext_in_bench_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "res"
    code = main(["bench", "--variant", "ffnet_test", "--resolution", "64", "--runtimes", "torch", "--device-name",
                 r"$\frac{$", "--out", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    assert (out / "by_runtime.png").read_bytes().startswith(b"\x89PNG") and (out / "results.json").is_file()


def test_16_report_add_device_name_markup(tmp_path, capsys):
    csv_file = tmp_path / "phone.csv"
    csv_file.write_text("variant,precision,compute_units,median_ms,source\nffnet_1,fp16,ALL,1.2,Xcode\n")
    assert main(["report", "add", "--csv", str(csv_file), "--device-name", "[/]"]) == 0
    captured = capsys.readouterr()
    assert "measured on [/]" in captured.out and "Traceback" not in captured.err


def test_16_checkpoint_version_and_path_markup_in_inspect(tmp_path, capsys):
    import torch

    from tests.conftest import official_state_dict

    folder = tmp_path / "dir["
    folder.mkdir()
    path = folder / "]ck.pth"  # the path dir[/]ck.pth
    torch.save({"state_dict": official_state_dict("ffnet_test"), "ffnet_deploy": {"version": "[/]evil"}}, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ffnet-deploy [/]evil" in out and "dir[/]ck.pth" in out.replace("\n", "")


def _plot_results(device: str) -> dict:
    from tests.pipeline.test_report import make_results

    results = make_results()
    results["device"]["name"] = device
    return results


def test_16_mathtext_device_name_in_pipeline_report(tmp_path):
    pytest.importorskip("matplotlib")
    from ffnet_deploy.pipeline.report import write_report

    paths = write_report(_plot_results(r"$\frac{$"), tmp_path)
    assert paths["latency"].read_bytes().startswith(b"\x89PNG")
    assert r"$\\frac{$" in paths["markdown"].read_text()  # Markdown-escaped text, drawn as plain text in the PNG


def _write_bench(path: Path, device: str, model: str = "ffnet_1") -> Path:
    data = _bench(model=model)
    data["device"]["name"] = device
    path.write_text(json.dumps(data))
    return path


def test_16_mathtext_in_report_merge_device_and_csv_model(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = _write_bench(tmp_path / "a.json", r"$\frac{$")
    phone = tmp_path / "phone.csv"
    phone.write_text("variant,precision,compute_units,median_ms,source,resolution\n"
                     "$\\undefinedcmd$,fp16,ALL,1.2,Xcode,224\n")
    assert main(["report", "add", "--csv", str(phone), "--device-name", "phone"]) == 0
    code = main(["report", "merge", str(a), str(tmp_path / "phone.json"), "--out", str(tmp_path / "t.md")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")


# -- 18: injection ----------------------------------------------------------------------------------------------------

FORMULAS = ["=cmd|' /C calc'!A0", '=HYPERLINK("http://example.invalid","click")', "+1+1", "-2+3", "@SUM(A1)"]


def test_18_csv_formulas_are_neutralised_in_merged_csv(tmp_path):
    phone = tmp_path / "phone.csv"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["variant", "precision", "compute_units", "median_ms", "source", "resolution"])
    for i, formula in enumerate(FORMULAS):
        writer.writerow([formula, "fp16", "ALL", f"1.{i}", formula, "224"])
    phone.write_text(buf.getvalue())
    assert main(["report", "add", "--csv", str(phone), "--device-name", "=HYPERLINK(\"x\")"]) == 0
    assert main(["report", "merge", str(tmp_path / "phone.json"), "--out", str(tmp_path / "t.md")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert len(rows) == len(FORMULAS)
    for row in rows:
        for column in ("device", "model", "imported_from"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r")), row
            assert row[column].startswith("'")
    assert {row["model"][1:] for row in rows} == set(FORMULAS)  # the text itself is kept


def test_18_bench_csv_neutralises_formulas():
    from ffnet_deploy.benchmarks.results import BenchResult, BenchRow, Device, to_csv

    row = BenchRow(model="=cmd|' /C calc'!A0", runtime="onnxruntime", precision="fp32", resolution=224,
                   latency_ms={"p50": 1.0}, reason="@SUM(1)")
    rows = list(csv.DictReader(io.StringIO(to_csv([BenchResult(Device(name="=evil()"), (row,))]))))
    assert rows[0]["model"] == "'=cmd|' /C calc'!A0" and rows[0]["device"] == "'=evil()"
    assert rows[0]["reason"] == "'@SUM(1)"


HTML = "<img src=x onerror=alert(1)>"


def _raw_html(text: str) -> bool:
    return bool(re.search(r"(?<!\\)<(img|script)", text))


def test_18_html_in_device_and_model_names_is_escaped_in_markdown(tmp_path):
    from ffnet_deploy.benchmarks.report import merge_files
    from ffnet_deploy.benchmarks.results import read_result, write_result

    bench = _write_bench(tmp_path / "a.json", f"box {HTML}", model="m<script>alert(1)</script>|x")
    written = write_result(read_result(bench), tmp_path / "out")
    md = written["md"].read_text()
    assert not _raw_html(md) and "\\<img" in md
    table = [line for line in md.splitlines() if line.startswith("| m\\<")]
    assert len(table) == 1 and "m\\<script>" in table[0] and "\\|x" in table[0]  # the pipe stays in its cell
    merged = merge_files([bench], tmp_path / "t.md")["md"].read_text()
    assert not _raw_html(merged) and "\\<img" in merged


def test_18_newline_and_code_fence_in_a_device_name_stay_in_the_fenced_block(tmp_path):
    from ffnet_deploy.pipeline.report import render_html, render_markdown

    device = f"box\n```\n{HTML}\n```"
    results = _plot_results(device)
    results["command"] = f"ffnet-deploy pipeline --demo --device-name '{device}'"
    md = render_markdown(results)
    lines = md.splitlines()
    run = lines.index("## Run") + 2
    fence, command, closing = lines[run:run + 3]
    assert set(fence) == {"`"} and len(fence) > 3 and closing == fence  # a fence no backtick run inside can close
    assert "--device-name 'box ``` <img" in command  # the command kept, on one line, inside the block
    outside = lines[:run] + lines[run + 3:]
    assert not any(line.startswith(("<", "```")) for line in outside) and not _raw_html("\n".join(outside))
    assert lines[0].startswith("# FFNet deployment report: ffnet_digits on box ") and len(lines[0].split("\n")) == 1
    page = render_html(results, tmp_path)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_report_merge_of_a_bench_folder_says_what_to_pass(tmp_path, capsys):
    """Issue 22, 9: a bench output folder given to report merge said "not a pipeline report"; it names the files to
    pass instead."""
    folder = tmp_path / "bench-out"
    folder.mkdir()
    phone = tmp_path / "phone.csv"
    phone.write_text("variant,precision,compute_units,median_ms,source\nffnet_1,fp16,ALL,1.2,Xcode\n")
    assert main(["report", "add", "--csv", str(phone), "--device-name", "phone", "--out",
                 str(folder / "results.json")]) == 0
    capsys.readouterr()
    assert main(["report", "merge", str(folder), "--out", str(tmp_path / "merged")]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "holds the results of 'ffnet-deploy bench'" in err
    assert f"report merge {folder / 'results.json'}" in err.replace("\n", "")
    assert not (tmp_path / "merged").exists()

"""The pipeline report renderers, on a results dict written by hand (the numbers are data to render, not measured)."""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ffnet_deploy.pipeline import report
from ffnet_deploy.pipeline.report import (
    SCHEMA,
    human_size,
    plot_accuracy,
    plot_latency,
    render_html,
    render_markdown,
    summary_rows,
    write_junit,
    write_report,
)
from ffnet_deploy.pipeline.results import PipelineResults

EVIL = "backend crashed: <script>alert('x')</script> & more"

_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "coreml": "coreml"}
_LATENCY = {("onnx", "fp32"): 0.25, ("onnx", "fp16"): 0.31, ("onnx", "int8"): 0.19,
            ("openvino", "fp32"): 0.21, ("openvino", "fp16"): 0.22, ("openvino", "int8"): 0.11}
_ACCURACY = {"fp32": 99.0, "fp16": 99.0, "int8": 98.6}
_COSINE = {"fp32": 0.9999998, "fp16": 0.99997, "int8": 0.99871}


def make_results(labelled: bool = True) -> dict:
    """A results dict of a 3 formats × 3 precisions run: openvino-int8 fails parity, coreml-int8 is skipped, the
    Core ML artifacts are not run here (no macOS) and coreml-fp16 crashed, with HTML in its reason."""
    jobs = []
    for fmt in ("onnx", "openvino", "coreml"):
        for prec in ("fp32", "fp16", "int8"):
            jid = f"{fmt}-{prec}"
            metrics = {"max_abs_error": 1e-5 if prec == "fp32" else 3e-3, "cosine_mean": _COSINE[prec],
                       "top1_agreement": 1.0 if prec != "int8" else 0.992, "sqnr_db": 80.1 if prec == "fp32" else 41.2}
            if labelled:
                metrics.update(accuracy=_ACCURACY[prec], reference_accuracy=99.0,
                               accuracy_drop=round(99.0 - _ACCURACY[prec], 3))
            job = {"id": jid, "format": fmt, "precision": prec, "status": "passed", "reason": None,
                   "artifact": {"path": f"artifacts/{jid}", "size_bytes": {"fp32": 1_083_412, "fp16": 561_230,
                                                                            "int8": 312_877}[prec],
                                "manifest": f"artifacts/{jid}/manifest.json"},
                   "export": {"seconds": 3.2, "reused": False,
                              "quantization": {"method": "static", "calibration": 128} if prec == "int8" else None},
                   "parity": {"verdict": "pass", "profile": prec, "runtime": _RUNTIME[fmt], "metrics": metrics,
                              "failures": [], "reason": None},
                   "bench": None}
            if (fmt, prec) in _LATENCY:
                p50 = _LATENCY[(fmt, prec)]
                job["bench"] = {"runtime": _RUNTIME[fmt], "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 2,
                                "min_ms": p50 * 0.9, "throughput_ips": 1000 / p50, "first_inference_ms": 12.0,
                                "peak_rss_mb": 3.0, "iterations": 200, "torch_p50_ms": 1.1,
                                "speedup_vs_torch": round(1.1 / p50, 2), "reason": None}
            if fmt == "coreml":
                job["parity"] = {"verdict": "not run", "profile": prec, "runtime": "coreml", "metrics": {},
                                 "failures": [], "reason": "Core ML prediction needs macOS"}
                job["bench"] = {"reason": "Core ML latency needs macOS"}
            jobs.append(job)
    failed = jobs[5]  # openvino-int8
    failed["status"] = "failed"
    failed["reason"] = "INT8 accuracy drop above the budget"
    failed["parity"]["verdict"] = "fail"
    failed["parity"]["failures"] = ["accuracy_drop", "top1_agreement"] if labelled else ["top1_agreement"]
    failed["parity"]["metrics"].update(cosine_mean=0.9912, top1_agreement=0.952)
    if labelled:
        failed["parity"]["metrics"].update(accuracy=96.8, accuracy_drop=2.2)
    skipped = jobs[8]  # coreml-int8
    skipped.update(status="skipped", reason="coremltools W8A8 needs coremltools>=8: pip install 'ffnet-deploy[coreml]'",
                   artifact=None, export=None, parity=None, bench=None)
    jobs[7]["status"] = "error"  # coreml-fp16
    jobs[7].update(reason=f"export crashed: ValueError | bad op; {EVIL}", artifact=None, parity=None, bench=None)
    return {
        "schema": SCHEMA,
        "command": "ffnet-deploy pipeline --demo --output out/demo",
        "created": "2026-11-27T05:00:00+00:00",
        "versions": {"ffnet-deploy": "0.1.0", "torch": "2.14.1", "onnxruntime": "1.22.0", "openvino": "2025.1"},
        "device": {"name": "vm", "cpu": "AMD EPYC 7B13", "cores": 2, "isa_flags": ["avx2", "fma"], "os": "Linux 6.1",
                   "machine": "x86_64", "gpu": None, "versions": {}},
        "checkpoint": {"path": "digits.pth", "sha256": "ab" * 32, "variant": "ffnet_digits", "params": 270000,
                       "gmacs": 0.03, "resolution": 32, "num_classes": 10, "random_weights": False,
                       "published_top1": None},
        "settings": {"formats": ["onnx", "openvino", "coreml"], "precisions": ["fp32", "fp16", "int8"],
                     "calib": "digits", "eval_data": "digits", "bench": True, "demo": True},
        "data": {"eval": "digits:test (500 labelled images)" if labelled else "random (64 images)",
                 "labelled": labelled, "reference_accuracy": 99.0 if labelled else None},
        "jobs": jobs,
        "recommendations": [
            {"runtime": "onnxruntime", "job": "onnx-int8", "p50_ms": 0.19, "fp32_job": "onnx-fp32",
             "fp32_p50_ms": 0.25, "speedup_vs_fp32": 1.32,
             "why": "fastest of 3 artifacts that passed parity on onnxruntime"},
            {"runtime": "openvino", "job": "openvino-fp32", "p50_ms": 0.21, "fp32_job": "openvino-fp32",
             "fp32_p50_ms": 0.21, "speedup_vs_fp32": 1.0,
             "why": "fastest of 2 artifacts that passed parity on openvino (openvino-int8 failed parity)"},
            {"runtime": "coreml", "job": None,
             "why": "Core ML latency needs macOS: run 'ffnet-deploy bench --runtimes coreml' on a Mac"},
        ],
        "plots": {},
        "summary": {"jobs": 9, "passed": 6, "failed": 1, "skipped": 1, "errors": 1, "exit_code": 1, "seconds": 182.4,
                    "look_at": ["Recommended for onnxruntime: onnx-int8, 1.32x faster than FP32, accuracy drop "
                                "0.4 points", "openvino-int8 failed parity: accuracy drop 2.2 points > 1.0"]},
    }


def _ids(results: dict) -> list[str]:
    return [j["id"] for j in results["jobs"]]


def test_human_size():
    assert human_size(None) == "—"
    assert human_size(512) == "512 B"
    assert human_size(1_234_567) == "1.2 MB"
    assert human_size(3_400_000_000) == "3.4 GB"


def test_summary_rows():
    results = make_results()
    rows = summary_rows(results)
    assert [r["artifact"] for r in rows] == _ids(results)
    by_id = {r["artifact"]: r for r in rows}
    assert by_id["onnx-fp32"]["size"] == "1.1 MB"
    assert by_id["onnx-fp32"]["verdict"] == "pass"
    assert by_id["onnx-fp32"]["p50_ms"] == "0.250"
    assert by_id["onnx-fp32"]["speedup"] == "4.40×"
    assert by_id["onnx-int8"]["top1_agreement"] == "99.2 %"
    assert by_id["onnx-int8"]["accuracy"] == "98.6 %"
    assert by_id["onnx-int8"]["accuracy_drop"] == "+0.4"
    assert by_id["openvino-int8"]["verdict"] == "fail"
    assert by_id["coreml-fp32"]["verdict"] == "not run"
    assert by_id["coreml-fp32"]["p50_ms"] == "—"
    assert by_id["coreml-fp16"]["verdict"] == "error"
    assert by_id["coreml-int8"]["size"] == "—"


def test_markdown_content():
    results = make_results()
    md = render_markdown(results)
    assert md.startswith("# FFNet deployment report: ffnet\\_digits on vm") or md.startswith(
        "# FFNet deployment report: ffnet_digits on vm")
    for jid in _ids(results):
        assert f"`{jid}`" in md
    for word in ("| pass |", "| fail |", "| not run |", "| error |", "| skipped |"):
        assert word in md
    assert "## What to look at" in md and "- Recommended for onnxruntime: onnx-int8" in md
    assert "## Recommendations" in md and "fastest of 3 artifacts that passed parity on onnxruntime" in md
    assert "Core ML latency needs macOS" in md
    # failures and skips with their reasons and failing checks
    assert "`openvino-int8` **failed parity**: INT8 accuracy drop above the budget" in md
    assert "`accuracy_drop`, `top1_agreement`" in md
    assert "`coreml-int8` **skipped**" in md and "`coreml-fp16` **export error**" in md
    assert "`coreml-fp32` **parity not run**: Core ML prediction needs macOS" in md
    # table cells keep their column: a '|' inside a reason is escaped, and every table row has as many cells
    assert "ValueError \\| bad op" in md
    summary = md.split("## Summary", 1)[1].split("\n\n", 2)[1].splitlines()
    assert len(summary) == 2 + len(results["jobs"])
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in summary}) == 1
    assert "Accuracy" in summary[0]
    # the command and versions at the end
    assert md.index("## Run") > md.index("## Summary")
    assert "ffnet-deploy pipeline --demo --output out/demo" in md and "torch 2.14.1" in md
    assert "\\<script>" in md and not re.search(r"(?<!\\)<", md)  # no raw HTML for a Markdown viewer to run


def test_markdown_unlabelled_and_plots_linked():
    results = make_results(labelled=False)
    results["plots"] = {"latency": "plots/latency.png", "accuracy": "plots/accuracy.png"}
    md = render_markdown(results)
    assert "Accuracy" not in md.split("## Summary", 1)[1].splitlines()[2]
    assert "![Median latency per artifact](plots/latency.png)" in md
    assert "![Accuracy per artifact](plots/accuracy.png)" in md


def test_markdown_minimal_dict():
    md = render_markdown({"schema": SCHEMA, "jobs": []})
    assert md.startswith("# FFNet deployment report")
    assert "No jobs ran." in md


def test_html_self_contained_and_escaped(tmp_path):
    results = make_results()
    paths = write_report(results, tmp_path)
    page = render_html(results, tmp_path)
    assert page == paths["html"].read_text()
    assert "<script>" not in page
    # jinja2's autoescape (markupsafe) writes the quote as &#39;; the page was html.escape'd (&#x27;) before
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<thead>" in page and "<tbody>" in page and '<table id="summary">' in page
    body = page.split('<table id="summary">', 1)[1].split("</tbody>", 1)[0].split("<tbody>", 1)[1]
    assert body.count("<tr>") == len(results["jobs"])
    verdicts = {"pass": "pass", "fail": "fail", "not run": "notrun", "error": "fail", "skipped": "notrun"}
    for verdict, css in verdicts.items():
        assert f'<td class="verdict {css}">{verdict}</td>' in page
    for jid in _ids(results):
        assert f">{jid}</td>" in page


def test_html_missing_plot_is_a_note(tmp_path):
    results = make_results()
    results["plots"] = {"latency": "plots/latency.png"}
    page = render_html(results, tmp_path)
    assert "<img" not in page and "plots/latency.png is missing" in page


def test_junit_counts(tmp_path):
    """The project's one JUnit layout (shared with validate): one suite per job, one case per gated check. These
    hand-written records carry no per-check results, so each job is one case (``parity``, or ``export`` for a job
    that made no artifact) and the counts are the jobs'."""
    results = make_results()
    path = write_junit(results, tmp_path / "junit.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("name") == "ffnet-deploy pipeline"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == _ids(results)
    counts = {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": "9", "failures": "1", "errors": "1", "skipped": "2"}
    assert {k: str(sum(int(s.get(k)) for s in suites.values())) for k in counts} == counts
    per_job = {jid: s.findall("testcase") for jid, s in suites.items()}
    assert all(len(found) == 1 for found in per_job.values())
    cases = {jid: found[0] for jid, found in per_job.items()}
    assert all(c.get("classname") == jid for jid, c in cases.items())  # the job, like validate's artifact
    failure = cases["openvino-int8"].find("failure")
    assert "INT8 accuracy drop above the budget" in failure.get("message")
    assert "accuracy_drop, top1_agreement" in failure.get("message")
    assert cases["coreml-fp16"].find("error") is not None
    assert cases["coreml-int8"].find("skipped") is not None
    assert "macOS" in cases["coreml-fp32"].find("skipped").get("message")
    assert all(list(cases[j]) == [] or cases[j][0].tag == "system-out" for j in ("onnx-fp32", "openvino-fp32"))
    assert not list(tmp_path.glob(".*tmp*"))


def test_junit_one_case_per_gated_check(tmp_path):
    """A record with its checks (what the pipeline writes) gets one case per check, as validate's JUnit does."""
    data = make_results()
    checks = [{"name": "finite", "value": 0, "threshold": 0, "op": "<=", "passed": True, "detail": "",
               "message": "finite = 0 (must be <= 0)"},
              {"name": "top1_agreement", "value": 0.952, "threshold": 0.99, "op": ">=", "passed": False,
               "detail": "", "message": "top1_agreement = 0.952 (must be >= 0.99)"}]
    data["jobs"][5]["parity"]["checks"] = checks  # openvino-int8, which failed
    data["jobs"][0]["parity"]["checks"] = checks[:1]
    root = ET.parse(write_junit(data, tmp_path / "junit.xml")).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    failed = {c.get("name"): c for c in suites["openvino-int8"].findall("testcase")}
    assert list(failed) == ["finite", "top1_agreement"] and suites["openvino-int8"].get("failures") == "1"
    assert failed["top1_agreement"].find("failure").get("message") == checks[1]["message"]
    assert failed["finite"].find("failure") is None and failed["finite"].find("system-out").text == checks[0]["message"]
    assert [c.get("name") for c in suites["onnx-fp32"].findall("testcase")] == ["finite"]
    from ffnet_deploy.reporting import junit

    assert (tmp_path / "junit.xml").read_text().startswith(junit.head("ffnet-deploy pipeline"))


def _holds(loaded, original) -> bool:
    """Every key and value of ``original`` is in ``loaded`` (which may hold more: the model's defaults)."""
    if isinstance(original, dict):
        return isinstance(loaded, dict) and all(k in loaded and _holds(loaded[k], v) for k, v in original.items())
    if isinstance(original, list):
        return isinstance(loaded, list) and len(loaded) == len(original) and all(
            _holds(a, b) for a, b in zip(loaded, original, strict=True))
    return loaded == original


def test_write_report_files_and_roundtrip(tmp_path):
    results = make_results()
    original = copy.deepcopy(results)
    paths = write_report(results, tmp_path / "out")
    assert set(paths) == {"latency", "accuracy", "markdown", "html", "json", "junit"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    assert paths["latency"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["plots"] == {"latency": "plots/latency.png", "accuracy": "plots/accuracy.png"}
    loaded = json.loads(paths["json"].read_text())
    # the file is the typed results (PipelineResults) and holds every value of the dict they were made from
    assert loaded == json.loads(PipelineResults.model_validate(results).to_json())
    assert _holds(loaded, results) and loaded["plots"] == results["plots"]
    assert _holds({k: v for k, v in loaded.items() if k != "plots"},
                  {k: v for k, v in original.items() if k != "plots"})
    assert "![Median latency per artifact](plots/latency.png)" in paths["markdown"].read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["index.html", "index.md", "junit.xml", "plots",
                                                                       "results.json"]
    # same results, byte-identical report
    first = {k: p.read_bytes() for k, p in paths.items()}
    write_report(json.loads(paths["json"].read_text()), tmp_path / "out")
    assert {k: p.read_bytes() for k, p in paths.items()} == first


def test_write_report_unlabelled(tmp_path):
    results = make_results(labelled=False)
    paths = write_report(results, tmp_path)
    assert "accuracy" in paths  # cosine / top-1 agreement panels instead of accuracy


def test_plots_none_without_numbers(tmp_path):
    results = make_results()
    for job in results["jobs"]:
        job["bench"] = {"reason": "not measured"} if job["bench"] else None
        if job["parity"]:
            job["parity"]["metrics"] = {}
    assert plot_latency(results, tmp_path / "l.png") is None
    assert plot_accuracy(results, tmp_path / "a.png") is None
    assert plot_latency({"jobs": []}, tmp_path / "l.png") is None
    assert plot_accuracy({}, tmp_path / "a.png") is None
    assert not list(tmp_path.iterdir())
    paths = write_report(results, tmp_path)
    assert results["plots"] == {} and "latency" not in paths
    assert "<img" not in paths["html"].read_text()


def test_nonfinite_metrics_are_strict_json(tmp_path):
    results = make_results()
    results["jobs"][0]["parity"]["metrics"]["sqnr_db"] = float("inf")
    results["jobs"][2]["parity"]["metrics"]["cosine_mean"] = float("nan")
    paths = write_report(results, tmp_path)
    text = paths["json"].read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["jobs"][0]["parity"]["metrics"]["sqnr_db"] == "inf"
    assert summary_rows(results)[2]["cosine"] == "—"


@pytest.mark.parametrize("n", [1, 30])
def test_latency_plot_scales_with_jobs(tmp_path, n):
    from PIL import Image

    results = make_results()
    template = results["jobs"][0]
    results["jobs"] = []
    for i in range(n):
        job = copy.deepcopy(template)
        job["id"] = f"onnx-fp32-{i}"
        job["bench"]["p50_ms"] = 0.2 * (i + 1)
        results["jobs"].append(job)
    path = plot_latency(results, tmp_path / "l.png")
    with Image.open(path) as im:
        height = im.size[1]
    assert (height > 1000) if n == 30 else (height < 400)


def test_plots_do_not_use_pyplot():
    assert "matplotlib.pyplot" not in Path(report.__file__).read_text()


def test_a_reference_at_chance_is_warned_and_plotted_on_a_readable_axis(tmp_path, monkeypatch):
    """Issue 22, 6: a PyTorch reference scoring 0 % (labels that do not follow the model's classes) used to pass
    without a word, and equal accuracies drew an axis of +-1e-6 %."""
    from ffnet_deploy.pipeline import report as report_module

    results = make_results()
    results["data"]["reference_accuracy"] = 0.0
    for job in results["jobs"]:
        metrics = (job.get("parity") or {}).get("metrics") or {}
        if "accuracy" in metrics:
            metrics.update(accuracy=0.0, reference_accuracy=0.0, accuracy_drop=0.0)
    md = render_markdown(results)
    assert "PyTorch reference accuracy 0.0 %" in md and "Warning:" in md and "chance is 10.0 %" in md
    assert "Warning:" not in render_markdown(make_results())  # a trained reference (99 %) is not warned about

    spans = []
    real_save = report_module.save

    def keep_axis(fig, *args, **kwargs):
        spans.append(fig.axes[0].get_xlim())
        return real_save(fig, *args, **kwargs)

    monkeypatch.setattr(report_module, "save", keep_axis)
    assert plot_accuracy(results, tmp_path / "a.png") is not None
    (lo, hi), = spans
    assert hi - lo >= 2.0  # at least a point on each side, never +-1e-6


def test_reference_accuracy_warning_bounds():
    from ffnet_deploy.validate.metrics import reference_accuracy_warning

    assert "0.0 %" in reference_accuracy_warning(0.0, 10)
    assert reference_accuracy_warning(10.0, 10) is not None  # at chance
    assert reference_accuracy_warning(10.5, 10) is None and reference_accuracy_warning(99.0, 1000) is None
    assert reference_accuracy_warning(None, 10) is None and reference_accuracy_warning(float("nan"), 10) is None


def test_the_table_level_noise_line_names_three_reasons_and_counts_the_rest():
    from types import SimpleNamespace

    from ffnet_deploy.pipeline.report import bench_noise

    def job(i: int, reasons: list[str]):
        bench = SimpleNamespace(verdict="noisy", noise_reasons=reasons, load_before=6.0, load_after=5.5,
                                torch_omp_wait_policy="PASSIVE")
        return SimpleNamespace(id=f"job{i}", bench=bench)

    loaded = SimpleNamespace(jobs=[job(i, [f"reason {i}a", f"reason {i}b"]) for i in range(4)])
    line = bench_noise(loaded)
    assert line is not None and line.startswith("noisy") and "load average 6.00 before, 5.50 after" in line
    assert "job0: reason 0a; job0: reason 0b; job1: reason 1a; 5 more in results.json" in line
    assert "job3" not in line
    quiet = SimpleNamespace(jobs=[job(0, ["only one"])])
    assert bench_noise(quiet).endswith("job0: only one")  # nothing counted when all are shown


@pytest.mark.parametrize("int8_blocks, picked", [
    ([0.40, 0.62, 0.45], "litert-fp32"),  # the blocks disagree: FP32 is kept
    ([0.30, 0.31, 0.29], "litert-int8"),  # every block shows INT8 faster
])
def test_a_phone_runtimes_recommendation_says_it_was_timed_on_this_host(int8_blocks, picked):
    """Whether the pick is the fastest or FP32 kept because the blocks disagree, the reason says the timing is this
    host's (the kept-FP32 reason once dropped it)."""
    from ffnet_deploy.pipeline.engine import recommend
    from ffnet_deploy.pipeline.results import JobRecord
    from ffnet_deploy.runtimes import RUNTIMES

    def job(precision: str, blocks: list[float]) -> JobRecord:
        return JobRecord.model_validate({
            "id": f"litert-{precision}", "format": "litert", "precision": precision, "status": "passed",
            "bench": {"runtime": "litert", "p50_ms": min(blocks), "blocks_ms": blocks, "verdict": "stable"}})

    (rec,) = recommend([job("fp32", [0.50, 0.50, 0.50]), job("int8", int8_blocks)])
    assert rec.job == picked
    assert RUNTIMES.get("litert").latency_note in rec.why and "not device latency" in rec.why

"""The report in a pipeline output folder: ``index.md``, ``index.html``, ``results.json``, ``junit.xml`` and plots.

Every renderer reads one :class:`~ffnet_deploy.pipeline.results.PipelineResults` (schema
``ffnet-deploy/pipeline/1``, typed: :mod:`ffnet_deploy.pipeline.results`) and nothing else, so a report can be
rendered again from a ``results.json`` alone::

    write_report(read_results(folder / "results.json"), folder)

(A plain dict in that layout is accepted too, and validated into the model first.)

The Markdown and the HTML page are built from one list of blocks (:func:`_document`, rendered by
:mod:`ffnet_deploy.reporting.document` and :mod:`ffnet_deploy.reporting.html`), so they always say the same thing.
The HTML page is a jinja2 template with autoescaping: self-contained (inline style, plots embedded as
``data:image/png;base64`` URIs, no script, nothing loaded from anywhere), so it can be mailed, archived as a CI
artifact or opened from a file. All text taken from the results (job reasons, paths, device names, versions) is
escaped for the format it lands in, and kept on one line.

``junit.xml`` is the project's one JUnit layout (:mod:`ffnet_deploy.reporting.junit`): one ``<testsuite>`` per job,
one ``<testcase>`` per gated check. The plots use the project's one plot engine (:mod:`ffnet_deploy.reporting.plots`).
Every file is written atomically (:mod:`ffnet_deploy.atomic`), and the same results give byte-identical files.
"""

from __future__ import annotations

import math
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffnet_deploy.atomic import write_text
from ffnet_deploy.benchmarks.results import fmt_ms as bench_ms
from ffnet_deploy.errors import MissingDependencyError, require
from ffnet_deploy.pipeline.results import SCHEMA, JobRecord, PipelineResults
from ffnet_deploy.reporting import junit
from ffnet_deploy.reporting.document import (
    Block,
    Bullets,
    Code,
    Heading,
    Image,
    Para,
    Span,
    Table,
)
from ffnet_deploy.reporting.document import bold as _b
from ffnet_deploy.reporting.document import code as _c
from ffnet_deploy.reporting.document import plain as _t
from ffnet_deploy.reporting.document import (
    render_markdown as markdown_of,
)
from ffnet_deploy.reporting.html import render_page
from ffnet_deploy.reporting.plots import LOG_SPAN, PNG_TAG, figure, legend_below, plain_log_ticks, plain_text, save
from ffnet_deploy.validate.metrics import reference_accuracy_warning

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["DASH", "JUNIT_NAME", "LOG_SPAN", "PLOTS_DIR", "PLOTTERS", "PLOT_TITLES", "PNG_TAG", "SCHEMA",
           "SUMMARY_COLUMNS", "fmt_ms", "human_size", "junit_suites", "junit_tree", "plot_accuracy", "plot_latency",
           "render_html", "render_markdown", "summary_rows", "verdict", "write_junit", "write_report"]

JUNIT_NAME = "ffnet-deploy pipeline"
"""The ``name`` of the JUnit ``<testsuites>`` root."""

PLOTS_DIR = "plots"
"""The folder, inside the output folder, that holds the PNGs."""

PLOT_TITLES = {"latency": "Median latency per artifact", "accuracy": "Accuracy per artifact"}
"""The caption of each plot, by its key in ``results.plots``."""

DASH = "—"
"""What a table cell shows for a value that was not measured."""

_VERDICT_CLASS = {"pass": "pass", "fail": "fail", "error": "fail", "not run": "notrun", "skipped": "notrun"}


def _results(results: PipelineResults | dict) -> PipelineResults:
    """The typed results (a dict in the ``results.json`` layout is validated into them)."""
    return results if isinstance(results, PipelineResults) else PipelineResults.model_validate(results)


# --------------------------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (missing, booleans, non-finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def human_size(size_bytes: Any) -> str:
    """A byte count for people, in decimal units: ``"1.2 MB"``; :data:`DASH` when unknown."""
    n = _num(size_bytes)
    if n is None:
        return DASH
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def fmt_ms(value: Any) -> str:
    """Milliseconds as the bench tables write them (:func:`ffnet_deploy.benchmarks.results.fmt_ms`), :data:`DASH`
    when missing."""
    v = _num(value)
    return DASH if v is None else bench_ms(v)


def vs_torch_text(bench: Any, unit: str = "×") -> str:
    """The speedup over eager PyTorch with its per-block range (``"4.41× (4.20–4.63)"``), "no clear difference"
    when the range holds 1.0, and "(noisy)" when the bench judged the row noisy; :data:`DASH` without one."""
    from ffnet_deploy.runtimes.noise import PairedRatio, format_ratio

    speedup = _num(bench.speedup_vs_torch) if bench is not None else None
    if speedup is None:
        return DASH
    low, high = _num(bench.vs_torch_low), _num(bench.vs_torch_high)
    text = (f"{speedup:.2f}{unit}" if low is None or high is None
            else format_ratio(PairedRatio(speedup, low, high, ()), unit))
    return text + (" (noisy)" if bench.verdict not in (None, "stable") else "")


def vs_fp32_text(rec: Any) -> str:
    """``"1.36x (1.30-1.41)"``: the recommendation's speedup over FP32 with its per-block range."""
    from ffnet_deploy.runtimes.noise import PairedRatio, format_ratio

    if rec.speedup_vs_fp32 is None:
        return "-"
    if rec.speedup_low is None or rec.speedup_high is None:
        return f"{rec.speedup_vs_fp32:.2f}x"
    return format_ratio(PairedRatio(rec.speedup_vs_fp32, rec.speedup_low, rec.speedup_high, ()), "x")


NOISE_REASONS_SHOWN = 3
"""How many of the rows' noise reasons the table-level line spells out; every one is in ``results.json``."""


def bench_noise(results: Any, shown: int = NOISE_REASONS_SHOWN) -> str | None:
    """The bench stage's table-level verdict line (its rows' verdicts together, and the load), or ``None``.

    Names the first ``shown`` reasons and counts the rest (each job's own are its ``bench.noise_reasons``): a
    loaded machine gives two or three per timed job, a paragraph nobody reads in a terminal."""
    from ffnet_deploy.runtimes.noise import NOISY, STABLE

    entries = [j.bench for j in results.jobs if j.bench is not None and j.bench.verdict is not None]
    if not entries:
        return None
    reasons = list(dict.fromkeys(f"{j.id}: {r}" for j in results.jobs if j.bench is not None
                                 for r in j.bench.noise_reasons))
    first = entries[0]
    load = ", ".join(f"{v:.2f} {k}" for k, v in (("before", _num(first.load_before)), ("after", _num(first.load_after)))
                     if v is not None)
    policy = first.torch_omp_wait_policy
    text = f"{NOISY if reasons else STABLE}" + (f" (load average {load})" if load else "")
    if policy:
        text += f"; eager PyTorch with OMP_WAIT_POLICY={policy}"
    if len(reasons) > shown:
        reasons = [*reasons[:shown], f"{len(reasons) - shown} more in results.json (each job's bench.noise_reasons)"]
    return text + (": " + "; ".join(reasons) if reasons else "")


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    v = _num(value)
    return DASH if v is None else f"{v:{spec}}{suffix}"


def _duration(seconds: Any) -> str:
    s = _num(seconds)
    if s is None:
        return DASH
    if s < 60:
        return f"{s:.1f} s"
    minutes, rest = divmod(round(s), 60)
    return f"{minutes} min {rest} s"


# --------------------------------------------------------------------------------------------------------------------
# Reading the results
# --------------------------------------------------------------------------------------------------------------------


def _metrics(job: JobRecord) -> dict[str, Any]:
    return job.parity.metrics if job.parity is not None else {}


def verdict(job: JobRecord | dict) -> str:
    """The parity verdict shown for a job: ``pass``, ``fail``, ``not run``, or the job's status when it made no
    artifact to check (``skipped``, ``error``)."""
    job = job if isinstance(job, JobRecord) else JobRecord.model_validate(job)
    if job.status in ("error", "skipped"):
        return job.status
    return job.parity.verdict if job.parity is not None else "not run"


def _labelled(results: PipelineResults) -> bool:
    return bool(results.data and results.data.labelled) or any(
        _num(_metrics(j).get("accuracy")) is not None for j in results.jobs)


def _reference_accuracy(results: PipelineResults) -> float | None:
    ref = _num(results.data.reference_accuracy) if results.data is not None else None
    if ref is None:
        refs = [_num(_metrics(j).get("reference_accuracy")) for j in results.jobs]
        ref = next((r for r in refs if r is not None), None)
    return ref


def _bench_runtime(job: JobRecord) -> str:
    return ((job.bench.runtime if job.bench is not None else None)
            or (job.parity.runtime if job.parity is not None else None) or job.format or "?")


def _variant(results: PipelineResults) -> str:
    return (results.checkpoint.variant if results.checkpoint is not None else None) or "model"


def _device_name(results: PipelineResults) -> str:
    return (results.device.name if results.device is not None else None) or "this machine"


# --------------------------------------------------------------------------------------------------------------------
# Summary rows
# --------------------------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("artifact", "Artifact"),
    ("format", "Format"),
    ("precision", "Precision"),
    ("size", "Size"),
    ("verdict", "Parity"),
    ("cosine", "Cosine"),
    ("top1_agreement", "Top-1 agree"),
    ("accuracy", "Accuracy"),
    ("accuracy_drop", "Drop (pt)"),
    ("p50_ms", "p50 (ms)"),
    ("p90_ms", "p90 (ms)"),
    ("speedup", "vs torch"),
    ("ran_on", "Ran on"),
)
"""The summary table's columns: key in a :func:`summary_rows` row, header (``ran_on`` only for a run whose jobs ran
on other machines, e.g. Ray nodes)."""

_NUMERIC = {"size", "cosine", "top1_agreement", "accuracy", "accuracy_drop", "p50_ms", "p90_ms", "speedup"}
_LABELLED_ONLY = {"accuracy", "accuracy_drop"}


def summary_rows(results: PipelineResults | dict) -> list[dict]:
    """One row per job for the summary table, every value already formatted for display.

    Keys: ``artifact`` (the job id), ``format``, ``precision``, ``status``, ``size`` (``"1.2 MB"``), ``verdict``
    (see :func:`verdict`), ``cosine`` (mean cosine similarity), ``top1_agreement`` (%), ``accuracy`` (%) and
    ``accuracy_drop`` (points, against the PyTorch reference) when the data is labelled, ``p50_ms``, ``p90_ms``,
    ``speedup`` (against PyTorch eager, ``"4.4×"``), ``runtime`` (the bench runtime), ``reason`` (one line, or
    ``""``) and ``ran_on`` (the machine of a job that ran elsewhere, e.g. a Ray node). A value that was not
    measured is :data:`DASH`.
    """
    rows = []
    for job in _results(results).jobs:
        metrics = _metrics(job)
        bench = job.bench
        agreement = _num(metrics.get("top1_agreement"))
        rows.append({
            "artifact": job.id,
            "format": job.format or DASH,
            "precision": job.precision or DASH,
            "status": job.status or DASH,
            "size": human_size(job.artifact.size_bytes if job.artifact is not None else None),
            "verdict": verdict(job),
            "cosine": _fmt(metrics.get("cosine_mean"), ".5f"),
            "top1_agreement": DASH if agreement is None else f"{100 * agreement:.1f} %",
            "accuracy": _fmt(metrics.get("accuracy"), ".1f", " %"),
            "accuracy_drop": _fmt(metrics.get("accuracy_drop"), "+.1f"),
            "p50_ms": fmt_ms(bench.p50_ms if bench is not None else None),
            "p90_ms": fmt_ms(bench.p90_ms if bench is not None else None),
            "speedup": vs_torch_text(bench),
            "runtime": _bench_runtime(job),
            "reason": _reason(job),
            "ran_on": job.ran_on or DASH,
        })
    return rows


def _reason(job: JobRecord) -> str:
    return str(job.reason or (job.parity.reason if job.parity is not None else None) or "")


def _columns(results: PipelineResults) -> list[tuple[str, str]]:
    labelled = _labelled(results)
    elsewhere = any(job.ran_on for job in results.jobs)
    return [(k, h) for k, h in SUMMARY_COLUMNS
            if (labelled or k not in _LABELLED_ONLY) and (elsewhere or k != "ran_on")]


# --------------------------------------------------------------------------------------------------------------------
# One document, two renderings
# --------------------------------------------------------------------------------------------------------------------


def _header_blocks(results: PipelineResults) -> list[Block]:
    ckpt, device, data, summary = results.checkpoint, results.device, results.data, results.summary
    blocks: list[Block] = [Heading(1, f"FFNet deployment report: {_variant(results)} on {_device_name(results)}")]

    facts = []
    if ckpt is not None:
        if _num(ckpt.params) is not None:
            facts.append(f"{ckpt.params / 1e6:.2f} M parameters")
        if _num(ckpt.gmacs) is not None:
            facts.append(f"{ckpt.gmacs:.3g} GMACs")
        if ckpt.resolution:
            facts.append(f"{ckpt.resolution} px")
        if ckpt.num_classes:
            facts.append(f"{ckpt.num_classes} classes")
        if ckpt.sha256:
            facts.append(f"sha256 {ckpt.sha256[:12]}")
    spans = [_b("Checkpoint: "), _c((ckpt.path if ckpt is not None else None) or "?")]
    if facts:
        spans.append(_t(" (" + ", ".join(facts) + ")"))
    blocks.append(Para(spans))
    if ckpt is not None and ckpt.random_weights:
        blocks.append(Para([_b("Random weights: "), _t("no checkpoint was given; accuracy and agreement numbers "
                                                        "say nothing about a trained model (latency only).")],
                           css="warn"))

    hw: list[str] = []
    if device is not None:
        hw = [str(v) for v in (device.cpu, device.machine, device.os) if v]
        if device.cores:
            hw.insert(1 if hw else 0, f"{device.cores} cores")
        if device.isa_class:
            hw.insert(1 if hw else 0, f"ISA class {device.isa_class}" + (" (emulated)" if device.emulated else ""))
        if device.gpu:
            hw.append(f"GPU {device.gpu}")
    blocks.append(Para([_b("Device: "), _t(_device_name(results) + (" (" + ", ".join(hw) + ")" if hw else ""))]))

    if data is not None:
        spans = [_b("Data: "), _t(data.eval or "?")]
        ref = _reference_accuracy(results)
        if ref is not None:
            spans.append(_t(f"; PyTorch reference accuracy {ref:.1f} %"))
            classes = results.checkpoint.num_classes if results.checkpoint is not None else None
            warning = reference_accuracy_warning(ref, classes)
            if warning is not None:
                spans += [_b(" Warning: "), _t(warning[:1].upper() + warning[1:] + ".")]
        blocks.append(Para(spans))

    if summary is not None:
        counts = [f"{summary.passed} passed", f"{summary.failed} failed", f"{summary.skipped} skipped",
                  f"{summary.errors} error" + ("" if summary.errors == 1 else "s")]
        line = f"{', '.join(counts)} of {summary.jobs} jobs"
        if _num(summary.seconds) is not None:
            line += f" in {_duration(summary.seconds)}"
        line += f"; exit code {summary.exit_code}"
        blocks.append(Para([_b("Result: "), _t(line + ".")]))
    noise = bench_noise(results)
    if noise:
        blocks.append(Para([_b("Bench noise verdict: "), _t(noise + ".")]))
    return blocks


def _recommendation_table(results: PipelineResults) -> Table | None:
    if not results.recommendations:
        return None
    rows = []
    for r in results.recommendations:
        speedup = _num(r.speedup_vs_fp32)
        vs = DASH if speedup is None else vs_fp32_text(r).replace("x", "×")
        if r.job and r.job == r.fp32_job:
            vs = "is the FP32 artifact"
        elif speedup is not None and r.fp32_job:
            vs += f" ({r.fp32_job}: {fmt_ms(r.fp32_p50_ms)} ms)"
        rows.append([r.runtime or "?", r.job or DASH, fmt_ms(r.p50_ms), vs, r.why or ""])
    return Table(["Runtime", "Use", "p50 (ms)", "vs FP32", "Why"], rows, numeric={2}, code_col=1,
                 id="recommendations", blank=DASH)


def _summary_table(results: PipelineResults) -> Table:
    columns = _columns(results)
    keys = [k for k, _ in columns]
    rows = [[row[k] for k in keys] for row in summary_rows(results)]
    return Table([h for _, h in columns], rows, numeric={i for i, k in enumerate(keys) if k in _NUMERIC},
                 verdict_col=keys.index("verdict"), code_col=0, id="summary", blank=DASH)


def _issue_items(results: PipelineResults) -> list[list[Span]]:
    """One bullet per failed, skipped or crashed job, per parity check not run and per bench that could not run."""
    items = []
    for job in results.jobs:
        jid, status, parity = job.id, job.status, job.parity
        reason = _reason(job)
        if status == "failed" or (parity is not None and parity.verdict == "fail"):
            spans = [_c(jid), _b(" failed parity"), _t(f": {reason}" if reason else "")]
            failures = list(parity.failures) if parity is not None else []
            if failures:
                spans.append(_t(". Failing checks: "))
                for i, name in enumerate(failures):
                    spans += ([_t(", ")] if i else []) + [_c(name)]
            items.append(spans)
        elif status == "skipped":
            items.append([_c(jid), _b(" skipped"), _t(f": {reason}" if reason else "")])
        elif status == "error":
            items.append([_c(jid), _b(" export error"), _t(f": {reason}" if reason else "")])
        elif verdict(job) == "not run":
            items.append([_c(jid), _b(" parity not run"), _t(f": {reason}" if reason else "")])
        if job.bench is not None and job.bench.reason and status not in ("skipped", "error"):
            items.append([_c(jid), _b(" latency not measured"), _t(f": {job.bench.reason}")])
    return items


def _run_blocks(results: PipelineResults) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Run")]
    if results.command:
        blocks.append(Code(results.command))
    if results.settings:
        parts = []
        for key, value in results.settings.items():
            shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            parts.append(f"{key}: {shown}")
        blocks.append(Para([_b("Settings: "), _t("; ".join(parts))]))
    if results.versions:
        blocks.append(Para([_b("Versions: "), _t(" · ".join(f"{k} {v}" for k, v in results.versions.items()))]))
    meta = [f"schema {results.schema_ or SCHEMA}"]
    if results.created:
        meta.insert(0, f"created {results.created}")
    blocks.append(Para([_t(", ".join(meta))], css="muted"))
    return blocks


def _document(results: PipelineResults) -> list[Block]:
    """The report as a list of blocks, in reading order."""
    blocks = _header_blocks(results)
    look_at = list(results.summary.look_at) if results.summary is not None else []
    if look_at:
        blocks += [Heading(2, "What to look at"), Bullets([[_t(x)] for x in look_at])]
    recs = _recommendation_table(results)
    if recs is not None:
        blocks += [Heading(2, "Recommendations"), recs]
    blocks += [Heading(2, "Summary"), _summary_table(results)]
    if not results.jobs:
        blocks.append(Para([_t("No jobs ran.")], css="muted"))
    issues = _issue_items(results)
    if issues:
        blocks += [Heading(2, "Failures and skips"), Bullets(issues)]
    if results.plots:
        blocks.append(Heading(2, "Plots"))
        blocks += [Image(PLOT_TITLES.get(name, name), rel) for name, rel in results.plots.items()]
    return blocks + _run_blocks(results)


def render_markdown(results: PipelineResults | dict) -> str:
    """``index.md``: the whole report in GitHub-flavoured Markdown, plots linked as ``![..](plots/x.png)``."""
    return markdown_of(_document(_results(results)))


_CSS = """

:root { color-scheme: light; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1f2328;
       margin: 0; background: #f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 12px; padding-bottom: 8px; border-bottom: 1px solid #d0d7de; }
h2 { font-size: 19px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #eaeef2; }
p { margin: 4px 0; }
ul { margin: 6px 0; padding-left: 22px; }
li { margin: 3px 0; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
            font-size: 13px; }
code { background: #eff1f3; padding: 1px 4px; border-radius: 4px; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 12px;
      white-space: pre-wrap; word-break: break-all; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 6px 10px; }
.muted { color: #59636e; font-size: 13px; }
.scroll { overflow-x: auto; margin: 8px 0; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; vertical-align: top; }
th { background: #f0f3f6; text-align: left; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #f8fafc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.num { text-align: right; }
td.id { white-space: nowrap; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
tbody tr td.verdict { font-weight: 600; text-align: center; white-space: nowrap; }
tbody tr td.pass { background: #dafbe1; color: #116329; }
tbody tr td.fail { background: #ffebe9; color: #a40e26; }
tbody tr td.notrun { background: #eaeef2; color: #59636e; }
#recommendations td:last-child { min-width: 320px; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #59636e; font-size: 13px; }
"""


def _cell_class(table: Table, column: int, text: str) -> list[str]:
    return ["verdict", _VERDICT_CLASS.get(text, "notrun")] if column == table.verdict_col else []


def render_html(results: PipelineResults | dict, folder: Path) -> str:
    """``index.html``: the same content as :func:`render_markdown`, self-contained.

    Args:
        results: The pipeline results.
        folder: The output folder; the plots are read from ``folder / results.plots[name]`` and embedded as
            ``data:`` URIs (a missing plot becomes a note).

    Returns:
        The page: inline style, no script, no external URL, every piece of text escaped (jinja2 autoescape).
    """
    results = _results(results)
    title = f"FFNet deployment report: {_variant(results)} on {_device_name(results)}"
    return render_page(title, _document(results), css=_CSS, folder=Path(folder), cell_class=_cell_class)


# --------------------------------------------------------------------------------------------------------------------
# JUnit
# --------------------------------------------------------------------------------------------------------------------


def _metric_lines(job: JobRecord) -> str:
    return "\n".join(f"{k} = {v}" for k, v in _metrics(job).items())


def junit_suites(results: PipelineResults | dict) -> list[junit.Suite]:
    """One suite per job, one case per gated check (:mod:`ffnet_deploy.reporting.junit`).

    A job whose export crashed is one ``export`` case with an ``<error>``, a skipped job one ``export`` case
    ``<skipped>``, a job whose parity check did not run one ``parity`` case ``<skipped>``. A validated job has one
    case per check of its profile (a failing check carries ``<failure>``); a record without its checks (written by
    an earlier version) has one ``parity`` case that fails with the job's reason and failing checks, the metrics in
    its text.
    """
    results = _results(results)
    suites = []
    for job in results.jobs:
        parity = job.parity
        reason = _reason(job)
        seconds = _num(job.export.seconds) if job.export is not None else None
        props = [("format", job.format), ("precision", job.precision), ("runtime", parity.runtime if parity else None),
                 ("profile", parity.profile if parity else None), ("data", parity.data if parity else None)]
        cases: list[junit.Case]
        if job.status == "error":
            cases = [junit.Case("export", "error", message=reason or "export error", text=reason, type="error",
                                time=seconds)]
        elif job.status == "skipped":
            cases = [junit.Case("export", "skipped", message=reason or "skipped", time=seconds)]
        elif verdict(job) == "not run" and not (job.status == "failed"):
            cases = [junit.Case("parity", "skipped", message=reason or "not run", time=seconds)]
        elif parity is not None and parity.checks:
            cases = [junit.Case(c.name, "passed" if c.passed else "failure", message="" if c.passed else c.message,
                                type="parity", output=c.message, time=None) for c in parity.checks]
        elif job.status == "failed" or verdict(job) == "fail":
            failures = list(parity.failures) if parity is not None else []
            message = "; ".join(x for x in (reason, "failing checks: " + ", ".join(failures) if failures else "") if x)
            cases = [junit.Case("parity", "failure", message=message or "parity failed", text=_metric_lines(job),
                                type="parity", time=seconds)]
        else:
            cases = [junit.Case("parity", output=_metric_lines(job) or None, time=seconds)]
        suites.append(junit.Suite(job.id, cases, props, timestamp=junit.timestamp(results.created), time=seconds))
    return suites


def junit_tree(results: PipelineResults | dict) -> ET.ElementTree:
    """The JUnit XML tree (layout: :func:`junit_suites`)."""
    results = _results(results)
    seconds = _num(results.summary.seconds) if results.summary is not None else None
    return junit.tree(JUNIT_NAME, junit_suites(results), time=seconds)


def write_junit(results: PipelineResults | dict, path: Path) -> Path:
    """Write :func:`junit_tree` to ``path`` atomically; returns ``path``."""
    return write_text(path, junit.to_text(junit_tree(results)), "pipeline report")


# --------------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------------

_PASS_COLOR, _FAIL_COLOR, _REF_COLOR = "#2da44e", "#cf222e", "0.25"


def _title(results: PipelineResults, what: str) -> str:
    return f"{what}: {_variant(results)} on {_device_name(results)}"


def _job_label(job: JobRecord) -> str:
    return job.id + "  (parity fail)" if verdict(job) == "fail" else job.id


@plain_text
def plot_latency(results: PipelineResults | dict, path: Path) -> Path | None:
    """Horizontal bars of each job's median (p50) latency, grouped and coloured by runtime, the PyTorch eager p50
    as a dashed vertical line when measured; bars of artifacts that failed parity are hatched.

    Returns:
        ``path``, or ``None`` (nothing written) when no job has a p50.
    """
    results = _results(results)
    jobs = [j for j in results.jobs if j.bench is not None and _num(j.bench.p50_ms) is not None]
    if not jobs:
        return None
    runtimes = list(dict.fromkeys(_bench_runtime(j) for j in jobs))
    groups = [[j for j in jobs if _bench_runtime(j) == rt] for rt in runtimes]
    torch_values = [v for v in (_num(j.bench.torch_p50_ms) for j in jobs) if v is not None]
    torch_p50 = statistics.median(torch_values) if torch_values else None

    fig = figure(9.0, 1.5 + 0.36 * (len(jobs) + len(groups) - 1) + (0.3 if torch_p50 else 0), "pipeline plots")
    ax = fig.add_subplot()
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    y, ticks, labels, values = 0.0, [], [], []
    for gi, (runtime, members) in enumerate(zip(runtimes, groups, strict=True)):
        for job in members:
            p50 = float(job.bench.p50_ms)
            failed = verdict(job) == "fail"
            bar = ax.barh(y, p50, height=0.72, color=palette(gi % 10), label=runtime,
                          hatch="///" if failed else None, edgecolor="white" if not failed else _FAIL_COLOR,
                          linewidth=0.6)
            speedup = vs_torch_text(job.bench)
            text = f"{fmt_ms(p50)} ms" + (f"  ({speedup} torch)" if speedup != DASH else "")
            ax.bar_label(bar, labels=[text], padding=3, fontsize=8)
            ticks.append(y)
            labels.append(_job_label(job))
            values.append(p50)
            y += 1
        y += 0.6  # gap between runtimes
    ax.set_yticks(ticks, labels, fontsize=9)
    for tick, job in zip(ax.get_yticklabels(), [j for g in groups for j in g], strict=True):
        if verdict(job) == "fail":
            tick.set_color(_FAIL_COLOR)
    ax.invert_yaxis()
    if torch_p50 is not None:
        ax.axvline(torch_p50, color=_REF_COLOR, linestyle="--", linewidth=1.3,
                   label=f"PyTorch eager ({fmt_ms(torch_p50)} ms)")
        values.append(torch_p50)
    lo, hi = min(values), max(values)
    if hi > LOG_SPAN * lo:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.set_xlim(lo / 1.5, hi * 4.0)
        ax.set_xlabel("median latency p50 (ms per inference, log scale)")
    else:
        ax.set_xlim(0, hi * 1.32)
        ax.set_xlabel("median latency p50 (ms per inference)")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.set_axisbelow(True)
    handles: dict[str, Any] = {}
    for artist in [*ax.containers, *ax.get_lines()]:
        handles.setdefault(artist.get_label(), artist)
    legend_below(fig, handles, ncols=5)
    ax.set_title(_title(results, "Median latency per artifact"), fontsize=11)
    return save(fig, path, None, "pipeline report")


def _dot_panel(ax: Axes, jobs: list[JobRecord], values: list[float], reference: float | None, ref_label: str,
               fmt: str, xlabel: str, upper: float | None, show_labels: bool = True, min_pad: float = 1e-6) -> None:
    """Dots per job on a zoomed axis, with a line from the reference (when given) to each dot; the axis spans at
    least ``min_pad`` on each side (equal accuracies drew an axis of +-1e-6 %)."""
    y = list(range(len(jobs)))
    colors = [_FAIL_COLOR if verdict(j) == "fail" else _PASS_COLOR for j in jobs]
    for yi, v, c in zip(y, values, colors, strict=True):
        if reference is not None:
            ax.plot([reference, v], [yi, yi], color=c, linewidth=2, alpha=0.55, solid_capstyle="butt")
        left = reference is not None and v < reference  # the label on the far side of the dot from the line
        ax.annotate(format(v, fmt), (v, yi), xytext=(-7 if left else 7, 0), textcoords="offset points",
                    ha="right" if left else "left", va="center", fontsize=8)
    ax.scatter(values, y, color=colors, s=46, zorder=3)
    span = values + ([reference] if reference is not None else [])
    lo, hi = min(span), max(span)
    pad = max((hi - lo) * 0.3, abs(hi) * 1e-4, min_pad)
    right = hi + pad * 1.4
    if upper is not None:
        right = min(right, upper + pad * 0.9)
    ax.set_xlim(lo - pad, max(right, hi + pad * 0.9))
    if reference is not None:
        ax.axvline(reference, color=_REF_COLOR, linestyle="--", linewidth=1.3, label=ref_label)
    ax.set_yticks(y, [_job_label(j) for j in jobs] if show_labels else [""] * len(jobs), fontsize=9)
    if show_labels:
        for tick, c in zip(ax.get_yticklabels(), colors, strict=True):
            if c == _FAIL_COLOR:
                tick.set_color(_FAIL_COLOR)
    ax.set_ylim(len(jobs) - 0.4, -0.6)
    ax.set_xlabel(xlabel)
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)


@plain_text
def plot_accuracy(results: PipelineResults | dict, path: Path) -> Path | None:
    """Accuracy of each artifact against the PyTorch reference (labelled data), or the mean cosine similarity and
    the top-1 agreement with PyTorch when the data is unlabelled; artifacts that failed parity are red.

    Returns:
        ``path``, or ``None`` (nothing written) when no job has parity metrics.
    """
    results = _results(results)
    jobs = results.jobs
    acc_jobs = [j for j in jobs if _num(_metrics(j).get("accuracy")) is not None]
    if acc_jobs:
        values = [float(_metrics(j)["accuracy"]) for j in acc_jobs]
        ref = _reference_accuracy(results)
        fig = figure(9.0, 1.6 + 0.36 * len(acc_jobs), "pipeline plots")
        ax = fig.add_subplot()
        data = results.data.eval if results.data is not None else None
        _dot_panel(ax, acc_jobs, values, ref, f"PyTorch reference ({ref:.1f} %)" if ref is not None else "", ".1f",
                   "top-1 accuracy (%)" + (f" on {data}" if data else ""), upper=100.0, min_pad=1.0)
        legend_below(fig, {line.get_label(): line for line in ax.get_lines() if line.get_linestyle() == "--"},
                     ncols=5)
        ax.set_title(_title(results, "Accuracy per artifact"), fontsize=11)
        return save(fig, path, None, "pipeline report")

    cos_jobs = [j for j in jobs if _num(_metrics(j).get("cosine_mean")) is not None]
    agree_jobs = [j for j in jobs if _num(_metrics(j).get("top1_agreement")) is not None]
    panels = [(m, pj) for m, pj in (("cosine_mean", cos_jobs), ("top1_agreement", agree_jobs)) if pj]
    if not panels:
        return None
    n = max(len(pj) for _, pj in panels)
    fig = figure(5.0 + 4.0 * len(panels), 1.6 + 0.36 * n, "pipeline plots")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for i, (ax, (metric, pj)) in enumerate(zip(axes, panels, strict=True)):
        if metric == "cosine_mean":
            vals = [float(_metrics(j)["cosine_mean"]) for j in pj]
            _dot_panel(ax, pj, vals, 1.0, "identical to PyTorch", ".5f", "mean cosine similarity to PyTorch",
                       upper=1.0, show_labels=True)
        else:
            vals = [100 * float(_metrics(j)["top1_agreement"]) for j in pj]
            _dot_panel(ax, pj, vals, 100.0, "identical to PyTorch", ".1f", "top-1 agreement with PyTorch (%)",
                       upper=100.0, show_labels=i == 0 or pj != panels[0][1])
    legend_below(fig, {line.get_label(): line for line in axes[0].get_lines() if line.get_linestyle() == "--"},
                 ncols=5)
    fig.suptitle(_title(results, "Agreement with PyTorch per artifact (unlabelled data)"), fontsize=11)
    return save(fig, path, None, "pipeline report")


# --------------------------------------------------------------------------------------------------------------------
# The whole report
# --------------------------------------------------------------------------------------------------------------------

PLOTTERS = {"latency": plot_latency, "accuracy": plot_accuracy}
"""Every plot of the report, by its key in ``results.plots``."""


def write_report(results: PipelineResults | dict, folder: Path) -> dict[str, Path]:
    """Write the report into ``folder``: the plots (``folder/plots/*.png``), then ``index.md``, ``index.html``,
    ``results.json`` and ``junit.xml``, each atomically.

    ``results.plots`` is replaced by the relative paths of the plots written (a plot with nothing to show is left
    out); a dict is validated into :class:`~ffnet_deploy.pipeline.results.PipelineResults` first (and gets its
    ``"plots"`` too). Without matplotlib the report is written without plots, and says so in ``summary.look_at``.

    Returns:
        The paths written, by kind: ``latency``, ``accuracy`` (those drawn), ``markdown``, ``html``, ``json``,
        ``junit``.
    """
    given = results
    results = _results(results)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plots: dict[str, str] = {}
    try:
        require("matplotlib", "plots", "pipeline plots")
    except MissingDependencyError as err:
        note = f"No plots: {err}"
        if results.summary is None:
            from ffnet_deploy.pipeline.results import Summary

            results.summary = Summary(jobs=len(results.jobs))
        if note not in results.summary.look_at:
            results.summary.look_at.append(note)
    else:
        (folder / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
        for name, plotter in PLOTTERS.items():
            rel = f"{PLOTS_DIR}/{name}.png"
            if plotter(results, folder / rel) is not None:
                plots[name] = rel
                written[name] = folder / rel
    results.plots = plots
    if isinstance(given, dict):
        given["plots"] = dict(plots)
    written["markdown"] = write_text(folder / "index.md", render_markdown(results), "pipeline report")
    written["html"] = write_text(folder / "index.html", render_html(results, folder), "pipeline report")
    written["json"] = write_text(folder / "results.json", results.to_json(), "pipeline report")
    written["junit"] = write_junit(results, folder / "junit.xml")
    return written

"""Rendering a :class:`~ffnet_deploy.validate.engine.ValidationReport`: JSON, JUnit XML and the terminal table.

JSON report (schema ``ffnet-deploy/validate-report/1``)::

    {
      "schema": "ffnet-deploy/validate-report/1",
      "passed": bool, "created": ISO time, "seconds": float,
      "reference":   {"checkpoint", "sha256", "variant", "fused", "num_classes", "resolution", "runtime"},
      "data":        {"kind", "root"?, "limit", "labeled", "num_images", "skipped": {...}, "fingerprint",
                      "transform": {...}, ...},
      "environment": {"platform", "system", "machine", "cpu", "cpu_count", "isa_flags": [...], "versions": {...}},
      "settings":    {"batch", "precision_profile", "tolerance_overrides", "localize", "runtime", "verify"},
      "artifacts":   [{"name", "path", "format", "runtime", "precision", "status", "passed", "not_run", "profile",
                       "profile_reason", "metrics",
                       "checks": [{"name", "value", "threshold", "op", "passed", "detail", "message"}],
                       "errors", "warnings", "failures", "latency_ms", "manifest", "localization"}],
      "failures":    ["artifact: reason", ...],
      "not_run":     ["artifact: why nothing here can run it", ...]
    }

``status`` is ``passed``, ``failed`` or ``not run`` (nothing on this machine can execute the artifact); the report's
``passed`` is true when no artifact failed and at least one passed.

Non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the file is strict JSON. A change
that removes or renames a key bumps the trailing version number; adding keys does not.

:func:`read_report` reads a report back through its typed model (:class:`ReportFile`): a file that is not this
schema, a wrong type anywhere or an unknown status is one line naming the file and the field.

JUnit XML is the project's one layout (:mod:`ffnet_deploy.reporting.junit`, shared with the pipeline):
``<testsuites>`` holds one ``<testsuite>`` per artifact, which holds one ``<testcase classname=ARTIFACT name=METRIC>``
per gated metric, which passes or carries a ``<failure>``. A metric the tolerance profile does not gate was measured,
not judged: it is a ``metric.NAME`` property of the suite and a line of the suite's ``<system-out>``, never a case
(CI systems count a ``<skipped>`` case as a test not run, and a passing report read "28 tests, 23 skipped"). An
artifact that could not be loaded or run carries an ``<error>`` case, and one that nothing here can run a
``<skipped>`` ``load_and_run`` case with the reason. Every case's ``<system-out>`` holds the measured value.

All writes are atomic: a temporary file in the target folder, then a rename. A report never replaces a file that is
not a report of the same kind written here (recognised by its ``schema`` key, or the JUnit root element's ``name``),
and is never written inside an artifact directory (:func:`check_report_path`), re-checked at the moment of the rename.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ffnet_deploy.artifact.formats import format_of_suffix
from ffnet_deploy.artifact.manifest import MANIFEST_NAME, ManifestError, read_manifest
from ffnet_deploy.atomic import replace_refusal, write_text
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.reporting import junit
from ffnet_deploy.reporting.console import print_line, print_table
from ffnet_deploy.reporting.document import Cell, Table
from ffnet_deploy.schemas import (
    MAX_JSON_BYTES,
    FileModel,
    NonNegative,
    Real,
    Record,
    dumps,
    read_json,
    readable_ids,
    schema_id,
)
from ffnet_deploy.validate.engine import ValidationReport, jsonable
from ffnet_deploy.validate.metrics import format_value
from ffnet_deploy.validate.tolerances import METRIC_NAMES

SCHEMA = schema_id("validate-report", 1)
"""Identifier and version of the JSON report layout."""

READABLE_SCHEMAS = readable_ids("validate-report")

JUNIT_NAME = "ffnet-deploy validate"
"""The ``name`` of the JUnit root element, by which a JUnit file written here is recognised."""

_JUNIT_HEAD = junit.head(JUNIT_NAME)


class CheckRecord(Record):
    """One check of an artifact, as the report (and a pipeline job record) holds it."""

    name: str
    value: Real | int | None = None
    threshold: Real | int | None = None
    op: str = "<="
    passed: bool
    detail: str = ""
    message: str = ""


class ArtifactRecord(Record):
    """One artifact's entry of ``artifacts``."""

    name: str
    path: str
    format: str | None = None
    runtime: str | None = None
    precision: str
    status: Literal["passed", "failed", "not run"]
    passed: bool
    not_run: str | None = None
    profile: dict[str, Any] = {}
    profile_reason: str = ""
    metrics: dict[str, Real | int | None] | None = None
    checks: list[CheckRecord] = []
    errors: list[str] = []
    warnings: list[str] = []
    failures: list[str] = []
    latency_ms: NonNegative | None = None
    manifest: dict[str, Any] | None = None
    localization: dict[str, Any] | None = None


class ReportFile(FileModel):
    """The JSON report (layout: module docstring), as :func:`read_report` returns it."""

    schema_: str = Field(SCHEMA, alias="schema")
    passed: bool
    created: str = ""
    seconds: NonNegative | None = None
    reference: dict[str, Any] = {}
    data: dict[str, Any] = {}
    environment: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    artifacts: list[ArtifactRecord]
    failures: list[str] = []
    not_run: list[str] = []


def read_report(path: str | Path) -> ReportFile:
    """A JSON report written by :func:`write_json`, validated.

    Raises:
        ConfigError: One line naming the file and, for a wrong value, the field.
    """
    return read_json(path, ReportFile, what="validate report", schemas=READABLE_SCHEMAS,
                     hint="write it again with 'ffnet-deploy validate --report'")


def report_to_dict(report: ValidationReport) -> dict:
    """The JSON report as a plain dict (layout: module docstring)."""
    return jsonable({
        "schema": SCHEMA,
        "passed": report.passed,
        "created": report.created,
        "seconds": report.seconds,
        "reference": report.reference,
        "data": report.data,
        "environment": report.environment,
        "settings": report.settings,
        "artifacts": [a.to_dict() for a in report.artifacts],
        "failures": report.failures(),
        "not_run": report.not_run(),
    })


def _not_json_report(path: Path) -> str | None:
    """Why ``path`` is not a JSON report written here (``None``: it is one, and may be replaced)."""
    try:
        with path.open("rb") as f:
            data = json.loads(f.read(MAX_JSON_BYTES))
    except (OSError, ValueError, RecursionError):
        return "it is not a JSON report written by ffnet-deploy validate"
    if not isinstance(data, dict) or data.get("schema") not in READABLE_SCHEMAS:
        return "it is not a JSON report written by ffnet-deploy validate"
    return None


def _not_junit_report(path: Path) -> str | None:
    """Why ``path`` is not a JUnit file written here (``None``: it is one, and may be replaced)."""
    return None if junit.written_here(path, JUNIT_NAME) else "it is not a JUnit file written by ffnet-deploy validate"


_VERDICTS = {"json": _not_json_report, "junit": _not_junit_report}


def check_report_path(path: str | Path, kind: str) -> Path:
    """Refuse a report path that would overwrite something else or land inside an artifact directory.

    Call it before the (long) validation to fail early; the writers check again when they rename.

    Args:
        path: Where the report goes.
        kind: ``"json"`` or ``"junit"``: the kind of report an existing file must be to be replaced.

    Returns:
        ``path``.

    Raises:
        ConfigError: One line naming the file and why.
    """
    path = Path(path)
    folder = Path(os.path.abspath(path)).parent
    for parent in (folder, *folder.parents):
        if not (parent / MANIFEST_NAME).is_file():
            continue
        try:
            read_manifest(parent)
            artifact = True
        except ManifestError:
            artifact = parent == folder  # any manifest.json right next to it: the folder is not for reports
        if artifact:
            raise ConfigError(f"report | {path} is inside the artifact directory {parent}; a report would change "
                              "the artifact: write it elsewhere")
    reason = replace_refusal(path, _VERDICTS[kind])
    if reason:
        raise ConfigError(f"report | refusing to overwrite {path}: {reason}; choose another file")
    return path


def write_atomic(path: str | Path, text: str, kind: str = "json") -> Path:
    """Write the report ``text`` to ``path`` atomically (rules: :func:`check_report_path`).

    Raises:
        ConfigError: If the path is refused, the folder cannot be created or a write fails (e.g. a full disk).
    """
    check_report_path(path, kind)
    return write_text(path, text, "report", may_replace=_VERDICTS[kind])


def write_json(report: ValidationReport, path: str | Path) -> Path:
    """Write the JSON report atomically."""
    return write_atomic(path, dumps(report_to_dict(report)), "json")


# --------------------------------------------------------------------------------------------------------------------
# JUnit
# --------------------------------------------------------------------------------------------------------------------


def junit_suites(report: ValidationReport) -> list[junit.Suite]:
    """One :class:`~ffnet_deploy.reporting.junit.Suite` per artifact (layout: module docstring)."""
    return [_junit_suite(art, report) for art in report.artifacts]


def junit_tree(report: ValidationReport) -> ET.ElementTree:
    """The JUnit XML document (layout: module docstring)."""
    return junit.tree(JUNIT_NAME, junit_suites(report), time=report.seconds or 0)


def _junit_suite(art, report: ValidationReport) -> junit.Suite:
    props = [("format", art.format), ("runtime", art.runtime), ("precision", art.precision),
             ("data_fingerprint", report.data.get("fingerprint")), ("num_images", report.data.get("num_images"))]
    cases = [junit.Case("load_and_run", "error", message=err, type="ArtifactError") for err in art.errors]
    if art.status == "not run":  # nothing here can execute it: skipped, neither failed nor passed
        cases.append(junit.Case("load_and_run", "skipped", message=f"not run: {art.not_run}",
                                output=f"not run: {art.not_run}"))
    gated = {c.name for c in art.checks}
    for check in art.checks:
        cases.append(junit.Case(check.name, "passed" if check.passed else "failure",
                                message="" if check.passed else check.message, type="ParityFailure",
                                output=check.message))
    notes = []
    if art.metrics is not None:
        values = art.metrics.to_dict()
        for name in METRIC_NAMES:
            if name in gated or values.get(name) is None:
                continue
            props.append((f"metric.{name}", format_value(values[name])))
            notes.append(f"{name} = {format_value(values[name])} (informational: not gated by the "
                         f"{art.profile.name} profile)")
    if art.localization is not None:
        notes.append("localize: " + art.localization.summary)
    output = "\n".join(notes) if notes else None
    return junit.Suite(art.name, cases, props, timestamp=junit.timestamp(report.created), output=output)


def write_junit(report: ValidationReport, path: str | Path) -> Path:
    """Write the JUnit XML atomically."""
    return write_atomic(path, junit.to_text(junit_tree(report)), "junit")


# --------------------------------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------------------------------


def _num(v: float | None, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return format(v, spec)


def short_name(name: str) -> str:
    """A compact column title for an artifact path: the directory name, or ``parent/file`` for a model file."""
    p = Path(name)
    if format_of_suffix(p.suffix) is not None and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name or name


# (row title, metric key, number format); the key is also the check name when a profile gates the metric.
_ROWS = (
    ("max abs error", "max_abs_error", ".3g"),
    ("mean abs error", "mean_abs_error", ".3g"),
    ("max rel error", "max_rel_error", ".3g"),
    ("cosine (mean)", "cosine_mean", ".6f"),
    ("cosine (worst)", "cosine_min", ".6f"),
    ("PSNR dB", "psnr_db", ".1f"),
    ("top-1 agreement", "top1_agreement", ".2%"),
    ("top-5 overlap", "top5_overlap", ".2%"),
    ("top-1 ref %", "ref_top1", ".2f"),
    ("top-1 artifact %", "top1", ".2f"),
    ("top-5 ref %", "ref_top5", ".2f"),
    ("top-5 artifact %", "top5", ".2f"),
    ("top-1 drop (points)", "acc_drop", "+.2f"),
)


def render(report: ValidationReport, console) -> None:
    """Print the results table (one column per artifact, one row per metric), failures, and any localization.

    A gated metric shows ``value ≤/≥ threshold`` in green or red; an informational one is dimmed. The table and the
    lines are drawn by :mod:`ffnet_deploy.reporting.console`, which shows every text that comes from outside
    (names, reasons, error messages) as text: messages quote extras such as ``ffnet-deploy[tensorrt]``, which rich
    would otherwise swallow as markup.
    """
    print_table(console, results_table(report))
    shown = {"finite", *(key for _, key, _ in _ROWS)}
    for a in report.artifacts:
        name = a.name
        # soft_wrap: a message is one line (CI logs are searched for it, install hints are copied from it)
        print_line(console, [("muted", "profile"), ("text", f" {name}: {a.profile.name}, {a.profile_reason}")],
                   soft_wrap=True)
        for w in a.warnings:
            print_line(console, [("warn", "warning"), ("text", f" {name}: {w}")], soft_wrap=True)
        for c in a.checks:
            if c.name not in shown and c.passed:  # a failed one is printed with the failures
                print_line(console, [("muted", c.name), ("text", f" {name}: {c.detail}")], soft_wrap=True)
        if a.status == "not run":
            print_line(console, [("warn", "NOT RUN"), ("text", f" {name}: {a.not_run or ''}")], soft_wrap=True)
        for f in a.failures:
            print_line(console, [("bad", "FAIL"), ("text", f" {name}: {f}")], soft_wrap=True)
        if a.localization is not None:
            render_localization(a.name, a.localization, console)


def results_table(report: ValidationReport) -> Table:
    """The results table: one column per artifact, one row per metric, the data set in the caption."""
    d = report.data
    skipped = d.get("skipped") or {}
    caption = (f"{d.get('num_images')} images ({d.get('kind')}, fingerprint {str(d.get('fingerprint'))[:12]}; "
               f"skipped {skipped.get('corrupt', 0)} corrupt, {skipped.get('unsupported', 0)} unsupported) vs "
               f"{report.reference.get('variant')} @ {report.reference.get('resolution')}px, fp32 eager PyTorch")
    rows: list[list[Cell]] = [["runtime / precision", *[f"{a.runtime or '-'} / {a.precision}"
                                                        for a in report.artifacts]]]
    labeled = any(a.metrics is not None and a.metrics.top1 is not None for a in report.artifacts)
    checks = [{c.name: c for c in a.checks} for a in report.artifacts]
    finite: list[Cell] = []
    for by_name in checks:
        c = by_name.get("finite")
        finite.append("-" if c is None else [("ok" if c.passed else "bad", str(int(c.value or 0)))])
    rows.append(["NaN/Inf values", *finite])
    for title, key, spec in _ROWS:
        if not labeled and key in ("ref_top1", "top1", "ref_top5", "top5", "acc_drop"):
            continue
        cells: list[Cell] = []
        for a, by_name in zip(report.artifacts, checks, strict=True):
            if a.metrics is None:
                cells.append("-")
                continue
            value = a.metrics.to_dict().get(key)
            text = _num(value, spec)
            check = by_name.get(key)
            if check is None:
                cells.append([("muted", text)])
            else:
                cells.append([("ok" if check.passed else "alert",
                               f"{text} {'≤' if check.op == '<=' else '≥'} {_num(check.threshold, spec)}")])
        rows.append([title, *cells])
    # Checks a format reads from the model file itself (ExecuTorch's delegation): one row each, pass or fail.
    shown = {"finite", *(key for _, key, _ in _ROWS)}
    for name in sorted({n for by_name in checks for n in by_name} - shown):
        cells = []
        for by_name in checks:
            c = by_name.get(name)
            cells.append("-" if c is None else [("ok" if c.passed else "alert",
                                                 f"{'ok' if c.passed else 'FAIL'} ({format_value(c.value)})")])
        rows.append([name, *cells])
    rows.append(["result", *[[_RESULT[a.status]] for a in report.artifacts]])
    return Table(["metric", *[short_name(a.name) for a in report.artifacts]], rows,
                 numeric=set(range(1, len(report.artifacts) + 1)), title="ffnet-deploy validate", caption=[caption])


_RESULT = {"passed": ("success", "PASS"), "failed": ("alert", "FAIL"), "not run": ("notice", "NOT RUN")}


def summary_line(report: ValidationReport) -> str:
    """The last line of ``ffnet-deploy validate`` (rich markup), for a report that did not fail.

    ``all 3 artifact(s) passed``, or, when nothing here can execute some of them, ``2 artifact(s) passed; 1 not run
    on this machine (see NOT RUN above)``: the exit code is 0 then, and this line is what says that not everything
    was checked.
    """
    passed, not_run = report.count("passed"), report.count("not run")
    if not not_run:
        return f"[bold green]all {passed} artifact(s) passed[/]"
    return (f"[bold green]{passed} artifact(s) passed[/]; [bold yellow]{not_run} not run on this machine[/] (see NOT "
            "RUN above)")


def render_localization(name: str, loc, console, limit: int = 40) -> None:
    """Print one artifact's per-block / per-op SQNR table."""
    print_table(console, localization_table(name, loc, limit))


def localization_table(name: str, loc, limit: int = 40) -> Table:
    """One artifact's per-block / per-op SQNR table, the first layer below the threshold marked."""
    from ffnet_deploy.validate.localize import format_layers

    first = loc.first_below
    rows: list[list[Cell]] = []
    for layer in format_layers(loc, limit):
        bad = math.isnan(layer.sqnr_db) or layer.sqnr_db < loc.threshold_db
        mark: Cell = ([("alert", "<- first below threshold")] if layer is first
                      else [("bad", "below")] if bad else "")
        other = layer.op_type if loc.method == "mil-ops" else layer.tensor
        rows.append([layer.name, str(other or ""), "x".join(map(str, layer.shape or ())), _num(layer.sqnr_db, ".1f"),
                     mark])
    return Table(["layer", "op" if loc.method == "mil-ops" else "tensor", "shape", "SQNR dB", ""], rows,
                 numeric={3}, title=f"localize {name}: {loc.summary}", caption=[loc.note] if loc.note else [])

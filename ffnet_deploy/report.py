"""Rendering a :class:`~ffnet_deploy.parity.ValidationReport`: JSON, JUnit XML and a rich table.

JSON report (schema ``ffnet-deploy/validate-report/1``)::

    {
      "schema": "ffnet-deploy/validate-report/1",
      "passed": bool, "created": ISO time, "seconds": float,
      "reference":   {"checkpoint", "sha256", "variant", "fused", "num_classes", "resolution", "runtime"},
      "data":        {"kind", "root"?, "limit", "labeled", "num_images", "skipped": {...}, "fingerprint",
                      "transform": {...}, ...},
      "environment": {"platform", "system", "machine", "cpu", "cpu_count", "isa_flags": [...], "versions": {...}},
      "settings":    {"batch", "precision_profile", "tolerance_overrides", "localize", "runtime"},
      "artifacts":   [{"name", "path", "format", "runtime", "precision", "passed", "profile", "metrics",
                       "checks": [{"name", "value", "threshold", "op", "passed", "detail", "message"}],
                       "errors", "warnings", "failures", "latency_ms", "manifest", "localization"}],
      "failures":    ["artifact: reason", ...]
    }

Non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the file is strict JSON. A change
that removes or renames a key bumps the trailing version number; adding keys does not.

JUnit XML follows the common (Jenkins/Ant) JUnit layout that CI systems read: ``<testsuites>`` holds one
``<testsuite>`` per artifact, which holds one ``<testcase classname=ARTIFACT name=METRIC>`` per metric. A metric
the tolerance profile gates passes or carries a ``<failure>``; a metric the profile does not gate is reported as
``<skipped>`` with its value (it was measured, not judged); an artifact that could not be loaded or run carries an
``<error>`` case. Every case's ``<system-out>`` holds the measured value.

All writes are atomic: a temporary file in the target folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.parity import METRIC_NAMES, ValidationReport, format_value, jsonable

SCHEMA = "ffnet-deploy/validate-report/1"
"""Identifier and version of the JSON report layout."""


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
    })


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    Raises:
        ConfigError: If the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ConfigError(f"report | cannot write {path}: {err.strerror}; choose a writable path") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(report: ValidationReport, path: str | Path) -> Path:
    """Write the JSON report atomically."""
    return write_atomic(path, json.dumps(report_to_dict(report), indent=2, allow_nan=False) + "\n")


# --------------------------------------------------------------------------------------------------------------------
# JUnit
# --------------------------------------------------------------------------------------------------------------------


def junit_tree(report: ValidationReport) -> ET.ElementTree:
    """The JUnit XML document (layout: module docstring)."""
    root = ET.Element("testsuites", name="ffnet-deploy validate")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for art in report.artifacts:
        counts = _junit_suite(root, art, report)
        for k, v in counts.items():
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{report.seconds or 0:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def _junit_suite(root: ET.Element, art, report: ValidationReport) -> dict[str, int]:
    """Append one artifact's ``<testsuite>``; return its counts."""
    suite = ET.SubElement(root, "testsuite", name=art.name, timestamp=report.created.replace("+00:00", ""))
    props = ET.SubElement(suite, "properties")
    for key, value in (("format", art.format), ("runtime", art.runtime), ("precision", art.precision),
                       ("data_fingerprint", report.data.get("fingerprint")),
                       ("num_images", report.data.get("num_images"))):
        ET.SubElement(props, "property", name=key, value="" if value is None else str(value))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    def case(name: str) -> ET.Element:
        counts["tests"] += 1
        return ET.SubElement(suite, "testcase", classname=art.name, name=name, time="0")

    for err in art.errors:
        tc = case("load_and_run")
        ET.SubElement(tc, "error", message=err, type="ArtifactError").text = err
        counts["errors"] += 1
    gated = {c.name for c in art.checks}
    for check in art.checks:
        tc = case(check.name)
        if not check.passed:
            ET.SubElement(tc, "failure", message=check.message, type="ParityFailure").text = check.message
            counts["failures"] += 1
        ET.SubElement(tc, "system-out").text = check.message
    if art.metrics is not None:
        values = art.metrics.to_dict()
        for name in METRIC_NAMES:
            if name in gated or values.get(name) is None:
                continue
            tc = case(name)
            text = f"{name} = {format_value(values[name])} (informational: not gated by the {art.profile.name} profile)"
            ET.SubElement(tc, "skipped", message=text)
            ET.SubElement(tc, "system-out").text = text
            counts["skipped"] += 1
    if art.localization is not None:
        ET.SubElement(suite, "system-out").text = "localize: " + art.localization.summary
    for k, v in counts.items():
        suite.set(k, str(v))
    suite.set("time", "0")
    return counts


def write_junit(report: ValidationReport, path: str | Path) -> Path:
    """Write the JUnit XML atomically."""
    tree = junit_tree(report)
    text = ET.tostring(tree.getroot(), encoding="unicode", xml_declaration=False)
    return write_atomic(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n")


# --------------------------------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------------------------------


def _num(v: float | None, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return format(v, spec)


def render(report: ValidationReport, console) -> None:
    """Print the rich tables: one row per artifact, then the failures, then any localization."""
    from rich.table import Table

    d = report.data
    skipped = d.get("skipped") or {}
    caption = (f"{d.get('num_images')} images ({d.get('kind')}, fingerprint {str(d.get('fingerprint'))[:12]}), "
               f"skipped: {skipped.get('corrupt', 0)} corrupt, {skipped.get('unsupported', 0)} unsupported; "
               f"reference: {report.reference.get('variant')} @ {report.reference.get('resolution')} "
               f"fp32 eager PyTorch")
    table = Table(title="ffnet-deploy validate", caption=caption)
    labeled = any(a.metrics is not None and a.metrics.top1 is not None for a in report.artifacts)
    cols = ["artifact", "runtime", "prec", "max abs", "mean abs", "max rel", "cos mean", "cos min", "PSNR dB",
            "top-1 agr", "top-5 ovl"]
    if labeled:
        cols += ["top-1 ref/art", "drop"]
    cols.append("result")
    for c in cols:
        table.add_column(c, justify="left" if c in ("artifact", "runtime", "prec", "result") else "right")
    for a in report.artifacts:
        m = a.metrics
        failed = {c.name for c in a.failed_checks}

        def cell(name: str, text: str, failed: set[str] = failed) -> str:
            return f"[red]{text}[/]" if name in failed else text

        if m is None:
            row = [a.name, a.runtime or "-", a.precision] + ["-"] * (len(cols) - 4)
        else:
            row = [a.name, a.runtime or "-", a.precision,
                   cell("max_abs_error", _num(m.max_abs_error)), _num(m.mean_abs_error), _num(m.max_rel_error),
                   cell("cosine_mean", _num(m.cosine_mean, ".6f")), cell("cosine_min", _num(m.cosine_min, ".6f")),
                   cell("psnr_db", _num(m.psnr_db, ".1f")),
                   cell("top1_agreement", f"{100 * m.top1_agreement:.1f}%"),
                   cell("top5_overlap", f"{100 * m.top5_overlap:.1f}%")]
            if labeled:
                row += [f"{_num(m.ref_top1, '.1f')}/{_num(m.top1, '.1f')}", cell("acc_drop", _num(m.acc_drop, "+.2f"))]
        row.append("[green]PASS[/]" if a.passed else "[bold red]FAIL[/]")
        table.add_row(*row)
    console.print(table)
    for a in report.artifacts:
        for w in a.warnings:
            console.print(f"[yellow]warning[/] {a.name}: {w}", highlight=False)
        for f in a.failures:
            console.print(f"[red]FAIL[/] {a.name}: {f}", highlight=False)
        if a.localization is not None:
            render_localization(a.name, a.localization, console)


def render_localization(name: str, loc, console, limit: int = 40) -> None:
    """Print one artifact's per-block / per-op SQNR table."""
    from rich.table import Table

    from ffnet_deploy.localize import format_layers

    first = loc.first_below
    table = Table(title=f"localize {name}: {loc.summary}", caption=loc.note)
    for c in ("layer", "op" if loc.method == "mil-ops" else "tensor", "shape", "SQNR dB", ""):
        table.add_column(c, justify="right" if c == "SQNR dB" else "left")
    for layer in format_layers(loc, limit):
        bad = math.isnan(layer.sqnr_db) or layer.sqnr_db < loc.threshold_db
        mark = "[bold red]<- first below threshold[/]" if layer is first else ("[red]below[/]" if bad else "")
        other = layer.op_type if loc.method == "mil-ops" else layer.tensor
        table.add_row(layer.name, str(other or ""), "x".join(map(str, layer.shape or ())),
                      _num(layer.sqnr_db, ".1f"), mark)
    console.print(table)

"""The one JUnit XML writer, for ``validate --junit`` and the pipeline's ``junit.xml``.

The layout is the common (Jenkins/Ant) one that CI systems read (GitHub and GitLab test reports, Jenkins, Azure)::

    <testsuites name=NAME tests failures errors skipped time>
      <testsuite name=ARTIFACT-OR-JOB timestamp tests failures errors skipped time>
        <properties><property name value/>...</properties>
        <testcase classname=ARTIFACT-OR-JOB name=CHECK time>
          <failure message type>text</failure> | <error message type>text</error> | <skipped message/>
          <system-out>the measured value</system-out>
        </testcase>
        <system-out>notes on the whole suite</system-out>
      </testsuite>
    </testsuites>

One ``<testsuite>`` per artifact (validate) or job (pipeline), one ``<testcase>`` per gated check. A file starts
with :func:`head`: the XML declaration and the root's ``name``, by which a later run recognises a file it wrote
(:func:`written_here`). The same suites give byte-identical files.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ffnet_deploy.atomic import Verdict, write_text
from ffnet_deploy.errors import ConfigError, FFNetDeployError

DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'

Outcome = Literal["passed", "failure", "error", "skipped"]


@dataclass
class Case:
    """One ``<testcase>``: a check of one artifact or job."""

    name: str  # the check, e.g. "max_abs_error"
    outcome: Outcome = "passed"
    message: str = ""  # the failure, error or skip message (an attribute: one line)
    text: str | None = None  # the body of <failure>/<error>; default: the message
    type: str = ""  # the failure or error type attribute
    output: str | None = None  # <system-out>: the measured value
    time: float | None = 0.0  # seconds; None leaves the attribute out


@dataclass
class Suite:
    """One ``<testsuite>``: an artifact or a job, with its checks."""

    name: str
    cases: list[Case] = field(default_factory=list)
    properties: Sequence[tuple[str, Any]] = ()
    timestamp: str | None = None  # ISO time without the UTC offset, as JUnit readers expect
    time: float | None = 0.0
    output: str | None = None  # <system-out> of the suite

    def counts(self) -> dict[str, int]:
        return {"tests": len(self.cases), "failures": sum(c.outcome == "failure" for c in self.cases),
                "errors": sum(c.outcome == "error" for c in self.cases),
                "skipped": sum(c.outcome == "skipped" for c in self.cases)}


def head(name: str) -> str:
    """The first bytes of every file :func:`write` writes with root ``name``."""
    return f'{DECLARATION}<testsuites name="{_attr(name)}"'


def timestamp(iso: str | None) -> str | None:
    """``2026-11-27T05:00:00`` from ``2026-11-27T05:00:00+00:00`` (JUnit's timestamps carry no offset)."""
    return None if not iso else str(iso).replace("+00:00", "")


def tree(name: str, suites: Iterable[Suite], time: float | None = None) -> ET.ElementTree:
    """The document (layout: module docstring)."""
    root = ET.Element("testsuites", name=_x(name))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for k, v in _suite(root, suite).items():
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    if time is not None:
        root.set("time", f"{time:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def _suite(root: ET.Element, suite: Suite) -> dict[str, int]:
    el = ET.SubElement(root, "testsuite", name=_x(suite.name))
    if suite.timestamp:
        el.set("timestamp", _x(suite.timestamp))
    if suite.properties:
        props = ET.SubElement(el, "properties")
        for key, value in suite.properties:
            ET.SubElement(props, "property", name=_x(key), value="" if value is None else _x(value))
    for case in suite.cases:
        tc = ET.SubElement(el, "testcase", classname=_x(suite.name), name=_x(case.name))
        if case.time is not None:
            tc.set("time", _seconds(case.time))
        if case.outcome in ("failure", "error"):
            ET.SubElement(tc, case.outcome, message=_x(case.message), type=_x(case.type or case.outcome)).text = \
                _x(case.message if case.text is None else case.text)
        elif case.outcome == "skipped":
            ET.SubElement(tc, "skipped", message=_x(case.message))
        if case.output is not None:
            ET.SubElement(tc, "system-out").text = _x(case.output)
    if suite.output is not None:
        ET.SubElement(el, "system-out").text = _x(suite.output)
    counts = suite.counts()
    for k, v in counts.items():
        el.set(k, str(v))
    if suite.time is not None:
        el.set("time", _seconds(suite.time))
    return counts


def _seconds(t: float) -> str:
    return "0" if t == 0 else f"{t:.3f}"


def to_text(document: ET.ElementTree) -> str:
    return DECLARATION + ET.tostring(document.getroot(), encoding="unicode") + "\n"


def write(path: str | Path, name: str, suites: Iterable[Suite], *, time: float | None = None,
          component: str = "report", error: type[FFNetDeployError] = ConfigError,
          may_replace: Verdict | None = None) -> Path:
    """Write the document atomically to ``path``; returns ``path``."""
    return write_text(path, to_text(tree(name, suites, time)), component, error, may_replace=may_replace)


def written_here(path: Path, name: str) -> bool:
    """Whether ``path`` starts like a file :func:`write` wrote with root ``name`` (so that it may be replaced)."""
    want = head(name).encode()
    try:
        with path.open("rb") as f:
            return f.read(len(want)) == want
    except OSError:
        return False


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _x(value: Any) -> str:
    """Text XML 1.0 can hold: control characters (from a backend's message) would make the file unreadable."""
    return _NOT_XML.sub(" ", str(value))


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")

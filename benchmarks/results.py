"""The result of a ``ffnet-deploy bench`` run: a typed, versioned JSON file, plus CSV and Markdown renderings.

One run is a :class:`BenchResult`: where it ran (:class:`Device`), how it timed (the protocol), this machine's GEMM
roofline when it was probed, and one :class:`BenchRow` per (model, runtime, precision, resolution, batch). A row is
measured here (``source="measured"``), imported from a CSV of measurements made elsewhere (``source="imported"``,
e.g. Xcode's Core ML performance report on an iPhone, with its provenance), skipped (the runtime or precision cannot
run on this machine; ``status="skipped"`` and a reason) or failed (``status="failed"`` and the error line).

Schema ``ffnet-deploy/bench/1`` (JSON, one file per run; ``ffnet-deploy.bench/1``, the spelling of earlier versions,
is read too)::

    {"schema": "ffnet-deploy/bench/1", "command": str, "created": ISO-8601,
     "device": {"name", "cpu", "cores", "isa_flags", "isa_class", "emulated", "os", "machine", "gpu",
                "versions": {package: version}},
     "protocol": {"warmup", "warmup_time_s", "min_iters", "min_time_s", "interleaved", "blocks"} | null,
     "roofline": Roofline.to_dict() | null,
     "noise": Noise.to_dict() | null,
     "rows": [BenchRow.to_dict(), ...]}

Every measured row carries its paired comparison and its noise verdict (:mod:`ffnet_deploy.runtimes.noise`): its
best time in each of the protocol's blocks (``blocks_ms``), the row it is compared with (``reference``: eager PyTorch
of the same model when that ran with a quiet OpenMP pool, else the same runtime's FP32), the median and range of the
per-block ratios (``ratio``), the share of the time its threads waited for a CPU (``cpu_wait``), and ``verdict``
("stable" or "noisy: rerun on a quiet machine") with its reasons. Eager PyTorch rows say how their OpenMP pool was
told to wait (``omp_wait_policy``) and whether they ran in a worker process (``worker``). ``noise`` is the table's
verdict, with the load average before and after the run.

The classes are pydantic dataclasses: :func:`read_result` validates a file through them (:mod:`ffnet_deploy.schemas`):
a wrong type anywhere, a latency that is negative or not finite, an unknown status or precision, a row field this
version does not know, is one line naming the file and the field. Non-finite numbers follow the project's one
convention (strings in JSON, an empty cell in CSV).
"""

from __future__ import annotations

import csv
import io
import math
import platform
from collections.abc import Iterable
from dataclasses import asdict, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, ValidationInfo
from pydantic.dataclasses import dataclass

from ffnet_deploy.atomic import write_text
from ffnet_deploy.environment import environment_info
from ffnet_deploy.reporting import markdown as md
from ffnet_deploy.reporting.text import csv_cell
from ffnet_deploy.schemas import (
    Count,
    Finite,
    NonEmpty,
    NonNegative,
    PositiveInt,
    dumps,
    one_of,
    read_json,
    readable_ids,
    schema_id,
)

SCHEMA = schema_id("bench", 1)
"""Identifier of the result format; bumped when a field changes meaning."""

READABLE_SCHEMAS = readable_ids("bench")
"""What :func:`read_result` accepts: this schema in both spellings."""

STATISTICS = ("min", "p50", "p90", "p99", "mean", "std", "trimmed_mean")
"""Latency statistics of a measured row, in milliseconds (``trimmed_mean`` drops the 10 % highest and lowest)."""

SOURCES = ("measured", "imported")
STATUSES = ("ok", "skipped", "failed")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
"""Precisions a row may name."""
FAMILIES = ("ffnet", "mixer", "peer")

Statistic = Literal["min", "p50", "p90", "p99", "mean", "std", "trimmed_mean"]
VerdictText = Literal["stable", "noisy: rerun on a quiet machine"]  # ffnet_deploy.runtimes.noise.VERDICTS

_READ_HINT = "regenerate it with 'ffnet-deploy bench' (or 'ffnet-deploy report add')"


def _peaks(value: dict | None, info: ValidationInfo) -> dict | None:
    """A roofline's ``*_gflops`` / ``*_gops`` values are what tables format as numbers."""
    from ffnet_deploy.schemas import READING

    if value is not None and info.context and info.context.get(READING):
        for key, peak in value.items():
            if key.endswith(("_gflops", "_gops")) and peak is not None and not (
                    isinstance(peak, (int, float)) and not isinstance(peak, bool) and 0 <= peak < float("inf")):
                raise ValueError(f"{key} must be a finite number, at least 0, or null")
    return value


@dataclass(frozen=True)
class Device:
    """The machine a result comes from."""

    name: NonEmpty  # what the user calls it (--device-name); the host name when not given
    cpu: str = ""
    cores: PositiveInt | None = None
    isa_flags: tuple[str, ...] = ()
    isa_class: str = ""  # environment.ISA_CLASSES key of the CPU the process saw ("" in results of older versions)
    emulated: bool = False  # the process saw another CPU than /proc/cpuinfo describes (qemu -cpu, a VM mask)
    os: str = ""
    machine: str = ""
    gpu: str | None = None  # GPU model and driver, when there is one
    versions: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def here(cls, name: str | None = None) -> Device:
        """This machine, with the ISA flags and package versions of :func:`environment_info`."""
        env = environment_info()
        return cls(name=name or platform.node() or "this machine", cpu=env["cpu"], cores=env["cpu_count"],
                   isa_flags=tuple(env["isa_flags"]), isa_class=env["isa_class"], emulated=env["emulated"],
                   os=env["platform"], machine=env["machine"], gpu=_gpu(),
                   versions=dict(env["versions"]))

    def to_dict(self) -> dict:
        return {**asdict(self), "isa_flags": list(self.isa_flags)}

    @classmethod
    def from_dict(cls, data: dict) -> Device:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "isa_flags" else v) for k, v in data.items() if k in known})


def _gpu() -> str | None:
    """``"<model>, driver <version>"`` of the first NVIDIA GPU, or ``None`` (no nvidia-smi, or no GPU)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, _, driver = out[0].partition(",")
    return f"{name.strip()}, driver {driver.strip()}"


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Ratio:
    """``reference / row`` per block (above 1: the row is faster), their median and range
    (:class:`ffnet_deploy.runtimes.noise.PairedRatio`)."""

    median: NonNegative
    low: NonNegative
    high: NonNegative
    blocks: tuple[NonNegative, ...] = ()

    def paired(self):
        from ffnet_deploy.runtimes.noise import PairedRatio

        return PairedRatio(self.median, self.low, self.high, tuple(self.blocks))


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Load:
    """Load averages (``os.getloadavg``)."""

    one: NonNegative
    five: NonNegative | None = None
    fifteen: NonNegative | None = None


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Noise:
    """The table's noise verdict: its rows' verdicts together, and the machine's load before and after the run."""

    verdict: VerdictText
    reasons: tuple[str, ...] = ()
    load_before: Load | None = None
    load_after: Load | None = None
    usable_cpus: PositiveInt | None = None
    blocks: PositiveInt | None = None
    cpu_wait: NonNegative | None = None  # the whole timed phase, every measured process

    def to_dict(self) -> dict:
        return asdict(self)


def load_of(snapshot: dict | None) -> Load | None:
    """A :class:`Load` from :func:`ffnet_deploy.runtimes.noise.load_snapshot`."""
    return None if snapshot is None else Load(snapshot["1m"], snapshot.get("5m"), snapshot.get("15m"))


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class BenchRow:
    """One (model, runtime, precision, resolution, batch) measurement.

    ``latency_ms`` maps each name of :data:`STATISTICS` to milliseconds per batch; an imported row may carry only
    ``p50``. ``roofline_fraction`` is the model's FLOPs per second over the GEMM roofline of the precision: with the
    probe timed in the same blocks as the rows, the median over blocks of the row's best rate over the GEMM's best
    rate of that block (without blocks: the p50 latency over the probe's peak); ``None`` without a probe or FLOP
    count. ``roofline_exceeded``: the row ran faster than that GEMM, so the probe is not a ceiling here. A field this
    version does not know is refused (the file was written by a newer ffnet-deploy).
    """

    model: NonEmpty  # display name: "ffnet_1", "ffnet_1/attention", "convnext_tiny"
    runtime: NonEmpty  # "torch", "onnxruntime", "openvino", "tensorrt", "coreml"
    precision: Annotated[str, one_of(PRECISIONS)]  # "fp32", "fp16", "bf16", "int8"
    resolution: PositiveInt
    batch: PositiveInt = 1
    threads: PositiveInt | None = None
    family: Annotated[str, one_of(FAMILIES)] = "ffnet"  # "ffnet", "mixer", "peer"
    mixer: str | None = None  # the token mixer for FFNet skeletons
    compute_units: str | None = None  # Core ML: ALL, CPU_AND_NE, CPU_ONLY
    artifact: str | None = None  # artifact directory the row ran, when it came from one
    gmacs: NonNegative | None = None  # multiply-accumulates of one image, in 1e9
    params_m: NonNegative | None = None
    published_top1: NonNegative | None = None  # ImageNet-1k top-1 (%) as published; reference only
    latency_ms: dict[Statistic, NonNegative] = field(default_factory=dict)
    iterations: Count = 0
    throughput_ips: NonNegative | None = None  # images per second at the p50 latency
    first_inference_ms: NonNegative | None = None  # load + compile + first inference
    peak_rss_mb: Finite | None = None  # resident memory the runtime added at its peak (load + first inference)
    roofline_fraction: NonNegative | None = None
    execution_precision: str | None = None  # what the runtime reports it ran (OpenVINO's inference precision)
    host_measurement: str | None = None  # measured on a host, not on the device the artifact is for: why (an
    # Android program timed on Linux); None for a row of the device itself
    source: Literal["measured", "imported"] = "measured"
    provenance: dict[str, Any] = field(default_factory=dict)  # imported rows: file, row, tool; measured: notes
    status: Literal["ok", "skipped", "failed"] = "ok"
    reason: str | None = None  # why a row was skipped or failed
    blocks_ms: tuple[NonNegative | None, ...] = ()  # best latency in each block of the protocol (None: no sample)
    reference: str | None = None  # the row this one is compared with: "torch fp32", "onnxruntime fp32"
    ratio: Ratio | None = None  # reference / this row, paired by block
    verdict: VerdictText | None = None  # measured rows: "stable" or "noisy: rerun on a quiet machine"
    noise_reasons: tuple[str, ...] = ()
    cpu_wait: NonNegative | None = None  # share of their running time the timed threads waited for a CPU
    omp_wait_policy: str | None = None  # eager PyTorch: OMP_WAIT_POLICY of the process it ran in
    worker: bool = False  # timed in a worker process of its own (eager PyTorch, the GEMM probe)
    roofline_exceeded: bool = False  # faster than the GEMM probe of the same blocks: not a ceiling here

    @property
    def p50(self) -> float | None:
        return self.latency_ms.get("p50")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BenchRow:
        """A row from its :meth:`to_dict` form (validated like a file's: :func:`read_result`)."""
        import json

        from ffnet_deploy.schemas import validate

        return validate(json.dumps(data, default=str), data, cls, "row", "bench row", _READ_HINT)


@dataclass(frozen=True)
class BenchResult:
    """One bench run on one device."""

    device: Device
    rows: tuple[BenchRow, ...]
    command: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    protocol: dict[str, Any] | None = None
    roofline: Annotated[dict[str, Any] | None, AfterValidator(_peaks)] = None
    noise: Noise | None = None
    schema: str = SCHEMA

    def ok_rows(self) -> list[BenchRow]:
        return [r for r in self.rows if r.status == "ok"]

    def to_dict(self) -> dict:
        """The JSON form, written with :data:`SCHEMA` whatever spelling the result was read with."""
        return {"schema": SCHEMA, "command": self.command, "created": self.created,
                "device": self.device.to_dict(), "protocol": self.protocol, "roofline": self.roofline,
                "noise": self.noise.to_dict() if self.noise is not None else None,
                "rows": [r.to_dict() for r in self.rows]}

    def to_json(self) -> str:
        """The file's text (strict JSON, :func:`ffnet_deploy.schemas.dumps`)."""
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, origin: str = "result") -> BenchResult:
        """A result from decoded JSON, validated like a file (:func:`read_result`)."""
        import json

        from ffnet_deploy.schemas import check_schema, validate

        check_schema(data, Path(origin), "bench result", READABLE_SCHEMAS, _READ_HINT)
        return validate(json.dumps(data, default=str), data, cls, origin, "bench result", _READ_HINT)


def read_result(path: str | Path) -> BenchResult:
    """Load a result JSON written by :func:`write_result` (or ``report add``).

    Raises:
        ConfigError: One line naming the file and, for a wrong value, the field.
    """
    return read_json(path, BenchResult, what="bench result", schemas=READABLE_SCHEMAS, hint=_READ_HINT)


# -- renderings -----------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("device", "model", "family", "mixer", "runtime", "precision", "compute_units", "resolution", "batch",
               "threads", "status", *(f"{s}_ms" for s in STATISTICS), "iterations", "throughput_ips",
               "first_inference_ms", "peak_rss_mb", "gmacs", "params_m", "roofline_fraction", "published_top1",
               "execution_precision", "source", "reason")


def to_csv(results: Iterable[BenchResult]) -> str:
    """Every row of every result, one CSV line each, with the device name as the first column.

    Text cells (device, model, reason...) are neutralised for spreadsheets (:func:`~ffnet_deploy.reporting.text.
    csv_cell`); a number that is missing or not finite is an empty cell.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        for row in result.rows:
            flat = {k: v for k, v in row.to_dict().items() if k in CSV_COLUMNS}
            flat.update({f"{s}_ms": row.latency_ms.get(s) for s in STATISTICS})
            writer.writerow({"device": csv_cell(result.device.name), **{k: _csv_value(v) for k, v in flat.items()}})
    return buf.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else ""
    return "" if value is None else csv_cell(value)


def fmt_ms(value: float | None) -> str:
    """Milliseconds for a table: 3 significant digits, at least 2 decimals under 1 ms, ``-`` when missing."""
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


_COLUMNS = ("model", "runtime", "precision", "res", "batch", "p50 ms", "p90 ms", "p99 ms", "trimmed mean", "min",
            "img/s", "first ms", "peak MB", "GMACs", "roofline", "vs", "verdict", "note")


def ratio_text(row: BenchRow) -> str:
    """``"1.52× (1.45–1.60) vs torch fp32"``; a range that holds 1.0 is "no clear difference", never a speedup."""
    from ffnet_deploy.runtimes.noise import format_ratio

    if row.ratio is None or not row.reference:
        return "-"
    return f"{format_ratio(row.ratio.paired())} vs {row.reference}"


def roofline_text(row: BenchRow) -> str:
    """The roofline fraction, or "not a ceiling here" when the row ran faster than the GEMM probe."""
    if row.roofline_fraction is None:
        return "-"
    if row.roofline_exceeded:
        return f"{row.roofline_fraction:.2f}: not a ceiling here"
    return f"{row.roofline_fraction:.2f}"


def noise_text(noise: Noise | None) -> str:
    """The table's verdict line, with the load before and after the run."""
    if noise is None:
        return "Noise verdict: not judged (a result of an older version)"
    load = []
    if noise.load_before is not None:
        load.append(f"load average {noise.load_before.one:.2f} before")
    if noise.load_after is not None:
        load.append(f"{noise.load_after.one:.2f} after")
    facts = ", ".join(load) + (f" on {noise.usable_cpus} usable CPU(s)" if noise.usable_cpus else "")
    if noise.cpu_wait is not None:
        facts += f"; timed threads waited for a CPU {noise.cpu_wait:.0%} of their running time"
    if noise.blocks:
        facts += f"; {noise.blocks} paired blocks"
    text = f"Noise verdict: {noise.verdict} ({facts.strip('; ')})"
    if noise.reasons:
        text += ": " + "; ".join(noise.reasons)
    return text


def to_markdown(result: BenchResult, title: str = "Latency") -> str:
    """The run as a Markdown table (median and spread per row), with the device and roofline above it; every user
    string (device, model, reasons) escaped (:mod:`ffnet_deploy.reporting.markdown`)."""
    d = result.device
    lines = [md.heading(2, f"{title}: {d.name}"), "",
             md.text(f"CPU: {d.cpu} ({d.cores} cores; ISA class {d.isa_class or 'not recorded'}: "
                     f"{', '.join(d.isa_flags) or 'no flags reported'}{'; emulated' if d.emulated else ''}); "
                     f"OS: {d.os}" + (f"; GPU: {d.gpu}" if d.gpu else "")), ""]
    if result.roofline:
        r = result.roofline
        peaks = ", ".join(f"{k.split('_')[0]} {v:.0f} G{'OP' if k.startswith('int8') else 'FLOP'}/s"
                          for k, v in r.items() if k.endswith(("_gflops", "_gops")) and v)
        lines += [md.text(f"GEMM roofline ({r.get('threads')} threads): {peaks}"), ""]
    if result.protocol:
        p = result.protocol
        lines += [md.text(f"Protocol: warmup {p.get('warmup')} iterations and {p.get('warmup_time_s')} s, then at "
                          f"least {p.get('min_iters')} iterations and {p.get('min_time_s')} s per row"
                          + (", rows interleaved in rounds" if p.get("interleaved") else "")
                          + (f", in {p.get('blocks')} blocks (the best of each block paired across rows)"
                             if (p.get("blocks") or 1) > 1 else "") + "."), ""]
    if any(r.source == "measured" and r.status == "ok" for r in result.rows):
        lines += [md.text(noise_text(result.noise)), ""]
    rows = []
    for row in result.rows:
        lat = row.latency_ms
        note = row.reason or ""
        if row.source == "imported":
            note = f"imported ({row.provenance.get('source', 'csv')})" + (f"; {note}" if note else "")
        if row.host_measurement:
            note = row.host_measurement + (f"; {note}" if note else "")
        if execution_differs(row):
            note = f"runs {row.execution_precision}" + (f"; {note}" if note else "")
        runtime = row.runtime + (f" ({row.compute_units})" if row.compute_units else "")
        head = [row.model, runtime, row.precision, row.resolution, row.batch]
        if row.status != "ok":
            rows.append([*head, row.status, *[""] * 11, note])
            continue
        if row.omp_wait_policy is not None:
            pool = f"OpenMP {row.omp_wait_policy}" + (" in a worker process" if row.worker else "")
            note = pool + (f"; {note}" if note else "")
        if row.noise_reasons:
            note = (f"{note}; " if note else "") + "; ".join(row.noise_reasons)
        rows.append([*head, fmt_ms(lat.get("p50")), fmt_ms(lat.get("p90")), fmt_ms(lat.get("p99")),
                     fmt_ms(lat.get("trimmed_mean")), fmt_ms(lat.get("min")), _num(row.throughput_ips, ".1f"),
                     fmt_ms(row.first_inference_ms), _num(row.peak_rss_mb, ".0f"), _num(row.gmacs, ".2f"),
                     roofline_text(row), ratio_text(row), row.verdict or "-", note])
    lines += md.table(_COLUMNS, rows, "lll" + "r" * 12 + "lll", padded=False)
    return "\n".join(lines) + "\n"


def execution_differs(row: BenchRow) -> bool:
    """Whether the engine reports running another precision than the row's (fp16 weights computed in f32 on a CPU).
    INT8 rows compute their float layers in the reported precision, which is expected (int8 declares no engine
    spelling: ``Precision.engine_name``)."""
    from ffnet_deploy.artifact.precisions import PRECISIONS

    expected = PRECISIONS.get(row.precision).engine_name if row.precision in PRECISIONS else None
    return bool(row.execution_precision and expected and row.execution_precision != expected)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


MARKDOWN_MARK = "<!-- generated by ffnet-deploy bench"

_JSON_MARKS = tuple(f'"schema": "{s}"' for s in READABLE_SCHEMAS)


def owned_by_bench(path: Path) -> bool:
    """Whether ``path`` is a results file that ffnet-deploy bench wrote (so that a rerun may replace it): its
    ``schema`` key near the top (in either spelling), the CSV header, or the Markdown marker line."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix == ".json":
        return any(mark in head for mark in _JSON_MARKS)
    if path.suffix == ".csv":
        return head.startswith(",".join(CSV_COLUMNS))
    return head.startswith(MARKDOWN_MARK)


def not_written_by_bench(path: Path) -> str | None:
    """Why ``path`` must not be replaced by a bench result (``None``: bench wrote it); a ``may_replace`` verdict."""
    return None if owned_by_bench(path) else "it was not written by ffnet-deploy bench"


def write_result(result: BenchResult, out: str | Path, stem: str = "results", markdown: str | None = None
                 ) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.csv`` and ``<stem>.md`` into ``out`` (each atomically); returns the paths.

    An existing file is replaced only if bench wrote it (:func:`owned_by_bench`); anything else is refused.
    """
    out = Path(out)
    body = markdown if markdown is not None else to_markdown(result)
    header = f"{MARKDOWN_MARK}: {md.comment(result.command or 'the Python API')} -->\n\n"
    if result.command:
        header += f"Command: {md.code(result.command)}\n\n"
    text = {"json": result.to_json(), "csv": to_csv([result]), "md": header + body}
    return {kind: write_text(out / f"{stem}.{kind}", content, "bench result", may_replace=not_written_by_bench)
            for kind, content in text.items()}

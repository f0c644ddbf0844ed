"""The result of a ``ffnet-deploy bench`` run: a versioned JSON schema, plus CSV and Markdown renderings.

One run is a :class:`BenchResult`: where it ran (:class:`Device`), how it timed (the protocol), this machine's GEMM
roofline when it was probed, and one :class:`BenchRow` per (model, runtime, precision, resolution, batch). A row is
measured here (``source="measured"``), imported from a CSV of measurements made elsewhere (``source="imported"``,
e.g. Xcode's Core ML performance report on an iPhone, with its provenance), skipped (the runtime or precision cannot
run on this machine; ``status="skipped"`` and a reason) or failed (``status="failed"`` and the error line).

Schema ``ffnet-deploy.bench/1`` (JSON, one file per run)::

    {"schema": "ffnet-deploy.bench/1", "command": str, "created": ISO-8601,
     "device": {"name", "cpu", "cores", "isa_flags", "isa_class", "emulated", "os", "machine", "gpu",
                "versions": {package: version}},
     "protocol": {"warmup", "warmup_time_s", "min_iters", "min_time_s", "interleaved"} | null,
     "roofline": Roofline.to_dict() | null,
     "rows": [BenchRow.to_dict(), ...]}

:func:`read_result` accepts only this schema; a file that is not one is refused with one line that says why.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ffnet_deploy.atomic import write_text
from ffnet_deploy.environment import environment_info
from ffnet_deploy.errors import ConfigError

SCHEMA = "ffnet-deploy.bench/1"
"""Identifier of the result format; bumped when a field changes meaning."""

STATISTICS = ("min", "p50", "p90", "p99", "mean", "std", "trimmed_mean")
"""Latency statistics of a measured row, in milliseconds (``trimmed_mean`` drops the 10 % highest and lowest)."""

SOURCES = ("measured", "imported")
STATUSES = ("ok", "skipped", "failed")


@dataclass(frozen=True)
class Device:
    """The machine a result comes from."""

    name: str  # what the user calls it (--device-name); the host name when not given
    cpu: str = ""
    cores: int | None = None
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


@dataclass(frozen=True)
class BenchRow:
    """One (model, runtime, precision, resolution, batch) measurement.

    ``latency_ms`` maps each name of :data:`STATISTICS` to milliseconds per batch; an imported row may carry only
    ``p50``. ``roofline_fraction`` is the model's FLOPs per second at the p50 latency over the roofline of the
    precision (``None`` without a probe or FLOP count).
    """

    model: str  # display name: "ffnet_1", "ffnet_1/attention", "convnext_tiny"
    runtime: str  # "torch", "onnxruntime", "openvino", "tensorrt", "coreml"
    precision: str  # "fp32", "fp16", "bf16", "int8"
    resolution: int
    batch: int = 1
    threads: int | None = None
    family: str = "ffnet"  # "ffnet", "mixer", "peer"
    mixer: str | None = None  # the token mixer for FFNet skeletons
    compute_units: str | None = None  # Core ML: ALL, CPU_AND_NE, CPU_ONLY
    artifact: str | None = None  # artifact directory the row ran, when it came from one
    gmacs: float | None = None  # multiply-accumulates of one image, in 1e9
    params_m: float | None = None
    published_top1: float | None = None  # ImageNet-1k top-1 (%) as published; reference only
    latency_ms: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    throughput_ips: float | None = None  # images per second at the p50 latency
    first_inference_ms: float | None = None  # load + compile + first inference
    peak_rss_mb: float | None = None  # resident memory the runtime added at its peak (load + first inference)
    roofline_fraction: float | None = None
    execution_precision: str | None = None  # what the runtime reports it ran (OpenVINO's inference precision)
    source: str = "measured"
    provenance: dict[str, Any] = field(default_factory=dict)  # imported rows: file, row, tool; measured: notes
    status: str = "ok"
    reason: str | None = None  # why a row was skipped or failed

    @property
    def p50(self) -> float | None:
        return self.latency_ms.get("p50")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BenchRow:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"bench row has unknown fields {unknown}; it was written by a newer ffnet-deploy")
        row = cls(**data)
        if row.source not in SOURCES or row.status not in STATUSES:
            raise ConfigError(f"bench row {row.model}/{row.runtime}: source must be one of {SOURCES} and status one "
                              f"of {STATUSES}, got {row.source!r}/{row.status!r}")
        return row


@dataclass(frozen=True)
class BenchResult:
    """One bench run on one device."""

    device: Device
    rows: tuple[BenchRow, ...]
    command: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    protocol: dict[str, Any] | None = None
    roofline: dict[str, Any] | None = None
    schema: str = SCHEMA

    def ok_rows(self) -> list[BenchRow]:
        return [r for r in self.rows if r.status == "ok"]

    def to_dict(self) -> dict:
        return {"schema": self.schema, "command": self.command, "created": self.created,
                "device": self.device.to_dict(), "protocol": self.protocol, "roofline": self.roofline,
                "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, data: Any, origin: str = "result") -> BenchResult:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"{origin}: not an ffnet-deploy bench result (schema {found!r}, expected {SCHEMA!r}); "
                              "pass the JSON that 'ffnet-deploy bench' wrote")
        try:
            return cls(device=Device.from_dict(data["device"]),
                       rows=tuple(BenchRow.from_dict(r) for r in data["rows"]), command=data.get("command", ""),
                       created=data.get("created", ""), protocol=data.get("protocol"), roofline=data.get("roofline"))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{origin}: bench result is missing or has a malformed field ({err}); "
                              "regenerate it with 'ffnet-deploy bench'") from None


def read_result(path: str | Path) -> BenchResult:
    """Load a result JSON written by :func:`write_result`; one-line :class:`ConfigError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such result file; pass the results.json that 'ffnet-deploy bench' wrote")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None
    return BenchResult.from_dict(data, origin=str(path))


# -- renderings -----------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("device", "model", "family", "mixer", "runtime", "precision", "compute_units", "resolution", "batch",
               "threads", "status", *(f"{s}_ms" for s in STATISTICS), "iterations", "throughput_ips",
               "first_inference_ms", "peak_rss_mb", "gmacs", "params_m", "roofline_fraction", "published_top1",
               "execution_precision", "source", "reason")


def to_csv(results: Iterable[BenchResult]) -> str:
    """Every row of every result, one CSV line each, with the device name as the first column."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        for row in result.rows:
            flat = {k: v for k, v in row.to_dict().items() if k in CSV_COLUMNS}
            flat.update({f"{s}_ms": row.latency_ms.get(s) for s in STATISTICS})
            writer.writerow({"device": result.device.name, **{k: _csv_value(v) for k, v in flat.items()}})
    return buf.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else ""
    return "" if value is None else value


def fmt_ms(value: float | None) -> str:
    """Milliseconds for a table: 3 significant digits, at least 2 decimals under 1 ms, ``-`` when missing."""
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def to_markdown(result: BenchResult, title: str = "Latency") -> str:
    """The run as a Markdown table (median and spread per row), with the device and roofline above it."""
    d = result.device
    lines = [f"## {title}: {d.name}", "",
             f"CPU: {d.cpu} ({d.cores} cores; ISA class {d.isa_class or 'not recorded'}: "
             f"{', '.join(d.isa_flags) or 'no flags reported'}{'; emulated' if d.emulated else ''}); OS: {d.os}"
             + (f"; GPU: {d.gpu}" if d.gpu else ""), ""]
    if result.roofline:
        r = result.roofline
        peaks = ", ".join(f"{k.split('_')[0]} {v:.0f} G{'OP' if k.startswith('int8') else 'FLOP'}/s"
                          for k, v in r.items() if k.endswith(("_gflops", "_gops")) and v)
        lines += [f"GEMM roofline ({r.get('threads')} threads): {peaks}", ""]
    if result.protocol:
        p = result.protocol
        lines += [f"Protocol: warmup {p.get('warmup')} iterations and {p.get('warmup_time_s')} s, then at least "
                  f"{p.get('min_iters')} iterations and {p.get('min_time_s')} s per row"
                  + (", rows interleaved in rounds" if p.get("interleaved") else "") + ".", ""]
    lines += ["| model | runtime | precision | res | batch | p50 ms | p90 ms | p99 ms | trimmed mean | min | "
              "img/s | first ms | peak MB | GMACs | roofline | note |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result.rows:
        lat = row.latency_ms
        note = row.reason or ""
        if row.source == "imported":
            note = f"imported ({row.provenance.get('source', 'csv')})" + (f"; {note}" if note else "")
        if execution_differs(row):
            note = f"runs {row.execution_precision}" + (f"; {note}" if note else "")
        runtime = row.runtime + (f" ({row.compute_units})" if row.compute_units else "")
        if row.status != "ok":
            lines.append(f"| {row.model} | {runtime} | {row.precision} | {row.resolution} | {row.batch} | "
                         f"{row.status} | | | | | | | | | | {note} |")
            continue
        lines.append(
            f"| {row.model} | {runtime} | {row.precision} | {row.resolution} | {row.batch} | {fmt_ms(lat.get('p50'))} "
            f"| {fmt_ms(lat.get('p90'))} | {fmt_ms(lat.get('p99'))} | {fmt_ms(lat.get('trimmed_mean'))} | "
            f"{fmt_ms(lat.get('min'))} | {_num(row.throughput_ips, '.1f')} | {fmt_ms(row.first_inference_ms)} | "
            f"{_num(row.peak_rss_mb, '.0f')} | {_num(row.gmacs, '.2f')} | {_num(row.roofline_fraction, '.2f')} | "
            f"{note} |")
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


def owned_by_bench(path: Path) -> bool:
    """Whether ``path`` is a results file that ffnet-deploy bench wrote (so that a rerun may replace it)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix == ".json":
        return f'"schema": "{SCHEMA}"' in head
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
    md = markdown if markdown is not None else to_markdown(result)
    header = f"{MARKDOWN_MARK}: {result.command or 'the Python API'} -->\n\n"
    if result.command:
        header += f"Command: `{result.command}`\n\n"
    text = {"json": json.dumps(result.to_dict(), indent=2) + "\n", "csv": to_csv([result]), "md": header + md}
    return {kind: write_text(out / f"{stem}.{kind}", body, "bench result", may_replace=not_written_by_bench)
            for kind, body in text.items()}

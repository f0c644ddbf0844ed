"""The pipeline's stages, in order: inspect, reparameterize, export, validate, bench, recommend, report.

:func:`run_pipeline` is what ``ffnet-deploy pipeline`` calls. Every stage is the library function the single-purpose
command uses (``inspect``, ``reparam``, ``export``, ``validate``, ``bench``), so a pipeline artifact is exactly what
those commands would have made. Each job's outcome is saved as ``jobs/<id>.json`` as soon as it is known, and the
report is assembled from those records: a full run, a ``--only`` run, and ``report merge`` of several ``--only``
runs all build the same report from the same records (:func:`assemble`).

A format whose backend is missing, or a format/precision pair it cannot make, becomes a ``skipped`` job with the
reason; it never stops the run. A failed export is an ``error`` job; the other jobs go on.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ffnet_deploy.artifact.formats import bench_runtimes, format_names
from ffnet_deploy.artifact.precisions import baseline_precision, is_calibrated, precision_names
from ffnet_deploy.atomic import os_reason, removed_on_failure, write_hint, write_text
from ffnet_deploy.errors import ConfigError, FFNetDeployError
from ffnet_deploy.pipeline.config import Job, PipelineConfig
from ffnet_deploy.pipeline.results import (
    JOB_SCHEMA,
    SCHEMA,
    CheckpointInfo,
    DataInfo,
    JobRecord,
    PipelineResults,
    Recommendation,
    Summary,
    read_job,
    read_results,
)
from ffnet_deploy.pipeline.state import STATE_DIR, PipelineState, data_fingerprint, input_hash

if TYPE_CHECKING:
    from ffnet_deploy.benchmarks.results import Device
    from ffnet_deploy.models.checkpoint import LoadedCheckpoint

__all__ = ["JOB_SCHEMA", "SCHEMA", "STAGES", "WRITTEN", "Outcome", "assemble", "load_jobs", "merge_runs",
           "recommend", "run_pipeline", "save_job"]
STAGES = ("inspect", "reparameterize", "export", "validate", "bench", "recommend", "report")
WRITTEN = ("artifacts", "jobs", "plots", "checkpoint", "index.md", "index.html", "results.json", "junit.xml",
           STATE_DIR)
"""Everything a pipeline writes into its output folder; ``--force`` removes these and nothing else."""


class UI(Protocol):
    """How the pipeline reports progress (the CLI draws it with rich; tests and ``--quiet`` pass nothing)."""

    def stage(self, index: int, name: str) -> None: ...

    def log(self, line: str) -> None: ...

    def bar(self, label: str, done: float, total: float) -> None: ...


class _Silent:
    def stage(self, index: int, name: str) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def bar(self, label: str, done: float, total: float) -> None:
        pass


@dataclass
class Outcome:
    """What a run produced: the results (``results.json``), the files written, and the exit code."""

    results: PipelineResults
    written: dict[str, Path]
    exit_code: int


# -- the output folder ----------------------------------------------------------------------------------------------


def prepare_output(config: PipelineConfig) -> None:
    """Make sure ``config.output`` may be used, and claim it (``.pipeline/``).

    A new or empty folder is claimed. A folder a pipeline wrote is continued with ``--resume`` (or ``--only``, which
    adds jobs to it) and started over with ``--force`` (which removes only what a pipeline writes). Anything else is
    refused: the pipeline never writes into a folder holding files it did not make.
    """
    out = config.output
    if check_output(config) and config.force:
        for name in WRITTEN:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    # If the first write fails (a full disk, Ctrl-C), the folders made here go again: a stray .pipeline/ without a
    # state would make the next run refuse the folder as "not written by ffnet-deploy pipeline".
    try:
        with removed_on_failure(out / STATE_DIR):
            (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
            state = PipelineState(out)
            if not state.path.exists():
                state.save()
    except OSError as err:
        raise ConfigError(f"pipeline | cannot create {out / STATE_DIR}: {os_reason(err)}; "
                          f"{write_hint(err.errno)} for --output") from None


def check_output(config: PipelineConfig) -> bool:
    """Refuse an unusable ``--output`` before anything runs (see :func:`prepare_output`); writes nothing.

    Returns:
        Whether the folder holds an earlier pipeline run.
    """
    out = config.output
    if out.exists() and not out.is_dir():
        raise ConfigError(f"pipeline | --output {out} is a file; pass a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return False
    if not (out / STATE_DIR / "state.json").is_file():
        raise ConfigError(f"pipeline | --output {out} is not empty and was not written by 'ffnet-deploy "
                          "pipeline'; choose a new or empty folder")
    if not (config.resume or config.only or config.force):
        raise ConfigError(f"pipeline | {out} holds an earlier pipeline run; pass --resume to reuse what is done "
                          "or --force to start over")
    return True


# -- stages -----------------------------------------------------------------------------------------------------------


def run_pipeline(config: PipelineConfig, *, command: str = "", ui: UI | None = None) -> Outcome:
    """Run every stage for ``config``'s jobs and write the report; see the module docstring.

    Raises:
        ConfigError: Unusable options or output folder (before anything runs).
        CheckpointError: The checkpoint cannot be read.
        Interrupted: On Ctrl-C / SIGTERM; every stage finished so far is kept for ``--resume``.
    """
    ui = ui or _Silent()
    start = time.perf_counter()
    config.validate()
    config.check_data()
    check_output(config)  # before the demo trains: a refused folder costs nothing
    checkpoint = config.checkpoint
    if config.demo:
        from ffnet_deploy.demo import demo_checkpoint

        ui.log("demo: training (or reusing the cached) ffnet_digits on scikit-learn's digits")
        checkpoint = demo_checkpoint(progress=lambda step, total, message: ui.bar(message, step, total)).path
        config = replace(config, checkpoint=checkpoint)
    assert checkpoint is not None
    if not Path(checkpoint).is_file():
        raise ConfigError(f"pipeline | --checkpoint {checkpoint}: no such file")
    prepare_output(config)
    state = PipelineState(config.output)

    ui.stage(0, "inspect")
    info = stage_inspect(config, state)
    ui.log(f"checkpoint: {info['variant']}, {info['params'] / 1e6:.2f} M parameters, sha256 {info['sha256'][:12]}")
    ui.stage(1, "reparameterize")
    fused_path = stage_reparameterize(config, state, info, ui)

    @functools.cache
    def fused() -> LoadedCheckpoint:
        """The fused checkpoint, read once for every export and the bench (only if one of them runs)."""
        from ffnet_deploy.models.checkpoint import open_checkpoint

        return open_checkpoint(fused_path, info["variant"], trust=config.trust)

    jobs = config.jobs()
    records = {job.id: new_record(job) for job in jobs}
    ui.stage(2, "export")
    for i, job in enumerate(jobs):
        ui.bar(f"export {job.id}", i, len(jobs))
        stage_export(config, state, job, records[job.id], fused, info, ui)
        save_job(config.output, records[job.id])
    ui.stage(3, "validate")
    stage_validate(config, state, info, [records[j.id] for j in jobs], ui)
    for job in jobs:
        save_job(config.output, records[job.id])
    ui.stage(4, "bench")
    if config.bench:
        stage_bench(config, state, fused, info, [records[j.id] for j in jobs], ui)
    else:
        for record in records.values():
            record["bench"] = None
    for job in jobs:
        save_job(config.output, records[job.id])

    ui.stage(5, "recommend")
    from ffnet_deploy.benchmarks.results import Device

    results = assemble(load_jobs(config.output), checkpoint=CheckpointInfo.model_validate(info),
                       settings=config.settings(), command=command, seconds=time.perf_counter() - start,
                       device=Device.here(config.device_name))
    ui.stage(6, "report")
    written = write_report(results, config.output)
    return Outcome(results, written, results.exit_code)


def stage_inspect(config: PipelineConfig, state: PipelineState) -> dict:
    from ffnet_deploy.checkpoints import describe_checkpoint
    from ffnet_deploy.hashing import sha256_file
    from ffnet_deploy.validate.engine import jsonable

    assert config.checkpoint is not None
    sha = sha256_file(config.checkpoint)
    # the record holds the resolution and the MACs at it: a new --resolution is a new record
    inputs = input_hash("inspect", sha, config.variant, config.resolution)
    done = state.reusable("inspect", inputs)
    if done:
        return {**done["outputs"], "path": str(config.checkpoint)}
    from ffnet_deploy.benchmarks.suite import ffnet_facts
    from ffnet_deploy.models.config import get_config

    info = jsonable(describe_checkpoint(config.checkpoint, config.variant, trust=config.trust, sha256=sha))
    resolution = config.resolution or get_config(info["variant"]).resolution
    gmacs, _, top1 = ffnet_facts(info["variant"], resolution, info["num_classes"])
    info.update(resolution=resolution, gmacs=gmacs, published_top1=top1)
    state.record("inspect", inputs, info)
    return info


def stage_reparameterize(config: PipelineConfig, state: PipelineState, info: dict, ui: UI) -> Path:
    """The fused checkpoint the exports start from (``checkpoint/fused.pth``), or the input when it is fused."""
    from ffnet_deploy.checkpoints import reparameterize_checkpoint

    assert config.checkpoint is not None
    if info["fused"]:
        ui.log("checkpoint is already reparameterized")
        return Path(config.checkpoint)
    out = config.output / "checkpoint" / "fused.pth"
    inputs = input_hash("reparameterize", info["sha256"], info["variant"])
    done = state.reusable("reparameterize", inputs)
    from ffnet_deploy.hashing import sha256_file

    if done and out.is_file() and sha256_file(out) == done["outputs"].get("sha256"):
        ui.log("reparameterize: unchanged, reused")
        return out
    result = reparameterize_checkpoint(config.checkpoint, out, info["variant"], force=True, trust=config.trust)
    ui.log(f"reparameterized: max |fused - unfused| = {result['parity']['max_abs_error']:.2e}")
    state.record("reparameterize", inputs, {"sha256": result["output_sha256"], "path": str(out)})
    return out


def new_record(job: Job) -> dict:
    return {"schema": JOB_SCHEMA, "id": job.id, "format": job.format, "precision": job.precision,
            "status": "pending", "reason": None, "artifact": None, "export": None, "parity": None, "bench": None}


def skip_reason(config: PipelineConfig, job: Job) -> str | None:
    """Why this machine cannot make ``job`` (backend missing, unsupported precision, int8 without data)."""
    from ffnet_deploy.exporters import get_exporter

    exporter = get_exporter(job.format)
    try:
        exporter.check_available()
    except FFNetDeployError as err:
        return str(err)
    if job.precision not in exporter.supported_precisions:
        return (f"{job.format} exports {', '.join(exporter.supported_precisions)}, not {job.precision}")
    if is_calibrated(job.precision) and config.calib is None:
        return f"{job.precision} needs calibration data: pass --calib DATA"
    return None


def stage_export(config: PipelineConfig, state: PipelineState, job: Job, record: dict,
                 fused: Callable[[], LoadedCheckpoint], info: dict, ui: UI) -> None:
    from ffnet_deploy.artifact.manifest import read_manifest
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.quantize.config import QuantizationConfig
    from ffnet_deploy.quantize.stages import PROGRESS_PREFIX

    reason = skip_reason(config, job)
    if reason:
        record.update(status="skipped", reason=reason)
        state.forget(f"export:{job.id}")
        ui.log(f"{job.id}: skipped: {reason}")
        return
    out = config.output / "artifacts" / job.id
    quant = None
    if is_calibrated(job.precision):
        quant = QuantizationConfig(calib=config.calib, **({"calib_size": config.calib_size} if config.calib_size
                                                          else {}),
                                   cache_dir=config.output / STATE_DIR / "calibration")
    inputs = input_hash("export", job.id, info["sha256"], info["resolution"],
                        data_fingerprint(config.calib) if quant else None, config.calib_size if quant else None,
                        _version())
    done = state.reusable(f"export:{job.id}", inputs)
    if done and _artifact_intact(out):
        manifest = read_manifest(out)
        record.update(status="exported", artifact=_artifact_entry(config.output, out),
                      export={**_export_entry(manifest), "reused": True})
        ui.log(f"{job.id}: export unchanged, reused")
        return

    def progress(message: str) -> None:
        if message.startswith(PROGRESS_PREFIX):
            text = message[len(PROGRESS_PREFIX):]
            if text.startswith("calibration images "):
                done_s, _, total_s = text.split()[-1].partition("/")
                ui.bar(f"{job.id}: calibration", float(done_s), float(total_s))
            else:
                ui.bar(f"{job.id}: {text}", 0, 1)

    ui.log(f"{job.id}: exporting")
    try:
        result = export(ExportConfig(job.format, out, resolution=info["resolution"], precision=job.precision,
                                     quantization=quant, check_parity=False, force=True),
                        fused(), progress=progress)
    except FFNetDeployError as err:
        record.update(status="error", reason=f"export failed: {err}")
        state.forget(f"export:{job.id}")
        ui.log(f"{job.id}: export failed: {err}")
        return
    record.update(status="exported", artifact=_artifact_entry(config.output, out),
                  export={**_export_entry(result.manifest), "reused": False})
    state.record(f"export:{job.id}", inputs, {"path": str(out)})


def _version() -> str:
    from ffnet_deploy._version import __version__

    return __version__


def _artifact_intact(directory: Path) -> bool:
    """The artifact directory exists and every file matches the sha256 its manifest recorded."""
    from ffnet_deploy.artifact.inspect import verify_files
    from ffnet_deploy.artifact.manifest import has_manifest, read_manifest

    if not directory.is_dir() or not has_manifest(directory):
        return False
    try:
        verify_files(read_manifest(directory), directory, "pipeline")
    except (FFNetDeployError, OSError):
        return False
    return True


def _artifact_entry(output: Path, directory: Path) -> dict:
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    rel = directory.relative_to(output).as_posix()
    return {"path": rel, "size_bytes": size, "manifest": f"{rel}/manifest.json"}


def _export_entry(manifest: Any) -> dict:
    details = dict(manifest.details or {})
    return {"seconds": manifest.export_seconds, "quantization": details.get("quantization") or
            details.get("compression"), "notices": list(manifest.notices), "sha256": manifest.artifact.sha256}


def eval_source(config: PipelineConfig) -> tuple[Any, str]:
    """The validation data and a description: ``--eval-data``, else the calibration data, else 32 synthetic
    images (unlabelled: parity metrics but no accuracy)."""
    from ffnet_deploy.data.sources import SyntheticSource, source_from_spec

    if config.eval_data is not None:
        return source_from_spec(config.eval_data, split="test", limit=config.eval_limit), str(config.eval_data)
    if config.calib is not None:
        return source_from_spec(config.calib, split="test", limit=config.eval_limit), f"{config.calib} (--calib)"
    return SyntheticSource(config.eval_limit or 32, 0, None), "synthetic"


def stage_validate(config: PipelineConfig, state: PipelineState, info: dict, records: Sequence[dict], ui: UI) -> None:
    """Validate every exported artifact against the checkpoint on the evaluation data (one pass over the data)."""
    from ffnet_deploy.validate.engine import validate

    todo, keys = [], {}
    data_fp = data_fingerprint(config.eval_data or config.calib)
    for record in records:
        if record["status"] != "exported":
            continue
        inputs = input_hash("validate", record["export"]["sha256"], info["sha256"], data_fp, config.eval_limit,
                            _version())
        done = state.reusable(f"validate:{record['id']}", inputs)
        if done:
            record["parity"] = done["outputs"]
            record["status"] = "passed" if done["outputs"]["verdict"] != "fail" else "failed"
            ui.log(f"{record['id']}: validation unchanged, reused")
            continue
        todo.append(record)
        keys[record["id"]] = inputs
    if not todo:
        return
    source, description = eval_source(config)
    total = len(source)
    ui.log(f"validating {len(todo)} artifact(s) on {description}")
    report = validate([config.output / r["artifact"]["path"] for r in todo], config.checkpoint, info["variant"],
                      source, "auto", 8, trust=config.trust,
                      progress=lambda n: ui.bar("validation", n, total or n))
    for record, result in zip(todo, report.artifacts, strict=True):
        parity = parity_entry(result, description)
        record["parity"] = parity
        record["status"] = {"pass": "passed", "fail": "failed", "not run": "passed"}[parity["verdict"]]
        if parity["verdict"] == "fail":
            record["reason"] = "; ".join(parity["failures"])
        state.record(f"validate:{record['id']}", keys[record["id"]], parity)


def parity_entry(result: Any, data: str) -> dict:
    """The report's view of one :class:`~ffnet_deploy.validate.engine.ArtifactResult`."""
    from ffnet_deploy.validate.engine import jsonable

    metrics = result.metrics.to_dict() if result.metrics is not None else {}
    keep = ("max_abs_error", "mean_abs_error", "cosine_mean", "cosine_min", "psnr_db", "top1_agreement",
            "top5_overlap", "num_samples")
    out = {k: metrics.get(k) for k in keep if k in metrics}
    if metrics.get("top1") is not None:
        out.update(accuracy=metrics["top1"], reference_accuracy=metrics.get("ref_top1"),
                   accuracy_drop=metrics.get("acc_drop"))
    verdict = {"passed": "pass", "failed": "fail", "not run": "not run"}[result.status]
    return jsonable({"verdict": verdict, "profile": result.profile.name, "runtime": result.runtime,
                     "metrics": out, "failures": result.failures, "reason": result.not_run, "data": data,
                     "checks": [c.to_dict() for c in result.checks]})


def stage_bench(config: PipelineConfig, state: PipelineState, fused: Callable[[], LoadedCheckpoint], info: dict,
                records: Sequence[dict],
                ui: UI) -> None:
    """Time every artifact that can run here: each runtime's artifacts interleaved (INT8 against FP32 in one run),
    runtimes one after the other, then eager PyTorch on the fused model as the baseline (see
    :mod:`ffnet_deploy.benchmarks.suite` on why runtimes are not interleaved with each other)."""
    from ffnet_deploy.benchmarks.results import BenchRow
    from ffnet_deploy.benchmarks.suite import Job as BenchJob
    from ffnet_deploy.benchmarks.suite import artifact_jobs, default_threads, run_jobs, runner_factory, runtime_names
    from ffnet_deploy.environment import cap_threads
    from ffnet_deploy.runtimes import RUNTIMES
    from ffnet_deploy.runtimes.timing import Protocol

    threads, capped = cap_threads(config.threads, "pipeline")
    if capped:
        ui.log(f"note: {capped}")
    threads = threads or default_threads()
    protocol = Protocol(warmup=10, warmup_time_s=0.5, min_iters=config.min_iters, min_time_s=config.min_time_s,
                        blocks=5)
    benchable = [r for r in records if r["status"] in ("passed", "failed") and r["artifact"]]
    inputs = input_hash("bench", sorted((r["id"], r["export"]["sha256"]) for r in benchable), threads,
                        protocol.to_dict(), info["sha256"])
    done = state.reusable("bench", inputs)
    if done:
        for r in records:
            r["bench"] = done["outputs"].get(r["id"])
        ui.log("bench: unchanged, reused")
        return
    jobs: list[BenchJob] = []
    owner: list[str | None] = []
    for r in benchable:
        for job in artifact_jobs([config.output / r["artifact"]["path"]], batches=[1], threads=threads):
            if job.row.compute_units not in (None, RUNTIMES.get(job.row.runtime).timing_variants[0]):
                continue  # the pipeline times each runner once, at its default variant (Core ML: every compute unit)
            jobs.append(job)
            owner.append(r["id"])
    model = fused().model
    resolution = info["resolution"]
    # The baseline: the in-memory reference runner (eager PyTorch) at the baseline precision (fp32).
    reference = runtime_names()[0]
    baseline = baseline_precision()
    torch_row = BenchRow(model=info["variant"], runtime=reference, precision=baseline, resolution=resolution,
                         threads=threads)
    jobs.append(BenchJob(row=torch_row, make_runner=runner_factory(reference, None, baseline, threads, model=model,
                                                                   resolution=resolution),
                         input_shape=(1, 3, resolution, resolution), group=(reference,)))
    owner.append(None)
    artifacts = sum(rid is not None for rid in owner)
    ui.log(f"bench: {artifacts} artifact(s) and eager PyTorch (OpenMP not spinning, in a worker process), "
           f"{threads} thread(s)")
    from ffnet_deploy.runtimes.noise import load_snapshot

    before = load_snapshot()
    rows = run_jobs(jobs, protocol, progress=lambda label, done_, total: ui.bar(label, done_, total))
    after = load_snapshot()
    torch_p50 = rows[-1].p50 if rows[-1].status == "ok" else None
    load = {"load_before": before["1m"] if before else None, "load_after": after["1m"] if after else None}
    outputs: dict[str, Any] = {}
    for row, rid in zip(rows, owner, strict=True):
        if rid is None:
            continue
        outputs[rid] = {**bench_entry(row, torch_p50, rows[-1]), **load}
    for r in records:
        r["bench"] = outputs.get(r["id"])
    state.record("bench", inputs, outputs)


def bench_entry(row: Any, torch_p50: float | None, torch_row: Any = None) -> dict:
    """The report's view of one bench row (with the eager-PyTorch median of the same run).

    With ``torch_row`` (the baseline row of the same run), the speedup is the paired one the bench judged
    (``row.ratio``, its range and verdict), and only when the baseline ran with a quiet OpenMP pool: a spinning
    pool's times swing with the machine's load (11.4x in one run, 1.04x in the next), so no ratio is kept from it.
    """
    if row.status != "ok":
        return {"runtime": row.runtime, "reason": row.reason}
    lat = row.latency_ms
    entry = {"runtime": row.runtime, "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"],
             "min_ms": lat["min"], "trimmed_mean_ms": lat["trimmed_mean"], "throughput_ips": row.throughput_ips,
             "first_inference_ms": row.first_inference_ms, "peak_rss_mb": row.peak_rss_mb,
             "iterations": row.iterations, "torch_p50_ms": torch_p50,
             "speedup_vs_torch": torch_p50 / lat["p50"] if torch_p50 else None, "reason": None}
    if torch_row is None:
        return entry
    from ffnet_deploy.runtimes._worker import WAIT_POLICY

    quiet = torch_row.status == "ok" and torch_row.omp_wait_policy == WAIT_POLICY
    paired = row.ratio if quiet and row.reference and row.reference.startswith(torch_row.runtime) else None
    return {**entry, "speedup_vs_torch": paired.median if paired else None,
            "vs_torch_low": paired.low if paired else None, "vs_torch_high": paired.high if paired else None,
            "blocks_ms": list(row.blocks_ms), "verdict": row.verdict, "noise_reasons": list(row.noise_reasons),
            "torch_omp_wait_policy": torch_row.omp_wait_policy}


# -- job records and the report -------------------------------------------------------------------------------------


def save_job(output: Path, record: dict | JobRecord) -> Path:
    """Write ``jobs/<id>.json`` (the record through its model, :class:`~ffnet_deploy.pipeline.results.JobRecord`)."""
    job = record if isinstance(record, JobRecord) else JobRecord.model_validate(record)
    return write_text(output / "jobs" / f"{job.id}.json", job.to_json(), "pipeline job")


def load_jobs(output: Path) -> list[JobRecord]:
    """Every job record in ``output/jobs``, validated (:func:`~ffnet_deploy.pipeline.results.read_job`), in format
    then precision order.

    Raises:
        ConfigError: One line naming a record that is not one, and its field.
    """
    records = [read_job(path) for path in sorted((output / "jobs").glob("*.json"))]
    order = {(f, p): i for i, (f, p) in enumerate((f, p) for f in format_names()
                                                  for p in precision_names(stored=True))}
    return sorted(records, key=lambda r: order.get((r.format, r.precision), 99))


def recommend(jobs: Sequence[JobRecord]) -> list[Recommendation]:
    """For each runtime, the fastest artifact that passed parity, with its speedup over that runtime's FP32."""
    runtime_of = bench_runtimes()  # the runner bench times each format with (a record of an unknown format: its own)
    out = []
    runtimes = dict.fromkeys(runtime_of.get(j.format, j.format) for j in jobs)
    for runtime in runtimes:
        mine = [j for j in jobs if runtime_of.get(j.format, j.format) == runtime]
        timed = [j for j in mine if j.status == "passed" and j.bench is not None and j.bench.p50_ms]
        if not timed:
            why = next((j.bench.reason for j in mine if j.bench is not None and j.bench.reason), None)
            if why is None:
                why = ("no artifact passed parity" if not any(j.status == "passed" for j in mine)
                       else "not benchmarked (--no-bench)")
            out.append(Recommendation(runtime=runtime, job=None, why=why))
            continue
        best = min(timed, key=lambda j: j.bench.p50_ms)
        fp32 = next((j for j in timed if j.precision == baseline_precision()), None)
        why = f"fastest of {len(timed)} artifact(s) that passed parity on {runtime}"
        ratio, judged = None, None
        if fp32 is not None and best is not fp32 and best.bench.blocks_ms and fp32.bench.blocks_ms:
            from ffnet_deploy.runtimes.noise import format_ratio, paired_ratio, verdict

            ratio = paired_ratio(fp32.bench.blocks_ms, best.bench.blocks_ms)
            row_noise = [r for j in (best, fp32) for r in j.bench.noise_reasons]
            judged = verdict(ratio)
            if ratio is not None and ratio.low <= 1.0:
                # The blocks do not all show it faster (the range holds 1.0): keep the FP32 artifact instead of
                # picking on noise.
                why = (f"{best.id} is not clearly faster than {fp32.id} ({format_ratio(ratio)}): within the noise, "
                       f"so the FP32 artifact; rerun on a quiet machine to separate them")
                best = fp32
            elif not judged.stable or row_noise:
                why += "; the timing was noisy: rerun on a quiet machine"
        noisy = (judged is not None and not judged.stable) or any(
            j.bench.verdict not in (None, "stable") for j in (best, fp32) if j is not None)
        out.append(Recommendation(
            runtime=runtime, job=best.id, p50_ms=best.bench.p50_ms, fp32_job=fp32.id if fp32 else None,
            fp32_p50_ms=fp32.bench.p50_ms if fp32 else None,
            speedup_vs_fp32=fp32.bench.p50_ms / best.bench.p50_ms if fp32 else None,
            speedup_low=ratio.low if ratio is not None else None,
            speedup_high=ratio.high if ratio is not None else None,
            verdict=("noisy: rerun on a quiet machine" if noisy else "stable") if best.bench.verdict else None,
            why=why))
    return out


def assemble(jobs: Sequence[JobRecord], *, checkpoint: CheckpointInfo, settings: dict, command: str,
             seconds: float | None, device: Device | None = None) -> PipelineResults:
    """The ``results.json`` of a report from job records (a run's, or several runs' merged)."""
    from ffnet_deploy.benchmarks.results import Device

    device = device or Device.here()
    jobs = [j.model_copy(deep=True) for j in jobs]
    recommendations = recommend(jobs)
    counts = {s: sum(j.status == s for j in jobs) for s in ("passed", "failed", "skipped", "error")}
    exit_code = 1 if counts["failed"] or counts["error"] else 0
    data = next((j.parity.data for j in jobs if j.parity is not None), None)
    ref_acc = next((j.parity.metrics.get("reference_accuracy") for j in jobs if j.parity is not None
                    and j.parity.metrics.get("reference_accuracy") is not None), None)
    look_at = []
    for rec in recommendations:
        if rec.job is None:
            continue
        job = next(j for j in jobs if j.id == rec.job)
        line = f"Recommended for {rec.runtime}: {rec.job} ({rec.p50_ms:.3g} ms"
        if rec.speedup_vs_fp32 and rec.job != rec.fp32_job:
            from ffnet_deploy.pipeline.report import vs_fp32_text

            line += f", {vs_fp32_text(rec)} FP32"
        drop = job.parity.metrics.get("accuracy_drop") if job.parity is not None else None
        line += f", accuracy drop {drop:.2f} points)" if isinstance(drop, (int, float)) else ")"
        look_at.append(line)
    for j in jobs:
        if j.status in ("failed", "error"):
            look_at.append(f"{j.id} {j.status}: {j.reason}")
    if counts["skipped"]:
        look_at.append(f"{counts['skipped']} job(s) skipped on this machine; their reasons are in the report")
    for rec in recommendations:
        if rec.job is None:
            look_at.append(f"{rec.runtime}: no recommendation: {rec.why}")
    return PipelineResults(
        command=command,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=dict(device.versions or {}),
        device=device,
        checkpoint=checkpoint,
        settings=settings,
        data=DataInfo(eval=data, labelled=ref_acc is not None, reference_accuracy=ref_acc),
        jobs=jobs,
        recommendations=recommendations,
        plots={},
        summary=Summary(jobs=len(jobs), **{k: v for k, v in counts.items() if k != "error"}, errors=counts["error"],
                        exit_code=exit_code, seconds=seconds, look_at=look_at),
    )


def write_report(results: PipelineResults, output: Path) -> dict[str, Path]:
    """index.md, index.html, results.json, junit.xml and the plots (:mod:`ffnet_deploy.pipeline.report`)."""
    from ffnet_deploy.pipeline.report import write_report as write

    return write(results, output)


def _is_bench_result(path: Path) -> bool:
    """Whether ``path`` reads as a bench result file (a user passed a bench folder where a pipeline one belongs)."""
    from ffnet_deploy.benchmarks.results import read_result

    try:
        read_result(path)
    except FFNetDeployError:
        return False
    return True


def merge_runs(folders: Sequence[Path], out: Path, *, command: str = "",
               log: Callable[[str], None] | None = None) -> Outcome:
    """One report from the job records of several pipeline output folders (``--only`` runs on other machines).

    Artifacts are copied into ``out/artifacts``; a job present in several folders takes the last one given. Every
    ``results.json`` and job record is read through its typed model.

    Raises:
        ConfigError: A folder that is not a pipeline output, a file in it that is not what it should be (one line
            naming the file and the field), runs of different checkpoints, or an unusable ``out``.
    """
    from ffnet_deploy.benchmarks.results import Device

    say = log or (lambda _m: None)
    records: dict[str, tuple[JobRecord, Path]] = {}
    devices: list[Device | None] = []
    checkpoint: CheckpointInfo | None = None
    settings: dict | None = None
    for folder in folders:
        results_path = folder / "results.json"
        if not (results_path.exists() or results_path.is_symlink()):
            raise ConfigError(f"report merge | {folder} has no results.json; pass output folders of "
                              "'ffnet-deploy pipeline'")
        try:
            results = read_results(results_path)
        except ConfigError:
            if _is_bench_result(results_path):
                raise ConfigError(f"report merge | {folder} holds the results of 'ffnet-deploy bench', not of a "
                                  f"pipeline; merge bench results as files: ffnet-deploy report merge "
                                  f"{results_path} [more results.json ...] --out table.md") from None
            raise
        assert results.checkpoint is not None  # read_results refuses a file without one
        if checkpoint is not None and results.checkpoint.sha256 != checkpoint.sha256:
            raise ConfigError(f"report merge | {folder} ran another checkpoint (sha256 "
                              f"{results.checkpoint.sha256[:12]} vs {checkpoint.sha256[:12]}); merge runs "
                              "of one checkpoint")
        checkpoint = checkpoint or results.checkpoint
        settings = settings or results.settings
        devices.append(results.device)
        for record in load_jobs(folder):
            if record.id in records:
                say(f"{record.id}: taken from {folder}")
            records[record.id] = (record, folder)
    if checkpoint is None:
        raise ConfigError("report merge | pass at least one pipeline output folder")
    prepare_output(PipelineConfig(output=out, checkpoint=Path(checkpoint.path), resume=True))
    for record, src in records.values():
        if record.artifact is not None:
            target = out / record.artifact.path
            if target.resolve() != (src / record.artifact.path).resolve():
                # published like an export: an interrupted merge leaves no partial artifact
                from ffnet_deploy.artifact.workdir import publish, workdir_for

                target.parent.mkdir(parents=True, exist_ok=True)
                with workdir_for(target) as work:
                    shutil.copytree(src / record.artifact.path, work, dirs_exist_ok=True)
                    publish(work, target, force=True)
        save_job(out, record)
    settings = dict(settings or {})
    jobs = [r for r, _ in records.values()]
    settings.update(formats=[f for f in format_names() if any(r.format == f for r in jobs)],
                    precisions=[p for p in precision_names(stored=True) if any(r.precision == p for r in jobs)])
    names = list(dict.fromkeys((d.name if d is not None else None) or "unnamed" for d in devices))
    # the runs' own device (several: their names only; each job's numbers come from the machine that ran it)
    device = (devices[0] or Device(name=names[0])) if len(names) == 1 else Device(name=" + ".join(names))
    results = assemble(load_jobs(out), checkpoint=checkpoint, settings=settings, command=command, seconds=None,
                       device=device)
    written = write_report(results, out)
    return Outcome(results, written, results.exit_code)

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

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffnet_deploy.artifact.formats import bench_runtimes, format_names
from ffnet_deploy.artifact.precisions import baseline_precision, is_calibrated, precision_names
from ffnet_deploy.atomic import locked, os_reason, write_hint, write_text
from ffnet_deploy.errors import ConfigError, FFNetDeployError, Interrupted
from ffnet_deploy.interrupts import fault_point
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
from ffnet_deploy.pipeline.written import LEDGER_NAME, Ledger, remove_recorded
from ffnet_deploy.progress import Events, Progress, as_progress

if TYPE_CHECKING:
    from ffnet_deploy.benchmarks.results import Device
    from ffnet_deploy.models.checkpoint import LoadedCheckpoint

__all__ = ["JOB_SCHEMA", "SCHEMA", "STAGES", "WRITTEN", "Outcome", "assemble", "load_jobs", "merge_runs",
           "output_lock", "recommend", "run_pipeline", "save_job"]
STAGES = ("inspect", "reparameterize", "export", "validate", "bench", "recommend", "report")
WRITTEN = ("artifacts", "jobs", "plots", "checkpoint", "index.md", "index.html", "results.json", "junit.xml",
           STATE_DIR)
"""The names a pipeline writes into its output folder. ``--force`` removes only what it recorded writing there
(:mod:`ffnet_deploy.pipeline.written`), and none of them may be a symbolic link."""
LOCK_TARGET = "run"
"""The pipeline's lock on its output is :func:`~ffnet_deploy.atomic.locked` on ``.pipeline/run`` (the file
``.pipeline/.run.lock``), held for the whole run (:func:`output_lock`)."""


UI = Progress
"""How the pipeline reports progress: the events of :mod:`ffnet_deploy.progress`, ``stage(name)`` once per name of
:data:`STAGES` (the CLI draws them with rich; tests and ``--quiet`` pass nothing)."""


@dataclass
class Outcome:
    """What a run produced: the results (``results.json``), the files written, and the exit code."""

    results: PipelineResults
    written: dict[str, Path]
    exit_code: int


# -- the output folder ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def prepare_output(config: PipelineConfig, component: str = "pipeline") -> Iterator[list[str]]:
    """Make sure ``config.output`` may be used, claim it (``.pipeline/``) and hold its lock inside the block.

    A new or empty folder is claimed. A folder a pipeline wrote is continued with ``--resume`` (or ``--only``, which
    adds jobs to it) and started over with ``--force``, which removes only the files the pipeline recorded writing
    and that still hold what it wrote, never an input of this run (:func:`~ffnet_deploy.pipeline.written.
    remove_recorded`). Anything else is refused: the pipeline never writes into a folder holding files it did not
    make. Another pipeline (or ``report merge``) writing the folder is refused in one line (:func:`output_lock`).

    Yields:
        The files ``--force`` kept (relative paths; empty without ``--force``), for a note.

    Raises:
        ConfigError: One line naming the problem, before anything in the folder is changed.
    """
    out = config.output
    check_output(config)  # before anything is created: a refused folder stays as it was
    state_dir = out / STATE_DIR
    created = [p for p in (state_dir, *state_dir.parents) if not (p.exists() or p.is_symlink())]

    def undo() -> None:
        # A stray .pipeline/ without a state would make the next run refuse the folder as "not written by
        # ffnet-deploy pipeline"; only what this call created goes.
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)

    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        undo()
        raise ConfigError(f"{component} | cannot create {state_dir}: {os_reason(err)}; {write_hint(err.errno)} "
                          "for --output") from None
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(output_lock(out, component))
        except ConfigError:
            raise  # another run holds it, and what this call created may already be that run's
        except BaseException:
            undo()
            raise
        try:
            earlier = check_output(config)  # again under the lock: another run may have written it meanwhile
            kept: list[str] = []
            if earlier and config.force:
                kept = remove_recorded(out, _inputs(config), WRITTEN)
                (state_dir / "state.json").unlink(missing_ok=True)  # the pipeline's own marker, rewritten below
            state = PipelineState(out)
            if not state.path.exists():
                state.save()
        except OSError as err:
            undo()
            raise ConfigError(f"{component} | cannot create {state_dir}: {os_reason(err)}; "
                              f"{write_hint(err.errno)} for --output") from None
        except BaseException:
            undo()  # a full disk or Ctrl-C at the first write: the folder is as it was
            raise
        yield kept


def _inputs(config: PipelineConfig) -> list[Path]:
    """The files and folders this run reads that exist (the checkpoint, data folders): ``--force`` keeps them."""
    named = [config.checkpoint, config.calib, config.eval_data]
    return [Path(p) for p in named if p is not None and (Path(p).exists() or Path(p).is_symlink())]


@contextlib.contextmanager
def output_lock(output: Path, component: str = "pipeline") -> Iterator[None]:
    """Hold the lock of a pipeline output folder (whose ``.pipeline/`` exists) inside the block; refuse at once when
    another process holds it (a pipeline, ``report merge``), instead of two runs writing one folder.

    Raises:
        ConfigError: One line, when another process holds it or the lock file cannot be created.
    """
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locked(output / STATE_DIR / LOCK_TARGET, wait=False))
        except BlockingIOError:
            raise ConfigError(f"{component} | another pipeline (or report merge) is writing {output}; wait for it "
                              "to finish, or choose another --output") from None
        except OSError as err:
            raise ConfigError(f"{component} | cannot lock {output / STATE_DIR}: {os_reason(err)}; "
                              f"{write_hint(err.errno)} for --output") from None
        yield


def _only_a_stray_claim(out: Path) -> bool:
    """Whether ``out`` holds nothing but a ``.pipeline/`` without a state, only empty lock files in it (a run killed
    before it wrote its state, even while it held the lock of a file it was writing there; or one starting right
    now, whose lock then refuses this one): the folder counts as empty."""
    entries = list(out.iterdir())
    state_dir = out / STATE_DIR
    if entries != [state_dir] or state_dir.is_symlink() or not state_dir.is_dir():
        return False
    return all(_is_a_lock_file(p) for p in state_dir.iterdir())


def _is_a_lock_file(path: Path) -> bool:
    """An empty regular file named as :func:`~ffnet_deploy.atomic.lock_path` names them (``.<name>.lock``)."""
    named = len(path.name) > len("..lock") and path.name.startswith(".") and path.name.endswith(".lock")
    return named and not path.is_symlink() and path.is_file() and path.stat().st_size == 0


def check_output(config: PipelineConfig) -> bool:
    """Refuse an unusable ``--output`` before anything runs (see :func:`prepare_output`); writes nothing.

    Returns:
        Whether the folder holds an earlier pipeline run.
    """
    out = config.output
    if out.exists() and not out.is_dir():
        raise ConfigError(f"pipeline | --output {out} is a file; pass a folder")
    if not (out.is_dir() and any(out.iterdir())) or _only_a_stray_claim(out):
        return False
    if not (out / STATE_DIR / "state.json").is_file():
        raise ConfigError(f"pipeline | --output {out} is not empty and was not written by 'ffnet-deploy "
                          "pipeline'; choose a new or empty folder")
    for rel in (*WRITTEN, f"{STATE_DIR}/state.json", f"{STATE_DIR}/{LEDGER_NAME}"):
        if (out / rel).is_symlink():
            raise ConfigError(f"pipeline | {out / rel} is a symbolic link; a pipeline writes only inside {out} and "
                              "follows no link out of it: replace the link with a folder, or choose a new --output")
    if not (config.resume or config.only or config.force):
        raise ConfigError(f"pipeline | {out} holds an earlier pipeline run; pass --resume to reuse what is done "
                          "or --force to start over")
    return True


# -- stages -----------------------------------------------------------------------------------------------------------


def checked_inputs(config: PipelineConfig, ui: Progress) -> PipelineConfig:
    """``config`` checked before anything runs, with the demo's checkpoint trained (or taken from the cache).

    Raises:
        ConfigError: Unusable options, data or output folder, or a checkpoint that is not a file.
    """
    config.validate()
    config.check_data()
    check_output(config)  # before the demo trains: a refused folder costs nothing
    checkpoint = config.checkpoint
    if config.demo:
        from ffnet_deploy.demo import demo_checkpoint

        ui.note("demo: training (or reusing the cached) ffnet_digits on scikit-learn's digits")
        checkpoint = demo_checkpoint(progress=ui).path  # steps only: no stage of the demo reaches the fault points
        config = replace(config, checkpoint=checkpoint)
    assert checkpoint is not None
    if not Path(checkpoint).is_file():
        raise ConfigError(f"pipeline | --checkpoint {checkpoint}: no such file")
    return config


def log_kept(kept: Sequence[str], log: Callable[[str], None]) -> None:
    """Say which files ``--force`` kept (:func:`prepare_output`)."""
    if kept:
        log(f"--force kept {len(kept)} file(s) the pipeline did not record writing, or that changed since: "
            f"{', '.join(kept[:5])}" + (f" and {len(kept) - 5} more" if len(kept) > 5 else ""))


def run_pipeline(config: PipelineConfig, *, command: str = "", ui: UI | None = None) -> Outcome:
    """Run every stage for ``config``'s jobs and write the report; see the module docstring.

    Raises:
        ConfigError: Unusable options or output folder (before anything runs).
        CheckpointError: The checkpoint cannot be read.
        Interrupted: On Ctrl-C / SIGTERM; every stage finished so far is kept for ``--resume``.
    """
    ui = as_progress(ui)
    start = time.perf_counter()
    config = checked_inputs(config, ui)
    with prepare_output(config) as kept:
        log_kept(kept, ui.note)
        try:
            return _run_stages(config, ui, command, start)
        except Interrupted as err:
            err.kept = kept_for_resume(config.output, err.kept)
            raise


def _run_stages(config: PipelineConfig, ui: UI, command: str, start: float) -> Outcome:
    """The stages of :func:`run_pipeline`, while it holds the output folder."""
    state = PipelineState(config.output, log=ui.note)

    def stage(index: int) -> None:
        ui.stage(STAGES[index])
        fault_point(f"pipeline-{STAGES[index]}")  # the test hook (ffnet_deploy.interrupts)

    stage(0)
    info = stage_inspect(config, state)
    ui.note(f"checkpoint: {info['variant']}, {info['params'] / 1e6:.2f} M parameters, sha256 {info['sha256'][:12]}")
    stage(1)
    fused_path = stage_reparameterize(config, state, info, ui)

    @functools.cache
    def fused() -> LoadedCheckpoint:
        """The fused checkpoint, read once for every export and the bench (only if one of them runs)."""
        from ffnet_deploy.models.checkpoint import open_checkpoint

        return open_checkpoint(fused_path, info["variant"], trust=config.trust)

    jobs = config.jobs()
    records = {job.id: new_record(job) for job in jobs}
    withdrawn: list[bool] = []  # whether this run has withdrawn the old report (before its first new artifact)
    stage(2)
    for i, job in enumerate(jobs):
        ui.step(i, len(jobs), f"export {job.id}")
        stage_export(config, state, job, records[job.id], fused, info, ui, withdrawn)
        save_job(config.output, records[job.id])
    stage(3)
    stage_validate(config, state, info, [records[j.id] for j in jobs], ui)
    for job in jobs:
        save_job(config.output, records[job.id])
    stage(4)
    if config.bench:
        stage_bench(config, state, fused, info, [records[j.id] for j in jobs], ui)
    else:
        for record in records.values():
            record["bench"] = None
    for job in jobs:
        save_job(config.output, records[job.id])

    stage(5)
    from ffnet_deploy.benchmarks.results import Device

    drop_other_jobs(config.output, [job.id for job in jobs])
    results = assemble(load_jobs(config.output), checkpoint=CheckpointInfo.model_validate(info),
                       settings=config.settings(), command=command, seconds=time.perf_counter() - start,
                       device=Device.here(config.device_name))
    stage(6)
    written = write_report(results, config.output)
    return Outcome(results, written, results.exit_code)


def kept_for_resume(output: Path, already: str | None = None) -> str:
    """What an interrupted run leaves in ``output``, for :attr:`~ffnet_deploy.errors.Interrupted.kept`: the stages
    it finished (``--resume`` reuses them) and the artifacts it published."""
    try:
        stages = list(PipelineState(output).stages)
        artifacts = Ledger(output).published()
    except FFNetDeployError:
        stages, artifacts = [], []
    parts = [already] if already else []
    if stages:
        parts.append(f"kept in {output} for --resume: finished stages {', '.join(stages)}")
        if artifacts:
            parts.append(f"published artifacts {', '.join(artifacts)}")
    else:
        parts.append(f"no stage had finished; {output} holds only what earlier runs left")
    return "; ".join(parts)


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
        ui.note("checkpoint is already reparameterized")
        return Path(config.checkpoint)
    out = config.output / "checkpoint" / "fused.pth"
    inputs = input_hash("reparameterize", info["sha256"], info["variant"])
    done = state.reusable("reparameterize", inputs)
    from ffnet_deploy.hashing import sha256_file

    if done and out.is_file() and sha256_file(out) == done["outputs"].get("sha256"):
        ui.note("reparameterize: unchanged, reused")
        Ledger(config.output).file(out, done["outputs"]["sha256"])
        return out
    result = reparameterize_checkpoint(config.checkpoint, out, info["variant"], force=True, trust=config.trust)
    Ledger(config.output).file(out, result["output_sha256"])
    ui.note(f"reparameterized: max |fused - unfused| = {result['parity']['max_abs_error']:.2e}")
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
                 fused: Callable[[], LoadedCheckpoint], info: dict, ui: UI, withdrawn: list[bool] | None = None
                 ) -> None:
    """Export one job into ``artifacts/<id>``, or reuse the artifact there when its record's inputs are unchanged
    and it is intact and the one recorded (its sha256).

    A new artifact may replace one that an earlier run validated: before it is published, the old report is
    withdrawn and the job's record says ``pending`` (:func:`withdraw_report`), so that a kill at any point after
    leaves no report naming an artifact the folder no longer holds. ``withdrawn`` (one flag per run) withdraws the
    report once.
    """
    from ffnet_deploy.artifact.manifest import read_manifest
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.quantize.config import QuantizationConfig

    reason = skip_reason(config, job)
    if reason:
        record.update(status="skipped", reason=reason)
        state.forget(f"export:{job.id}")
        ui.note(f"{job.id}: skipped: {reason}")
        return
    out = config.output / "artifacts" / job.id
    quant = None
    if is_calibrated(job.precision):
        quant = QuantizationConfig(calib=config.calib, **({"calib_size": config.calib_size} if config.calib_size
                                                          else {}),
                                   cache_dir=calibration_cache_dir(config.output, job, info))
    inputs = input_hash("export", job.id, info["sha256"], info["resolution"],
                        data_fingerprint(config.calib) if quant else None, config.calib_size if quant else None,
                        _version())
    done = state.reusable(f"export:{job.id}", inputs)
    if done and artifact_intact(out):
        manifest = read_manifest(out)
        # the artifact the record names, not another intact one put in its place (an older record, without its
        # sha256, is trusted as far as the intact folder goes: whatever judged it is keyed by this sha256)
        if done["outputs"].get("sha256", manifest.artifact.sha256) == manifest.artifact.sha256:
            record.update(status="exported", artifact=_artifact_entry(config.output, out),
                          export={**_export_entry(manifest), "reused": True})
            Ledger(config.output).artifact(out)
            ui.note(f"{job.id}: export unchanged, reused")
            return
    if withdrawn is None or not withdrawn:
        withdraw_report(config.output)
        if withdrawn is not None:
            withdrawn.append(True)
    save_job(config.output, new_record(job))  # pending: the artifact there is about to change
    state.forget(f"export:{job.id}")

    class _JobSteps(Events):
        """The export's steps as this job's bar; its notes stay out of the pipeline's log (one line per job)."""

        def step(self, done: float, total: float, label: str = "") -> None:
            label = "calibration" if label == "calibration images" else label
            ui.step(done, total, f"{job.id}: {label}")

    ui.note(f"{job.id}: exporting")
    try:
        result = export(ExportConfig(job.format, out, resolution=info["resolution"], precision=job.precision,
                                     quantization=quant, check_parity=False, force=True),
                        fused(), progress=_JobSteps())
    except FFNetDeployError as err:
        record.update(status="error", reason=f"export failed: {err}")
        state.forget(f"export:{job.id}")
        ui.note(f"{job.id}: export failed: {err}")
        return
    record.update(status="exported", artifact=_artifact_entry(config.output, out),
                  export={**_export_entry(result.manifest), "reused": False})
    _record_export(config.output, out, record["export"])
    state.record(f"export:{job.id}", inputs, {"path": str(out), "sha256": result.manifest.artifact.sha256})


def calibration_cache_dir(output: Path, job: Job, info: dict) -> Path:
    """The calibration-statistics cache of one job's model: ``.pipeline/calibration/<key>/``, one folder per model
    like the standalone cache (``~/.cache/ffnet-deploy/calibration/<model>/``), keyed by what makes the FP32 graph
    that is calibrated (checkpoint, resolution, format, version), so a ``--resume`` with another resolution or
    checkpoint calibrates its own model instead of meeting another model's statistics."""
    key = input_hash("calibration", info["sha256"], info["resolution"], job.format, _version())
    return output / STATE_DIR / "calibration" / key[:16]


def report_files(output: Path) -> list[Path]:
    """The files of a pipeline report in ``output`` (:func:`ffnet_deploy.pipeline.report.write_report`): the plots,
    ``index.md``, ``index.html``, ``junit.xml`` and ``results.json``, last."""
    from ffnet_deploy.pipeline.report import PLOTS_DIR, PLOTTERS

    plots = [output / PLOTS_DIR / f"{name}.png" for name in PLOTTERS]
    return [*plots, *(output / name for name in ("index.md", "index.html", "junit.xml", "results.json"))]


def withdraw_report(output: Path) -> None:
    """Remove the report an earlier run wrote in ``output`` (the files only the report writes; a link is removed,
    not what it points to), before a new artifact replaces one it names: a report is never left describing
    artifacts the folder no longer holds. The job records stay; the next report is written from them.

    Raises:
        ConfigError: A report file that cannot be removed (one line).
    """
    for path in report_files(output):
        try:
            if path.is_symlink() or path.is_file():
                path.unlink()
        except OSError as err:
            raise ConfigError(f"pipeline | cannot remove the old report file {path}: {os_reason(err)}; the "
                              "artifact it names is about to be replaced") from None


def drop_other_jobs(output: Path, ids: Sequence[str]) -> None:
    """Remove the job records in ``output/jobs`` of jobs this run did not run (another ``--formats``, an earlier
    checkpoint's), and the old report that lists them: the report is of this run's jobs only. A file there that is
    not a job record is left alone (the report refuses it, as before). Their state records stay, so asking for such
    a job again reuses its export."""
    folder = output / "jobs"
    if not folder.is_dir():
        return
    stale = []
    for path in sorted(folder.glob("*.json")):
        if path.stem in ids or path.is_symlink():
            continue
        try:
            read_job(path)
        except ConfigError:
            continue
        stale.append(path)
    if stale:
        withdraw_report(output)  # it lists them: it goes first, so that a kill here leaves no report naming them
    for path in stale:
        path.unlink()


def _record_export(output: Path, directory: Path, export: dict) -> None:
    """Record a published artifact, and the calibration cache its quantization wrote into ``.pipeline/``."""
    ledger = Ledger(output)
    ledger.artifact(directory)
    cache = ((export.get("quantization") or {}).get("statistics_cache") or {}).get("path")
    if cache and _inside_folder(Path(cache), output) and Path(cache).is_file():
        ledger.file(Path(cache))


def _inside_folder(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def _version() -> str:
    from ffnet_deploy._version import __version__

    return __version__


def artifact_intact(directory: Path) -> bool:
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
            apply_parity(record, done["outputs"])
            ui.note(f"{record['id']}: validation unchanged, reused")
            continue
        todo.append(record)
        keys[record["id"]] = inputs
    if not todo:
        return
    source, description = eval_source(config)
    ui.note(f"validating {len(todo)} artifact(s) on {description}")
    report = validate([config.output / r["artifact"]["path"] for r in todo], config.checkpoint, info["variant"],
                      source, "auto", 8, trust=config.trust,
                      progress=ui)
    for record, result in zip(todo, report.artifacts, strict=True):
        parity = parity_entry(result, description)
        apply_parity(record, parity)
        state.record(f"validate:{record['id']}", keys[record["id"]], parity)


def apply_parity(record: dict, parity: dict) -> None:
    """A job's status and reason from its validation (fresh, or reused from the state): a failure names what
    failed."""
    record["parity"] = parity
    record["status"] = {"pass": "passed", "fail": "failed", "not run": "passed"}[parity["verdict"]]
    if parity["verdict"] == "fail":
        record["reason"] = "; ".join(parity.get("failures") or []) or "validation failed"


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
        ui.note(f"note: {capped}")
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
        ui.note("bench: unchanged, reused")
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
    ui.note(f"bench: {artifacts} artifact(s) and eager PyTorch (OpenMP not spinning, in a worker process), "
           f"{threads} thread(s)")
    from ffnet_deploy.runtimes.noise import load_snapshot

    before = load_snapshot()
    rows = run_jobs(jobs, protocol, progress=ui)
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
             "speedup_vs_torch": torch_p50 / lat["p50"] if torch_p50 else None,
             "host_measurement": row.host_measurement, "reason": None}
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
    text = job.to_json()
    path = write_text(output / "jobs" / f"{job.id}.json", text, "pipeline job")
    Ledger(output).file(path, text=text)
    return path


def write_job_location(output: Path, job_id: str, host: str | None) -> None:
    """Record in ``output``'s record of ``job_id`` the machine that ran it (``ran_on``), for a merged report."""
    path = output / "jobs" / f"{job_id}.json"
    if host and path.is_file():
        save_job(output, read_job(path).model_copy(update={"ran_on": host}))


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
        # a phone runtime's timings here are the host's: whichever branch below picks, the reason says so
        host_note = f" ({note})" if (note := _latency_note(runtime)) else ""
        why = f"fastest of {len(timed)} artifact(s) that passed parity on {runtime}{host_note}"
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
                       f"so the FP32 artifact{host_note}; rerun on a quiet machine to separate them")
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


def _latency_note(runtime: str) -> str | None:
    """The runner's note when its timings here are host measurements (a phone runtime on Linux), else ``None``."""
    from ffnet_deploy.runtimes import RUNTIMES

    return RUNTIMES.get(runtime).latency_note if runtime in RUNTIMES else None


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
        if _latency_note(rec.runtime):
            line += "; timed on this host, not on the device it is for"
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

    written = write(results, output)
    ledger = Ledger(output)
    for path in written.values():
        ledger.file(path)
    return written


def _is_bench_result(path: Path) -> bool:
    """Whether ``path`` reads as a bench result file (a user passed a bench folder where a pipeline one belongs)."""
    from ffnet_deploy.benchmarks.results import read_result

    try:
        read_result(path)
    except FFNetDeployError:
        return False
    return True


def merge_runs(folders: Sequence[Path], out: Path, *, command: str = "",
               log: Callable[[str], None] | None = None, extra: Sequence[JobRecord] = ()) -> Outcome:
    """One report from the job records of several pipeline output folders (``--only`` runs on other machines).

    Artifacts are copied into ``out/artifacts``; a job present in several folders takes the last one given. Every
    ``results.json`` and job record is read through its typed model, and nothing in them is trusted: a record names
    only its own artifact folder (``artifacts/<id>``), an artifact that is or holds a symbolic link is refused, and
    every artifact is checked against its manifest's sha256 before it is copied and again, as copied, before it is
    published; all of it before anything is written. Nothing outside ``out`` is written, and ``out`` is held locked
    like a pipeline's output (:func:`output_lock`). ``extra`` are records of jobs that no folder holds (a Ray job
    that ended as ``error``, or that no node could take): they go into the report as they are.

    Raises:
        ConfigError: A folder that is not a pipeline output, a file in it that is not what it should be (one line
            naming the file and the field), runs of different checkpoints, or an unusable ``out``.
    """

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
    sources = {record.id: _merge_source(record, src) for record, src in records.values() if record.artifact}
    with prepare_output(PipelineConfig(output=out, checkpoint=Path(checkpoint.path), resume=True), "report merge"):
        return _merge_into(out, records, sources, checkpoint, settings, devices, command, extra)


def _merge_into(out: Path, records: dict[str, tuple[JobRecord, Path]], sources: dict[str, Path],
                checkpoint: CheckpointInfo, settings: dict | None, devices: list[Device | None], command: str,
                extra: Sequence[JobRecord] = ()) -> Outcome:
    """The writing half of :func:`merge_runs`, while it holds ``out``."""
    from ffnet_deploy.benchmarks.results import Device

    for record, _ in records.values():
        if record.artifact is not None:
            source = sources[record.id]
            target = out / record.artifact.path
            if target.resolve() != source.resolve():
                # published like an export: an interrupted merge leaves no partial artifact
                from ffnet_deploy.artifact.workdir import publish, workdir_for

                target.parent.mkdir(parents=True, exist_ok=True)
                with workdir_for(target) as work:
                    shutil.copytree(source, work, symlinks=True, dirs_exist_ok=True)
                    _check_artifact(work, record, source)  # the bytes that are published, not those read before
                    publish(work, target, force=True)
            Ledger(out).artifact(target)
        save_job(out, record)
    for record in extra:
        save_job(out, record)
    settings = dict(settings or {})
    jobs = [r for r, _ in records.values()] + list(extra)
    settings.update(formats=[f for f in format_names() if any(r.format == f for r in jobs)],
                    precisions=[p for p in precision_names(stored=True) if any(r.precision == p for r in jobs)])
    names = list(dict.fromkeys((d.name if d is not None else None) or "unnamed" for d in devices))
    # the runs' own device (several: their names only; each job's numbers come from the machine that ran it)
    device = (devices[0] or Device(name=names[0])) if len(names) == 1 else Device(name=" + ".join(names))
    results = assemble(load_jobs(out), checkpoint=checkpoint, settings=settings, command=command, seconds=None,
                       device=device)
    written = write_report(results, out)
    return Outcome(results, written, results.exit_code)


def _merge_source(record: JobRecord, run: Path) -> Path:
    """The artifact folder in ``run`` that ``record`` names, checked (see :func:`merge_runs`); writes nothing."""
    assert record.artifact is not None
    where = run / "jobs" / f"{record.id}.json"
    rel = f"artifacts/{record.id}"
    for field, value, expected in (("artifact.path", record.artifact.path, (rel,)),
                                   ("artifact.manifest", record.artifact.manifest, (None, f"{rel}/manifest.json"))):
        if value not in expected:
            raise ConfigError(f"report merge | {where}: field {field!r} is {value!r}, but a job's artifact is "
                              f"{rel}; {_rerun(record, run)}")
    directory = run / rel
    link = next((p for p in (run / "artifacts", directory) if p.is_symlink()), None)
    if link is None and directory.is_dir():
        link = next((p for p in sorted(directory.rglob("*")) if p.is_symlink()), None)
    if link is not None:
        raise ConfigError(f"report merge | {link} is a symbolic link; a merge copies only artifacts that are inside "
                          f"the runs' folders: {_rerun(record, run)}")
    if not directory.is_dir():
        raise ConfigError(f"report merge | {where} names the artifact {rel}, which {run} does not hold; "
                          f"{_rerun(record, run)}")
    _check_artifact(directory, record, directory)
    return directory


def _check_artifact(directory: Path, record: JobRecord, source: Path) -> None:
    """``directory`` is the artifact ``record`` describes, every file as its manifest recorded (the check of
    ``--resume``, :func:`~ffnet_deploy.artifact.inspect.verify_files`), with nothing its manifest does not list."""
    from ffnet_deploy.artifact.inspect import verify_files
    from ffnet_deploy.artifact.manifest import read_manifest
    from ffnet_deploy.artifact.workdir import artifact_refusal

    fix = _rerun(record, source.parent.parent)
    reason = artifact_refusal(directory)
    if reason:
        raise ConfigError(f"report merge | {source} is not an artifact as a pipeline writes it: {reason}; {fix}")
    manifest = read_manifest(directory)
    recorded = record.export.sha256 if record.export is not None else None
    if (manifest.format, manifest.precision) != (record.format, record.precision) or (
            recorded and manifest.artifact.sha256 and recorded != manifest.artifact.sha256):
        raise ConfigError(f"report merge | {source} holds a {manifest.format} {manifest.precision} artifact "
                          f"(sha256 {str(manifest.artifact.sha256)[:12]}...), not the one its job record describes; "
                          f"{fix}")
    verify_files(manifest, directory, "report merge", fix=fix)


def _rerun(record: JobRecord, run: Path) -> str:
    return (f"rerun that job in {run} ('ffnet-deploy pipeline --only {record.format}/{record.precision} --resume'), "
            "then merge again")

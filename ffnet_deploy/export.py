"""``ffnet-deploy export``: one function that turns a checkpoint into a verified, atomically written artifact.

:func:`export` does, for every format: validate the options, load the checkpoint (or random weights, loudly),
reparameterize, build the artifact in a private temporary directory next to the output, write its typed
``manifest.json`` (:mod:`ffnet_deploy.artifact.manifest`), run the parity gate (the validate engine on synthetic
pixels, :func:`ffnet_deploy.validate.engine.gate_artifact`), record its result, and rename the directory into place.
Any error or terminating signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT: :mod:`ffnet_deploy.interrupts`) removes the
temporary directory, so the output holds the old artifact (if any) or the new one, complete. A SIGKILL cannot be
cleaned up by the dying process; its temporary directory stays unlocked and the next export to the same output removes
it (:mod:`ffnet_deploy.artifact.workdir`).

Test hook: the environment variable ``FFNET_DEPLOY_FAULT=STAGE:SIGNAL`` (e.g. ``simplify:SIGTERM``) makes the export
send ``SIGNAL`` to itself when it reaches ``STAGE``, one of :data:`STAGES`; the fault-injection tests use it to stop
an export at a known point. It is read in one place, :func:`ffnet_deploy.interrupts.fault_point` (the pipeline's
stages are fault points too), and reached from the stage events (:mod:`ffnet_deploy.progress`) that the export and
its exporters emit; ``STAGE:SIGNAL:FILE`` fires only in the first process that creates ``FILE`` (a killed worker's
retry then goes on).
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from ffnet_deploy import progress as progress_events
from ffnet_deploy.artifact.manifest import (
    MANIFEST_NAME,
    BatchSpec,
    FileRef,
    Manifest,
    Preprocessing,
    read_manifest,
    write_manifest,
)
from ffnet_deploy.artifact.precisions import is_calibrated
from ffnet_deploy.artifact.workdir import check_output, publish, workdir_for
from ffnet_deploy.atomic import os_reason
from ffnet_deploy.errors import ConfigError, ExportError, Interrupted, ParityError
from ffnet_deploy.exporters import get_exporter
from ffnet_deploy.exporters.base import (
    LICENSE_NOTE,
    ExportConfig,
    ExportedArtifact,
)
from ffnet_deploy.hashing import sha256_file, tree_sha256
from ffnet_deploy.interrupts import FAULT_ENV as FAULT_ENV  # the test hook's variable, where tests import it
from ffnet_deploy.interrupts import fault_point, handle_signals
from ffnet_deploy.models.checkpoint import LoadedCheckpoint, open_checkpoint
from ffnet_deploy.models.config import get_config
from ffnet_deploy.models.ffnet import FFNet, create_ffnet
from ffnet_deploy.models.reparam import reparameterize_model
from ffnet_deploy.validate.engine import ArtifactResult, GateReport, gate_artifact, jsonable
from ffnet_deploy.validate.metrics import format_value

DEFAULT_RANDOM_VARIANT = "ffnet_1"

RANDOM_WEIGHTS_NOTICE = (
    "no --checkpoint given: exporting RANDOM weights. The artifact's predictions are meaningless; use it for "
    "latency and integration tests only"
)

@dataclass
class ExportResult:
    """What :func:`export` wrote and measured."""

    output: Path  # the artifact directory
    artifact: Path  # the main model file or package inside it
    manifest: Manifest  # what manifest.json holds
    parity: list[ArtifactResult]  # the gate's results, one per target it ran (empty when switched off or skipped)
    notices: list[str]  # warnings the user must see (random weights, onnxsim fallback, engine not built)
    seconds: float  # wall time of the whole export

    def to_dict(self) -> dict:
        return {
            "output": str(self.output),
            "artifact": str(self.artifact),
            "format": self.manifest.format,
            "precision": self.manifest.precision,
            "variant": self.manifest.variant,
            "resolution": self.manifest.resolution,
            "parity": [jsonable(p.to_dict()) for p in self.parity],
            "notices": self.notices,
            "export_seconds": self.seconds,
            "manifest": self.manifest.to_dict(),
        }


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def export(config: ExportConfig, checkpoint: str | Path | LoadedCheckpoint | None = None, variant: str | None = None,
           *, trust: bool = False, progress: progress_events.Sink | None = None) -> ExportResult:
    """Export an FFNet to ``config.format`` in ``config.output``.

    Args:
        config: Export settings; ``resolution=None`` takes the variant's default.
        checkpoint: FFNet checkpoint (official or fused), or one already opened with
            :func:`~ffnet_deploy.models.checkpoint.open_checkpoint` (not reloaded). ``None`` exports random weights
            of ``variant``.
        variant: Variant name; detected from the checkpoint when omitted, ``ffnet_1`` for random weights.
        trust: Unpickle the checkpoint without the weights-only allow-list.
        progress: A sink of progress events (:mod:`ffnet_deploy.progress`; the CLI shows them in its progress
            display), or a plain-text log called with one line per note and warning.

    Returns:
        The result, including the manifest that was written.

    Raises:
        ConfigError: Unknown format (the message lists the valid ones), bad resolution, batch, opset or precision.
        MissingDependencyError: The format's backend is not installed (the message names the extra).
        CheckpointError: Unreadable checkpoint, or one that does not match ``variant``.
        ExportError: Existing output without ``force`` (or anything but an artifact directory with it), an output
            that is or holds the checkpoint, unwritable output, or a backend failure.
        ParityError: The artifact does not reproduce PyTorch within tolerance (nothing is kept).
        Interrupted: A terminating signal arrived (a ``BaseException``); nothing was published, unless
            ``kept`` says otherwise.
    """
    with handle_signals():
        return _export(config, checkpoint, variant, trust, progress)


def _export(config: ExportConfig, checkpoint: str | Path | LoadedCheckpoint | None, variant: str | None,
            trust: bool, progress: progress_events.Sink | None) -> ExportResult:
    log = _Staged(progress_events.as_progress(progress))

    start = time.perf_counter()
    config.validate()
    if variant is not None:
        get_config(variant)  # an unknown --variant is refused before the checkpoint is read
    exporter = get_exporter(config.format)
    exporter.validate(config)
    exporter.check_available()
    precision = exporter.resolve_precision(config)
    sources = [checkpoint.path] if isinstance(checkpoint, LoadedCheckpoint) else [Path(checkpoint)] if checkpoint \
        else []
    output = check_output(Path(config.output), config.force, sources)

    notices: list[str] = []
    log.stage("load")
    loaded = _open(checkpoint, variant, trust, log, notices)
    model = loaded.model if loaded is not None else create_ffnet(variant or DEFAULT_RANDOM_VARIANT).eval()
    # Options resolved here (format defaults filled in) so that the manifest records every option the export used.
    config = replace(config, output=output, precision=precision, resolution=config.resolution or model.cfg.resolution,
                     options=exporter.resolve_options(config))

    log.stage("reparameterize")
    if config.reparameterize and not model.deploy:
        log("reparameterizing (folding BatchNorm, RepVGG branches, layer scales)")
        deployable = reparameterize_model(model)
    else:
        deployable = model
    reparameterized = bool(getattr(deployable, "deploy", False))

    with workdir_for(output) as workdir:
        log(f"exporting {model.cfg.name} to {config.format} ({precision}, {config.resolution}px)")
        artifact = exporter.export(deployable, config, workdir, log,
                                   source_sha256=loaded.sha256 if loaded is not None else None)
        notices += artifact.notices
        manifest = build_manifest(config, model, artifact, workdir, reparameterized, loaded, notices)
        _write_manifest(manifest, workdir)
        parity: list[ArtifactResult] = []
        if config.check_parity:
            gate = run_parity_gate(model, workdir, config, log, notices, decisions=loaded is not None)
            parity = gate.results
            if parity and not gate:
                failed = [r for r in parity if not r]
                measured = "; ".join(f"{r.runtime}: {measured_line(r)}" for r in failed if r.metrics is not None)
                if config.keep_failed:
                    where = keep_failed_artifact(workdir, output, manifest, gate, notices)
                    fate = (f"it was kept for inspection in {where} (its manifest records the failure; do not "
                            "deploy it)")
                else:
                    fate = "it was not kept (--keep-failed keeps it for inspection)"
                raise ParityError(f"export parity gate | {'; '.join(r.describe() for r in failed)}"
                                  + (f"; measured: {measured}" if measured else "")
                                  + f"; the artifact does not reproduce PyTorch and {fate}")
            gate_block = gate.to_dict()
        else:
            gate_block = {"passed": None, "skipped": "parity gate switched off (--no-parity)"}
        log.stage("manifest")
        manifest = manifest.with_updates(
            parity=gate_block, notices=tuple(notices), files=_file_hashes(workdir),
            export_seconds=round(time.perf_counter() - start, 3),
        )
        _write_manifest(manifest, workdir)
        log.stage("publish")
        publish(workdir, output, config.force)
    try:
        log.stage("published")
        log(f"wrote {output}")
    except Interrupted as err:
        err.kept = f"the artifact was already complete in {output}"
        raise
    manifest = manifest.with_updates(directory=output)
    return ExportResult(output, output / artifact.path, manifest, parity, notices, manifest.export_seconds)


def _open(checkpoint, variant, trust, log: progress_events.Events, notices: list[str]) -> LoadedCheckpoint | None:
    if isinstance(checkpoint, LoadedCheckpoint):
        return checkpoint
    if checkpoint is not None:
        log(f"loading {checkpoint}")
        return open_checkpoint(checkpoint, variant, trust=trust)
    log.warn(f"WARNING: {RANDOM_WEIGHTS_NOTICE}")
    notices.append(RANDOM_WEIGHTS_NOTICE)
    return None


# --------------------------------------------------------------------------------------------------------------------
# Interrupts and the fault-injection test hook
# --------------------------------------------------------------------------------------------------------------------

STAGES = ("load", "reparameterize", "trace", "simplify", "convert", "gate", "manifest", "publish", "published")
"""The export's stages, in order; ``published`` is the moment right after the artifact was renamed into place."""

class _Staged(progress_events.Forward):
    """The caller's sink, where each stage event (the export's own and its exporter's: ``trace``, ``simplify``,
    ``convert``) is also a fault point of the test hook (:func:`ffnet_deploy.interrupts.fault_point`)."""

    def stage(self, name: str) -> None:
        super().stage(name)
        fault_point(name)


# --------------------------------------------------------------------------------------------------------------------
# Parity gate: the validate engine on synthetic pixels
# --------------------------------------------------------------------------------------------------------------------


MEASURED = ("max_abs_error", "cosine_mean", "cosine_min", "psnr_db", "top1_agreement", "top5_overlap", "ref_top1",
            "top1", "acc_drop", "num_samples")
"""The metrics a failed gate's message lists, gated or not, so that a long export is never judged on one number."""


def measured_line(result: ArtifactResult) -> str:
    """Every metric of :data:`MEASURED` the result has, as ``name=value`` pairs on one line."""
    values = result.metrics.to_dict() if result.metrics is not None else {}
    return ", ".join(f"{k}={format_value(values[k])}" for k in MEASURED if values.get(k) is not None)


def keep_failed_artifact(workdir: Path, output: Path, manifest: Manifest, gate: GateReport, notices: list[str]) -> Path:
    """Publish the work directory of an artifact that failed its gate as ``<output>.failed`` (``--keep-failed``).

    Its manifest holds the failed gate (``parity.passed`` false), so ``validate`` and the pipeline treat it as the
    failure it is; an earlier ``.failed`` folder that ffnet-deploy wrote is replaced, anything else is refused.
    """
    target = output.with_name(output.name + ".failed")
    note = "this artifact FAILED the export parity gate and was kept for inspection only (--keep-failed)"
    kept = manifest.with_updates(parity=gate.to_dict(), notices=(*notices, note), files=_file_hashes(workdir))
    _write_manifest(kept, workdir)
    publish(workdir, target, force=True)
    return target


def run_parity_gate(reference: FFNet, workdir: Path, config: ExportConfig, log: progress_events.Events,
                    notices: list[str], decisions: bool = True) -> GateReport:
    """Compare every target of the fresh artifact that runs here with the unfused PyTorch ``reference``.

    This is :func:`ffnet_deploy.validate.engine.gate_artifact`: the same engine, metrics and tolerance profile
    (the artifact's precision) as ``ffnet-deploy validate``, fed ``config.parity_samples`` batches of synthetic
    pixels in the artifact's own input convention.
    """
    source, what = gate_source(config, read_manifest(workdir))
    if source is None and _quantized(config):
        decisions = False  # the arg-max of a quantized model on noise says nothing about its accuracy
        notices.append("the INT8 gate ran on synthetic inputs (no --calib or --eval-data, and cached statistics of "
                       "data that is not here): errors and cosine were checked, top-1 agreement and accuracy were "
                       "not; pass --eval-data DATA to check them")
    log(f"parity gate: {config.format} ({config.precision} profile) vs PyTorch on {what}")
    log.stage("gate")
    unavailable: list[str] = []
    gate = gate_artifact(workdir, reference, samples=config.parity_samples, runtime_notes=unavailable,
                         decisions=decisions, source=source)
    notices += unavailable
    return gate


GATE_IMAGES = 256
"""Real images an INT8 or compressed artifact is gated on (from --eval-data, else the calibration data). The int8
profile allows a 1-point accuracy drop; on 64 images a single changed prediction is 1.6 points, on 256 it is 0.4."""


def _quantized(config: ExportConfig) -> bool:
    q = config.quantization
    return is_calibrated(config.precision) or (q is not None and q.weights is not None)


def gate_source(config: ExportConfig, manifest: Manifest | None = None):
    """``(data source or None for synthetic pixels, description)`` of the parity gate's inputs.

    Quantized and compressed artifacts are gated on real images: ``--eval-data`` (labelled, so the accuracy drop is
    checked too), else the calibration data, else (statistics reused from the cache without ``--calib``) the data
    set the cached statistics were collected on when it is one that every machine has (the digits); anything else
    on synthetic pixels.
    """
    if not _quantized(config):
        return None, "synthetic inputs"
    from ffnet_deploy.data.sources import source_from_spec
    from ffnet_deploy.quantize.config import QuantizationConfig

    q = config.quantization or QuantizationConfig()

    if q.eval_data is not None:
        source = source_from_spec(q.eval_data, split="test", limit=GATE_IMAGES)
        return source, f"{len(source)} images of {q.eval_data}"
    if q.calib is not None:
        source = source_from_spec(q.calib, split="train", limit=GATE_IMAGES)
        return source, f"{len(source)} calibration images of {q.calib}"
    cached = ((manifest.details if manifest is not None else {}).get("quantization") or {}).get("calibration") or {}
    if cached.get("kind") == "digits":
        source = source_from_spec("digits", split="train", limit=GATE_IMAGES)
        return source, f"{len(source)} images of the digits the cached statistics were collected on"
    return None, "synthetic inputs"


# --------------------------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------------------------


def build_manifest(config: ExportConfig, model: FFNet, artifact: ExportedArtifact, workdir: Path,
                   reparameterized: bool, loaded: LoadedCheckpoint | None, notices: list[str]) -> Manifest:
    """The typed manifest of a fresh artifact (parity, file hashes and timing are filled in after the gate)."""
    from ffnet_deploy._version import __version__

    cfg = model.cfg
    lo, opt, hi = config.batch_range()
    input_range = artifact.input_range or config.effective_input_range()
    return Manifest(
        format=config.format,
        precision=config.precision,
        variant=cfg.name,
        resolution=config.resolution,
        num_classes=model.num_classes,
        batch=BatchSpec(lo, opt, hi, True) if config.dynamic_batch else BatchSpec.fixed(config.batch),
        inputs=tuple(artifact.inputs),
        outputs=tuple(artifact.outputs),
        preprocessing=Preprocessing(input_range=input_range, mean=tuple(cfg.mean), std=tuple(cfg.std),
                                    crop_pct=cfg.crop_pct, interpolation="bicubic"),
        artifact=FileRef(artifact.path, tree_sha256(workdir / artifact.path)),
        reparameterized=reparameterized,
        random_weights=loaded is None,
        source_checkpoint=None if loaded is None else FileRef(
            str(loaded.path), loaded.sha256, _derived_from(loaded)),
        versions={"ffnet_deploy": __version__, "torch": torch.__version__, "python": platform.python_version(),
                  **artifact.backend_versions},
        block_outputs=artifact.block_outputs,
        options={k: v for k, v in config.to_dict().items() if k not in ("output", "force")},
        details=artifact.details,
        notices=tuple(notices),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        license=LICENSE_NOTE,
        command=" ".join(sys.argv) if sys.argv and "ffnet-deploy" in sys.argv[0] else None,
        directory=workdir,
    )


def _write_manifest(manifest: Manifest, workdir: Path) -> None:
    """:func:`write_manifest`, with a failed write (a full disk) reported as one line."""
    try:
        write_manifest(manifest, workdir)
    except OSError as err:
        raise ExportError(f"export | cannot write {workdir / MANIFEST_NAME}: {os_reason(err)}; free some space or "
                          "choose another --output") from None


def _derived_from(loaded: LoadedCheckpoint) -> str | None:
    """The checkpoint a fused checkpoint of this tool was made from (its metadata's ``source_sha256``), so that
    validating the artifact against the user's original checkpoint recognises it as the same weights."""
    source = (loaded.info.metadata or {}).get("source_sha256") if loaded.fused else None
    return source if isinstance(source, str) and source else None


def _file_hashes(workdir: Path) -> dict[str, str]:
    """SHA-256 of every file of the artifact directory except the manifest itself."""
    return {str(p.relative_to(workdir)): sha256_file(p) for p in sorted(workdir.rglob("*"))
            if p.is_file() and p.relative_to(workdir) != Path(MANIFEST_NAME)}


def parse_dynamic_batch(text: str | None) -> tuple[int, int, int] | None:
    """Parse ``MIN:OPT:MAX`` (e.g. ``1:8:32``).

    Raises:
        ConfigError: If the text is not three positive integers separated by colons.
    """
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"export | --dynamic-batch needs MIN:OPT:MAX, e.g. 1:8:32; got {text!r}")
    lo, opt, hi = (int(p) for p in parts)
    return lo, opt, hi

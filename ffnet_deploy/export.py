"""``ffnet-deploy export``: one function that turns a checkpoint into a verified, atomically written artifact.

:func:`export` does, for every format: validate the options, load the checkpoint (or random weights, loudly),
reparameterize, build the artifact in a private temporary directory next to the output, run the parity gate on CPU,
write ``manifest.json``, and rename the directory into place. Any error, ``KeyboardInterrupt`` or SIGTERM removes
the temporary directory, so the output either exists complete or not at all. A SIGKILL cannot be cleaned up by the
dying process; its temporary directory is named ``.<output>.tmp-<pid>-<token>`` and the next export to the same
output removes it once that process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ffnet_deploy.artifact.workdir import check_output, make_workdir, publish, remove_stale_workdirs
from ffnet_deploy.errors import ConfigError, ExportError, ParityError
from ffnet_deploy.exporters import get_exporter
from ffnet_deploy.exporters.base import (
    LICENSE_NOTE,
    ExportConfig,
    ExportedArtifact,
    normalize_input,
    sample_inputs,
)
from ffnet_deploy.hashing import sha256_file, tree_sha256
from ffnet_deploy.models.checkpoint import load_ffnet
from ffnet_deploy.models.ffnet import FFNet, create_ffnet
from ffnet_deploy.models.reparam import reparameterize_model
from ffnet_deploy.validate.metrics import softmax

MANIFEST_SCHEMA = "ffnet-deploy/manifest/1"
MANIFEST_NAME = "manifest.json"
DEFAULT_RANDOM_VARIANT = "ffnet_1"

RANDOM_WEIGHTS_NOTICE = (
    "no --checkpoint given: exporting RANDOM weights. The artifact's predictions are meaningless; use it for "
    "latency and integration tests only"
)

Progress = Callable[[str], None]


@dataclass
class ParityCheck:
    """Export-time comparison of one artifact file with PyTorch on a few random inputs. Truthy when it passed."""

    runtime: str  # runner that executed the artifact
    path: str  # artifact file, relative to the artifact directory
    rtol: float  # allowed max |artifact - torch| / max |torch|
    samples: list[dict] = field(default_factory=list)  # per input: batch, max_abs, max_rel, top1_agreement
    error: str | None = None  # set when the runner could not load or run the artifact

    @property
    def max_rel(self) -> float:
        return max((s["max_rel"] for s in self.samples), default=float("inf"))

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.samples) and self.max_rel <= self.rtol

    def __bool__(self) -> bool:
        return self.passed

    def describe(self) -> str:
        if self.error:
            return f"{self.runtime} on {self.path}: {self.error}"
        return f"{self.runtime} on {self.path}: max rel error {self.max_rel:.2e} (limit {self.rtol:.0e})"

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "path": self.path, "rtol": self.rtol, "max_rel": self.max_rel,
                "passed": self.passed, "error": self.error, "samples": self.samples}


@dataclass
class ExportResult:
    """What :func:`export` wrote and measured."""

    output: Path  # the artifact directory
    artifact: Path  # the main model file or package inside it
    manifest: dict  # the manifest.json content
    parity: list[ParityCheck]  # the gate's checks (empty when the gate was switched off)
    notices: list[str]  # warnings the user must see (random weights, onnxsim fallback, engine not built)
    seconds: float  # wall time of the whole export

    def to_dict(self) -> dict:
        return {
            "output": str(self.output),
            "artifact": str(self.artifact),
            "format": self.manifest["format"],
            "precision": self.manifest["precision"],
            "variant": self.manifest["variant"],
            "resolution": self.manifest["resolution"],
            "parity": [p.to_dict() for p in self.parity],
            "notices": self.notices,
            "export_seconds": self.seconds,
            "manifest": self.manifest,
        }


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def export(config: ExportConfig, checkpoint: str | Path | None = None, variant: str | None = None, *,
           trust: bool = False, progress: Progress | None = None) -> ExportResult:
    """Export an FFNet to ``config.format`` in ``config.output``.

    Args:
        config: Export settings; ``resolution=None`` takes the variant's default.
        checkpoint: FFNet checkpoint (official or fused). ``None`` exports random weights of ``variant``.
        variant: Variant name; detected from the checkpoint when omitted, ``ffnet_1`` for random weights.
        trust: Unpickle the checkpoint without the weights-only allow-list.
        progress: Called with one line per step (the CLI shows them in its progress display).

    Returns:
        The result, including the manifest that was written.

    Raises:
        ConfigError: Unknown format (the message lists the valid ones), bad resolution, batch, opset or precision.
        MissingDependencyError: The format's backend is not installed (the message names the extra).
        CheckpointError: Unreadable checkpoint, or one that does not match ``variant``.
        ExportError: Existing output without ``force``, unwritable output, or a backend failure.
        ParityError: The artifact does not reproduce PyTorch within tolerance (nothing is kept).
    """
    log: Progress = progress or (lambda _msg: None)
    start = time.perf_counter()
    config.validate()
    exporter = get_exporter(config.format)
    exporter.validate(config)
    exporter.check_available()
    precision = exporter.resolve_precision(config)
    output = Path(config.output)
    check_output(output, config.force)

    notices: list[str] = []
    model = _load_model(checkpoint, variant, trust, log, notices)
    config = replace(config, output=output, precision=precision, resolution=config.resolution or model.cfg.resolution)

    if config.reparameterize and not model.deploy:
        log("reparameterizing (folding BatchNorm, RepVGG branches, layer scales)")
        deployable = reparameterize_model(model)
    else:
        deployable = model
    reparameterized = bool(getattr(deployable, "deploy", False))

    with _signals_raise():
        remove_stale_workdirs(output)
        workdir = make_workdir(output)
        try:
            log(f"exporting {model.cfg.name} to {config.format} ({precision}, {config.resolution}px)")
            artifact = exporter.export(deployable, config, workdir, log)
            notices += artifact.notices
            parity: list[ParityCheck] = []
            if config.check_parity and artifact.parity_targets:
                parity = run_parity_gate(model, artifact, config, workdir, log)
                failed = [p for p in parity if not p]
                if failed:
                    raise ParityError(
                        f"export parity gate | {'; '.join(p.describe() for p in failed)}; the artifact does not "
                        "reproduce PyTorch and was not kept"
                    )
            manifest = build_manifest(config, model, artifact, workdir, parity, reparameterized, checkpoint,
                                      notices, time.perf_counter() - start)
            _write_json(workdir / MANIFEST_NAME, manifest)
            publish(workdir, output)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    log(f"wrote {output}")
    return ExportResult(output, output / artifact.path, manifest, parity, notices, manifest["export_seconds"])


def _load_model(checkpoint, variant, trust, log: Progress, notices: list[str]) -> FFNet:
    if checkpoint is not None:
        log(f"loading {checkpoint}")
        return load_ffnet(checkpoint, variant, trust=trust)
    log(f"WARNING: {RANDOM_WEIGHTS_NOTICE}")
    notices.append(RANDOM_WEIGHTS_NOTICE)
    return create_ffnet(variant or DEFAULT_RANDOM_VARIANT).eval()


# --------------------------------------------------------------------------------------------------------------------
# Interrupts
# --------------------------------------------------------------------------------------------------------------------


class ExportInterrupted(ExportError):
    """The export received SIGTERM; the temporary directory was removed."""


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise ExportInterrupted(f"export | interrupted by signal {signum}; no artifact was written")


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM into an exception while an artifact is being built, so that cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _default_sigterm_in_forked_child() -> None:
    # Backends fork helper processes while an export runs (OpenVINO's telemetry sender does). A child that inherited
    # the handler above would turn its parent's terminate() into an exception somewhere inside library code and
    # outlive it, hanging interpreter exit; children get the default action instead.
    if signal.getsignal(signal.SIGTERM) is _raise_interrupted:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_sigterm_in_forked_child)


# --------------------------------------------------------------------------------------------------------------------
# Parity gate
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def run_parity_gate(reference: FFNet, artifact: ExportedArtifact, config: ExportConfig, workdir: Path,
                    log: Progress) -> list[ParityCheck]:
    """Run each parity target on CPU and compare its logits with the PyTorch ``reference`` (float32, eval mode).

    Inputs are random in the artifact's own input domain (pixels when preprocessing is baked); the reference sees
    them normalized. A dynamic-batch export is checked at its min and opt batch.
    """
    from ffnet_deploy.runtimes import create_runner

    lo, opt, _ = config.batch_range()
    fixed = artifact.inputs[0].shape[0]
    batches = [fixed] if fixed is not None and fixed not in (lo, opt) else sorted({lo, opt})
    input_range = artifact.input_range or config.effective_input_range()
    cfg = reference.cfg
    feeds, refs = [], []
    for i in range(config.parity_samples):
        x = sample_inputs(config, batches[i % len(batches)], seed=i, input_range=input_range)
        feeds.append(x)
        normalized = normalize_input(x, config, cfg.mean, cfg.std, input_range=input_range)
        refs.append(reference.eval()(torch.from_numpy(normalized)).double().numpy())
    checks = []
    for target in artifact.parity_targets:
        log(f"parity gate: {target.runtime} vs PyTorch on {len(feeds)} inputs")
        check = ParityCheck(target.runtime, target.path, target.rtol)
        output = target.output or artifact.outputs[0].name
        try:
            with create_runner(target.runtime, workdir / target.path, **target.options) as runner:
                for x, ref in zip(feeds, refs, strict=True):
                    out = np.asarray(runner.infer({artifact.inputs[0].name: x})[output], np.float64)
                    out = out.reshape(ref.shape) if out.size == ref.size else out
                    expected = softmax(ref) if target.probabilities else ref
                    check.samples.append(compare(out, expected) | {"batch": int(x.shape[0])})
        except Exception as err:  # any runner failure fails the gate with its message
            check.error = str(err).splitlines()[0] if str(err) else type(err).__name__
        checks.append(check)
    return checks


def compare(out: np.ndarray, ref: np.ndarray) -> dict:
    """Max absolute error, max error relative to the largest reference logit, and top-1 agreement."""
    if out.shape != ref.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf"), "top1_agreement": 0.0,
                "shape": [list(out.shape), list(ref.shape)]}
    diff = float(np.max(np.abs(out - ref)))
    scale = max(float(np.max(np.abs(ref))), 1e-12)
    top1 = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
    return {"max_abs": diff, "max_rel": diff / scale, "top1_agreement": top1}


# --------------------------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------------------------


def build_manifest(config: ExportConfig, model: FFNet, artifact: ExportedArtifact, workdir: Path,
                   parity: list[ParityCheck], reparameterized: bool, checkpoint, notices: list[str],
                   seconds: float) -> dict:
    """The ``manifest.json`` content (schema ``ffnet-deploy/manifest/1``)."""
    from ffnet_deploy._version import __version__

    cfg = model.cfg
    lo, opt, hi = config.batch_range()
    input_range = artifact.input_range or config.effective_input_range()
    files = {str(p.relative_to(workdir)): sha256_file(p) for p in sorted(workdir.rglob("*")) if p.is_file()}
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "format": config.format,
        "precision": config.precision,
        "variant": cfg.name,
        "resolution": config.resolution,
        "num_classes": model.num_classes,
        "batch": {"min": lo, "opt": opt, "max": hi} if config.dynamic_batch else config.batch,
        "inputs": [s.to_dict() for s in artifact.inputs],
        "outputs": [s.to_dict() for s in artifact.outputs],
        "preprocessing": {
            "baked": input_range != "normalized",
            "input_range": input_range,
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "crop_pct": cfg.crop_pct,
            "interpolation": "bicubic",
        },
        "reparameterized": reparameterized,
        "random_weights": checkpoint is None,
        "source_checkpoint": None if checkpoint is None
        else {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "artifact": {"path": artifact.path, "sha256": tree_sha256(workdir / artifact.path)},
        "files": files,
        "versions": {"ffnet_deploy": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     **artifact.backend_versions},
        "export_seconds": round(seconds, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parity": {"passed": all(parity), "checks": [p.to_dict() for p in parity]} if parity
        else {"passed": None, "skipped": "parity gate switched off" if not config.check_parity
              else f"no CPU runtime runs {config.format} artifacts here"},
        "options": {k: v for k, v in config.to_dict().items() if k not in ("output", "force")},
        "details": artifact.details,
        "notices": notices,
        "license": LICENSE_NOTE,
        "command": " ".join(sys.argv) if sys.argv and "ffnet-deploy" in sys.argv[0] else None,
    }
    if artifact.block_outputs is not None:
        manifest["block_outputs"] = artifact.block_outputs
    return manifest


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


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

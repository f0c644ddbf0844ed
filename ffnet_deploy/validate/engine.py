"""The parity engine: run artifacts and the PyTorch reference on the same inputs and compare them.

Metric definitions live in :mod:`ffnet_deploy.validate.metrics`, tolerance profiles and their sources in
:mod:`ffnet_deploy.validate.tolerances`.

Results are objects, not booleans: :class:`ArtifactResult` holds every metric, every check (name, value, threshold,
passed) and every error; :class:`ValidationReport` collects all artifacts' failures before anything exits, and both
are truthy only when everything passed.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.environment import environment_info
from ffnet_deploy.errors import ConfigError, FFNetDeployError, ParityError
from ffnet_deploy.validate.metrics import MetricAccumulator, OutputMetrics, softmax
from ffnet_deploy.validate.tolerances import (
    FP32,
    PROFILES,
    Check,
    ToleranceProfile,
    evaluate_checks,
    resolve_profile,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ArtifactResult:
    """Everything validation found about one artifact. Truthy when every check passed and nothing went wrong."""

    name: str  # display name (the path as given)
    path: str  # artifact directory or model file
    format: str | None  # "onnx", "openvino", "coreml", "tensorrt"
    runtime: str | None  # runner that executed it
    precision: str  # precision whose profile was applied
    profile: ToleranceProfile  # thresholds applied
    metrics: OutputMetrics | None = None  # None when the artifact never ran
    checks: list[Check] = field(default_factory=list)  # every check, passed or not
    errors: list[str] = field(default_factory=list)  # load/run/configuration errors
    warnings: list[str] = field(default_factory=list)  # notes that do not fail the artifact
    manifest: dict | None = None  # the artifact's manifest.json, when it has one
    localization: Any = None  # a localize.Localization when --localize ran
    latency_ms: float | None = None  # mean runner latency per call

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def failures(self) -> list[str]:
        """Every reason this artifact fails, one line each (errors first)."""
        out = list(self.errors)
        if self.metrics is None and not self.errors:
            out.append("no outputs were compared")
        out += [c.message for c in self.failed_checks]
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        """Plain-JSON form (NaN/Inf as strings so that the file is strict JSON)."""
        return jsonable({
            "name": self.name,
            "path": self.path,
            "format": self.format,
            "runtime": self.runtime,
            "precision": self.precision,
            "passed": self.passed,
            "profile": self.profile.to_dict(),
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "checks": [c.to_dict() for c in self.checks],
            "errors": self.errors,
            "warnings": self.warnings,
            "failures": self.failures,
            "latency_ms": self.latency_ms,
            "manifest": _manifest_summary(self.manifest),
            "localization": self.localization.to_dict() if self.localization is not None else None,
        })


def _manifest_summary(manifest: dict | None) -> dict | None:
    if not manifest:
        return None
    keys = ("schema", "format", "precision", "variant", "resolution", "num_classes", "batch", "preprocessing",
            "reparameterized", "source_checkpoint", "artifact", "versions", "created")
    return {k: manifest.get(k) for k in keys if k in manifest}


def jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class ValidationReport:
    """The outcome of validating one or more artifacts on one data set. Truthy when every artifact passed."""

    artifacts: list[ArtifactResult]  # one result per artifact, in the order given
    reference: dict  # the PyTorch reference: checkpoint path and sha256, variant, resolution
    data: dict  # the data source: kind, root, counts, skipped files, fingerprint, transform
    environment: dict  # platform, CPU, ISA flags, package versions
    settings: dict = field(default_factory=dict)  # batch, precision profile, overrides, localize
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    seconds: float | None = None  # wall time of the validation

    @property
    def passed(self) -> bool:
        return bool(self.artifacts) and all(a.passed for a in self.artifacts)

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> list[str]:
        """Every failure of every artifact, each line prefixed with the artifact name."""
        return [f"{a.name}: {f}" for a in self.artifacts for f in a.failures]

    def raise_for_failures(self) -> None:
        """Raise one :class:`ParityError` that lists every failure of every artifact (after all were run).

        Raises:
            ParityError: If anything failed.
        """
        lines = self.failures()
        if lines:
            failed = sum(not a.passed for a in self.artifacts)
            raise ParityError(f"validate | {failed} of {len(self.artifacts)} artifact(s) failed parity: "
                              + "; ".join(lines))


# --------------------------------------------------------------------------------------------------------------------
# Artifact resolution
# --------------------------------------------------------------------------------------------------------------------

FORMAT_BY_SUFFIX = {".onnx": "onnx", ".xml": "openvino", ".mlpackage": "coreml", ".mlmodel": "coreml",
                    ".engine": "tensorrt", ".plan": "tensorrt"}
"""Format of a bare model file, by suffix."""


def default_runtime(fmt: str) -> str:
    """The runner for an artifact format on this machine (Core ML: the real one on macOS, else the reference)."""
    if fmt == "coreml":
        return "coreml" if sys.platform == "darwin" else _coreml_reference_name()
    try:
        return {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}[fmt]
    except KeyError:
        raise ConfigError(f"validate | unknown artifact format {fmt!r}; known: onnx, openvino, coreml, tensorrt") \
            from None


def _coreml_reference_name() -> str:
    try:
        from ffnet_deploy.runtimes import RUNTIMES, load_all

        load_all()
        for name in ("coreml-reference", "coreml_reference"):
            if name in RUNTIMES:
                return name
    except ImportError:  # pragma: no cover - a runner module failed to import; the error shows when it is used
        pass
    return "coreml-reference"


@dataclass
class ArtifactSpec:
    """An artifact resolved for validation: what it is, how to run it, and how to feed it."""

    name: str  # as the user gave it
    path: Path  # what the runner is given (artifact directory or model file)
    format: str  # onnx, openvino, coreml, tensorrt
    runtime: str  # runner name
    precision: str  # profile to apply
    manifest: dict | None  # manifest.json contents, if any
    input_range: str | None  # "normalized", "0-1", "0-255"; None = decide from the runner's input dtype
    warnings: list[str] = field(default_factory=list)  # notes for the report
    problems: list[str] = field(default_factory=list)  # reasons it cannot be validated against this checkpoint

    @property
    def block_outputs(self) -> dict[str, str]:
        """The manifest's ``{"stages.S.B": tensor name}`` map (empty without a manifest)."""
        return dict((self.manifest or {}).get("block_outputs") or {})


def read_manifest(directory: Path) -> dict | None:
    """``directory/manifest.json`` parsed, or ``None`` when absent.

    Raises:
        ConfigError: If the file exists but is not valid JSON.
    """
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"validate | {path} is not valid JSON ({err}); re-export the artifact") from None


def resolve_artifact(artifact: str | Path, precision_profile: str = "auto", runtime: str | None = None) -> ArtifactSpec:
    """Work out format, runtime, precision and input convention of an artifact.

    Args:
        artifact: An artifact directory with ``manifest.json``, or a bare model file (``.onnx``, ``.xml``,
            ``.mlpackage``, ``.engine``). A model file inside an artifact directory uses that directory's manifest.
        precision_profile: ``"auto"`` reads the manifest's precision (fp32 without a manifest); a precision name
            forces that profile.
        runtime: Runner to use instead of the format's default.

    Raises:
        ConfigError: If the path does not exist or is not a recognisable artifact.
    """
    name = str(artifact)
    path = Path(artifact)
    if not path.exists():
        raise ConfigError(f"validate | artifact {path} does not exist")
    warnings: list[str] = []
    manifest = None
    if path.suffix.lower() in FORMAT_BY_SUFFIX:
        fmt = FORMAT_BY_SUFFIX[path.suffix.lower()]
        parent = read_manifest(path.parent)
        if parent and Path((parent.get("artifact") or {}).get("path", "")).name == path.name:
            manifest = parent
    elif path.is_dir():
        manifest = read_manifest(path)
        if manifest is None:
            raise ConfigError(f"validate | {path} is a folder without manifest.json; pass an artifact directory "
                              "written by 'ffnet-deploy export' or a model file (.onnx, .xml, .mlpackage, .engine)")
        fmt = manifest.get("format")
        if fmt not in ("onnx", "openvino", "coreml", "tensorrt"):
            raise ConfigError(f"validate | {path}/manifest.json has format {fmt!r}; expected onnx, openvino, "
                              "coreml or tensorrt")
    else:
        raise ConfigError(f"validate | cannot tell the format of {path}; expected an artifact directory or a "
                          f"{', '.join(FORMAT_BY_SUFFIX)} file")
    if precision_profile not in ("auto", *PROFILES):
        raise ConfigError(f"validate | --precision-profile must be auto, {', '.join(PROFILES)}; got "
                          f"{precision_profile!r}")
    declared = (manifest or {}).get("precision")
    if precision_profile == "auto":
        if declared in PROFILES:
            precision = declared
        else:
            precision = "fp32"
            warnings.append("no manifest precision: applying the fp32 profile (pass --precision-profile to choose)"
                            if declared is None else f"manifest precision {declared!r} unknown: applying fp32")
    else:
        precision = precision_profile
        if declared and declared != precision:
            warnings.append(f"manifest says precision {declared}, but --precision-profile {precision} was applied")
    pre = (manifest or {}).get("preprocessing") or {}
    input_range = pre.get("input_range") if manifest else None
    if manifest and input_range is None:
        input_range = "normalized"
    return ArtifactSpec(name=name, path=path, format=fmt, runtime=runtime or default_runtime(fmt),
                        precision=precision, manifest=manifest, input_range=input_range, warnings=warnings)


def check_against_reference(spec: ArtifactSpec, variant: str, num_classes: int, resolution: int | None,
                            checkpoint_sha256: str | None) -> None:
    """Record in ``spec`` where its manifest disagrees with the reference checkpoint."""
    m = spec.manifest
    if not m:
        return
    if m.get("variant") and m["variant"] != variant:
        spec.problems.append(f"manifest variant is {m['variant']} but the checkpoint is {variant}; "
                             "validate against the checkpoint the artifact was exported from")
    if m.get("num_classes") not in (None, num_classes):
        spec.problems.append(f"manifest has {m['num_classes']} classes but the checkpoint has {num_classes}")
    if resolution is not None and m.get("resolution") not in (None, resolution):
        spec.problems.append(f"manifest resolution is {m['resolution']} but validation runs at {resolution}")
    src = m.get("source_checkpoint") or {}
    if checkpoint_sha256 and src.get("sha256") and src["sha256"] != checkpoint_sha256:
        spec.warnings.append(f"artifact was exported from checkpoint sha256 {src['sha256'][:12]}..., the reference "
                             f"is {checkpoint_sha256[:12]}... (parity will tell whether the weights match)")
    if m.get("source_checkpoint") is None and "source_checkpoint" in m:
        spec.warnings.append("artifact was exported from random weights (manifest source_checkpoint is null)")


# --------------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------------


class _ArtifactRun:
    """One artifact being validated: its runner, its accumulator, and how to feed it."""

    def __init__(self, spec: ArtifactSpec, result: ArtifactResult) -> None:
        self.spec, self.result = spec, result
        self.runner = None
        self.input_name: str | None = None
        self.input_dtype = np.float32
        self.fixed_batch: int | None = None
        self.input_hw: tuple[int, int] | None = None  # fixed spatial size of the input, if the artifact has one
        self.output_name: str | None = None
        self.output_is_probs = False  # a classifier's probability output: compared with softmax(reference logits)
        self.acc = MetricAccumulator()

    @property
    def alive(self) -> bool:
        return self.runner is not None and not self.result.errors

    def start(self) -> None:
        from ffnet_deploy.runtimes import create_runner

        runner = create_runner(self.spec.runtime, self.spec.path)
        reason = type(runner).unavailable_reason()
        if reason:
            hint = ("; to check the ONNX graph the engine is built from, pass --runtime onnxruntime"
                    if self.spec.format == "tensorrt" else "")
            raise FFNetDeployError(f"{self.spec.runtime} cannot run here: {reason}{hint}")
        runner.activate()
        self.runner = runner
        meta = runner.input_metadata()
        if len(meta) != 1:
            raise FFNetDeployError(f"{self.spec.runtime} | artifact has inputs {list(meta)}; FFNet artifacts take one")
        m = next(iter(meta.values()))
        self.input_name, self.input_dtype = m.name, np.dtype(m.dtype)
        if len(m.shape) != 4:
            raise FFNetDeployError(f"{self.spec.runtime} | input {m.name!r} is {m.describe()}, expected (N, 3, H, W)")
        self.fixed_batch = m.shape[0]
        if m.shape[2] is not None and m.shape[3] is not None:
            self.input_hw = (int(m.shape[2]), int(m.shape[3]))
        if self.spec.input_range is None:
            # A bare model file: an integer input takes raw pixels, anything else the normalized tensor.
            self.spec.input_range = "0-255" if np.issubdtype(self.input_dtype, np.integer) else "normalized"
        outs = runner.output_names()
        declared = {o["name"]: str(o.get("dtype", "")) for o in (self.spec.manifest or {}).get("outputs", [])}
        probs = [n for n in outs if declared.get(n, "").startswith("dict") or n.endswith("_probs")]
        if "logits" in outs:
            self.output_name = "logits"
        elif probs:
            # A Core ML classifier exposes class probabilities (and a string label), not logits.
            self.output_name, self.output_is_probs = probs[0], True
        else:
            self.output_name = outs[0]

    def infer(self, batch) -> np.ndarray:
        """Logits for a data batch, chunked/padded to a fixed batch dimension when the artifact has one."""
        from ffnet_deploy.validate.data import feed_from_pixels

        feed = feed_from_pixels(batch.pixels, batch.images, self.spec.input_range, self.input_dtype)
        n = feed.shape[0]
        step = self.fixed_batch or n
        chunks = []
        for start in range(0, n, step):
            part = feed[start:start + step]
            real = part.shape[0]
            if real < step:  # pad a short last chunk by repeating its last image; padded rows are dropped
                part = np.concatenate([part, np.repeat(part[-1:], step - real, axis=0)])
            out = self.runner.infer({self.input_name: part})[self.output_name]
            chunks.append(np.asarray(out).reshape(part.shape[0], -1)[:real])
        return np.concatenate(chunks)

    def stop(self) -> None:
        if self.runner is not None and self.runner.is_active:
            times = self.runner.inference_times_ms
            if times:
                self.result.latency_ms = float(np.mean(times))
            try:
                self.runner.deactivate()
            except FFNetDeployError:
                pass



def _common_resolution(runs: list[_ArtifactRun], default: int) -> int:
    """The input side every artifact agrees on: manifests first, else fixed square inputs, else ``default``.

    Raises:
        ConfigError: If the artifacts disagree (they must be validated in separate runs).
    """
    sizes: dict[int, list[str]] = {}
    for run in runs:
        m = run.spec.manifest or {}
        side = m.get("resolution")
        if side is None and run.input_hw is not None and run.input_hw[0] == run.input_hw[1]:
            side = run.input_hw[0]
        if side is not None:
            sizes.setdefault(int(side), []).append(run.spec.name)
    if len(sizes) > 1:
        detail = "; ".join(f"{k} px: {', '.join(v)}" for k, v in sorted(sizes.items()))
        raise ConfigError(f"validate | the artifacts take different input sizes ({detail}); validate them in "
                          "separate runs")
    return next(iter(sizes)) if sizes else default


def validate(
    artifacts: Sequence[str | Path],
    checkpoint: str | Path,
    variant: str | None = None,
    source=None,
    precision_profile: str = "auto",
    batch: int = 8,
    localize: bool = False,
    tolerances: Mapping[str, float | None] | None = None,
    *,
    trust: bool = False,
    runtime: str | None = None,
    localize_samples: int = 4,
    progress: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Validate artifacts against the PyTorch model of ``checkpoint``; never raises for a parity failure.

    The reference is the checkpoint loaded with :func:`~ffnet_deploy.models.checkpoint.load_ffnet`, in fp32 eager mode,
    and *not* reparameterized: the artifact must match the model the user trained. The data is read once; each batch
    goes through the reference and through every artifact, and metrics accumulate as it streams.

    Args:
        artifacts: Artifact directories or model files.
        checkpoint: The source checkpoint.
        variant: FFNet variant (detected from the checkpoint when omitted).
        source: A :mod:`ffnet_deploy.validate.data` source; default 32 synthetic images.
        precision_profile: ``"auto"`` (manifest precision) or ``"fp32"``/``"fp16"``/``"int8"`` for all artifacts.
        batch: Images per batch.
        localize: For each failing artifact, find the first FFNet block (ONNX/OpenVINO) or MIL op (Core ML
            reference) where the error grows (see :mod:`ffnet_deploy.validate.localize`).
        tolerances: Threshold overrides applied to every profile (see :func:`parse_tolerance_overrides`).
        trust: Unpickle the checkpoint without the weights-only allow-list.
        runtime: Runner name to use instead of each format's default.
        localize_samples: Images used by ``localize``.
        progress: Called with the number of images processed after each batch.

    Returns:
        The report; ``bool(report)`` says whether everything passed, ``report.failures()`` lists every failure.

    Raises:
        FFNetDeployError: For problems that make validation meaningless as a whole (unreadable checkpoint, bad
            data folder, unknown option values). Problems of one artifact are recorded in its result instead.
    """
    import time

    import torch

    from ffnet_deploy.hashing import sha256_file
    from ffnet_deploy.models.checkpoint import load_ffnet
    from ffnet_deploy.validate.data import EvalTransform, SyntheticSource

    t0 = time.perf_counter()
    if not artifacts:
        raise ConfigError("validate | no artifacts given; pass one or more artifact directories or model files")
    if batch < 1:
        raise ConfigError(f"validate | --batch must be at least 1, got {batch}")
    overrides = dict(tolerances or {})
    for name in overrides:  # fail on unknown keys before any work
        FP32.with_overrides(**{name: overrides[name]})
    specs = [resolve_artifact(a, precision_profile, runtime) for a in artifacts]

    model = load_ffnet(checkpoint, variant, trust=trust)
    cfg = model.cfg
    ckpt_sha = sha256_file(checkpoint)
    source = source if source is not None else SyntheticSource(32)

    runs: list[_ArtifactRun] = []
    first_batch = None
    done = 0
    try:
        for spec in specs:
            check_against_reference(spec, cfg.name, model.num_classes, None, ckpt_sha)
            profile = resolve_profile(spec.precision, overrides)
            result = ArtifactResult(name=spec.name, path=str(spec.path), format=spec.format, runtime=spec.runtime,
                                    precision=spec.precision, profile=profile, manifest=spec.manifest,
                                    warnings=list(spec.warnings), errors=list(spec.problems))
            run = _ArtifactRun(spec, result)
            if not result.errors:
                try:
                    run.start()
                except FFNetDeployError as err:
                    result.errors.append(f"cannot load: {err}")
                    run.stop()
            runs.append(run)
        resolution = _common_resolution(runs, cfg.resolution)
        for run in runs:
            if run.spec.manifest and run.spec.manifest.get("resolution") not in (None, resolution):
                run.result.errors.append(f"manifest resolution {run.spec.manifest['resolution']} differs from the "
                                         f"{resolution} px input the runtime reports")
                run.stop()
        if resolution != cfg.resolution:
            log.info("validate | running at %d px, the artifacts' input size (%s default: %d px)", resolution,
                     cfg.name, cfg.resolution)
        transform = EvalTransform.for_config(cfg, resolution)

        for b in source.batches(transform, batch):
            if first_batch is None:
                first_batch = b
            with torch.inference_mode():
                ref = model(torch.from_numpy(b.images)).float().numpy()
            for run in runs:
                if not run.alive:
                    continue
                try:
                    out = run.infer(b)
                    run.acc.update(softmax(ref) if run.output_is_probs else ref, out, b.labels)
                except FFNetDeployError as err:
                    run.result.errors.append(f"inference failed after {run.acc.n} images: {err}")
                    run.stop()
            done += len(b.names)
            if progress is not None:
                progress(done)
    finally:
        for run in runs:
            run.stop()
    if done == 0:
        raise ConfigError(f"validate | the data source yielded no images ({source.skipped.corrupt} corrupt files "
                          "skipped); check the folder")

    for run in runs:
        r = run.result
        if run.acc.n:
            r.metrics = run.acc.result()
            r.checks = evaluate_checks(r.metrics, r.profile)
            if r.metrics.nonfinite_reference:
                r.warnings.append("the PyTorch reference itself produced NaN/Inf: the checkpoint is broken")
        if localize and not r.passed and r.metrics is not None and first_batch is not None:
            from ffnet_deploy.validate.localize import localize_artifact

            sample = first_batch._replace(images=first_batch.images[:localize_samples],
                                          pixels=first_batch.pixels[:localize_samples],
                                          names=first_batch.names[:localize_samples],
                                          labels=None if first_batch.labels is None
                                          else first_batch.labels[:localize_samples])
            try:
                r.localization = localize_artifact(run.spec, model, sample, r.profile.localize_sqnr_db)
            except FFNetDeployError as err:
                r.warnings.append(f"--localize could not run: {err}")

    info = getattr(model, "checkpoint_info", None)
    reference = {"checkpoint": str(checkpoint), "sha256": ckpt_sha, "variant": cfg.name,
                 "fused": bool(getattr(info, "fused", False)), "num_classes": model.num_classes,
                 "resolution": resolution, "runtime": f"torch {torch.__version__} fp32 eager (not reparameterized)"}
    data = {**source.describe(), "transform": transform.to_dict()}
    settings = {"batch": batch, "precision_profile": precision_profile, "tolerance_overrides": overrides,
                "localize": localize, "runtime": runtime}
    return ValidationReport(artifacts=[r.result for r in runs], reference=reference, data=data,
                            environment=environment_info(), settings=settings,
                            seconds=round(time.perf_counter() - t0, 3))

"""The parity engine: run artifacts and the PyTorch reference on the same inputs and compare them.

Metric definitions live in :mod:`ffnet_deploy.validate.metrics`, tolerance profiles and their sources in
:mod:`ffnet_deploy.validate.tolerances`.

Results are objects, not booleans: :class:`ArtifactResult` holds every metric, every check (name, value, threshold,
passed) and every error; :class:`ValidationReport` collects all artifacts' failures before anything exits, and both
are truthy only when everything passed.

Each artifact ends in one of three states (:data:`STATUSES`): ``passed``; ``failed`` (a check failed, or it could not
be loaded or run, or its manifest disagrees with its files); or ``not run``, when nothing on this machine can execute
it at all (a bare TensorRT engine without TensorRT, a Core ML artifact with ``--runtime coreml`` off macOS). Not run
is not a failure, and not a pass either: a report passes when no artifact failed and at least one passed, so that a
run where nothing could be checked never reads as proof; its summary counts the artifacts that were not run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.formats import (
    FORMATS,
    content_format,
    format_names,
    format_of_suffix,
    get_format,
    model_suffixes,
)
from ffnet_deploy.artifact.inspect import PrecisionEvidence, inspect_precision, precision_mismatch, verify_files
from ffnet_deploy.artifact.manifest import Manifest, has_manifest, read_manifest
from ffnet_deploy.environment import cpu_identity, environment_info
from ffnet_deploy.errors import ConfigError, FFNetDeployError, ParityError, first_line
from ffnet_deploy.models.checkpoint import LoadedCheckpoint
from ffnet_deploy.progress import NULL, Progress
from ffnet_deploy.schemas import jsonable  # the project's one NaN convention; re-exported for older callers
from ffnet_deploy.validate.metrics import MetricAccumulator, OutputMetrics, reference_accuracy_warning, softmax
from ffnet_deploy.validate.tolerances import (
    FP32,
    PROFILES,
    Check,
    ToleranceProfile,
    evaluate_checks,
    resolve_profile,
    sample_size_warning,
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
    format: str | None  # a registered format ("onnx", "openvino", ...)
    runtime: str | None  # runner that executed it
    precision: str  # precision whose profile was applied
    profile: ToleranceProfile  # thresholds applied
    metrics: OutputMetrics | None = None  # None when the artifact never ran
    checks: list[Check] = field(default_factory=list)  # every check, passed or not
    errors: list[str] = field(default_factory=list)  # load/run/configuration errors
    warnings: list[str] = field(default_factory=list)  # notes that do not fail the artifact
    manifest: Manifest | None = None  # the artifact's manifest, when it has one
    localization: Any = None  # a localize.Localization when --localize ran
    latency_ms: float | None = None  # mean runner latency per call
    profile_reason: str = ""  # why this profile: the manifest's precision and what the model file confirmed
    not_run: str | None = None  # why nothing on this machine could run it (status "not run"), else None

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def failures(self) -> list[str]:
        """Every reason this artifact fails, one line each (errors first); empty when it passed or was not run."""
        out = list(self.errors)
        if self.metrics is None and not self.errors and self.not_run is None:
            out.append("no outputs were compared")
        out += [c.message for c in self.failed_checks]
        return out

    @property
    def status(self) -> str:
        """``"passed"``, ``"failed"`` or ``"not run"`` (module docstring)."""
        if self.failures:
            return "failed"
        return "not run" if self.not_run is not None else "passed"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def describe(self) -> str:
        """One line: the runner, the file, and the gating checks (or what failed, or why it was not run)."""
        head = f"{self.runtime} on {self.name} ({self.profile.name} profile)"
        if self.status == "not run":
            return f"{head}: not run: {self.not_run}"
        if not self.passed:
            return f"{head}: {'; '.join(self.failures)}"
        gating = [c.message for c in self.checks if c.name != "finite"]
        return f"{head}: {'; '.join(gating) or 'finite'}"

    def to_dict(self) -> dict:
        """Plain-JSON form (NaN/Inf as strings so that the file is strict JSON)."""
        return jsonable({
            "name": self.name,
            "path": self.path,
            "format": self.format,
            "runtime": self.runtime,
            "precision": self.precision,
            "status": self.status,
            "passed": self.passed,
            "not_run": self.not_run,
            "profile": self.profile.to_dict(),
            "profile_reason": self.profile_reason,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "checks": [c.to_dict() for c in self.checks],
            "errors": self.errors,
            "warnings": self.warnings,
            "failures": self.failures,
            "latency_ms": self.latency_ms,
            "manifest": self.manifest.summary() if self.manifest is not None else None,
            "localization": self.localization.to_dict() if self.localization is not None else None,
        })


STATUSES = ("passed", "failed", "not run")
"""The states an artifact's validation ends in (module docstring)."""


@dataclass
class ValidationReport:
    """The outcome of validating one or more artifacts on one data set.

    Truthy when no artifact failed and at least one passed: artifacts that nothing here can run are counted (see
    :meth:`not_run`) but neither fail nor pass the report, and a report in which nothing ran does not pass.
    """

    artifacts: list[ArtifactResult]  # one result per artifact, in the order given
    reference: dict  # the PyTorch reference: checkpoint path and sha256, variant, resolution
    data: dict  # the data source: kind, root, counts, skipped files, fingerprint, transform
    environment: dict  # platform, CPU, ISA flags, package versions
    settings: dict = field(default_factory=dict)  # batch, precision profile, overrides, localize
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    seconds: float | None = None  # wall time of the validation

    @property
    def passed(self) -> bool:
        statuses = [a.status for a in self.artifacts]
        return "passed" in statuses and "failed" not in statuses

    def __bool__(self) -> bool:
        return self.passed

    def count(self, status: str) -> int:
        """How many artifacts ended in ``status`` (one of :data:`STATUSES`)."""
        return sum(a.status == status for a in self.artifacts)

    def failures(self) -> list[str]:
        """Every failure of every artifact, each line prefixed with the artifact name."""
        return [f"{a.name}: {f}" for a in self.artifacts for f in a.failures]

    def not_run(self) -> list[str]:
        """One line per artifact that nothing here could run: ``name: why``."""
        return [f"{a.name}: {a.not_run}" for a in self.artifacts if a.status == "not run"]

    def raise_for_failures(self) -> None:
        """Raise one :class:`ParityError` that lists every failure of every artifact (after all were run).

        Raises:
            ParityError: If anything failed, or if nothing could be run at all.
        """
        lines = self.failures()
        if lines:
            raise ParityError(f"validate | {self.count('failed')} of {len(self.artifacts)} artifact(s) failed parity: "
                              + "; ".join(lines))
        if not self.passed:
            raise ParityError(f"validate | none of the {len(self.artifacts)} artifact(s) could be run on this machine, "
                              "so nothing was checked: " + "; ".join(self.not_run()))


# --------------------------------------------------------------------------------------------------------------------
# Artifact resolution: the one place that decides which runner executes which file, with which profile
# --------------------------------------------------------------------------------------------------------------------

# Which file is which format, which runner checks it and which targets a folder holds are declared by each format
# (ffnet_deploy.artifact.formats.FormatSpec, in its exporter's module); nothing here names a format.


def default_runtime(fmt: str) -> str:
    """The runner validation uses for an artifact format on this machine (the format's first runtime choice that
    applies here: Core ML's is the real one on macOS, else the reference interpreter)."""
    if fmt not in FORMATS:
        raise ConfigError(f"validate | unknown artifact format {fmt!r}; known: {', '.join(format_names())}")
    return get_format(fmt).validate_runtime()


def runtime_unavailable(runtime: str) -> str | None:
    """``None`` when the runner can execute here, else one line saying what it needs.

    Raises:
        ConfigError: For an unknown runner name (the message lists the known ones).
    """
    from ffnet_deploy.runtimes import RUNTIMES, load_all

    load_all()
    return RUNTIMES.get(runtime).unavailable_reason()


@dataclass
class ArtifactSpec:
    """One runnable target of an artifact: the file a runner loads, the runner, and the profile that judges it."""

    name: str  # as the user gave it (plus the runner, when an artifact has several targets)
    path: Path  # what the runner is given: the artifact directory, or a model file
    format: str  # a registered format
    runtime: str  # runner name
    precision: str  # precision whose tolerance profile applies
    profile_reason: str  # why that profile: the manifest's precision, --precision-profile, or the file actually run
    manifest: Manifest | None  # the artifact's manifest, if any
    input_range: str | None  # "normalized", "0-1", "0-255"; None = decide from the runner's input dtype
    warnings: list[str] = field(default_factory=list)  # notes for the report
    problems: list[str] = field(default_factory=list)  # reasons it cannot be validated against this checkpoint

    @property
    def block_outputs(self) -> dict[str, str]:
        """The manifest's ``{"stages.S.B": tensor name}`` map (empty without a manifest)."""
        return dict((self.manifest.block_outputs if self.manifest else None) or {})


def _profile(precision_profile: str, declared: str | None, found: PrecisionEvidence,
             what: str = "the model", graph: bool = False) -> tuple[str, str, list[str]]:
    """``(precision, reason, warnings)`` of one target.

    Args:
        precision_profile: ``"auto"`` or a precision forced by the user.
        declared: The manifest's precision for this file, or ``None`` (no manifest, or a file it does not describe).
        found: What the file itself shows (:func:`~ffnet_deploy.artifact.inspect.inspect_precision`).
        what: How the reason names the file.
        graph: The file is an intermediate graph that ships with the model the manifest describes (TensorRT's and
            ``--keep-onnx``'s ONNX): it is judged as the graph it is.
    """
    if precision_profile != "auto":
        actual = declared or found.precision
        src = "manifest says precision" if declared else f"{what} is"
        warn = [f"{src} {actual}, but --precision-profile {precision_profile} was applied"] \
            if actual and actual != precision_profile else []
        return precision_profile, f"--precision-profile {precision_profile}", warn
    if declared is not None:
        if found.precision == declared:
            return declared, f"manifest precision {declared}, confirmed by {what} ({found.evidence})", []
        if found.known:  # the mismatch itself is a problem of the artifact (artifact_targets records it)
            return found.precision, (f"manifest precision {declared} contradicts {what}: "
                                     f"{found.precision} ({found.evidence})"), []
        return declared, f"manifest precision {declared}, not confirmed ({found.evidence})", [
            f"the {declared} profile comes from the manifest alone: {what} could not be inspected here "
            f"({found.evidence})"]
    if graph:
        if found.known:
            return found.precision, f"{what} is an {found.precision} graph ({found.evidence})", []
        return "fp32", f"{what} could not be inspected ({found.evidence}): fp32 assumed", []
    if found.known:
        return found.precision, f"no manifest: {what} is {found.precision} ({found.evidence})", []
    return "fp32", f"no manifest, and {what} could not be inspected ({found.evidence}): fp32 assumed", [
        f"no manifest precision and {what} could not be inspected ({found.evidence}): applying the fp32 profile "
        "(pass --precision-profile to choose)"]


def artifact_targets(artifact: str | Path, precision_profile: str = "auto", runtime: str | None = None,
                     manifest: Manifest | None = None, *, verify: bool = False) -> list[ArtifactSpec]:
    """Every way this machine could check an artifact, preferred first.

    Most formats have one target: the format's runner on the model. A format whose folder holds more declares them
    (``FormatSpec.targets``, called with a :class:`TargetRequest`): a TensorRT artifact has two, the engine on the
    ``tensorrt`` runner (when it was built), and the TensorRT-ready ONNX graph it is built from, on ONNX Runtime,
    judged by the ONNX's own precision (fp32 for a weakly typed graph) because that graph is what actually runs; an
    OpenVINO folder with ``--keep-onnx`` also has its intermediate graph checked.

    The tolerance profile of each target follows its precision, which is read from the file itself
    (:func:`~ffnet_deploy.artifact.inspect.inspect_precision`) and cross-checked with the manifest: a manifest whose
    precision the file contradicts is recorded as a problem of every target, so the artifact fails with one line
    naming both (an edited ``precision`` would otherwise pick a looser profile). A TensorRT manifest's precision is
    the engine's: an fp16 engine built from an fp32 graph with ``--fp16`` agrees with it.

    Args:
        artifact: An artifact directory with ``manifest.json``, or a bare model file of a registered format
            (``.onnx``, ``.xml``, ``.mlpackage``, ``.engine``, ...). A model file inside an artifact directory uses
            that directory's manifest.
        precision_profile: ``"auto"`` takes the manifest's precision confirmed by the file (the file's own without
            a manifest); a precision name forces that profile.
        runtime: Runner to use instead of the format's default (one target).
        manifest: The artifact's manifest when the caller already holds it.
        verify: Check every file the manifest lists against its recorded sha256 first
            (:func:`~ffnet_deploy.artifact.inspect.verify_files`). :func:`validate` does by default; the export gate
            does not (it runs on the fresh files whose hashes it is about to record).

    Raises:
        ConfigError: If the path does not exist or is not a recognisable artifact; ManifestError for a broken
            manifest; ArtifactIntegrityError when ``verify`` finds a file that is missing or differs.
    """
    if precision_profile not in ("auto", *PROFILES):
        raise ConfigError(f"validate | --precision-profile must be auto, {', '.join(PROFILES)}; got "
                          f"{precision_profile!r}")
    name = str(artifact)
    path = Path(artifact)
    if not path.exists():
        raise ConfigError(f"validate | artifact {path} does not exist")
    bare = format_of_suffix(path.suffix)  # a model file (a .mlpackage is a folder with a suffix)
    if bare is not None:
        fmt = bare
        if manifest is None and has_manifest(path.parent):
            parent = read_manifest(path.parent)
            # The folder's manifest describes its main file, and a format's stage file that ships inside another
            # format's folder (OpenVINO's --keep-onnx model.onnx, TensorRT's TRT-ready graph).
            if Path(parent.artifact.path).name == path.name or get_format(fmt).stage_file == path.name:
                manifest = parent
                fmt = parent.format if get_format(parent.format).claims_folder else fmt
    elif path.is_dir():
        if manifest is None:
            if not has_manifest(path):
                raise ConfigError(f"validate | {path} is a folder without manifest.json; pass an artifact directory "
                                  "written by 'ffnet-deploy export' or a model file "
                                  f"({', '.join(model_suffixes(main_only=True))})")
            manifest = read_manifest(path)
        fmt = manifest.format
    else:
        raise ConfigError(f"validate | cannot tell the format of {path}; expected an artifact directory or a "
                          f"{', '.join(model_suffixes())} file")
    folder = path.parent if bare is not None else path  # the artifact directory
    if verify and manifest is not None:
        verify_files(manifest, folder)  # before anything below reads the files
    check_content(path if bare is not None else folder / manifest.artifact.path, bare or fmt,
                  f"its suffix {path.suffix}" if bare is not None else "its manifest")
    input_range = manifest.preprocessing.input_range if manifest else None
    declared = manifest.precision if manifest else None
    format_spec = get_format(fmt)

    # The manifest's precision describes its main model (for a format whose reader takes the folder, TensorRT: the
    # engine, read from graph and build).
    if format_spec.reads_folder:
        model_found = inspect_precision(path, fmt)
    else:
        model_found = inspect_precision(path if bare is not None else folder / manifest.artifact.path, fmt)
    mismatch = precision_mismatch(declared, model_found) if declared else None
    problems = [mismatch] if mismatch else []

    def spec(target: Path, run: str, found: PrecisionEvidence, what: str = "the model", graph: bool = False,
             note: Sequence[str] = ()) -> ArtifactSpec:
        prec, why, warns = _profile(precision_profile, None if graph else declared, found, what, graph)
        return ArtifactSpec(name=name, path=target, format=fmt, runtime=run, precision=prec, profile_reason=why,
                            manifest=manifest, input_range=input_range, warnings=[*warns, *note],
                            problems=list(problems))

    if runtime is not None:
        return [spec(path, runtime, model_found)]
    request = TargetRequest(fmt, path, folder, manifest, model_found, spec)
    if format_spec.targets is not None:
        return format_spec.targets(request)
    return [request.default()]


def check_content(model: Path, fmt: str, said_by: str) -> None:
    """Refuse a model file whose bytes are another format's than ``fmt`` (what ``said_by``, its suffix or its
    manifest, says): the format comes from the content, never the name, so an ONNX graph relabelled as a TensorRT
    engine is not passed over as an engine that cannot run here.

    Raises:
        ConfigError: One line naming the file, what it holds and what claimed otherwise.
    """
    declared = get_format(fmt)
    if declared.recognizes is not None and declared.recognizes(model):
        return  # its own (a format may be built on another's container: the toy format's .toyonnx is ONNX bytes)
    found = content_format(model)
    if found is None or found == fmt:
        return
    spec = get_format(found)
    if declared.claims_folder and spec.stage_file == model.name:
        return  # the other format's stage file its folder ships as the model (TensorRT's model.onnx, no engine yet)
    article = "an" if spec.title[0] in "AEIOU" else "a"  # an ONNX, a LiteRT
    raise ConfigError(f"validate | {model} holds {article} {spec.title} model, but {said_by} says {fmt}; a file's "
                      f"format is its content: rename it to {spec.main_suffix} (or export the {fmt} artifact again)")


@dataclass
class TargetRequest:
    """What a format's ``targets`` hook (``FormatSpec.targets``) gets to list the validation targets of one
    artifact: the path as given, its folder and manifest, what the main model's files say, and how to build a
    target."""

    format: str  # the artifact's format
    path: Path  # the artifact as given: its directory, or a model file
    folder: Path  # the artifact directory
    manifest: Manifest | None  # its manifest, if any
    model_found: PrecisionEvidence  # the precision the main model's files show
    _make: Callable[..., ArtifactSpec]

    def target(self, path: Path, runtime: str, found: PrecisionEvidence, what: str = "the model", *,
               graph: bool = False, note: Sequence[str] = ()) -> ArtifactSpec:
        """One target: ``path`` on ``runtime``, judged by the profile of ``found``'s precision (``graph``: an
        intermediate graph that ships with the model, judged as the graph it is); ``note`` goes to its warnings."""
        return self._make(path, runtime, found, what, graph, note)

    def default(self) -> ArtifactSpec:
        """The artifact itself on its format's validation runner."""
        return self.target(self.path, default_runtime(self.format), self.model_found)

    @staticmethod
    def runtime_for(fmt: str) -> str:
        """The validation runner of format ``fmt`` on this machine."""
        return default_runtime(fmt)

    @staticmethod
    def inspect(path: Path, fmt: str) -> PrecisionEvidence:
        """What the files at ``path`` say, read as format ``fmt``."""
        return inspect_precision(path, fmt)

    @staticmethod
    def runtime_unavailable(runtime: str) -> str | None:
        """See :func:`runtime_unavailable`."""
        return runtime_unavailable(runtime)


def resolve_artifact(artifact: str | Path, precision_profile: str = "auto", runtime: str | None = None, *,
                     verify: bool = False) -> ArtifactSpec:
    """The target :func:`validate` runs: the first of :func:`artifact_targets` whose runner works here.

    When none works, the first target is returned, and validation reports it as not run (e.g. TensorRT without a
    GPU and no ONNX next to the engine).

    Raises:
        ConfigError: See :func:`artifact_targets`.
    """
    targets = artifact_targets(artifact, precision_profile, runtime, verify=verify)
    for target in targets:
        if runtime_unavailable(target.runtime) is None:
            return target
    return targets[0]


def refused_result(artifact: str | Path, err: ConfigError, precision_profile: str = "auto",
                   overrides: Mapping[str, float | None] | None = None) -> ArtifactResult:
    """The result of an artifact that could not be opened for validation: failed, with ``err`` as its reason, and
    never run (none of its files is read once its manifest is found wanting)."""
    precision = precision_profile if precision_profile != "auto" else "fp32"
    return ArtifactResult(name=str(artifact), path=str(artifact), format=None, runtime=None, precision=precision,
                          profile=resolve_profile(precision, overrides),
                          profile_reason="not determined: the artifact could not be opened",
                          errors=[first_line(err)])


def check_against_reference(spec: ArtifactSpec, variant: str, num_classes: int, resolution: int | None,
                            checkpoint_sha256: str | None) -> None:
    """Record in ``spec`` where its manifest disagrees with the reference checkpoint."""
    m = spec.manifest
    if m is None:
        return
    if m.variant != variant:
        spec.problems.append(f"manifest variant is {m.variant} but the checkpoint is {variant}; "
                             "validate against the checkpoint the artifact was exported from")
    if m.num_classes != num_classes:
        spec.problems.append(f"manifest has {m.num_classes} classes but the checkpoint has {num_classes}")
    if resolution is not None and m.resolution != resolution:
        spec.problems.append(f"manifest resolution is {m.resolution} but validation runs at {resolution}")
    src = m.source_checkpoint
    if checkpoint_sha256 and src is not None and src.sha256 and not src.names(checkpoint_sha256):
        spec.warnings.append(f"artifact was exported from checkpoint sha256 {src.sha256[:12]}..., the reference "
                             f"is {checkpoint_sha256[:12]}... (parity will tell whether the weights match)")
    if m.random_weights:
        spec.warnings.append("artifact was exported from random weights (manifest random_weights is true)")
    note = cpu_class_note(m)
    if note:
        spec.warnings.append(note)


def cpu_class_note(m: Manifest) -> str | None:
    """One line when this machine's ISA class differs from the one the artifact's export gate ran on (the artifact
    is judged on this machine's run all the same), naming the classes its INT8 kernels are known to be safe on."""
    gated = (m.parity or {}).get("measured_on") or {}
    theirs, here = gated.get("isa_class"), cpu_identity()
    if not isinstance(theirs, str) or theirs == here["isa_class"]:
        return None
    line = (f"exported and gated on CPU class {theirs} ({gated.get('cpu') or 'unknown model'}); this machine is "
            f"{here['isa_class']} ({here['cpu']}): judged on this run")
    safe = ((m.details or {}).get("quantization") or {}).get("portability", {}).get("safe_isa_classes")
    if isinstance(safe, list) and here["isa_class"] not in safe:
        line += f"; its INT8 recipe is not known to be safe here (safe on: {', '.join(map(str, safe))})"
    return line


# --------------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------------


class _ArtifactRun:
    """One artifact being validated: its runner, its accumulator, and how to feed it."""

    def __init__(self, spec: ArtifactSpec, result: ArtifactResult, batch: int) -> None:
        self.spec, self.result = spec, result
        self.batch = batch  # the images a dynamic-batch artifact is fed per call (the caller's --batch)
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

        reason = runtime_unavailable(self.spec.runtime)
        if reason:
            hook = get_format(self.spec.format).not_runnable_hint
            hint = hook(None) if hook is not None else ""
            raise FFNetDeployError(f"{self.spec.runtime} cannot run here: {reason}{hint}")
        runner = create_runner(self.spec.runtime, self.spec.path)
        runner.activate()
        self.runner = runner
        meta = runner.input_metadata()
        if len(meta) != 1:
            raise FFNetDeployError(f"{self.spec.runtime} | artifact has inputs {list(meta)}; FFNet artifacts take one")
        m = next(iter(meta.values()))
        self.input_name, self.input_dtype = m.name, np.dtype(m.dtype)
        if len(m.shape) != 4:
            raise FFNetDeployError(f"{self.spec.runtime} | input {m.name!r} is {m.describe()}, expected (N, 3, H, W)")
        # A runner that takes any batch (the Core ML interpreter runs a batch-1 program's larger feeds) gets the
        # caller's batch: fewer, larger calls, the same values per image.
        self.fixed_batch = None if runner.any_batch else m.shape[0]
        if m.shape[2] is not None and m.shape[3] is not None:
            self.input_hw = (int(m.shape[2]), int(m.shape[3]))
        if self.spec.input_range is None:
            # A bare model file: an integer input takes raw pixels, anything else the normalized tensor.
            self.spec.input_range = "0-255" if np.issubdtype(self.input_dtype, np.integer) else "normalized"
        outs = runner.output_names()
        # What an output holds is recorded by the exporter (TensorSpec.role); a bare model file's is its logits.
        target = self.spec.manifest.result_output if self.spec.manifest is not None else None
        if target is not None and target.name in outs:
            self.output_name, self.output_is_probs = target.name, target.role == "probabilities"
        else:
            self.output_name = "logits" if "logits" in outs else outs[0]

    def infer(self, batch) -> np.ndarray:
        """Logits for a data batch, chunked/padded to a fixed batch dimension when the artifact has one."""
        from ffnet_deploy.data.transform import feed_from_pixels

        feed = feed_from_pixels(batch.pixels, batch.images, self.spec.input_range, self.input_dtype)
        n = feed.shape[0]
        step = self.fixed_batch or self.batch
        chunks = []
        for start in range(0, n, step):
            part = feed[start:start + step]
            real = part.shape[0]
            if real < step and self.fixed_batch:  # pad a short last chunk by repeating its last image; dropped later
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


def _not_runnable(spec: ArtifactSpec) -> str | None:
    """Why nothing on this machine can run ``spec`` (its runner is unavailable here), or ``None``."""
    reason = runtime_unavailable(spec.runtime)
    if reason is None:
        return None
    folder = spec.path if spec.path.is_dir() else spec.path.parent
    hook = get_format(spec.format).not_runnable_hint
    hint = hook(folder) if hook is not None else ""
    return f"{spec.runtime} cannot run here: {reason}{hint}"


def _common_resolution(runs: list[_ArtifactRun], default: int) -> int:
    """The input side every artifact agrees on: manifests first, else fixed square inputs, else ``default``.

    Raises:
        ConfigError: If the artifacts disagree (they must be validated in separate runs).
    """
    sizes: dict[int, list[str]] = {}
    for run in runs:
        side = run.spec.manifest.resolution if run.spec.manifest is not None else None
        if side is None and run.input_hw is not None and run.input_hw[0] == run.input_hw[1]:
            side = run.input_hw[0]
        if side is not None:
            sizes.setdefault(int(side), []).append(run.spec.name)
    if len(sizes) > 1:
        detail = "; ".join(f"{k} px: {', '.join(v)}" for k, v in sorted(sizes.items()))
        raise ConfigError(f"validate | the artifacts take different input sizes ({detail}); validate them in "
                          "separate runs")
    return next(iter(sizes)) if sizes else default


@dataclass
class Comparison:
    """What :func:`compare_artifacts` measured: one result per target, and the inputs it used."""

    results: list[ArtifactResult]  # one per target, in order
    resolution: int  # input side every target ran at
    transform: Any  # the EvalTransform the inputs went through
    images: int  # inputs compared


REFERENCE_PIXELS = 32 * 64 * 64
"""About how many input pixels one call of the PyTorch reference takes (see :func:`reference_batch`)."""


def reference_batch(batch: int, resolution: int) -> int:
    """The images read per step: a multiple of ``batch`` near :data:`REFERENCE_PIXELS`, at least ``batch``.

    Every artifact is still fed ``batch`` images at a time (or its fixed batch); only the eager reference takes the
    larger step. At small inputs its per-operator overhead dominates: one image at a time, the 32 px digits model
    took 6.0 s for 256 images on 2 cores, 32 at a time 0.34 s. Large inputs keep the caller's batch.
    """
    return batch * max(1, REFERENCE_PIXELS // (batch * resolution * resolution))


VALIDATING = "validating"
"""The label of the steps of :func:`compare_artifacts` (images through the reference and every target)."""


def compare_artifacts(specs: Sequence[ArtifactSpec], reference: Any, source: Any, batch: int = 8,
                      overrides: Mapping[str, float | None] | None = None, *, checkpoint_sha256: str | None = None,
                      localize: bool = False, localize_samples: int = 4,
                      progress: Progress = NULL) -> Comparison:
    """The parity engine: stream ``source`` through ``reference`` and every target, and judge each target.

    Both ``ffnet-deploy validate`` (a data set) and the export-time gate (synthetic pixels) call this; metrics,
    tolerance profiles and report fields are therefore the same everywhere. Problems of one target are recorded in
    its result; nothing here raises for a parity failure.

    Args:
        specs: Targets from :func:`resolve_artifact` / :func:`artifact_targets`.
        reference: The fp32 eager PyTorch FFNet (eval mode) every target is compared with.
        source: A :mod:`ffnet_deploy.data` source.
        batch: Images per batch.
        overrides: Threshold overrides applied to every profile.
        checkpoint_sha256: The reference checkpoint's hash, checked against each manifest's source.
        localize: For each failing target, find the first FFNet block or MIL op where the error grows.
        localize_samples: Images used by ``localize``.
        progress: Gets ``step(images done, images in all, "validating")`` after each batch (in all: the source's
            length before skips; 0 when it has none).

    Raises:
        ConfigError: If the targets take different input sizes or the source yields nothing.
    """
    import torch

    from ffnet_deploy.data.transform import EvalTransform

    cfg = reference.cfg
    overrides = dict(overrides or {})
    runs: list[_ArtifactRun] = []
    first_batch = None
    done = 0
    total = len(source) if hasattr(source, "__len__") else 0  # a count: a synthetic source never lists its items
    try:
        for spec in specs:
            check_against_reference(spec, cfg.name, reference.num_classes, None, checkpoint_sha256)
            profile = resolve_profile(spec.precision, overrides)
            result = ArtifactResult(name=spec.name, path=str(spec.path), format=spec.format, runtime=spec.runtime,
                                    precision=spec.precision, profile=profile, profile_reason=spec.profile_reason,
                                    manifest=spec.manifest, warnings=list(spec.warnings), errors=list(spec.problems))
            run = _ArtifactRun(spec, result, batch)
            if not result.errors:
                try:
                    result.not_run = _not_runnable(spec)
                    if result.not_run is None:
                        run.start()
                except FFNetDeployError as err:
                    result.errors.append(f"cannot load: {err}")
                    run.stop()
            runs.append(run)
        resolution = _common_resolution(runs, cfg.resolution)
        for run in runs:
            if run.spec.manifest is not None and run.spec.manifest.resolution != resolution:
                run.result.errors.append(f"manifest resolution {run.spec.manifest.resolution} differs from the "
                                         f"{resolution} px input the runtime reports")
                run.stop()
        if resolution != cfg.resolution:
            log.info("validate | running at %d px, the artifacts' input size (%s default: %d px)", resolution,
                     cfg.name, cfg.resolution)
        transform = EvalTransform.for_config(cfg, resolution)

        for b in source.batches(transform, reference_batch(batch, resolution)):
            if first_batch is None:
                first_batch = b
            with torch.inference_mode():
                ref = reference(torch.from_numpy(b.images)).float().numpy()
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
            progress.step(done, max(total, done) if total else 0, VALIDATING)
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
            own = get_format(run.spec.format).checks
            if own is not None:  # what the format reads from the file itself (ExecuTorch's delegation)
                try:
                    r.checks += own(run.spec)
                except FFNetDeployError as err:
                    r.errors.append(f"cannot inspect: {err}")
            if r.metrics.nonfinite_reference:
                r.warnings.append("the PyTorch reference itself produced NaN/Inf: the checkpoint is broken")
            for warning in (reference_accuracy_warning(r.metrics.ref_top1, reference.num_classes),
                            sample_size_warning(r.metrics, r.profile)):
                if warning is not None:
                    r.warnings.append(warning)
        if localize and not r.passed and r.metrics is not None and first_batch is not None:
            from ffnet_deploy.validate.localize import localize_artifact

            sample = first_batch._replace(images=first_batch.images[:localize_samples],
                                          pixels=first_batch.pixels[:localize_samples],
                                          names=first_batch.names[:localize_samples],
                                          labels=None if first_batch.labels is None
                                          else first_batch.labels[:localize_samples])
            try:
                r.localization = localize_artifact(run.spec, reference, sample, r.profile.localize_sqnr_db)
            except FFNetDeployError as err:
                r.warnings.append(f"--localize could not run: {err}")
    return Comparison([r.result for r in runs], resolution, transform, done)


def validate(
    artifacts: Sequence[str | Path],
    checkpoint: str | Path | LoadedCheckpoint,
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
    verify: bool = True,
    progress: Progress = NULL,
) -> ValidationReport:
    """Validate artifacts against the PyTorch model of ``checkpoint``; never raises for a parity failure.

    The reference is the checkpoint loaded with :func:`~ffnet_deploy.models.checkpoint.open_checkpoint`, in fp32
    eager mode, and *not* reparameterized: the artifact must match the model the user trained. The data is read
    once; each batch goes through the reference and through every artifact, and metrics accumulate as it streams.

    Args:
        artifacts: Artifact directories or model files.
        checkpoint: The source checkpoint, or one already opened (it is then neither reloaded nor re-hashed).
        variant: FFNet variant (detected from the checkpoint when omitted).
        source: A :mod:`ffnet_deploy.data` source; default 32 synthetic images.
        precision_profile: ``"auto"`` (manifest precision) or a stored precision (``"fp32"``, ``"int8"``, ...) for
            all artifacts.
        batch: Images per batch.
        localize: For each failing artifact, find the first FFNet block (ONNX/OpenVINO) or MIL op (Core ML
            reference) where the error grows (see :mod:`ffnet_deploy.validate.localize`).
        tolerances: Threshold overrides applied to every profile (see :func:`parse_tolerance_overrides`).
        trust: Unpickle the checkpoint without the weights-only allow-list.
        runtime: Runner name to use instead of each format's default.
        localize_samples: Images used by ``localize``.
        progress: Gets the images validated (:func:`compare_artifacts`).
        verify: Fail an artifact whose files do not have the sha256 its manifest recorded (checked before any
            file is read, so such an artifact never runs; ``False`` is ``--no-verify``).

    Returns:
        The report; ``bool(report)`` says whether no artifact failed and at least one passed,
        ``report.failures()`` lists every failure and ``report.not_run()`` what nothing here could run.

    Raises:
        FFNetDeployError: For problems that make validation meaningless as a whole (unreadable checkpoint, bad
            data folder, unknown option values). Problems of one artifact (a missing path, a broken manifest, a
            file that does not match it, a failed check) are recorded in its result instead, so every artifact is
            reported.
    """
    import time

    import torch

    from ffnet_deploy.data.sources import SyntheticSource
    from ffnet_deploy.models.checkpoint import open_checkpoint

    t0 = time.perf_counter()
    if not artifacts:
        raise ConfigError("validate | no artifacts given; pass one or more artifact directories or model files")
    if batch < 1:
        raise ConfigError(f"validate | --batch must be at least 1, got {batch}")
    overrides = dict(tolerances or {})
    for name in overrides:  # fail on unknown keys before any work
        FP32.with_overrides(**{name: overrides[name]})
    if precision_profile not in ("auto", *PROFILES):
        raise ConfigError(f"validate | --precision-profile must be auto, {', '.join(PROFILES)}; got "
                          f"{precision_profile!r}")
    # One artifact that cannot be opened (missing, unrecognisable, a broken manifest, a file that does not match it)
    # is that artifact's failure: the others are still validated and every one appears in the report.
    specs: list[ArtifactSpec] = []
    refused: dict[int, ArtifactResult] = {}
    for index, artifact in enumerate(artifacts):
        try:
            specs.append(resolve_artifact(artifact, precision_profile, runtime, verify=verify))
        except ConfigError as err:
            refused[index] = refused_result(artifact, err, precision_profile, overrides)
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else open_checkpoint(checkpoint, variant,
                                                                                          trust=trust)
    source = source if source is not None else SyntheticSource(32)
    if specs:
        comparison = compare_artifacts(specs, loaded.model, source, batch, overrides,
                                       checkpoint_sha256=loaded.sha256, localize=localize,
                                       localize_samples=localize_samples, progress=progress)
        resolution, transform, compared = comparison.resolution, comparison.transform, list(comparison.results)
    else:
        from ffnet_deploy.data.transform import EvalTransform

        resolution, compared = loaded.model.cfg.resolution, []
        transform = EvalTransform.for_config(loaded.model.cfg, resolution)
    results = [refused[i] if i in refused else compared.pop(0) for i in range(len(artifacts))]
    reference = {**loaded.describe(), "resolution": resolution,
                 "runtime": f"torch {torch.__version__} fp32 eager (not reparameterized)"}
    data = {**source.describe(), "transform": transform.to_dict()}
    settings = {"batch": batch, "precision_profile": precision_profile, "tolerance_overrides": overrides,
                "localize": localize, "runtime": runtime, "verify": verify}
    return ValidationReport(artifacts=results, reference=reference, data=data,
                            environment=environment_info(), settings=settings,
                            seconds=round(time.perf_counter() - t0, 3))


# --------------------------------------------------------------------------------------------------------------------
# The export-time gate: the same engine on synthetic pixels
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class GateReport:
    """The export-time parity gate of one artifact directory. Truthy when every target passed."""

    results: list[ArtifactResult]  # one per target this machine could run
    data: dict  # the synthetic source's description
    skipped: str | None = None  # why nothing ran (no runner for the format here)
    measured_on: dict = field(default_factory=cpu_identity)  # the CPU the gate ran on (environment.cpu_identity)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        """The manifest's ``parity`` block; ``checks`` has validate's per-artifact fields."""
        if not self.results:
            return {"passed": None, "skipped": self.skipped}
        return jsonable({"passed": self.passed, "data": self.data, "measured_on": dict(self.measured_on),
                         "checks": [r.to_dict() for r in self.results]})


def gate_artifact(directory: str | Path, reference: Any, *, manifest: Manifest | None = None, samples: int = 2,
                  seed: int = 0, runtime_notes: list[str] | None = None, decisions: bool = True,
                  source: Any = None) -> GateReport:
    """Run every target of an artifact directory that this machine can run on synthetic pixels (or ``source``).

    The inputs are uniform random pixels fed in the artifact's own input convention; the batch follows the
    manifest (fixed, or the dynamic range's ``opt`` then ``min``), ``samples`` batches of it. An INT8 artifact is
    gated on real images instead (``source``: its calibration or evaluation data), because activation ranges
    calibrated on photos say nothing about noise.

    Args:
        directory: The artifact directory (its manifest written).
        reference: The unfused fp32 PyTorch model of the export.
        manifest: The manifest, when the caller holds it.
        samples: Batches of synthetic input.
        seed: Seed of the synthetic pixels.
        runtime_notes: Receives one line for each target that could not run here.
        decisions: Gate the decision metrics (top-1 agreement, top-5 overlap) too. Random weights give logits
            that are near-ties, so their arg-max is noise: an export without a checkpoint is gated on the numbers
            (errors, cosine) alone, and each result says so.
        source: A data source (:mod:`ffnet_deploy.data`) to gate on instead of synthetic pixels.
    """
    from ffnet_deploy.data.sources import SyntheticSource

    manifest = manifest if manifest is not None else read_manifest(directory)
    targets = []
    for target in artifact_targets(directory, manifest=manifest):
        reason = runtime_unavailable(target.runtime)
        if reason is None:
            target.name = target.path.name if target.path.is_file() else manifest.artifact.path
            targets.append(target)
        elif runtime_notes is not None:
            runtime_notes.append(f"{target.runtime} cannot run here ({reason}); {target.path.name} was not gated")
    lo, opt = manifest.batch.min, manifest.batch.opt
    if source is None:
        n = samples * opt + (lo if lo != opt else 0)
        source = SyntheticSource(n, seed=seed)
    if not targets:
        return GateReport([], source.describe(), f"no runner for {manifest.format} artifacts can run here")
    overrides = {} if decisions else {"min_top1_agreement": None, "min_top5_overlap": None}
    comparison = compare_artifacts(targets, reference, source, batch=opt, overrides=overrides)
    for result in comparison.results:  # the work directory is renamed on publish: record paths inside it
        result.path = result.name
        if not decisions:
            result.warnings.append("random weights: top-1 agreement is reported but not gated (near-tie logits)")
    return GateReport(comparison.results, {**source.describe(), "batch": opt,
                                           "transform": comparison.transform.to_dict()})

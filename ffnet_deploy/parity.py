"""Parity validation: does a deployed artifact still compute what the PyTorch model computes?

Metrics (every artifact, against the fp32 eager PyTorch reference on the same inputs)
-------------------------------------------------------------------------------------
All are accumulated batch by batch (running sums, maxima and counts), so a 50k-image run keeps no logits around.
Differences are computed in float64.

- ``max_abs_error`` / ``mean_abs_error``: max and mean of ``|out - ref|`` over every logit.
- ``max_rel_error``: max of ``|out - ref| / max(|ref|, 1e-6)`` over every logit (the floor keeps logits that are
  exactly zero from producing infinities).
- ``cosine_mean`` / ``cosine_min``: the cosine similarity of the output and reference logit *vectors* of one
  sample, averaged over samples / its worst sample. Two zero vectors count as 1, one zero vector as 0.
- ``psnr_db``: over the whole set, ``10 log10(peak^2 / MSE)`` with ``peak`` = the reference logit range
  (``max(ref) - min(ref)`` over all samples and classes) and ``MSE`` the mean squared error over every logit;
  ``inf`` when the outputs are identical.
- ``top1_agreement``: fraction of samples whose arg-max class is the same; ``top5_overlap``: mean over samples of
  ``|top5(ref) ∩ top5(out)| / 5`` (``k = min(5, classes)``).
- With labels: top-1/top-5 accuracy (%) of reference and artifact and ``acc_drop`` = reference top-1 - artifact
  top-1, in points.
- ``nonfinite``: number of NaN/Inf values in the output (and in the reference, reported separately). A sample with
  any non-finite value is left out of the error metrics, counts as a top-1 disagreement, has no top-5 overlap and
  is wrong for accuracy; the ``finite`` check fails whenever the count is not zero.

Tolerance profiles and where their numbers come from
----------------------------------------------------
Every profile also requires ``finite`` (no NaN/Inf). Any threshold can be overridden (``--tolerance key=value``).

- ``fp32``: ``max_abs_error <= 1e-4 x reference logit range``. An fp32 artifact differs from eager PyTorch only by
  operator reordering and fusion. Polygraphy's ``run --onnxrt --trt`` compares elementwise with ``atol = rtol =
  1e-5`` by default; optimum's ONNX export validation uses a per-architecture ``ATOL_FOR_VALIDATION`` between
  1e-5 and 1e-3. An absolute bound is not scale-free, so it is tied to the logit range here: 1e-4 of the range is
  about 1e-3 for typical ImageNet logits (range ~10-20), at the loose end of optimum's values, while still failing
  on any real graph error (a single wrong weight moves logits by percents of the range).
- ``fp16``: ``cosine_mean >= 0.9995`` and ``top1_agreement >= 0.99``. Half precision carries ~3 decimal digits, so
  elementwise tolerances either fail healthy artifacts or pass broken ones; the direction of the logit vector
  (cosine) and the decision (top-1) are what survives. Qualcomm AI Hub's accuracy checks report PSNR and treat
  > 30 dB as numerically sound; ``min_psnr_db=30`` can be added as an override.
- ``int8``: ``top1_agreement >= 0.97`` and, with labels, ``acc_drop <= 1.0`` point. The 1-point budget follows
  mmdeploy's regression tests (accuracy within ±1 % of the PyTorch metric) and the usual post-training
  quantization target for ImageNet classifiers.

Results are objects, not booleans: :class:`ArtifactResult` holds every metric, every check (name, value, threshold,
passed) and every error; :class:`ValidationReport` collects all artifacts' failures before anything exits, and both
are truthy only when everything passed.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.environment import environment_info
from ffnet_deploy.errors import ConfigError, FFNetDeployError, ParityError

log = logging.getLogger(__name__)

_REL_FLOOR = 1e-6  # denominator floor of the relative error

# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputMetrics:
    """Every parity metric of one artifact's logits against the reference (definitions: module docstring)."""

    num_samples: int  # samples compared
    num_classes: int  # logits per sample
    nonfinite: int  # NaN/Inf values in the artifact's output
    nonfinite_reference: int  # NaN/Inf values in the reference (the checkpoint itself is broken)
    max_abs_error: float  # max |out - ref| over finite samples
    mean_abs_error: float  # mean |out - ref| over finite samples
    max_rel_error: float  # max |out - ref| / max(|ref|, 1e-6)
    reference_range: float  # max(ref) - min(ref) over samples with a finite reference (PSNR peak, fp32 scale)
    cosine_mean: float  # per-sample cosine similarity, mean over samples
    cosine_min: float  # per-sample cosine similarity, worst sample
    psnr_db: float  # 10 log10(range^2 / MSE) over the whole set
    top1_agreement: float  # fraction of samples with the same arg-max
    top5_overlap: float  # mean fraction of shared top-5 classes
    ref_top1: float | None = None  # reference top-1 accuracy (%), with labels
    ref_top5: float | None = None  # reference top-5 accuracy (%)
    top1: float | None = None  # artifact top-1 accuracy (%)
    top5: float | None = None  # artifact top-5 accuracy (%)

    @property
    def acc_drop(self) -> float | None:
        """Reference top-1 minus artifact top-1, in points (positive = the artifact is worse)."""
        return None if self.top1 is None or self.ref_top1 is None else self.ref_top1 - self.top1

    @property
    def top5_drop(self) -> float | None:
        """Reference top-5 minus artifact top-5, in points."""
        return None if self.top5 is None or self.ref_top5 is None else self.ref_top5 - self.top5

    def to_dict(self) -> dict:
        """Plain-JSON form, including the derived drops."""
        return {**asdict(self), "acc_drop": self.acc_drop, "top5_drop": self.top5_drop}


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values per row (unordered)."""
    if k >= x.shape[1]:
        return np.broadcast_to(np.arange(x.shape[1]), x.shape).copy()
    return np.argpartition(-x, k - 1, axis=1)[:, :k]


class MetricAccumulator:
    """Streams batches of ``(reference, output[, labels])`` logits into :class:`OutputMetrics`.

    Memory is O(1) in the number of samples: only sums, maxima and counts are kept.

    Args:
        topk: The k of the top-k overlap and top-k accuracy (5).
    """

    def __init__(self, topk: int = 5) -> None:
        self.topk = topk
        self.n = 0
        self.n_finite = 0
        self.num_classes: int | None = None
        self.nonfinite = 0
        self.nonfinite_reference = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.sum_sq = 0.0
        self.max_rel = 0.0
        self.ref_min = math.inf
        self.ref_max = -math.inf
        self.cos_sum = 0.0
        self.cos_min = math.inf
        self.agree = 0
        self.overlap = 0.0
        self.labeled = 0
        self.ref_correct1 = self.ref_correct5 = self.correct1 = self.correct5 = 0

    def update(self, reference: np.ndarray, output: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add one batch.

        Args:
            reference: Reference logits ``(B, C)``.
            output: Artifact logits, same shape (any float dtype; reshaped from ``(B, C, 1, 1)`` if needed).
            labels: Optional int class indices ``(B,)``.

        Raises:
            ParityError: If the shapes differ.
        """
        ref = np.asarray(reference, dtype=np.float64)
        out = np.asarray(output, dtype=np.float64)
        if out.shape != ref.shape and out.size == ref.size:
            out = out.reshape(ref.shape)
        if ref.ndim != 2 or out.shape != ref.shape:
            raise ParityError(f"parity | artifact output shape {tuple(np.shape(output))} does not match the "
                              f"reference logits {tuple(ref.shape)}")
        if self.num_classes is None:
            self.num_classes = ref.shape[1]
        b, c = ref.shape
        k = min(self.topk, c)
        self.n += b
        out_bad = ~np.isfinite(out)
        ref_bad = ~np.isfinite(ref)
        self.nonfinite += int(out_bad.sum())
        self.nonfinite_reference += int(ref_bad.sum())
        ok = ~(out_bad.any(1) | ref_bad.any(1))
        ref_ok = ref[~ref_bad.any(1)]
        if ref_ok.size:  # the logit range describes the reference, whatever the artifact produced
            self.ref_min = min(self.ref_min, float(ref_ok.min()))
            self.ref_max = max(self.ref_max, float(ref_ok.max()))
        r, o = ref[ok], out[ok]
        if r.size:
            self.n_finite += r.shape[0]
            diff = np.abs(o - r)
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.sum_abs += float(diff.sum())
            self.sum_sq += float((diff**2).sum())
            self.max_rel = max(self.max_rel, float((diff / np.maximum(np.abs(r), _REL_FLOOR)).max()))
            nr, no = np.linalg.norm(r, axis=1), np.linalg.norm(o, axis=1)
            dot = (r * o).sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                cos = np.where((nr == 0) & (no == 0), 1.0, np.where((nr == 0) | (no == 0), 0.0, dot / (nr * no)))
            cos = np.clip(cos, -1.0, 1.0)
            self.cos_sum += float(cos.sum())
            self.cos_min = min(self.cos_min, float(cos.min()))
            self.agree += int((r.argmax(1) == o.argmax(1)).sum())
            tr, to = _topk(r, k), _topk(o, k)
            self.overlap += float((tr[:, :, None] == to[:, None, :]).any(2).sum()) / k
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if labels.shape[0] != b:
                raise ParityError(f"parity | {labels.shape[0]} labels for a batch of {b}")
            self.labeled += b
            ref_safe = np.where(ref_bad, -np.inf, ref)
            rt = _topk(ref_safe, k)
            self.ref_correct1 += int((np.argmax(ref_safe, 1) == labels).sum())
            self.ref_correct5 += int((rt == labels[:, None]).any(1).sum())
            # A sample whose output holds NaN/Inf is wrong, whatever its arg-max happens to be.
            ot = _topk(np.where(out_bad, -np.inf, out), k)
            art1 = (np.argmax(np.where(out_bad, -np.inf, out), 1) == labels) & ok
            art5 = (ot == labels[:, None]).any(1) & ok
            self.correct1 += int(art1.sum())
            self.correct5 += int(art5.sum())

    def result(self) -> OutputMetrics:
        """The metrics of everything added so far.

        Raises:
            ParityError: If nothing was added.
        """
        if self.n == 0:
            raise ParityError("parity | no samples were compared (the data source yielded nothing)")
        nf = self.n_finite
        nan = float("nan")
        rng = self.ref_max - self.ref_min if self.ref_max >= self.ref_min else nan
        count = nf * (self.num_classes or 1)
        mse = self.sum_sq / count if nf else nan
        if not nf:
            psnr = nan
        elif mse == 0:
            psnr = math.inf
        elif rng == 0:
            psnr = -math.inf
        else:
            psnr = 10 * math.log10(rng**2 / mse)
        pct = (lambda c: 100.0 * c / self.labeled) if self.labeled else (lambda c: None)
        return OutputMetrics(
            num_samples=self.n,
            num_classes=self.num_classes or 0,
            nonfinite=self.nonfinite,
            nonfinite_reference=self.nonfinite_reference,
            max_abs_error=self.max_abs if nf else nan,
            mean_abs_error=self.sum_abs / count if nf else nan,
            max_rel_error=self.max_rel if nf else nan,
            reference_range=rng,
            cosine_mean=self.cos_sum / self.n if nf else nan,  # non-finite samples contribute 0
            cosine_min=(self.cos_min if nf == self.n else min(self.cos_min, 0.0)) if nf else nan,
            psnr_db=psnr,
            top1_agreement=self.agree / self.n,
            top5_overlap=self.overlap / self.n,
            ref_top1=pct(self.ref_correct1),
            ref_top5=pct(self.ref_correct5),
            top1=pct(self.correct1),
            top5=pct(self.correct5),
        )


def compare_outputs(reference: np.ndarray, output: np.ndarray, labels: np.ndarray | None = None) -> OutputMetrics:
    """All parity metrics of ``output`` against ``reference`` logits ``(N, C)`` in one call."""
    acc = MetricAccumulator()
    acc.update(reference, output, labels)
    return acc.result()


# --------------------------------------------------------------------------------------------------------------------
# Tolerances and checks
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToleranceProfile:
    """Pass/fail thresholds for one precision. ``None`` disables a check. Sources: module docstring."""

    name: str  # "fp32", "fp16", "int8" (or a custom name)
    atol_scale: float | None = None  # max_abs_error <= atol_scale * reference logit range
    max_abs_error: float | None = None  # max_abs_error <= this absolute value
    min_cosine: float | None = None  # cosine_mean >= this
    min_cosine_worst: float | None = None  # cosine_min (worst sample) >= this
    min_psnr_db: float | None = None  # psnr_db >= this (Qualcomm AI Hub: 30 dB)
    min_top1_agreement: float | None = None  # top1_agreement >= this fraction
    min_top5_overlap: float | None = None  # top5_overlap >= this fraction
    max_acc_drop: float | None = None  # reference top-1 - artifact top-1 <= this many points (labels only)
    localize_sqnr_db: float = 30.0  # --localize: first block / op whose SQNR is below this is reported

    def with_overrides(self, **overrides: float | None) -> ToleranceProfile:
        """A copy with some thresholds replaced.

        Raises:
            ConfigError: For an unknown threshold name.
        """
        known = {f.name for f in fields(self)} - {"name"}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ConfigError(f"tolerance | unknown threshold(s) {bad}; known: {', '.join(sorted(known))}")
        if overrides.get("localize_sqnr_db", 0.0) is None:
            raise ConfigError("tolerance | localize_sqnr_db cannot be 'none'")
        return replace(self, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


FP32 = ToleranceProfile("fp32", atol_scale=1e-4, localize_sqnr_db=30.0)
"""fp32 artifacts: max abs error <= 1e-4 x logit range."""
FP16 = ToleranceProfile("fp16", min_cosine=0.9995, min_top1_agreement=0.99, localize_sqnr_db=30.0)
"""fp16 artifacts: cosine >= 0.9995 and top-1 agreement >= 99 %."""
INT8 = ToleranceProfile("int8", min_top1_agreement=0.97, max_acc_drop=1.0, localize_sqnr_db=15.0)
"""int8 artifacts: top-1 agreement >= 97 % and, with labels, accuracy drop <= 1 point."""

PROFILES: dict[str, ToleranceProfile] = {p.name: p for p in (FP32, FP16, INT8)}
"""Default profiles by precision name."""


def parse_tolerance_overrides(items: Iterable[str]) -> dict[str, float | None]:
    """Parse repeated ``key=value`` options (``value`` may be ``none`` to disable a check).

    Raises:
        ConfigError: For malformed items, unknown keys or non-numeric values.
    """
    known = {f.name for f in fields(ToleranceProfile)} - {"name"}
    out: dict[str, float | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"tolerance | expected key=value, got {item!r} (e.g. --tolerance min_cosine=0.999)")
        if key not in known:
            raise ConfigError(f"tolerance | unknown threshold {key!r}; known: {', '.join(sorted(known))}")
        value = value.strip()
        if value.lower() in ("none", "off", ""):
            out[key] = None
            continue
        try:
            out[key] = float(value.rstrip("%")) / (100.0 if value.endswith("%") else 1.0)
        except ValueError:
            raise ConfigError(f"tolerance | {key} needs a number or 'none', got {value!r}") from None
    return out


def resolve_profile(precision: str, overrides: Mapping[str, float | None] | None = None) -> ToleranceProfile:
    """The default profile of ``precision`` with ``overrides`` applied.

    Raises:
        ConfigError: For an unknown precision or threshold.
    """
    try:
        profile = PROFILES[precision]
    except KeyError:
        raise ConfigError(f"tolerance | unknown precision {precision!r}; choose one of: {', '.join(PROFILES)}") \
            from None
    return profile.with_overrides(**dict(overrides or {}))


@dataclass(frozen=True)
class Check:
    """One pass/fail comparison of a metric against a threshold."""

    name: str  # check name, e.g. "max_abs_error"
    value: float | None  # the measured value
    threshold: float | None  # the limit
    op: str  # "<=" or ">=": how value must compare to threshold
    passed: bool  # whether it held
    detail: str = ""  # how the threshold was derived, e.g. "1e-04 x logit range 12.3"

    @property
    def message(self) -> str:
        """One line: ``name = value (must be op threshold)``."""
        extra = f"; {self.detail}" if self.detail else ""
        return f"{self.name} = {format_value(self.value)} (must be {self.op} {format_value(self.threshold)}{extra})"

    def to_dict(self) -> dict:
        return {**asdict(self), "message": self.message}


def format_value(v: float | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.6g}"


def _cmp(name: str, value: float | None, threshold: float, op: str, detail: str = "") -> Check:
    # NaN compares False both ways, so a NaN metric fails every check it is part of.
    ok = value is not None and (value <= threshold if op == "<=" else value >= threshold)
    return Check(name, value, threshold, op, bool(ok), detail)


def evaluate_checks(metrics: OutputMetrics, profile: ToleranceProfile) -> list[Check]:
    """Apply a profile's thresholds to the metrics. The ``finite`` check is always part of the result."""
    checks = [_cmp("finite", metrics.nonfinite + metrics.nonfinite_reference, 0, "<=",
                   "NaN/Inf values in the output" + (" and in the reference" if metrics.nonfinite_reference else ""))]
    if profile.atol_scale is not None:
        limit = profile.atol_scale * metrics.reference_range
        checks.append(_cmp("max_abs_error", metrics.max_abs_error, limit, "<=",
                           f"{profile.atol_scale:g} x logit range {format_value(metrics.reference_range)}"))
    if profile.max_abs_error is not None:
        checks.append(_cmp("max_abs_error_abs", metrics.max_abs_error, profile.max_abs_error, "<="))
    if profile.min_cosine is not None:
        checks.append(_cmp("cosine_mean", metrics.cosine_mean, profile.min_cosine, ">="))
    if profile.min_cosine_worst is not None:
        checks.append(_cmp("cosine_min", metrics.cosine_min, profile.min_cosine_worst, ">="))
    if profile.min_psnr_db is not None:
        checks.append(_cmp("psnr_db", metrics.psnr_db, profile.min_psnr_db, ">="))
    if profile.min_top1_agreement is not None:
        checks.append(_cmp("top1_agreement", metrics.top1_agreement, profile.min_top1_agreement, ">=",
                           f"{metrics.num_samples} samples"))
    if profile.min_top5_overlap is not None:
        checks.append(_cmp("top5_overlap", metrics.top5_overlap, profile.min_top5_overlap, ">="))
    if profile.max_acc_drop is not None and metrics.acc_drop is not None:
        checks.append(_cmp("acc_drop", metrics.acc_drop, profile.max_acc_drop, "<=",
                           f"top-1 {format_value(metrics.ref_top1)}% -> {format_value(metrics.top1)}%"))
    return checks


# Metrics reported for every artifact; those a profile does not gate appear as informational.
METRIC_NAMES = ("max_abs_error", "mean_abs_error", "max_rel_error", "cosine_mean", "cosine_min", "psnr_db",
                "top1_agreement", "top5_overlap", "ref_top1", "top1", "ref_top5", "top5", "acc_drop")


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
        from ffnet_deploy.data import feed_from_pixels

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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax; the reference for artifacts that output class probabilities (Core ML classifiers)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


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

    The reference is the checkpoint loaded with :func:`~ffnet_deploy.checkpoint.load_ffnet`, in fp32 eager mode and
    *not* reparameterized: the artifact must match the model the user trained. The data is read once; each batch
    goes through the reference and through every artifact, and metrics accumulate as it streams.

    Args:
        artifacts: Artifact directories or model files.
        checkpoint: The source checkpoint.
        variant: FFNet variant (detected from the checkpoint when omitted).
        source: A :mod:`ffnet_deploy.data` source; default 32 synthetic images.
        precision_profile: ``"auto"`` (manifest precision) or ``"fp32"``/``"fp16"``/``"int8"`` for all artifacts.
        batch: Images per batch.
        localize: For each failing artifact, find the first FFNet block (ONNX/OpenVINO) or MIL op (Core ML
            reference) where the error grows (see :mod:`ffnet_deploy.localize`).
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

    from ffnet_deploy.checkpoint import load_ffnet, sha256_file
    from ffnet_deploy.data import EvalTransform, SyntheticSource

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
            from ffnet_deploy.localize import localize_artifact

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

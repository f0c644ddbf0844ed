"""Tolerance profiles: which metric values pass, per precision, and the checks that apply them.

Each precision's profile is part of its entry (:mod:`ffnet_deploy.artifact.precisions`: a new precision brings its
own); :data:`PROFILES` is the live view of them.

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

A verdict on a sample states its uncertainty. The ``top1_agreement`` check carries the 95 % Wilson interval of the
measured fraction; when the interval contains the threshold the check is *borderline*: its verdict follows the point
estimate but says that another sample of the same size may reverse it (an INT8 artifact passed at exactly 0.97 on
100 images and failed at 0.96 on 50). ``min_samples`` (100 for fp16 and int8: one image then moves the agreement by
at most one point, the int8 margin's third) makes a verdict on fewer images carry a warning that names how many to
use. Neither changes which artifacts pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace

from ffnet_deploy.artifact.precisions import PRECISIONS, ToleranceProfile, precision_names
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.validate.metrics import OutputMetrics, format_value, wilson_interval

# --------------------------------------------------------------------------------------------------------------------
# Tolerances and checks
# --------------------------------------------------------------------------------------------------------------------

# ToleranceProfile lives with the precision entries (ffnet_deploy.artifact.precisions), which hold each profile.
__all__ = ["FP16", "FP32", "INT8", "PROFILES", "Check", "ToleranceProfile", "evaluate_checks",
           "parse_tolerance_overrides", "resolve_profile"]

FP32 = PRECISIONS.get("fp32").tolerance
"""fp32 artifacts: max abs error <= 1e-4 x logit range."""
FP16 = PRECISIONS.get("fp16").tolerance
"""fp16 artifacts: cosine >= 0.9995 and top-1 agreement >= 99 %."""
INT8 = PRECISIONS.get("int8").tolerance
"""int8 artifacts: top-1 agreement >= 97 % and, with labels, accuracy drop <= 1 point."""


class _Profiles(Mapping[str, ToleranceProfile]):
    """The profile of every stored precision, by name, in the precisions' order (a live view of the registry)."""

    def __getitem__(self, name: str) -> ToleranceProfile:
        if name not in precision_names(stored=True):
            raise KeyError(name)
        return PRECISIONS.get(name).tolerance

    def __iter__(self) -> Iterator[str]:
        return iter(precision_names(stored=True))

    def __len__(self) -> int:
        return len(precision_names(stored=True))


PROFILES: Mapping[str, ToleranceProfile] = _Profiles()
"""Default profiles by precision name: every stored precision's (:mod:`ffnet_deploy.artifact.precisions`)."""


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
    interval: tuple[float, float] | None = None  # the value's 95 % interval, for a fraction measured on a sample
    borderline: bool = False  # the interval contains the threshold: another sample may reverse the verdict

    @property
    def message(self) -> str:
        """One line: ``name = value (must be op threshold)``, plus the interval of a sampled fraction."""
        extra = f"; {self.detail}" if self.detail else ""
        if self.interval is not None:
            lo, hi = self.interval
            extra += f"; 95 % interval {lo:.3f}-{hi:.3f}"
            if self.borderline:
                extra += ", borderline: another sample may reverse this verdict"
        return f"{self.name} = {format_value(self.value)} (must be {self.op} {format_value(self.threshold)}{extra})"

    def to_dict(self) -> dict:
        return {**asdict(self), "message": self.message}


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
        check = _cmp("top1_agreement", metrics.top1_agreement, profile.min_top1_agreement, ">=",
                     f"{metrics.num_samples} samples")
        interval = wilson_interval(metrics.top1_agreement, metrics.num_samples)
        if interval is not None:
            check = replace(check, interval=(round(interval[0], 4), round(interval[1], 4)),
                            borderline=interval[0] < profile.min_top1_agreement <= interval[1])
        checks.append(check)
    if profile.min_top5_overlap is not None:
        checks.append(_cmp("top5_overlap", metrics.top5_overlap, profile.min_top5_overlap, ">="))
    if profile.max_acc_drop is not None and metrics.acc_drop is not None:
        checks.append(_cmp("acc_drop", metrics.acc_drop, profile.max_acc_drop, "<=",
                           f"top-1 {format_value(metrics.ref_top1)}% -> {format_value(metrics.top1)}%"))
    return checks


def sample_size_warning(metrics: OutputMetrics, profile: ToleranceProfile) -> str | None:
    """The warning for a top-1 verdict judged on fewer images than the profile's ``min_samples``, else ``None``."""
    gates_top1 = profile.min_top1_agreement is not None or profile.max_acc_drop is not None
    if not gates_top1 or profile.min_samples is None or metrics.num_samples >= profile.min_samples:
        return None
    n = metrics.num_samples
    return (f"the {profile.name} top-1 verdicts rest on {n} image{'s' if n != 1 else ''}: one image moves "
            f"top1_agreement by {100 / max(n, 1):.1f} points; judge on at least {profile.min_samples:g} images "
            "(a larger data set, or a larger --limit / --eval-limit) for a verdict a resample does not reverse")


# Metrics reported for every artifact; those a profile does not gate appear as informational.
METRIC_NAMES = ("max_abs_error", "mean_abs_error", "max_rel_error", "cosine_mean", "cosine_min", "psnr_db",
                "top1_agreement", "top5_overlap", "ref_top1", "top1", "ref_top5", "top5", "acc_drop")

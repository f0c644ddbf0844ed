"""The precisions: one :class:`Precision` entry each, in :data:`PRECISIONS`.

A precision is what an artifact computes in (``fp32``, ``fp16``, ``int8``: a manifest records it) or what an engine
is told to execute an artifact in (``bf16``: bench runs an fp32 artifact in bf16; no artifact *is* bf16). Everything
the toolchain knows about a precision is declared in its entry, and every list of precisions derives from
:data:`PRECISIONS`: what a manifest may declare, the tolerance profile validation applies
(:mod:`ffnet_deploy.validate.tolerances`), whether it needs calibration data (and is gated on real images), the
GEMM data type whose roofline bounds it, how engines spell it, and the order of tables and plots.

A format declares which precisions it makes (:class:`~ffnet_deploy.artifact.formats.FormatSpec.precisions`); a
runner which ones it executes (:attr:`~ffnet_deploy.runtimes.base.BaseRunner.execution_precisions`). A new precision
is one :func:`register_precision` call (a test registers a toy one inside ``PRECISIONS.temporarily``).

The numbers of the built-in tolerance profiles and where they come from are documented in
:mod:`ffnet_deploy.validate.tolerances`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.registry import Registry

# --------------------------------------------------------------------------------------------------------------------
# Tolerance profiles
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToleranceProfile:
    """Pass/fail thresholds for one precision. ``None`` disables a check. Sources:
    :mod:`ffnet_deploy.validate.tolerances`."""

    name: str  # "fp32", "fp16", "int8" (or a custom name)
    atol_scale: float | None = None  # max_abs_error <= atol_scale * reference logit range
    max_abs_error: float | None = None  # max_abs_error <= this absolute value
    min_cosine: float | None = None  # cosine_mean >= this
    min_cosine_worst: float | None = None  # cosine_min (worst sample) >= this
    min_psnr_db: float | None = None  # psnr_db >= this (Qualcomm AI Hub: 30 dB)
    min_top1_agreement: float | None = None  # top1_agreement >= this fraction
    min_top5_overlap: float | None = None  # top5_overlap >= this fraction
    max_acc_drop: float | None = None  # reference top-1 - artifact top-1 <= this many points (labels only)
    min_samples: float | None = None  # fewer images than this: the top-1 verdicts carry a warning (too few to judge)
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


# --------------------------------------------------------------------------------------------------------------------
# Precision entries
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """Everything the toolchain knows about one precision.

    A *stored* precision (``executes_as is None``) is one an artifact is made in: a manifest may declare it, a
    format may make it, and it has a tolerance profile. An *execution-only* precision (bf16) names the stored
    precision whose artifact an engine executes in it.
    """

    name: str  # "fp32", "fp16", "bf16", "int8"
    order: int  # position in every list, table and plot (lower first)
    tolerance: ToleranceProfile | None = None  # the profile validation judges an artifact of it with (stored only)
    executes_as: str | None = None  # execution-only: the stored precision of the artifact it runs (bf16 -> fp32)
    calibrated: bool = False  # made from calibration data: needs --calib, gated on real images, not in the mixer
    # and peer comparisons (in-memory models have no calibration)
    roofline_dtype: str = "fp32"  # the GEMM probe's data type whose peak bounds a run at it (fp16 runs in fp32)
    engine_name: str | None = None  # how engines report it as their execution precision ("f32"); None: any
    baseline: bool = False  # the reference the others are compared with ("x FP32" speedups)
    summary: str = ""  # one phrase for help texts

    @property
    def stored(self) -> bool:
        """An artifact can be made in it (a manifest may declare it)."""
        return self.executes_as is None

    @property
    def artifact_precision(self) -> str:
        """The precision of the artifact that runs it: itself, or the one it executes."""
        return self.executes_as or self.name

    def __post_init__(self) -> None:
        if self.stored and self.tolerance is None:
            raise ValueError(f"precision {self.name!r} is stored in artifacts and needs a tolerance profile")


def _precision_order(name: str) -> tuple[int, str]:
    return (PRECISIONS.get(name).order, name) if name in PRECISIONS else (1 << 30, name)


PRECISIONS: Registry[Precision] = Registry("precision")
"""Every precision, by name (:func:`precision_names` lists them in their declared order)."""


def register_precision(precision: Precision) -> Precision:
    """Register ``precision`` under its name (permanently; a test uses ``PRECISIONS.temporarily``)."""
    return PRECISIONS.register(precision.name)(precision)


def get_precision(name: str) -> Precision:
    """The entry of ``name``.

    Raises:
        ConfigError: For an unknown precision (the message lists the known ones).
    """
    return PRECISIONS.get(name)


def precision_names(*, stored: bool | None = None, calibrated: bool | None = None) -> tuple[str, ...]:
    """Registered precisions in their declared order, optionally only stored (or execution-only) ones, or only
    calibrated (or uncalibrated) ones."""
    out = [p for p in PRECISIONS.values()
           if (stored is None or p.stored == stored) and (calibrated is None or p.calibrated == calibrated)]
    return tuple(p.name for p in sorted(out, key=lambda p: (p.order, p.name)))


def sort_precisions(names) -> list[str]:
    """``names`` in the declared order of the precisions (unknown names last, alphabetically)."""
    return sorted(names, key=_precision_order)


def is_calibrated(name: str) -> bool:
    """Whether ``name`` is made from calibration data (``False`` for an unknown name)."""
    return name in PRECISIONS and PRECISIONS.get(name).calibrated


def baseline_precision() -> str:
    """The precision the others are compared with (fp32)."""
    return next(p.name for p in PRECISIONS.values() if p.baseline)


def listing(names) -> str:
    """``"fp32, fp16 or int8"``: names for a help text or a message."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# Sources of these numbers: ffnet_deploy.validate.tolerances.
register_precision(Precision(
    "fp32", 10, ToleranceProfile("fp32", atol_scale=1e-4, localize_sqnr_db=30.0), roofline_dtype="fp32",
    engine_name="f32", baseline=True, summary="float32"))
register_precision(Precision(
    "fp16", 20, ToleranceProfile("fp16", min_cosine=0.9995, min_top1_agreement=0.99, min_samples=100,
                           localize_sqnr_db=30.0),
    roofline_dtype="fp32", engine_name="f16", summary="float16 weights"))
register_precision(Precision(
    "bf16", 30, executes_as="fp32", roofline_dtype="bf16", engine_name="bf16",
    summary="an fp32 artifact executed in bfloat16 (bench only)"))
register_precision(Precision(
    "int8", 40, ToleranceProfile("int8", min_top1_agreement=0.97, max_acc_drop=1.0, min_samples=100,
                           localize_sqnr_db=15.0),
    calibrated=True, roofline_dtype="int8", summary="calibrated on --calib data"))

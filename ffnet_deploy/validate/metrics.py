"""Metrics: the one definition of every number that compares outputs with a reference, and of accuracy and SQNR.

Everything in the project that scores an output against a reference calls this module: validation and the export
gate (:class:`MetricAccumulator`), ``validate --localize`` (:func:`sqnr_db` per block), sensitivity analysis and the
accuracy budget (:func:`sqnr_db`, :func:`top1_agreement`, :func:`top1_accuracy`, ranked by :func:`sqnr_sort_key`),
NNCF accuracy control's validation function, the demo's test accuracy, the studies and the tests.

One-shot metrics (any pair of arrays)
-------------------------------------
All are computed in float64. A ``reference`` and an ``output`` of the same size but another shape (``(B, C, 1, 1)``
against ``(B, C)``) are compared after reshaping the output to the reference's shape; arrays of different sizes
raise :class:`~ffnet_deploy.errors.ShapeMismatchError` (a ``ParityError`` and a ``RuntimeBackendError``).

- :func:`sqnr_db`: ``10 log10(sum(ref^2) / sum((ref - out)^2))`` over every element. Identical arrays (no noise,
  including two all-zero or two empty arrays) give ``inf``; a zero reference with any noise ``-inf``; an all-zero
  output against a non-zero reference 0 dB; a NaN or Inf in either array ``nan`` (the ratio then means nothing).
- :func:`sqnr_sort_key`: the order of SQNRs from worst to best, for rankings: ``nan`` first (the output was not even
  finite, the worst there is), then ascending from ``-inf`` to ``inf``. Python's ``sort`` with ``nan`` in the keys
  otherwise leaves an order that depends on where the ``nan`` happened to be.
- :func:`top1_matches` / :func:`top1_agreement`: per sample, whether the arg-max class of ``output`` is that of
  ``reference`` (logits ``(N, C)``; ties go to the lowest class index, numpy's rule, on both sides). A sample with a
  NaN or Inf in either row counts as a disagreement, and the fraction is over *all* samples.
- :func:`topk_hits` / :func:`top1_accuracy`: per sample, whether the label is among the ``k`` highest logits; a
  sample whose logits hold a NaN or Inf is wrong, whatever its arg-max happens to be. Accuracy is in percent, over
  all samples. No samples at all is an error (:class:`~ffnet_deploy.errors.ParityError`), not a number.

Streamed parity metrics (every artifact, against the fp32 eager PyTorch reference on the same inputs)
-----------------------------------------------------------------------------------------------------
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
- ``top1_agreement``: :func:`top1_agreement`, counted batch by batch; ``top5_overlap``: mean over samples of
  ``|top5(ref) ∩ top5(out)| / 5`` (``k = min(5, classes)``).
- With labels: top-1/top-5 accuracy (%) of reference and artifact (:func:`topk_hits`) and ``acc_drop`` = reference
  top-1 - artifact top-1, in points.
- ``nonfinite``: number of NaN/Inf values in the output (and in the reference, reported separately). A sample with
  any non-finite value (in the output or the reference) is left out of the error metrics, counts as a top-1
  disagreement, has no top-5 overlap and is wrong for the artifact's accuracy; a reference row with a non-finite
  value is wrong for the reference's accuracy. The ``finite`` check fails whenever the count is not zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ffnet_deploy.errors import ParityError, ShapeMismatchError

_REL_FLOOR = 1e-6  # denominator floor of the relative error

# --------------------------------------------------------------------------------------------------------------------
# One-shot metrics
# --------------------------------------------------------------------------------------------------------------------


def _matched(reference, output, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``reference`` and ``output`` as float64 arrays of the reference's shape (same-size outputs are reshaped)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if out.shape != ref.shape:
        if out.size != ref.size:
            raise ShapeMismatchError(f"{what} shape {tuple(out.shape)} does not match the reference "
                                     f"{tuple(ref.shape)}")
        out = out.reshape(ref.shape)
    return ref, out


def _logits(reference, output, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_matched`, for ``(N, C)`` logits."""
    ref, out = _matched(reference, output, what)
    if ref.ndim != 2:
        raise ShapeMismatchError(f"{what} shape {tuple(np.shape(output))} does not match the reference "
                                 f"{tuple(ref.shape)}: logits must be (samples, classes)")
    return ref, out


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1)


def _require_samples(n: int, what: str) -> None:
    if n == 0:
        raise ParityError(f"{what} | no samples to compare")


def sqnr_db(reference, output, *, what: str = "metrics | output") -> float:
    """Signal-to-quantization-noise ratio of ``output`` against ``reference``, in dB.

    ``10 log10(sum(ref^2) / sum((ref - out)^2))`` in float64: ``inf`` when identical (also two all-zero or two
    empty arrays), ``-inf`` for a zero reference with any noise, 0 dB for an all-zero output against a non-zero
    reference, ``nan`` if either array holds a NaN or Inf (module docstring).

    Args:
        reference: The reference values, any shape.
        output: The values compared, the same shape or at least the same size.
        what: Who compares what, for the error message.

    Raises:
        ShapeMismatchError: If the sizes differ.
    """
    ref, out = _matched(reference, output, what)
    if not (np.isfinite(ref).all() and np.isfinite(out).all()):
        return math.nan
    noise = float(((ref - out) ** 2).sum())
    if noise == 0.0:
        return math.inf
    signal = float((ref**2).sum())
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_sort_key(db: float) -> tuple[int, float]:
    """Sort key that orders SQNRs worst first: ``nan`` (non-finite output) before every number, then ascending."""
    return (0, 0.0) if math.isnan(db) else (1, db)


def top1_matches(reference, output, *, what: str = "metrics | output") -> np.ndarray:
    """Per sample (bool ``(N,)``): same arg-max class in ``output`` as in ``reference``; ``False`` where either row
    holds a NaN or Inf.

    Raises:
        ShapeMismatchError: If the logits cannot be matched (module docstring).
    """
    ref, out = _logits(reference, output, what)
    return _agreeing(ref, out)


def _agreeing(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    if ref.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return (ref.argmax(1) == out.argmax(1)) & _finite_rows(ref) & _finite_rows(out)


def top1_agreement(reference, output, *, what: str = "metrics | output") -> float:
    """Fraction of *all* samples whose arg-max class is the same in ``output`` and ``reference`` (a sample with a
    NaN or Inf counts as a disagreement).

    Raises:
        ShapeMismatchError: If the logits cannot be matched.
        ParityError: If there are no samples.
    """
    matches = top1_matches(reference, output, what=what)
    _require_samples(len(matches), what)
    return int(matches.sum()) / len(matches)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values per row (unordered)."""
    if k >= x.shape[1]:
        return np.broadcast_to(np.arange(x.shape[1]), x.shape).copy()
    return np.argpartition(-x, k - 1, axis=1)[:, :k]


def topk_hits(logits, labels, k: int = 1, *, what: str = "metrics | labels") -> np.ndarray:
    """Per sample (bool ``(N,)``): the label is among the ``k`` highest logits (``k`` capped at the class count);
    ``False`` for a row that holds a NaN or Inf.

    Raises:
        ShapeMismatchError: If ``logits`` is not ``(N, C)`` or there are not ``N`` labels.
    """
    x = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if x.ndim != 2 or labels.shape[0] != x.shape[0]:
        raise ShapeMismatchError(f"{what} | {labels.shape[0]} labels for logits of shape {tuple(x.shape)}")
    return _hits(x, labels, k)


def _hits(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    finite = _finite_rows(x)
    if k == 1:
        hit = np.argmax(x, 1) == labels if len(x) else np.zeros(0, dtype=bool)
    else:
        hit = (_topk(np.where(np.isfinite(x), x, -np.inf), min(k, x.shape[1])) == labels[:, None]).any(1)
    return hit & finite


def top1_accuracy(logits, labels, *, what: str = "metrics | labels") -> float:
    """Top-1 accuracy in percent over all samples (a row with a NaN or Inf is wrong).

    Raises:
        ShapeMismatchError: If ``logits`` is not ``(N, C)`` or there are not ``N`` labels.
        ParityError: If there are no samples.
    """
    hits = topk_hits(logits, labels, 1, what=what)
    _require_samples(len(hits), what)
    return 100.0 * int(hits.sum()) / len(hits)


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
        ref, out = _logits(reference, output, "parity | artifact output")
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
            tr, to = _topk(r, k), _topk(o, k)
            self.overlap += float((tr[:, :, None] == to[:, None, :]).any(2).sum()) / k
        # Non-finite samples are disagreements, counted over all samples (the one definition: top1_matches).
        self.agree += int(_agreeing(ref, out).sum())
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if labels.shape[0] != b:
                raise ShapeMismatchError(f"parity | {labels.shape[0]} labels for a batch of {b}")
            self.labeled += b
            self.ref_correct1 += int(_hits(ref, labels, 1).sum())
            self.ref_correct5 += int(_hits(ref, labels, k).sum())
            # A sample with a NaN/Inf in the output (or in its reference) is wrong for the artifact.
            self.correct1 += int((_hits(out, labels, 1) & ok).sum())
            self.correct5 += int((_hits(out, labels, k) & ok).sum())

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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax; the reference for artifacts that output class probabilities (Core ML classifiers)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


WILSON_Z = 1.959964
"""z of a two-sided 95 % interval."""


def wilson_interval(fraction: float | None, n: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """The Wilson score interval (95 % by default) of a proportion ``fraction`` measured on ``n`` samples.

    Wilson's interval, unlike the normal approximation, stays inside [0, 1] and is not of zero width at 0 or 1
    (3 disagreements in 100 images: 0.915 to 0.990). ``None`` when there is nothing to bound.
    """
    if fraction is None or n <= 0 or not math.isfinite(fraction):
        return None
    p = min(max(float(fraction), 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return round(lo, 12), round(hi, 12)  # 1.0 stays 1.0, not 0.9999999999999999


def reference_accuracy_warning(ref_top1: float | None, num_classes: int | None) -> str | None:
    """The warning for a PyTorch reference that scores no better than chance on labelled data, else ``None``.

    A reference that scores 0 % (or at most chance, 100 / classes) means the labels do not follow the model's class
    order (another label file, another class mapping) or the checkpoint is not trained: every accuracy figure, and
    the accuracy drop the gate checks, is then meaningless although it "passes".
    """
    if ref_top1 is None or not math.isfinite(ref_top1):
        return None
    chance = 100.0 / num_classes if num_classes else 0.0
    if ref_top1 > chance:
        return None
    return (f"the PyTorch reference scores {ref_top1:.1f} % top-1 on these labels (chance is {chance:.1f} %): the "
            "labels probably do not follow the model's classes (check the label file or the class order), or the "
            "checkpoint is untrained; the accuracy figures say nothing")


def format_value(v: float | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.6g}"

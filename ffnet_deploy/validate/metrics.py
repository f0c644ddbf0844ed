"""Parity metrics: one definition of every number that compares an artifact's outputs with the reference.


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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ffnet_deploy.errors import ParityError

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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax; the reference for artifacts that output class probabilities (Core ML classifiers)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def format_value(v: float | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.6g}"

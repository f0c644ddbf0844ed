"""Sensitivity analysis and the accuracy budget: which layer groups lose accuracy when quantized.

:func:`analyze` quantizes one layer group (:mod:`~ffnet_deploy.quantize.groups`) at a time, everything else in float,
and measures on evaluation images what that alone does to the model: the logit SQNR against FP32, the top-1 agreement
and, with labels, the accuracy. The groups come out ranked, most harmful first. Depthwise 7x7 convs and the GELUs
inside a token mixer are where FFNet's INT8 error usually concentrates; this shows it per block instead of guessing.

:func:`fit_accuracy_budget` is the automatic mixed precision behind ``--max-drop``: it quantizes everything, and while
the accuracy drop exceeds the budget it keeps the next most sensitive group in float (the ranking from
:func:`analyze`). It reports the groups it kept in float and the accuracy it reached.

Backends implement :class:`QuantBackend`: ONNX Runtime (:class:`OnnxBackend`) and OpenVINO (in
:mod:`~ffnet_deploy.quantize.openvino_int8`).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ffnet_deploy.data.transform import EvalTransform
from ffnet_deploy.errors import QuantizationError
from ffnet_deploy.quantize.groups import sorted_groups

Infer = Callable[[np.ndarray], np.ndarray]  # normalized float32 (B, 3, H, W) -> logits (B, classes)
Log = Callable[[str], None]

MAX_EVAL_IMAGES = 2000
"""Evaluation images read for sensitivity and the budget; beyond this the ranking no longer changes in practice."""


class QuantBackend(Protocol):
    """What sensitivity analysis needs from a quantizer."""

    name: str

    def groups(self) -> list[str]:
        """The layer groups that can be quantized, in network order."""

    def reference(self) -> Infer:
        """The FP32 model."""

    def quantized(self, float_groups: Sequence[str] = (), only_groups: Sequence[str] | None = None) -> Infer:
        """The model quantized except ``float_groups``; with ``only_groups``, only those groups quantized."""


@dataclass
class EvalSet:
    """Evaluation images held in memory (normalized), with labels when the source has them."""

    images: np.ndarray  # float32 (N, 3, H, W)
    labels: np.ndarray | None  # int64 (N,) or None
    description: dict  # the source's description

    def batches(self, size: int = 16) -> Iterable[np.ndarray]:
        for start in range(0, len(self.images), size):
            yield self.images[start:start + size]


def load_eval_set(data, transform: EvalTransform, limit: int = MAX_EVAL_IMAGES) -> EvalSet:
    """Read ``--eval-data`` (an ImageFolder, a folder of images, or ``digits``: its held-out test split)."""
    from ffnet_deploy.data.sources import source_from_spec

    source = source_from_spec(data, split="test", limit=limit)
    images, labels = [], []
    for batch in source.batches(transform, batch_size=32):
        images.append(batch.images)
        if batch.labels is not None:
            labels.append(batch.labels)
    if not images:
        raise QuantizationError(f"quantize | --eval-data {data} holds no usable image")
    return EvalSet(np.concatenate(images), np.concatenate(labels) if labels else None, source.describe())


def run(infer: Infer, data: EvalSet) -> np.ndarray:
    return np.concatenate([np.asarray(infer(batch), dtype=np.float32) for batch in data.batches()])


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of the logits, in dB (inf when identical)."""
    noise = float(np.sum((reference.astype(np.float64) - test) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return math.inf if noise == 0 else 10.0 * math.log10(max(signal, 1e-30) / noise)


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(np.mean(np.argmax(logits, 1) == labels) * 100.0)


@dataclass
class GroupEffect:
    """What quantizing one layer group (alone) does."""

    group: str  # the layer group
    sqnr_db: float  # logit SQNR against FP32
    top1_agreement: float  # fraction of images whose arg-max matches FP32
    accuracy: float | None  # top-1 accuracy in percent, with labels
    accuracy_drop: float | None  # FP32 accuracy minus this, in points


@dataclass
class SensitivityReport:
    """Every group's effect, most harmful first, and the FP32 / fully quantized baselines."""

    backend: str
    effects: list[GroupEffect]  # ranked: lowest SQNR first
    fp32_accuracy: float | None
    int8_accuracy: float | None  # everything quantized
    int8_sqnr_db: float  # everything quantized
    int8_top1_agreement: float
    images: int
    data: dict = field(default_factory=dict)

    def ranking(self) -> list[str]:
        return [e.group for e in self.effects]

    def to_dict(self) -> dict:
        return {"backend": self.backend, "images": self.images, "data": self.data,
                "fp32_accuracy": self.fp32_accuracy, "int8_accuracy": self.int8_accuracy,
                "int8_sqnr_db": _finite(self.int8_sqnr_db), "int8_top1_agreement": self.int8_top1_agreement,
                "groups": [{**asdict(e), "sqnr_db": _finite(e.sqnr_db)} for e in self.effects]}


def _finite(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 3)


def _effect(group: str, ref: np.ndarray, out: np.ndarray, data: EvalSet, fp32_acc: float | None) -> GroupEffect:
    acc = accuracy(out, data.labels)
    agree = float(np.mean(np.argmax(ref, 1) == np.argmax(out, 1)))
    return GroupEffect(group, sqnr_db(ref, out), agree, acc, None if acc is None else fp32_acc - acc)


def analyze(backend: QuantBackend, data: EvalSet, log: Log | None = None) -> SensitivityReport:
    """Quantize each layer group alone and rank the groups by the logit SQNR they leave (lowest first)."""
    log = log or (lambda _m: None)
    ref = run(backend.reference(), data)
    fp32_acc = accuracy(ref, data.labels)
    full = run(backend.quantized(), data)
    groups = backend.groups()
    effects = []
    for i, group in enumerate(groups, 1):
        log(f"progress: sensitivity {i}/{len(groups)}: {group}")
        effects.append(_effect(group, ref, run(backend.quantized(only_groups=[group]), data), data, fp32_acc))
    effects.sort(key=lambda e: (e.sqnr_db, e.group))
    whole = _effect("all", ref, full, data, fp32_acc)
    return SensitivityReport(backend.name, effects, fp32_acc, whole.accuracy, whole.sqnr_db, whole.top1_agreement,
                             len(data.images), data.description)


@dataclass
class BudgetFit:
    """The outcome of :func:`fit_accuracy_budget`."""

    max_drop: float  # the budget, in points
    fp32_accuracy: float
    int8_accuracy: float  # with every group quantized
    accuracy: float  # with float_groups kept in float
    float_groups: list[str]  # groups kept in float, most sensitive first
    steps: list[dict]  # accuracy after each group was moved to float
    images: int

    @property
    def drop(self) -> float:
        return self.fp32_accuracy - self.accuracy

    def to_dict(self) -> dict:
        return {**asdict(self), "drop": round(self.drop, 3)}


def fit_accuracy_budget(backend: QuantBackend, eval_data, transform: EvalTransform, max_drop: float,
                        log: Log | None = None, data: EvalSet | None = None) -> BudgetFit:
    """Keep the most sensitive layer groups in float until the accuracy drop is within ``max_drop`` points.

    Raises:
        QuantizationError: ``eval_data`` has no labels, or the budget cannot be met even with every group in float
            but one (the message gives the best drop reached).
    """
    log = log or (lambda _m: None)
    data = data if data is not None else load_eval_set(eval_data, transform)
    if data.labels is None:
        raise QuantizationError(f"quantize | --max-drop needs labelled --eval-data; {eval_data} has no labels (use "
                                "an ImageFolder or digits)")
    ref_acc = accuracy(run(backend.reference(), data), data.labels)
    full_acc = accuracy(run(backend.quantized(), data), data.labels)
    log(f"accuracy budget: FP32 {ref_acc:.2f} %, INT8 {full_acc:.2f} % on {len(data.images)} images "
        f"(budget {max_drop} points)")
    fit = BudgetFit(max_drop, ref_acc, full_acc, full_acc, [], [], len(data.images))
    if ref_acc - full_acc <= max_drop:
        return fit
    ranking = analyze(backend, data, log).ranking()
    for group in ranking[:-1]:
        fit.float_groups.append(group)
        fit.accuracy = accuracy(run(backend.quantized(float_groups=fit.float_groups), data), data.labels)
        fit.steps.append({"float_group": group, "accuracy": round(fit.accuracy, 3)})
        log(f"accuracy budget: {group} kept in float -> {fit.accuracy:.2f} %")
        if fit.drop <= max_drop:
            return fit
    raise QuantizationError(
        f"quantize | no INT8 configuration meets --max-drop {max_drop}: FP32 {ref_acc:.2f} %, best INT8 "
        f"{fit.accuracy:.2f} % with {len(fit.float_groups)} groups in float; raise --max-drop or calibrate with "
        "more representative --calib data"
    )


class OnnxBackend:
    """ONNX Runtime INT8 (:mod:`~ffnet_deploy.quantize.onnx_int8`) as a :class:`QuantBackend`."""

    name = "onnxruntime"

    def __init__(self, fp32: Path, prepared: Path, ranges: dict, target: str, workdir: Path | None = None,
                 threads: int = 2) -> None:
        self.fp32, self.prepared, self.ranges, self.target = Path(fp32), Path(prepared), ranges, target
        self.threads = threads
        self._tmp = tempfile.TemporaryDirectory(prefix="ffnet-sensitivity-", dir=workdir)
        self._count = 0

    def groups(self) -> list[str]:
        import onnx

        from ffnet_deploy.quantize.groups import layer_group

        graph = onnx.load(str(self.prepared)).graph
        return sorted_groups(g for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                             for g in [layer_group(n.name)] if g)

    def _session(self, path: Path) -> Infer:
        from ffnet_deploy.quantize.onnx_int8 import cpu_session

        session = cpu_session(path, self.threads)
        spec = session.get_inputs()[0]
        fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None

        def infer(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x, dtype=np.float32)
            if fixed is None or fixed == len(x):
                return session.run(None, {spec.name: x})[0]
            # a fixed-batch export (the artifact itself): its batch at a time
            return np.concatenate([session.run(None, {spec.name: x[i:i + fixed]})[0]
                                   for i in range(0, len(x), fixed)])

        return infer

    def reference(self) -> Infer:
        return self._session(self.fp32)

    def quantized(self, float_groups: Sequence[str] = (), only_groups: Sequence[str] | None = None) -> Infer:
        from ffnet_deploy.quantize import onnx_int8

        self._count += 1
        out = Path(self._tmp.name) / f"candidate{self._count}.onnx"
        onnx_int8.quantize_onnx(self.prepared, out, self.ranges, target=self.target, exclude_groups=list(float_groups),
                                include_groups=None if only_groups is None else list(only_groups))
        return self._session(out)

    def close(self) -> None:
        self._tmp.cleanup()

"""Sensitivity analysis and the accuracy budget: which layer groups lose accuracy when quantized.

:func:`analyze` quantizes one layer group (:mod:`~ffnet_deploy.quantize.groups`) at a time, everything else in float,
and measures on evaluation images what that alone does to the model: the logit SQNR against FP32, the top-1 agreement
and, with labels, the accuracy. The groups come out ranked, most harmful first. Depthwise 7x7 convs and the GELUs
inside a token mixer are where FFNet's INT8 error usually concentrates; this shows it per block instead of guessing.

:func:`fit_accuracy_budget` is the automatic mixed precision behind ``--max-drop``: it quantizes everything, and while
the accuracy drop exceeds the budget it keeps the next most sensitive group in float (the ranking from
:func:`analyze`). It reports the groups it kept in float and the accuracy it reached.

Backends implement :class:`QuantBackend`: ONNX Runtime (:class:`OnnxBackend`) and OpenVINO with NNCF
(:class:`OpenVINOBackend`). Both run every model, FP32 and each candidate, through the project's runners
(:func:`ffnet_deploy.runtimes.create_runner`: ONNX Runtime with its threads and spinning off, OpenVINO with f32
inference precision), so sensitivity sees the numbers ``validate`` and ``bench`` would see. The metrics are those of
:mod:`ffnet_deploy.validate.metrics`: logit SQNR, top-1 agreement and top-1 accuracy, with a non-finite output ranked
as the most harmful (:func:`~ffnet_deploy.validate.metrics.sqnr_sort_key`).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ffnet_deploy.data.transform import EvalTransform
from ffnet_deploy.errors import QuantizationError
from ffnet_deploy.progress import Sink, as_progress
from ffnet_deploy.quantize.groups import sorted_groups
from ffnet_deploy.validate.metrics import sqnr_db, sqnr_sort_key, top1_accuracy, top1_agreement

Infer = Callable[[np.ndarray], np.ndarray]  # normalized float32 (B, 3, H, W) -> logits (B, classes)

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
    """The logits of ``infer`` over ``data``; an ``infer`` with a ``close()`` (a runner) is released after."""
    try:
        return np.concatenate([np.asarray(infer(batch), dtype=np.float32) for batch in data.batches()])
    finally:
        close = getattr(infer, "close", None)
        if close is not None:
            close()


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy in percent (:func:`~ffnet_deploy.validate.metrics.top1_accuracy`); ``None`` without labels."""
    return None if labels is None else top1_accuracy(logits, labels)


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
    return GroupEffect(group, sqnr_db(ref, out), top1_agreement(ref, out), acc,
                       None if acc is None else fp32_acc - acc)


def analyze(backend: QuantBackend, data: EvalSet, log: Sink | None = None) -> SensitivityReport:
    """Quantize each layer group alone and rank the groups by the logit SQNR they leave, worst first.

    A group whose quantization makes the logits non-finite (SQNR ``nan``) ranks first, then ascending SQNR from
    ``-inf``; equal SQNRs keep the group-name order (:func:`~ffnet_deploy.validate.metrics.sqnr_sort_key`).
    """
    log = as_progress(log)
    ref = run(backend.reference(), data)
    fp32_acc = accuracy(ref, data.labels)
    full = run(backend.quantized(), data)
    groups = backend.groups()
    effects = []
    for i, group in enumerate(groups, 1):
        log.step(i, len(groups), f"sensitivity: {group}")
        effects.append(_effect(group, ref, run(backend.quantized(only_groups=[group]), data), data, fp32_acc))
    effects.sort(key=lambda e: (sqnr_sort_key(e.sqnr_db), e.group))
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
                        log: Sink | None = None, data: EvalSet | None = None) -> BudgetFit:
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


class RunnerInfer:
    """An :data:`Infer` that runs a model file through a runner (:func:`ffnet_deploy.runtimes.create_runner`).

    The runner is activated on the first call and released by :meth:`close` (which :func:`run` calls), together with
    the candidate files it was given to delete. A model with a fixed batch (an exported artifact) is fed its batch at
    a time.

    Args:
        runtime: Runner name.
        path: The model file.
        options: Runner options (``threads``, ``session_options``, ``inference_precision``, ...).
        owned: Files to delete on :meth:`close` (a candidate written for this evaluation only).
    """

    def __init__(self, runtime: str, path: Path, options: dict[str, Any], owned: Sequence[Path] = ()) -> None:
        self.runtime, self.path, self.options, self.owned = runtime, Path(path), dict(options), list(owned)
        self.runner: Any = None

    def _active(self):
        if self.runner is None:
            from ffnet_deploy.runtimes import create_runner

            self.runner = create_runner(self.runtime, self.path, **self.options).activate()
        return self.runner

    def __call__(self, x: np.ndarray) -> np.ndarray:
        runner = self._active()
        spec = next(iter(runner.input_metadata().values()))
        output = runner.output_names()[0]
        x = np.ascontiguousarray(x, dtype=np.float32)
        fixed = spec.shape[0]
        if fixed is None or fixed == len(x):
            return runner.infer({spec.name: x})[output]
        # a fixed-batch export (the artifact itself): its batch at a time
        return np.concatenate([runner.infer({spec.name: x[i:i + fixed]})[output] for i in range(0, len(x), fixed)])

    def close(self) -> None:
        if self.runner is not None and self.runner.is_active:
            self.runner.deactivate()
        self.runner = None
        for path in self.owned:
            path.unlink(missing_ok=True)


class OnnxBackend:
    """ONNX Runtime INT8 (:mod:`~ffnet_deploy.quantize.onnx_int8`) as a :class:`QuantBackend`.

    Every model runs in the ``onnxruntime`` runner on ``threads`` intra-op threads with spinning off.
    """

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

    def _infer(self, path: Path, owned: Sequence[Path] = ()) -> RunnerInfer:
        from ffnet_deploy.runtimes.onnxruntime import no_spinning

        return RunnerInfer("onnxruntime", path, {"threads": self.threads, "session_options": no_spinning}, owned)

    def reference(self) -> RunnerInfer:
        return self._infer(self.fp32)

    def quantized(self, float_groups: Sequence[str] = (), only_groups: Sequence[str] | None = None) -> RunnerInfer:
        from ffnet_deploy.quantize import onnx_int8

        self._count += 1
        out = Path(self._tmp.name) / f"candidate{self._count}.onnx"
        onnx_int8.quantize_onnx(self.prepared, out, self.ranges, target=self.target, exclude_groups=list(float_groups),
                                include_groups=None if only_groups is None else list(only_groups))
        return self._infer(out, owned=[out])

    def close(self) -> None:
        self._tmp.cleanup()


class OpenVINOBackend:
    """OpenVINO INT8 by NNCF (:mod:`~ffnet_deploy.quantize.openvino_int8`) as a :class:`QuantBackend`.

    The FP32 model is the ONNX ``fp32`` converted as the OpenVINO exporter converts it (or an IR, read as it is). A
    candidate is quantized by NNCF with every group that must stay float in its ignored scope, saved as an IR in the
    scratch folder and run in the ``openvino`` runner with f32 inference precision (what stays float is not run in
    bf16) on ``threads`` threads, like the FP32 IR it is compared with. NNCF collects its statistics for each
    candidate, since those of a step after the first depend on what the earlier steps quantized.

    Args:
        fp32: The FP32 ONNX (or ``model.xml``).
        calib: The calibration set NNCF reads.
        workdir: Where the scratch folder goes.
        settings: NNCF settings of every candidate (their ``ignored_groups`` are replaced per candidate).
        threads: Inference threads of the runner.
    """

    name = "openvino"

    def __init__(self, fp32: Path, calib, workdir: Path | None = None, settings=None, threads: int = 2) -> None:
        from ffnet_deploy.quantize.openvino_int8 import NNCFSettings

        if calib is None or len(calib) == 0:
            raise QuantizationError("sensitivity | the OpenVINO backend quantizes each candidate with NNCF, which "
                                    "needs calibration images; pass --calib DATA")
        self.fp32, self.calib, self.threads = Path(fp32), calib, threads
        self.settings = settings if settings is not None else NNCFSettings(subset_size=len(calib))
        self._tmp = tempfile.TemporaryDirectory(prefix="ffnet-sensitivity-", dir=workdir)
        self._count = 0
        self._model: Any = None
        self._fp32_ir: Path | None = None

    def _fp32_model(self):
        if self._model is None:
            import openvino as ov

            # An ONNX is converted as the OpenVINO exporter converts it; an IR is read as it is.
            self._model = (ov.Core().read_model(str(self.fp32)) if self.fp32.suffix == ".xml"
                           else ov.convert_model(str(self.fp32)))
        return self._model

    def groups(self) -> list[str]:
        from ffnet_deploy.quantize.openvino_int8 import model_groups

        return model_groups(self._fp32_model())

    def _save(self, model, stem: str) -> tuple[Path, list[Path]]:
        import openvino as ov

        xml = Path(self._tmp.name) / f"{stem}.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)  # the numbers NNCF made, not fp16 copies of them
        return xml, [xml, xml.with_suffix(".bin")]

    def _infer(self, xml: Path, owned: Sequence[Path] = ()) -> RunnerInfer:
        return RunnerInfer("openvino", xml, {"threads": self.threads, "inference_precision": "f32"}, owned)

    def reference(self) -> RunnerInfer:
        if self._fp32_ir is None:
            self._fp32_ir, _ = self._save(self._fp32_model(), "fp32")
        return self._infer(self._fp32_ir)

    def quantized(self, float_groups: Sequence[str] = (), only_groups: Sequence[str] | None = None) -> RunnerInfer:
        from ffnet_deploy.quantize.openvino_int8 import nncf_output, quantize_openvino

        groups = self.groups()
        floating = set(float_groups) | (set() if only_groups is None else set(groups) - set(only_groups))
        settings = dataclasses.replace(self.settings, ignored_groups=tuple(g for g in groups if g in floating))
        with nncf_output():
            result = quantize_openvino(self._fp32_model(), self.calib, settings)
        self._count += 1
        xml, files = self._save(result.model, f"candidate{self._count}")
        return self._infer(xml, owned=files)

    def close(self) -> None:
        self._tmp.cleanup()

"""OpenVINO INT8 by NNCF post-training quantization of an ``ov.Model``.

OpenVINO's CPU plugin does not take ONNX Runtime's S8S8 QDQ graph as an INT8 model, so the OpenVINO INT8 path
quantizes the FP32 IR itself: NNCF inserts ``FakeQuantize`` operations, whose ranges come from calibration data, and
the CPU plugin fuses them into u8/s8 convolutions at compile time.

:func:`quantize_openvino` runs NNCF's post-training pipeline (optional channel alignment, then min/max range setting
with fast or full bias correction) step by step through NNCF's ``Pipeline`` API instead of calling
``nncf.quantize``, so that the calibration statistics of every step can be returned as plain JSON and fed back in
(``statistics=``): a rerun with the same model, data and settings then skips every forward pass over the calibration
data and gives the same model. :func:`quantize_with_accuracy_control` wraps ``nncf.quantize_with_accuracy_control``,
which reverts the most harmful layers to float until the top-1 drop on labelled data is within a bound.

Layer groups (:func:`ffnet_deploy.quantize.groups.layer_group`) name what stays in float: ``ignored_groups`` becomes
an ``nncf.IgnoredScope`` over the friendly names of every operation of those groups, and the result reports which
groups ended up quantized (a convolution or matmul with int8 weights) and which stayed float.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.errors import ConfigError, QuantizationError, require
from ffnet_deploy.progress import NULL, Progress, library_output_shown, logger_levels
from ffnet_deploy.quantize.groups import layer_group, sorted_groups
from ffnet_deploy.validate.metrics import top1_accuracy

PRESETS = ("performance", "mixed")
MODEL_TYPES = (None, "transformer")
TARGET_DEVICES = ("ANY", "CPU", "CPU_SPR", "GPU", "NPU")
OVERFLOW_FIXES = ("enable", "first_layer_only", "disable")
STATISTICS_FORMAT = "nncf-ptq-statistics/1"
"""Tag of the JSON that :func:`collect_statistics` returns; statistics with another tag are refused."""
STATISTICS_STEPS = "nncf statistics steps"
"""The label of the steps of :func:`quantize_openvino` (NNCF pipeline steps whose statistics are collected)."""

_WEIGHTED_OPS = ("Convolution", "GroupConvolution", "MatMul")
_DEQUANT_OPS = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze")


@dataclass(frozen=True)
class NNCFSettings:
    """Settings of NNCF post-training quantization for OpenVINO.

    The defaults are the fastest configuration measured on FFNet (``studies/nncf_vs_stock.py``): symmetric
    activations, fast bias correction, a CPU target. NNCF's ChannelAlignment step is always off: stock NNCF finds
    nothing to align in a full-size FFNet, and when run step by step on ``ffnet_test`` NNCF 3.4 raised inside it
    (``KeyError`` in ``numpy_numeric.astype`` for ``np.float32``).
    """

    preset: str = "performance"  # "performance" (symmetric activations) | "mixed" (asymmetric activations)
    fast_bias_correction: bool = True  # False runs NNCF's full (slower, layer-by-layer) bias correction
    subset_size: int = 300  # calibration images used at most (NNCF reads min(subset_size, len(calib)))
    model_type: str | None = None  # None | "transformer" (adds NNCF's transformer patterns and SmoothQuant)
    ignored_groups: tuple[str, ...] = ()  # layer groups kept in float, e.g. ("patch_embed", "head")
    target_device: str = "CPU"  # NNCF hardware config: "ANY" (stock), "CPU", "CPU_SPR", "GPU", "NPU"
    bias_correction: bool = True  # False skips bias correction altogether
    smooth_quant: bool = False  # SmoothQuant, only meaningful with model_type="transformer"
    quantize_outputs: bool = False  # also quantize the model output (the logits)
    overflow_fix: str = "first_layer_only"  # NNCF's 7-bit weights against u8*s8 pair saturation (AVX2, AVX-512)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"nncf | preset must be one of {PRESETS}, got {self.preset!r}")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"nncf | model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.target_device not in TARGET_DEVICES:
            raise ConfigError(f"nncf | target_device must be one of {TARGET_DEVICES}, got {self.target_device!r}")
        if self.overflow_fix not in OVERFLOW_FIXES:
            raise ConfigError(f"nncf | overflow_fix must be one of {OVERFLOW_FIXES}, got {self.overflow_fix!r}")
        if self.subset_size < 1:
            raise ConfigError(f"nncf | subset_size must be at least 1, got {self.subset_size}")
        if isinstance(self.ignored_groups, str):
            raise ConfigError(f"nncf | ignored_groups must be a tuple of group names, got the string "
                              f"{self.ignored_groups!r}; write ({self.ignored_groups!r},)")

    def to_dict(self) -> dict:
        """JSON-ready form (``ignored_groups`` as a list)."""
        out = asdict(self)
        out["ignored_groups"] = list(self.ignored_groups)
        return out


@dataclass
class QuantizedOpenVINO:
    """The quantized model and what was done to it.

    Attributes:
        model: The quantized ``ov.Model`` (FakeQuantize on activations, int8 weight constants).
        quantized_groups: Layer groups with at least one int8-weight convolution or matmul, in network order.
        float_groups: Layer groups whose convolutions and matmuls all kept float weights.
        counts: ``fake_quantize`` (activation quantizers), ``int8_weights`` and ``float_weights`` (weighted ops).
        settings: The settings as a dict.
        seconds: Wall time of the quantization (statistics included).
        statistics: The calibration statistics, as :func:`collect_statistics` returns them (``None`` after
            accuracy control, which collects its own).
        statistics_reused: Whether ``statistics`` came from the caller instead of forward passes.
        reverted: Operations accuracy control reverted to float (friendly names), else empty.
        extra: Method-specific details (accuracy control: metrics and the drop).
    """

    model: Any
    quantized_groups: list[str]
    float_groups: list[str]
    counts: dict[str, int]
    settings: dict
    seconds: float
    statistics: dict | None = None
    statistics_reused: bool = False
    reverted: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def details(self) -> dict:
        """JSON-ready summary (everything but the model and the statistics)."""
        return {"quantized_groups": self.quantized_groups, "float_groups": self.float_groups, "counts": self.counts,
                "settings": self.settings, "seconds": self.seconds, "statistics_reused": self.statistics_reused,
                "reverted": self.reverted, "reverted_groups": sorted_groups(
                    g for g in (layer_group(n) for n in self.reverted) if g is not None), **self.extra}


@contextlib.contextmanager
def nncf_output():
    """NNCF draws its progress bars on stdout and logs its info lines there: ``--json`` owns stdout, so both go to
    stderr; and nowhere where the caller hides the libraries' output (:func:`~ffnet_deploy.progress.library_output`:
    ``pipeline --quiet``). Its warnings show on stderr either way."""
    with contextlib.suppress(ImportError):  # a missing extra is said by the call inside the block
        import nncf  # noqa: F401  (its logger and handler exist once it is imported)
    logger = logging.getLogger("nncf")
    # its handler took whatever sys.stdout was when NNCF was imported; pointed at stderr inside the block
    streams = [(h, h.stream) for h in logger.handlers if type(h) is logging.StreamHandler]
    shown = library_output_shown()
    for handler, _ in streams:
        handler.setStream(sys.stderr)
    try:
        with (logger_levels(() if shown else ("nncf",), logging.WARNING),
              contextlib.redirect_stdout(sys.stderr if shown else io.StringIO())):
            yield
    finally:
        for handler, stream in streams:
            handler.stream = stream  # as it was (setStream would flush it: it may be closed by now)


# --------------------------------------------------------------------------------------------------------------------
# Ignored scope and inspection
# --------------------------------------------------------------------------------------------------------------------


def _op_group(op) -> str | None:
    """The layer group of an OpenVINO operation; the classifier that feeds the output belongs to the head."""
    group = layer_group(op.get_friendly_name())
    if group is None and op.get_type_name() in ("MatMul", "Add"):
        # The final classifier takes the output's tensor name ("logits") as its friendly name, which carries no scope.
        if any(t.get_node().get_type_name() == "Result" for out in op.outputs() for t in out.get_target_inputs()):
            return "head"
    return group


def model_groups(model) -> list[str]:
    """Every layer group that has at least one operation in ``model``, in network order."""
    return sorted_groups(g for g in (_op_group(op) for op in model.get_ops()) if g is not None)


def ignored_scope_for(model, groups: Iterable[str]):
    """An ``nncf.IgnoredScope`` naming every non-constant operation of ``groups`` in ``model``.

    Raises:
        ConfigError: If a group has no operation in the model (a typo, or a group of another variant).
    """
    import nncf

    groups = tuple(groups)
    names = [op.get_friendly_name() for op in model.get_ops()
             if op.get_type_name() not in ("Constant", "Parameter", "Result") and _op_group(op) in groups]
    present = {_op_group(op) for op in model.get_ops()}
    missing = [g for g in groups if g not in present]
    if missing:
        known = model_groups(model)
        raise ConfigError(f"nncf | ignored groups {missing} are not in this model; known groups: "
                          f"{', '.join(known[:6])}, ... ({len(known)} in all)")
    return nncf.IgnoredScope(names=names, validate=False)


def _has_int8_weights(op) -> bool:
    """Whether a weighted op's weight input is a dequantized int8 constant (NNCF's compressed weights)."""
    node = op.input_value(1).get_node()
    for _ in range(6):
        if node.get_type_name() == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
        if node.get_type_name() == "FakeQuantize":
            return True  # weights not compressed yet: an FQ on the weights still means int8
        if node.get_type_name() not in _DEQUANT_OPS:
            return False
        node = node.input_value(0).get_node()
    return False


def inspect_quantized(model) -> tuple[list[str], list[str], dict[str, int]]:
    """Which groups of ``model`` are quantized, which stayed float, and operation counts.

    Returns:
        ``(quantized_groups, float_groups, counts)``; see :class:`QuantizedOpenVINO`.
    """
    int8: set[str] = set()
    floating: set[str] = set()
    counts = {"fake_quantize": 0, "int8_weights": 0, "float_weights": 0}
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            counts["fake_quantize"] += 1
        elif kind in _WEIGHTED_OPS:
            group = _op_group(op) or "other"
            if _has_int8_weights(op):
                counts["int8_weights"] += 1
                int8.add(group)
            else:
                counts["float_weights"] += 1
                floating.add(group)
    return sorted_groups(int8), sorted_groups(floating - int8), counts


# --------------------------------------------------------------------------------------------------------------------
# Post-training quantization
# --------------------------------------------------------------------------------------------------------------------


class _Batches:
    """The calibration set as a re-iterable of single-image batches, decoded lazily (NNCF may iterate it twice)."""

    def __init__(self, calib) -> None:
        self.calib = calib

    def __iter__(self):
        return iter(self.calib.batches(1))

    def __len__(self) -> int:
        return len(self.calib)


def _dataset(calib):
    import nncf

    return nncf.Dataset(_Batches(calib))


def portability(settings: NNCFSettings) -> dict:
    """Where OpenVINO's CPU plugin computes an NNCF INT8 model of ``settings`` as the export gate measured it.

    oneDNN's int8 kernels on x86 without VNNI (``avx2``, ``avx512``) add u8 x s8 pairs in 16 bits (``vpmaddubsw``),
    which is what NNCF's overflow fix addresses; with VNNI, AMX or on ARM64 products are added in 32 bits. Measured
    under an emulated AVX2 CPU (``benchmarks/results/int8_portable.md``): the digits model keeps its accuracy with
    NNCF's default first-layer fix, but full-size ffnet_1 loses several dB of logit SQNR whichever fix is applied, so
    no NNCF recipe is claimed safe on those classes: ``validate`` there says so and judges the artifact on its run.

    Returns:
        ``{"safe_isa_classes", "unsafe_isa_classes", "overflow_fix", "basis"}``.
    """
    from ffnet_deploy.environment import ISA_CLASSES, SATURATING_CLASSES

    return {"safe_isa_classes": [c for c in ISA_CLASSES if c not in SATURATING_CLASSES and c != "other"],
            "unsafe_isa_classes": [c for c in ISA_CLASSES if c in SATURATING_CLASSES],
            "overflow_fix": settings.overflow_fix,
            "basis": "oneDNN adds u8 x s8 pairs in 16 bits on x86 without VNNI; NNCF's overflow fix "
                     f"({settings.overflow_fix}) was not enough for full-size ffnet_1 on an emulated AVX2 CPU"}


def _advanced(settings: NNCFSettings):
    """NNCF's advanced parameters for ``settings`` (plain PTQ and accuracy control use the same)."""
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    sq = AdvancedSmoothQuantParameters() if settings.smooth_quant else AdvancedSmoothQuantParameters(-1, -1)
    return AdvancedQuantizationParameters(
        overflow_fix=OverflowFix(settings.overflow_fix),
        disable_channel_alignment=True,
        disable_bias_correction=not settings.bias_correction,
        quantize_outputs=settings.quantize_outputs,
        smooth_quant_alphas=sq,
    )


def _pipeline(model, settings: NNCFSettings):
    import nncf
    from nncf.quantization.algorithms.post_training.pipeline import create_ptq_pipeline

    advanced = _advanced(settings)
    ignored = ignored_scope_for(model, settings.ignored_groups) if settings.ignored_groups else None
    return create_ptq_pipeline(
        preset=nncf.QuantizationPreset(settings.preset),
        target_device=nncf.TargetDevice[settings.target_device],
        subset_size=settings.subset_size,
        fast_bias_correction=settings.fast_bias_correction,
        model_type=nncf.ModelType(settings.model_type) if settings.model_type else None,
        ignored_scope=ignored,
        advanced_parameters=advanced,
    )


def _encode(data: dict[str, dict]) -> dict:
    out = {}
    for key, stat in sorted(data.items()):
        out[key] = {}
        for name, tensor in stat.items():
            if tensor is None or getattr(tensor, "data", None) is None:  # a statistic NNCF left empty
                out[key][str(name)] = None
                continue
            arr = np.asarray(tensor.data)
            out[key][str(name)] = {"dtype": str(arr.dtype), "shape": list(arr.shape),
                                   "data": arr.reshape(-1).tolist()}
    return out


def _decode(data: dict) -> dict[str, dict]:
    from nncf.tensor import Tensor

    out = {}
    for key, stat in data.items():
        out[key] = {name: None if v is None else Tensor(np.asarray(v["data"], dtype=v["dtype"]).reshape(v["shape"]))
                    for name, v in stat.items()}
    return out


def _load_statistics(aggregator, data: dict) -> None:
    """Fill every registered collector from ``data`` (NNCF's ``_load_statistics`` without its bug).

    NNCF 3.4 asks each empty collector for its statistics object first, only to learn its class; an empty
    ``MeanTensorStatistic`` (fast bias correction) then fails on its missing shape. The class is known without that.
    """
    for _, point, collector in aggregator.statistic_points.get_tensor_collectors():
        container = collector._stat_container
        statistic = object.__new__(container)
        key = aggregator._get_statistics_key(statistic, point.target_point)
        if key not in data:
            raise QuantizationError(f"nncf | cached statistics lack {key}; delete the cache entry to recollect them")
        statistic.load_data(data[key])
        collector.set_cache(statistic)


def _run_ptq(model, settings: NNCFSettings, calib, statistics: dict | None, progress: Progress):
    """Run the PTQ pipeline step by step; return the quantized model and every step's statistics as JSON."""
    from nncf.common.factory import StatisticsAggregatorFactory, build_graph
    from nncf.openvino.graph.model_utils import remove_friendly_name_duplicates
    from openvino._offline_transformations import compress_quantize_weights_transformation

    model = remove_friendly_name_duplicates(model.clone())
    pipeline = _pipeline(model, settings)
    n_steps = len(pipeline.pipeline_steps)
    if statistics is not None:
        if statistics.get("format") != STATISTICS_FORMAT or len(statistics.get("steps", ())) != n_steps:
            raise QuantizationError(
                f"nncf | cached statistics do not fit these settings (format {statistics.get('format')!r}, "
                f"{len(statistics.get('steps', ()))} steps, need {STATISTICS_FORMAT!r} with {n_steps}); "
                "delete the cache entry to recollect them")
    dataset = None
    steps = []
    for i in range(n_steps):
        graph = build_graph(model)
        points = pipeline.get_statistic_points_for_step(i, model, graph)
        if statistics is not None:
            aggregator = StatisticsAggregatorFactory.create(model, None)
            aggregator.register_statistic_points(points)
            try:
                # NNCF's own cache (load_statistics_from_dir) goes through files; this is the same call without them.
                _load_statistics(aggregator, _decode(statistics["steps"][i]))
            except Exception as err:  # nncf.ValidationError: a statistic point the cache lacks
                raise QuantizationError(f"nncf | cached statistics do not fit this model ({err}); "
                                        "delete the cache entry to recollect them") from err
        else:
            if dataset is None:
                dataset = _dataset(calib)
            progress.step(i, n_steps, STATISTICS_STEPS)
            aggregator = StatisticsAggregatorFactory.create(model, dataset)
            aggregator.register_statistic_points(points)
            aggregator.collect_statistics(model, graph)
        steps.append(_encode(aggregator._prepare_statistics()))
        model = pipeline.run_step(i, aggregator.statistic_points, model, graph)
    if statistics is None:
        progress.step(n_steps, n_steps, STATISTICS_STEPS)
    compress_quantize_weights_transformation(model)
    return model, {"format": STATISTICS_FORMAT, "settings": settings.to_dict(), "steps": steps}


def quantize_openvino(model, calib, settings: NNCFSettings = NNCFSettings(), *, progress: Progress = NULL,
                      statistics: dict | None = None) -> QuantizedOpenVINO:
    """Quantize an FP32 ``ov.Model`` to INT8 with NNCF post-training quantization.

    Args:
        model: The FP32 model (``ov.Core().read_model("model.xml")``); it is not changed.
        calib: A :class:`~ffnet_deploy.quantize.calibration.CalibrationSet`; its ``batches(1)`` feed NNCF.
        settings: NNCF settings.
        progress: Where the collection is reported: ``step(steps done, steps, "nncf statistics steps")`` before
            each of the pipeline's statistics passes over ``min(len(calib), subset_size)`` images, and at the end.
        statistics: What :func:`collect_statistics` (or an earlier result's ``statistics``) returned for the same
            model, data and settings; then no forward pass runs and the result is the same model.

    Returns:
        The quantized model with its details.

    Raises:
        ConfigError: If an ignored group is not in the model.
        QuantizationError: If ``statistics`` do not fit the model or the settings.
    """
    require("nncf", "openvino", "openvino int8")
    t0 = time.perf_counter()
    quantized, stats = _run_ptq(model, settings, calib, statistics, progress)
    seconds = time.perf_counter() - t0
    q_groups, f_groups, counts = inspect_quantized(quantized)
    return QuantizedOpenVINO(quantized, q_groups, f_groups, counts, settings.to_dict(), seconds, stats,
                             statistics_reused=statistics is not None)


def collect_statistics(model, calib, settings: NNCFSettings = NNCFSettings(), *, progress: Progress = NULL) -> dict:
    """The calibration statistics of ``model`` under ``settings``, as plain JSON (lists of floats).

    Pass them back as ``quantize_openvino(..., statistics=...)`` to quantize without forward passes. The
    statistics of a pipeline step after the first are taken on the model that the earlier steps produced, so
    collecting runs the whole pipeline (the same work as :func:`quantize_openvino`).
    """
    require("nncf", "openvino", "openvino int8")
    return _run_ptq(model, settings, calib, None, progress)[1]


# --------------------------------------------------------------------------------------------------------------------
# Accuracy control
# --------------------------------------------------------------------------------------------------------------------


def _logits_of(infer: Callable[[np.ndarray], np.ndarray], items: Iterable[tuple[np.ndarray, np.ndarray]],
               ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of ``(images, labels)`` items, one image per call (the IR has the artifact's batch of 1)."""
    logits, labels = [], []
    for images, batch_labels in items:
        for i in range(len(batch_labels)):
            # a copy: an engine may hand back its output buffer, which the next call overwrites
            logits.append(np.array(infer(images[i:i + 1]), dtype=np.float32).reshape(1, -1))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(logits), np.concatenate(labels)


def _top1(compiled, items: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Top-1 (%) of a model NNCF compiled itself, over the items NNCF asks about (its accuracy-control passes)."""
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    return top1_accuracy(*_logits_of(lambda x: request.infer({0: x})[output], items))


def _top1_through_runner(model, items: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Top-1 (%) of an ``ov.Model`` run in the ``openvino`` runner (f32 inference precision), as validate runs it.

    The model is saved as a scratch IR first (uncompressed), since runners load files.
    """
    import openvino as ov

    from ffnet_deploy.runtimes import create_runner

    with tempfile.TemporaryDirectory(prefix="ffnet-nncf-eval-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model.clone(), str(xml), compress_to_fp16=False)
        with create_runner("openvino", xml, inference_precision="f32") as runner:
            name = next(iter(runner.input_metadata()))
            output = runner.output_names()[0]
            return top1_accuracy(*_logits_of(lambda x: runner.infer({name: x})[output], items))


def quantize_with_accuracy_control(model, calib, eval_source, transform, max_drop: float,
                                   settings: NNCFSettings = NNCFSettings(), *, progress: Progress = NULL,
                                   batch_size: int = 8) -> QuantizedOpenVINO:
    """Quantize, then revert layers to float until top-1 on ``eval_source`` drops by at most ``max_drop`` points.

    NNCF ranks the quantized operations by how much each one alone changes the outputs on the validation data and
    reverts them, most harmful first, until the drop is within bound (``DropType.ABSOLUTE`` on the metric our
    validation function returns, which is top-1 in percent, so ``max_drop=1.0`` means one percentage point).

    Args:
        model: The FP32 ``ov.Model``.
        calib: Calibration set (as for :func:`quantize_openvino`).
        eval_source: A labelled :class:`~ffnet_deploy.data.sources.DataSource`.
        transform: The eval transform for ``eval_source``.
        max_drop: Largest allowed top-1 drop, in percentage points.
        settings: NNCF settings (``statistics`` caching does not apply: NNCF collects its own).
        progress: Gets one note before NNCF runs (NNCF's own passes are not reported).
        batch_size: Batch size for reading ``eval_source``.

    Returns:
        The result; ``reverted`` lists the operations put back in float, ``extra`` the FP32 and INT8 top-1.

    Raises:
        ConfigError: If ``eval_source`` has no labels or ``max_drop`` is negative.
    """
    nncf = require("nncf", "openvino", "openvino int8")

    if not getattr(eval_source, "labeled", False):
        raise ConfigError("nncf | accuracy control needs a labelled source (an ImageFolder with class folders); "
                          "pass --data with class subfolders")
    if max_drop < 0:
        raise ConfigError(f"nncf | max_drop must be >= 0 (top-1 percentage points), got {max_drop}")
    t0 = time.perf_counter()
    items = []
    for batch in eval_source.batches(transform, batch_size):
        items.append((batch.images, batch.labels))
    if not items:
        raise ConfigError("nncf | the validation source yielded no images; check --data")

    def validate(compiled, data) -> float:
        # NNCF calls this with the models it compiled (in f32) and the items it wants scored: the whole set, a
        # subset while ranking, or one item to score each alone. A plain ov.Model runs through the runner.
        if not hasattr(compiled, "create_infer_request"):
            return _top1_through_runner(compiled, list(data))
        return _top1(compiled, data)

    advanced = _advanced(settings)
    ignored = ignored_scope_for(model, settings.ignored_groups) if settings.ignored_groups else None
    images = sum(len(y) for _, y in items)
    progress.note(f"nncf | accuracy control: max top-1 drop {max_drop} points on {images} images")
    quantized = nncf.quantize_with_accuracy_control(
        model.clone(), _dataset(calib), nncf.Dataset(items), validate, max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset(settings.preset),
        target_device=nncf.TargetDevice[settings.target_device], subset_size=settings.subset_size,
        fast_bias_correction=settings.fast_bias_correction,
        model_type=nncf.ModelType(settings.model_type) if settings.model_type else None,
        ignored_scope=ignored, advanced_quantization_parameters=advanced)
    seconds = time.perf_counter() - t0
    fp32 = _top1_through_runner(model, items)
    int8 = _top1_through_runner(quantized, items)
    reverted = _reverted_ops(model, calib, settings, quantized)
    q_groups, f_groups, counts = inspect_quantized(quantized)
    return QuantizedOpenVINO(quantized, q_groups, f_groups, counts, settings.to_dict(), seconds, None,
                             reverted=reverted, extra={"fp32_top1": fp32, "int8_top1": int8, "drop": fp32 - int8,
                                                       "max_drop": max_drop})


def _int8_ops(model) -> set[str]:
    return {op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() in _WEIGHTED_OPS and _has_int8_weights(op)}


def _reverted_ops(model, calib, settings: NNCFSettings, quantized) -> list[str]:
    """Weighted operations that plain PTQ with the same settings quantizes but accuracy control left in float.

    NNCF logs the operations it reverts but does not return them, so they are read off the models.
    """
    plain, _ = _run_ptq(model, settings, calib, None, NULL)
    kept = _int8_ops(quantized)
    order = [op.get_friendly_name() for op in plain.get_ops()]
    return [name for name in order if name in _int8_ops(plain) - kept]

"""ONNX Runtime INT8: static post-training quantization of the exported FP32 ONNX, for two targets.

- ``target="tensorrt"``: explicit QDQ, what TensorRT builds an INT8 engine from. Activations *and* weights are
  symmetric signed int8 (every zero point is 0), weights per output channel (``axis`` 0 on Conv weights), biases left
  in float (TensorRT has no int32 ``DequantizeLinear``), one Q/DQ pair per consumer. Convolutions, the classifier and
  the residual additions are quantized; the GELUs stay float, so TensorRT fuses them into the convolutions' epilogue.
- ``target="cpu"`` (and ``"cpu-vnni"``): the fastest accurate configuration for ONNX Runtime's CPU provider, found by
  ``studies/ort_int8_search.py`` (measurements and reasons in ``benchmarks/results/ort_int8_investigation.md``):
  :data:`CPU_SETTINGS`. Only the pointwise (1x1) and dense convolutions and the classifier run in int8 (QDQ, uint8
  activations, int8 per-channel weights, which ONNX Runtime fuses into VNNI ``QLinearConv`` kernels several times
  faster than FP32); the depthwise convolutions stay float, because ONNX Runtime's int8 depthwise kernel is several
  times *slower* than its FP32 NCHWc one at 7x7, and the GELUs stay float and are fused into one ``Gelu`` node each.
  Quantizing everything, or ORT's default S8S8, is slower than FP32. ``cpu`` stores 7-bit weights (``reduce_range``)
  so that CPUs without VNNI, whose ``vpmaddubsw`` kernels add u8 x s8 pairs in 16 bits, compute it exactly too;
  ``cpu-vnni`` keeps 8-bit weights (more accurate, same speed) and is safe only where products are added in 32 bits
  (:func:`portability`; measured in ``benchmarks/results/int8_portable.md``).

The flow is three steps, so that the slow one can be cached:

1. :func:`prepare_onnx` writes the graph the quantizer reads (shape inference, deterministic);
2. :func:`calibrate_ranges` runs the prepared FP32 graph over a
   :class:`~ffnet_deploy.quantize.calibration.CalibrationSet` and returns plain per-tensor ``(low, high)`` ranges,
   JSON-serialisable once converted with ``float``;
3. :func:`quantize_onnx` builds ONNX Runtime's ``QDQQuantizer`` / ``ONNXQuantizer`` directly from those ranges (no
   second calibration pass) and writes the INT8 model atomically.

:func:`measure_speedup` times FP32 against INT8 in interleaved rounds, so that the exporter can tell the user when the
INT8 model is not faster on this machine.

Layer groups (:func:`ffnet_deploy.quantize.groups.layer_group`) select what stays in float: ``exclude_groups`` keeps
those groups' nodes float, ``include_groups`` quantizes only those groups.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.errors import ConfigError, FFNetDeployError, QuantizationError, first_line
from ffnet_deploy.progress import NULL, Progress
from ffnet_deploy.quantize.calibration import CALIBRATING
from ffnet_deploy.quantize.groups import layer_group, sorted_groups

TARGETS = ("cpu", "cpu-vnni", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")
QUANT_FORMATS = ("qdq", "qoperator")
QUANT_TYPES = ("int8", "uint8")
CONV_KINDS = ("pointwise", "dense", "depthwise")
"""Convolutions by shape: 1x1 with one group, any other kernel with one group (stem, patch merging), grouped."""


_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Batches per calibrator.collect_data call: its stored outputs of a full-size FFNet at 256 px (about 60 MB per image)
# stay within a few hundred MB.
_CHUNK = 8


class OnnxQuantizationError(QuantizationError):
    """ONNX Runtime could not calibrate or quantize the model, or the ranges do not fit it."""


@dataclass(frozen=True)
class OrtQuantSettings:
    """One ONNX Runtime static-quantization configuration (what ``quantize_static`` takes, plus node selection).

    The defaults are ONNX Runtime's own ``quantize_static`` defaults with per-channel weights.
    """

    quant_format: str = "qdq"  # "qdq" (QuantizeLinear/DequantizeLinear pairs) | "qoperator" (QLinearConv, ...)
    activation_type: str = "int8"  # activations: "int8" or "uint8"
    weight_type: str = "int8"  # weights: "int8" or "uint8"
    per_channel: bool = True  # one weight scale per output channel instead of per tensor
    reduce_range: bool = False  # 7-bit weights (helps VPMADDUBSW overflow on CPUs without VNNI)
    op_types: tuple[str, ...] = ()  # op types to quantize; () = every type ONNX Runtime can quantize
    conv_kinds: tuple[str, ...] = CONV_KINDS  # which convolutions to quantize, by CONV_KINDS
    exclude_gelu: bool = False  # keep the Div/Erf/Add/Mul/Mul of every exported GELU in float
    fuse_gelu: bool = False  # then replace each float GELU by one com.microsoft Gelu (ONNX Runtime only)
    extra_options: tuple[tuple[str, Any], ...] = ()  # quantize_static extra_options, as sorted (key, value) pairs

    def __post_init__(self) -> None:
        if self.quant_format not in QUANT_FORMATS:
            raise ConfigError(f"onnx int8 | quant_format must be one of {QUANT_FORMATS}, got {self.quant_format!r}")
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in QUANT_TYPES:
                raise ConfigError(f"onnx int8 | {name} must be one of {QUANT_TYPES}, got {getattr(self, name)!r}")
        if self.fuse_gelu and not self.exclude_gelu:
            raise ConfigError("onnx int8 | fuse_gelu needs exclude_gelu=True (only float GELUs can be fused)")
        unknown = [k for k in self.conv_kinds if k not in CONV_KINDS]
        if unknown:
            raise ConfigError(f"onnx int8 | conv_kinds {unknown} unknown; use some of {CONV_KINDS}")

    @property
    def options(self) -> dict[str, Any]:
        """``extra_options`` as a dict."""
        return dict(self.extra_options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples as lists, ``extra_options`` as a dict)."""
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        d["conv_kinds"] = list(self.conv_kinds)
        d["extra_options"] = self.options
        return d


def _opts(**kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kwargs.items()))


TENSORRT_SETTINGS = OrtQuantSettings(
    quant_format="qdq", activation_type="int8", weight_type="int8", per_channel=True,
    op_types=("Conv", "Gemm", "Add"), exclude_gelu=True,
    extra_options=_opts(ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False, DedicatedQDQPair=True),
)
"""Explicit symmetric int8 QDQ for TensorRT: zero points 0, int8 weights in [-127, 127] per output channel, float
biases (TensorRT has no int32 ``DequantizeLinear``), one Q/DQ pair per consumer, GELUs left to TensorRT's fusions."""

CPU_VNNI_SETTINGS = OrtQuantSettings(
    quant_format="qdq", activation_type="uint8", weight_type="int8", per_channel=True,
    op_types=("Conv", "Gemm"), conv_kinds=("pointwise", "dense"), exclude_gelu=True, fuse_gelu=True,
)
"""The fastest configuration measured for ONNX Runtime's CPU provider (``studies/ort_int8_search.py``): int8
pointwise/dense convolutions and classifier, float depthwise convolutions and fused float GELUs, 8-bit weights.
Exact only on CPUs whose int8 kernels add products in 32 bits (VNNI, AVX-VNNI, AMX, ARM64): on AVX2 and AVX-512
without VNNI the u8 x s8 pairs saturate (``benchmarks/results/int8_portable.md``)."""

CPU_SETTINGS = dataclasses.replace(CPU_VNNI_SETTINGS, reduce_range=True)
"""The portable default: :data:`CPU_VNNI_SETTINGS` with 7-bit weights (``|w| <= 64``), which no int8 kernel of any
CPU class saturates on; same kernels, same speed, one bit less of weight precision."""

SETTINGS = {"cpu": CPU_SETTINGS, "cpu-vnni": CPU_VNNI_SETTINGS, "tensorrt": TENSORRT_SETTINGS}
CPU_TARGETS = ("cpu", "cpu-vnni")
"""Targets for ONNX Runtime's CPU provider (the export measures their speed against FP32)."""

PAIR_LIMIT = 32767
"""Largest sum of two u8 x s8 products that ``vpmaddubsw`` (int8 GEMM on AVX2 and AVX-512 without VNNI) holds in its
int16 lanes without saturating."""


def portability(settings: OrtQuantSettings, max_abs_weight: int | None = None) -> dict[str, Any]:
    """Where ONNX Runtime's CPU kernels compute an INT8 graph of ``settings`` exactly, and why.

    x86 CPUs without VNNI (ISA classes ``avx2`` and ``avx512``) run u8 x s8 GEMMs with ``vpmaddubsw``, which adds two
    adjacent products in 16 bits and saturates above :data:`PAIR_LIMIT`: with uint8 activations up to 255, weights
    must stay within ``|w| <= 64`` (``reduce_range``) for ``2 * 255 * |w|`` to fit. int8 activations are shifted to
    uint8 first on x86, so S8S8 behaves the same. U8U8 kernels widen to 16 bits before multiplying and never
    saturate; VNNI, AVX-VNNI and AMX add products in 32 bits; ARM64's widening and dot-product kernels too
    (``benchmarks/results/int8_portable.md`` measures it).

    Args:
        settings: The quantization settings.
        max_abs_weight: The largest ``|w|`` of the graph's int8 weights (:func:`max_abs_int8_weight`), when known;
            it overrides what the settings promise.

    Returns:
        ``{"safe_isa_classes": [...], "unsafe_isa_classes": [...], "max_abs_weight", "basis"}`` (class names of
        :data:`ffnet_deploy.environment.ISA_CLASSES`).
    """
    from ffnet_deploy.environment import ISA_CLASSES, SATURATING_CLASSES

    bound = max_abs_weight if max_abs_weight is not None else (64 if settings.reduce_range else 128)
    if settings.weight_type == "uint8":
        unsafe, basis = set(), "uint8 weights: ONNX Runtime's U8U8 kernels widen to 16 bits and never saturate"
    elif 2 * 255 * bound <= PAIR_LIMIT:
        unsafe, basis = set(), (f"int8 weights within |w| <= {bound}: a vpmaddubsw pair (2 x 255 x {bound}) fits "
                                "in 16 bits on every ISA class")
    else:
        unsafe, basis = set(SATURATING_CLASSES), (
            f"int8 weights up to |w| = {bound}: pairs of u8 x s8 products saturate in 16 bits (vpmaddubsw) on x86 "
            "without VNNI")
    return {"safe_isa_classes": [c for c in ISA_CLASSES if c not in unsafe and c != "other"],
            "unsafe_isa_classes": [c for c in ISA_CLASSES if c in unsafe], "max_abs_weight": max_abs_weight,
            "basis": basis}


def max_abs_int8_weight(model: Any) -> int | None:
    """The largest ``|w|`` among the int8 weight initializers that ``DequantizeLinear`` nodes read (``None`` when the
    graph has none): what decides saturation, read from the file rather than from what the settings promised."""
    from onnx import TensorProto, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    largest = None
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        tensor = initializers[node.input[0]]
        if tensor.data_type != TensorProto.INT8:
            continue
        values = numpy_helper.to_array(tensor).astype(np.int16)
        if values.size:
            top = int(np.abs(values).max())
            largest = top if largest is None else max(largest, top)
    return largest


@dataclass(frozen=True)
class QuantizedOnnx:
    """What :func:`quantize_onnx` wrote."""

    path: Path  # the INT8 ONNX model
    target: str  # "cpu" or "tensorrt"
    config: dict  # every setting used (OrtQuantSettings.to_dict() plus the group selection), plain JSON
    quantized_nodes: int  # float nodes of the source graph that now run in int8
    quantized_groups: list[str] = field(default_factory=list)  # layer groups with at least one quantized node
    float_groups: list[str] = field(default_factory=list)  # layer groups left entirely in float
    op_types: list[str] = field(default_factory=list)  # op types (of the source graph) that were quantized


@dataclass(frozen=True)
class SpeedupResult:
    """FP32 against INT8 latency on ONNX Runtime's CPU provider: medians of interleaved rounds, and the paired
    block ratios with the noise verdict of :mod:`ffnet_deploy.runtimes.noise` (the protocol bench uses)."""

    fp32_ms: float  # median FP32 latency of one inference
    int8_ms: float  # median INT8 latency of one inference
    speedup: float  # FP32 / INT8, the median of the per-block ratios; below 1 means INT8 is slower
    threads: int  # intra-op threads of both sessions
    rounds: int  # interleaved rounds timed (each times both models once)
    low: float | None = None  # the lowest and highest per-block ratio
    high: float | None = None
    blocks: int = 1
    verdict: str | None = None  # "stable" or "noisy: rerun on a quiet machine"
    reasons: list[str] = field(default_factory=list)
    cpu_wait: float | None = None
    load_before: float | None = None
    load_after: float | None = None

    @property
    def clear(self) -> bool:
        """Whether the blocks agree on a side and the timing was stable: only then is the ratio a speedup."""
        return self.verdict == "stable" and self.low is not None and self.high is not None and not (
            self.low <= 1.0 <= self.high)

    @property
    def faster(self) -> bool:
        """Whether INT8 beat FP32."""
        return self.speedup > 1.0


# --------------------------------------------------------------------------------------------------------------------
# Preparation
# --------------------------------------------------------------------------------------------------------------------


def prepare_onnx(fp32_onnx: Path, workdir: Path) -> Path:
    """Write the graph the quantizer reads: ONNX shape inference over the FP32 model, nothing else.

    The exported FP32 graph is already folded and simplified (BatchNorm fused, onnxsim), so ONNX Runtime's
    ``quant_pre_process`` and an ORT-optimized model (``ORT_ENABLE_BASIC`` / ``EXTENDED``) change nothing that matters
    for speed or accuracy (measured in ``studies/ort_int8_search.py``); an EXTENDED-optimized graph would even carry
    ORT-only fused ``Gelu`` nodes that other runtimes cannot read. Shape inference gives the quantizer the value
    infos it uses to tell float tensors from others. The output is a deterministic function of the input.

    Args:
        fp32_onnx: The FP32 model.
        workdir: Folder for the prepared model (created if missing).

    Returns:
        Path of the prepared model, ``workdir/prepared.onnx``.

    Raises:
        OnnxQuantizationError: The model cannot be read or shape inference fails.
    """
    import onnx  # a core dependency

    from ffnet_deploy.atomic import atomic_path

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_onnx)), strict_mode=True)
    except Exception as err:  # onnx raises several unrelated types
        raise OnnxQuantizationError(f"onnx int8 | cannot prepare {fp32_onnx}: {_first_line(err)}; "
                                    "pass the FP32 model.onnx of an ffnet-deploy export") from err
    out = workdir / "prepared.onnx"
    with atomic_path(out, "onnx int8", OnnxQuantizationError) as tmp:
        onnx.save(model, str(tmp))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------------------------


class _Reader:
    """ONNX Runtime ``CalibrationDataReader`` over a calibration set's batches, reporting progress."""

    def __init__(self, batches: Iterator[np.ndarray], input_name: str, total: int, progress: Progress) -> None:
        self.batches = batches
        self.input_name = input_name
        self.total = total  # images
        self.done = 0  # images fed so far
        self.exhausted = False  # the batches ran out
        self.stdout = sys.stdout  # where progress may print
        self.progress = progress

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            self.exhausted = True
            return None
        self.done += len(batch)
        with contextlib.redirect_stdout(self.stdout):  # the caller's stdout, not the one muting ORT's prints
            self.progress.step(self.done, self.total, CALIBRATING)
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}


def _input_batch(model: Any) -> tuple[str, int | None]:
    """The model's single input name and its fixed batch size (``None`` when dynamic)."""
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise OnnxQuantizationError(f"onnx int8 | expected one model input, got {[i.name for i in inputs]}; "
                                    "quantize an ffnet-deploy export")
    dim = inputs[0].type.tensor_type.shape.dim[0]
    return inputs[0].name, (dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None)


def calibrate_ranges(model_path: Path, calib: Any, method: str, *, progress: Progress = NULL,
                     ) -> dict[str, tuple[float, float]]:
    """Run the FP32 model over ``calib`` and return every float tensor's activation range.

    ONNX Runtime's calibrator (``create_calibrator``) adds every intermediate tensor to the graph outputs of an
    augmented copy of the model; that copy lives in a temporary folder next to ``model_path`` (in an export, inside
    its locked work directory) that is always removed, also on errors and interrupts, and after a ``kill -9`` with
    the work directory by the next export's recovery.

    Args:
        model_path: The prepared FP32 model (:func:`prepare_onnx`); its tensor names key the result.
        calib: A :class:`~ffnet_deploy.quantize.calibration.CalibrationSet` (anything with ``len`` and
            ``batches(batch_size)`` giving normalized float32 NCHW arrays).
        method: ``"minmax"`` (min/max over all images), ``"entropy"`` (KL-divergence threshold on a histogram) or
            ``"percentile"`` (99.999th percentile of ``|x|``, symmetric).
        progress: Where the collection is reported: ``step(images done, images in all, "calibrating")`` after
            every batch.

    Returns:
        Tensor name -> ``(low, high)`` as Python floats, ``low <= high``.

    Raises:
        ConfigError: Unknown method or an empty calibration set.
        OnnxQuantizationError: ONNX Runtime failed to run the model or produced a non-finite range.
    """
    if method not in METHODS:
        raise ConfigError(f"onnx int8 | calibration method must be one of {METHODS}, got {method!r}")
    if len(calib) == 0:
        raise ConfigError("onnx int8 | the calibration set is empty; pass --calib with at least one image")
    import onnx  # onnx and onnxruntime are core dependencies
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    name, fixed = _input_batch(onnx.load(str(model_path), load_external_data=False))
    batch = fixed or 1
    # A graph of a fixed batch B is fed whole batches of B images (ranges are per tensor over all images, so the
    # batch does not change them); a remainder that does not fill a batch is left out.
    usable = len(calib) - len(calib) % batch
    if usable == 0:
        raise ConfigError(f"onnx int8 | the model takes batches of {batch}, but the calibration set has only "
                          f"{len(calib)} images; pass --calib-size {batch} or more")
    kind = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]
    # Next to the prepared model (inside the export's locked work directory), not in /tmp: a process killed here
    # leaves nothing that the next export's recovery does not remove.
    with tempfile.TemporaryDirectory(prefix=".calib-", dir=Path(model_path).parent) as tmp:
        try:
            calibrator = create_calibrator(Path(model_path), None,
                                           augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=kind)
        except Exception as err:  # ORT raises its own non-exported exception types
            raise OnnxQuantizationError(f"onnx int8 | cannot build the calibration model from {model_path}: "
                                        f"{_first_line(err)}") from err
        try:
            # ORT's calibrators keep every batch's outputs until collect_data returns (and MinMax's
            # max_intermediate_outputs drops them unmerged), so feed chunks: ranges and histograms merge across calls.
            full = (b for b in calib.batches(batch) if len(b) == batch)
            reader = _Reader(full, name, usable, progress)
            # The histogram calibrators print their progress to stdout; the caller reports progress instead.
            with contextlib.redirect_stdout(io.StringIO()):
                while reader.done < usable and not reader.exhausted:
                    calibrator.collect_data(_Chunk(reader, _CHUNK))
                data = calibrator.compute_data()
        except FFNetDeployError:
            raise
        except Exception as err:  # ORT raises its own non-exported exception types
            if "Too many bins" in str(err):  # numpy cannot cut a float32 range of a few ulps into 2048 bins
                raise OnnxQuantizationError(
                    f"onnx int8 | {method} calibration cannot build a histogram of a tensor whose values span almost "
                    "no range (an untrained model?); use the minmax or entropy method") from err
            raise OnnxQuantizationError(f"onnx int8 | calibration failed on {model_path}: {_first_line(err)}") from err
        finally:
            calibrator = None
    ranges: dict[str, tuple[float, float]] = {}
    for tensor, td in data.items():
        low, high = (float(np.asarray(v).reshape(-1)[0]) for v in td.range_value)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise OnnxQuantizationError(f"onnx int8 | tensor {tensor!r} got the non-finite range ({low}, {high}); "
                                        "check the calibration images and the model's weights")
        ranges[tensor] = (min(low, high), max(low, high))
    return ranges


class _Chunk:
    """At most ``size`` batches of a :class:`_Reader`, then ``None``."""

    def __init__(self, reader: _Reader, size: int) -> None:
        self.reader = reader
        self.left = size

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.left == 0:
            return None
        self.left -= 1
        return self.reader.get_next()


# --------------------------------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------------------------------


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def conv_kind(node: Any, initializers: Mapping[str, Any]) -> str:
    """``"pointwise"``, ``"dense"`` or ``"depthwise"`` for an ONNX ``Conv`` node (see :data:`CONV_KINDS`)."""
    if _attr(node, "group", 1) > 1:
        return "depthwise"
    kernel = _attr(node, "kernel_shape", None)
    if kernel is None and node.input[1] in initializers:
        kernel = list(initializers[node.input[1]].dims[2:])
    return "pointwise" if kernel is not None and all(k == 1 for k in kernel) else "dense"


def gelu_nodes(model: Any) -> set[str]:
    """Names of the nodes of every exported exact GELU: ``Div(x, sqrt2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)``."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    found: set[str] = set()
    for erf in model.graph.node:
        if erf.op_type != "Erf":
            continue
        chain = [erf]
        for op in ("Add", "Mul", "Mul"):
            nxt = [n for n in consumers.get(chain[-1].output[0], []) if n.op_type == op]
            if len(nxt) != 1:
                break
            chain.append(nxt[0])
        producers = [n for n in model.graph.node if erf.input[0] in n.output and n.op_type == "Div"]
        found.update(n.name for n in chain + producers)
    return found


def _constant(model: Any, name: str) -> float | None:
    """The value of a scalar initializer or ``Constant`` output, else ``None``."""
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            value = numpy_helper.to_array(t)
            return float(value.reshape(-1)[0]) if value.size == 1 else None
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute and n.attribute[0].name == "value":
            value = numpy_helper.to_array(n.attribute[0].t)
            return float(value.reshape(-1)[0]) if value.size == 1 else None
    return None


def fuse_gelu(model: Any) -> int:
    """Replace every float exact GELU ``Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)`` by one
    ``com.microsoft.Gelu`` node, in place; unused constants are dropped. Returns how many were fused.

    ONNX Runtime fuses these chains itself in an FP32 graph, but not in a QDQ graph where ``x`` is a dequantized
    tensor: its graph optimizer first gives each consumer of a ``DequantizeLinear`` its own copy, so the ``Div`` and
    the ``Mul`` of a GELU no longer read the same tensor and the pattern no longer matches. Five elementwise kernels
    then run instead of one (measured in ``studies/ort_int8_search.py``). The fused node keeps the chain's
    name prefix, so :func:`~ffnet_deploy.quantize.groups.layer_group` still places it.
    """
    import onnx

    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in model.graph.output}
    remove: set[int] = set()
    new: dict[int, Any] = {}  # index of the chain's last node -> the fused node that takes its place
    index = {id(n): k for k, n in enumerate(model.graph.node)}

    def only(tensor: str, op: str) -> Any | None:
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].op_type == op and tensor not in outputs else None

    for div in model.graph.node:
        if div.op_type != "Div" or not math.isclose(_constant(model, div.input[1]) or 0.0, math.sqrt(2), rel_tol=1e-4):
            continue
        x = div.input[0]
        erf = only(div.output[0], "Erf")
        add = erf and only(erf.output[0], "Add")
        mul = add and only(add.output[0], "Mul")
        half = mul and only(mul.output[0], "Mul")
        if not half:
            continue
        one = next((i for i in add.input if i != erf.output[0]), None)
        scale = next((i for i in half.input if i != mul.output[0]), None)
        if (x not in mul.input or one is None or scale is None or _constant(model, one) != 1.0
                or _constant(model, scale) != 0.5 or x in producers and producers[x].op_type == "QuantizeLinear"):
            continue
        chain = [div, erf, add, mul, half]
        remove.update(index[id(n)] for n in chain)
        prefix = div.name.rsplit("/", 1)[0]
        new[index[id(half)]] = onnx.helper.make_node("Gelu", [x], [half.output[0]], name=f"{prefix}/Gelu",
                                                     domain="com.microsoft")
    if not new:
        return 0
    nodes = [new.get(k, n) for k, n in enumerate(model.graph.node) if k not in remove or k in new]
    used = {i for n in nodes for i in n.input} | outputs
    nodes = [n for n in nodes if n.op_type != "Constant" or any(o in used for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(new)


def _select_nodes(model: Any, settings: OrtQuantSettings, exclude_groups: Sequence[str],
                  include_groups: Sequence[str] | None) -> tuple[list[str], list[str] | None]:
    """``nodes_to_exclude`` and ``nodes_to_quantize`` (``None`` = no restriction) for ONNX Runtime's quantizer."""
    present = sorted_groups(g for g in (layer_group(n.name) for n in model.graph.node) if g)
    for label, groups in (("exclude_groups", exclude_groups), ("include_groups", include_groups or ())):
        if isinstance(groups, str):
            raise ConfigError(f"onnx int8 | {label} must be a sequence of group names, got the string {groups!r}")
        unknown = [g for g in groups if g not in present]
        if unknown:
            raise ConfigError(f"onnx int8 | {label} names groups {unknown} that this model does not have; "
                              f"known groups: {', '.join(present)}")
    initializers = {t.name: t for t in model.graph.initializer}
    gelu = gelu_nodes(model) if settings.exclude_gelu else set()
    excluded = set(exclude_groups)
    exclude: list[str] = []
    for node in model.graph.node:
        if node.name in gelu or layer_group(node.name) in excluded:
            exclude.append(node.name)
        elif node.op_type == "Conv" and conv_kind(node, initializers) not in settings.conv_kinds:
            exclude.append(node.name)
    if include_groups is None:
        return exclude, None
    wanted = set(include_groups)
    quantize = [n.name for n in model.graph.node if layer_group(n.name) in wanted and n.name not in exclude]
    # ONNX Runtime reads an empty nodes_to_quantize as "every node"; a name no node has quantizes none.
    return exclude, quantize or ["\0nothing"]


def quantize_with_settings(model_path: Path, output: Path, ranges: Mapping[str, tuple[float, float]],
                           settings: OrtQuantSettings, *, exclude_groups: Sequence[str] = (),
                           include_groups: Sequence[str] | None = None, target: str = "custom") -> QuantizedOnnx:
    """Quantize ``model_path`` with explicit settings; :func:`quantize_onnx` calls this with a target's settings.

    Args:
        model_path: The prepared FP32 model the ranges were calibrated on.
        output: Where to write the INT8 model (atomically).
        ranges: Tensor name -> ``(low, high)``, from :func:`calibrate_ranges` or its cached JSON.
        settings: The quantization configuration.
        exclude_groups: Layer groups kept in float.
        include_groups: When given, only these layer groups are quantized (none at all for an empty sequence, or
            for groups with nothing the settings quantize, such as a depthwise-only group for the cpu target).
        target: Recorded in the result.

    Returns:
        What was written and what was quantized.

    Raises:
        ConfigError: Unknown group names.
        OnnxQuantizationError: The ranges do not cover the model, or ONNX Runtime's quantizer failed.
    """
    import onnx  # onnx and onnxruntime are core dependencies
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import (
        QuantFormat,
        QuantizationMode,
        QuantType,
        load_model_with_shape_infer,
        update_opset_version,
    )
    from onnxruntime.quantization.quantize import check_static_quant_arguments
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    source = onnx.load(str(model_path))
    model = load_model_with_shape_infer(Path(model_path))
    exclude, quantize = _select_nodes(model, settings, exclude_groups, include_groups)
    float_tensors = {out for n in model.graph.node for out in n.output} | {i.name for i in model.graph.input}
    missing = sorted(t for t in float_tensors if t not in ranges)
    if len(missing) == len(float_tensors):
        raise OnnxQuantizationError(f"onnx int8 | the ranges name none of {model_path}'s tensors; they were "
                                    "calibrated on another model: recalibrate (or clear the calibration cache)")
    tensors = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()
        if name in float_tensors})
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    act, wt = qtype[settings.activation_type], qtype[settings.weight_type]
    fmt = QuantFormat.QDQ if settings.quant_format == "qdq" else QuantFormat.QOperator
    op_types = list(settings.op_types) or sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    options = settings.options
    try:
        model = update_opset_version(model, wt, act)
        check_static_quant_arguments(fmt, act, wt)
        if fmt is QuantFormat.QOperator:
            quantizer = ONNXQuantizer(model, settings.per_channel, settings.reduce_range, QuantizationMode.QLinearOps,
                                      True, wt, act, tensors, quantize or [], exclude, op_types, options)
        else:
            quantizer = QDQQuantizer(model, settings.per_channel, settings.reduce_range, wt, act, tensors,
                                     quantize or [], exclude, op_types, options)
        selected = {n.name for n in model.graph.node if quantizer.should_quantize_node(n)}
        quantizer.quantize_model()
        result = quantizer.model.model
        if settings.fuse_gelu:
            fuse_gelu(result)
    except FFNetDeployError:
        raise
    except Exception as err:  # ORT's quantizer raises ValueError, AssertionError, RuntimeError, ...
        raise OnnxQuantizationError(f"onnx int8 | ONNX Runtime could not quantize {model_path}: "
                                    f"{_first_line(err)}") from err
    from ffnet_deploy.atomic import atomic_path

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output, "onnx int8", OnnxQuantizationError) as tmp:
        onnx.save(result, str(tmp))
    quantized = quantized_nodes(source, result, selected)
    all_groups = sorted_groups(g for g in (layer_group(n.name) for n in source.graph.node) if g)
    q_groups = sorted_groups(g for g in (layer_group(n) for n in quantized) if g)
    config = {**settings.to_dict(), "exclude_groups": sorted_groups(exclude_groups),
              "include_groups": None if include_groups is None else sorted_groups(include_groups)}
    return QuantizedOnnx(Path(output), target, config, len(quantized), q_groups,
                         [g for g in all_groups if g not in q_groups], sorted({quantized[n] for n in quantized}))


def quantize_onnx(model_path: Path, output: Path, ranges: Mapping[str, tuple[float, float]], *, target: str = "cpu",
                  exclude_groups: Sequence[str] = (), include_groups: Sequence[str] | None = None) -> QuantizedOnnx:
    """Quantize the prepared FP32 model from calibrated ranges for ONNX Runtime's CPU provider or for TensorRT.

    Args:
        model_path: The prepared FP32 model (:func:`prepare_onnx`) the ranges were calibrated on.
        output: Where to write the INT8 model (atomically).
        ranges: Tensor name -> ``(low, high)`` from :func:`calibrate_ranges` (or its cached JSON form).
        target: ``"cpu"`` (:data:`CPU_SETTINGS`), ``"cpu-vnni"`` (:data:`CPU_VNNI_SETTINGS`) or ``"tensorrt"``
            (:data:`TENSORRT_SETTINGS`).
        exclude_groups: Layer groups kept in float (their nodes go to ``nodes_to_exclude``).
        include_groups: When not ``None``, only these layer groups are quantized.

    Returns:
        The written model and what it quantized.

    Raises:
        ConfigError: Unknown target or group names.
        OnnxQuantizationError: The ranges do not fit the model, or ONNX Runtime's quantizer failed.
    """
    if target not in TARGETS:
        raise ConfigError(f"onnx int8 | target must be one of {TARGETS}, got {target!r}")
    return quantize_with_settings(model_path, output, ranges, SETTINGS[target], exclude_groups=exclude_groups,
                                  include_groups=include_groups, target=target)


def quantized_nodes(source: Any, quantized: Any, selected: set[str]) -> dict[str, str]:
    """Source-graph node name -> op type, for every node that was quantized.

    That is a node the quantizer selected (``selected``: op type, exclusions, inclusions) and actually rewrote: in a
    QDQ graph it reads a ``DequantizeLinear`` output, in a QOperator graph it was replaced (``QLinearConv``
    ``<name>_quant`` and the like). A float node that merely reads a neighbour's dequantized output is not counted.
    """
    ops = {n.name: n.op_type for n in source.graph.node}
    dq_outputs = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    found: dict[str, str] = {}
    for node in quantized.graph.node:
        if node.op_type in _QDQ_OPS:
            continue
        name = node.name[:-len("_quant")] if node.name.endswith("_quant") else node.name
        if name not in ops or name not in selected:
            continue
        replaced = node.op_type != ops[name] or node.domain == "com.microsoft"
        if replaced or any(i in dq_outputs for i in node.input):
            found[name] = ops[name]
    return found


# --------------------------------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------------------------------


def measure_speedup(fp32_path: Path, int8_path: Path, *, threads: int = 2, rounds: int = 40, seconds: float = 5.0,
                    warmup: int = 3, feed: np.ndarray | None = None, blocks: int = 5) -> SpeedupResult:
    """Time the FP32 and INT8 models in interleaved rounds (FP32, INT8, FP32, ...), in ``blocks`` blocks, and compare
    them as bench does: the median of the per-block ratios of the best times, its range, and the noise verdict
    (:func:`ffnet_deploy.runtimes.noise.verdict`).

    Both run in the ``onnxruntime`` runner on the CPU provider with ``threads`` intra-op threads and spinning off, so
    neither steals the cores from the other, timed by the project's one timing loop
    (:func:`ffnet_deploy.runtimes.timing.measure`). Timing stops after ``rounds`` rounds or once ``seconds`` have
    passed (at least 5 rounds), whichever comes first.

    Args:
        fp32_path: The FP32 model.
        int8_path: The INT8 model with the same input.
        threads: Intra-op threads of both sessions.
        rounds: Most interleaved rounds.
        seconds: Time budget of the timed rounds.
        warmup: Untimed runs of each model first.
        feed: The input; default a fixed random normal tensor of the model's input shape.
        blocks: Blocks the rounds are cut into (the order alternating), for the paired ratios.

    Returns:
        Median latencies, the paired ratio with its range, and the verdict.
    """
    from ffnet_deploy.environment import usable_cpus
    from ffnet_deploy.runtimes import create_runner
    from ffnet_deploy.runtimes.noise import load_snapshot, paired_ratio, verdict
    from ffnet_deploy.runtimes.onnxruntime import no_spinning
    from ffnet_deploy.runtimes.timing import Contender, Protocol, latency_stats, measure_groups

    def runner(path: Path):
        return create_runner("onnxruntime", path, threads=threads, session_options=no_spinning)

    with runner(fp32_path) as probe:
        spec = next(iter(probe.input_metadata().values()))
    if feed is None:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        feed = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    contenders = [Contender(name, lambda p=path: runner(p), {spec.name: feed})
                  for name, path in (("fp32", fp32_path), ("int8", int8_path))]
    done = max(5, rounds)
    before = load_snapshot()
    (wait,) = measure_groups([contenders], Protocol(warmup=warmup, warmup_time_s=0.0, min_iters=done, min_time_s=0.0,
                                                    max_time_s=seconds, min_samples=5, blocks=blocks))
    after = load_snapshot()
    failed = [c for c in contenders if c.error]
    if failed:
        raise OnnxQuantizationError(f"onnx int8 | timing {failed[0].name} failed: {failed[0].error}")
    n = min(len(c.samples_ms) for c in contenders)
    fp32_ms, int8_ms = (latency_stats(c.samples_ms[:n])["p50"] for c in contenders)
    ratio = paired_ratio(contenders[0].block_best_ms, contenders[1].block_best_ms)
    load = {k: v["1m"] if v else None for k, v in (("load_before", before), ("load_after", after))}
    judged = verdict(ratio, blocks=blocks, cpu_wait=wait, cpus=usable_cpus(), own_threads=threads, **load)
    return SpeedupResult(fp32_ms, int8_ms, ratio.median if ratio else fp32_ms / int8_ms, threads, n,
                         low=ratio.low if ratio else None, high=ratio.high if ratio else None, blocks=blocks,
                         verdict=judged.verdict, reasons=list(judged.reasons), cpu_wait=wait, **load)


def _first_line(err: BaseException) -> str:
    return first_line(err)

"""Core ML weight-only compression and W8A8, with calibration that runs on Linux.

Weight compression uses ``coremltools.optimize.coreml`` as it is:

=============  ==========================================================  ==============================
mode           coremltools call                                            compression op in the program
=============  ==========================================================  ==============================
``int8``       ``linear_quantize_weights``, ``linear_symmetric``, int8      iOS16 ``constexpr_affine_dequantize``
                                                                           (iOS18: ``constexpr_blockwise_shift_scale``)
``int4``       ``linear_quantize_weights``, ``linear_symmetric``, int4      iOS18 ``constexpr_blockwise_shift_scale``
``palettize4`` ``palettize_weights``, k-means, 16-entry LUT                iOS16 ``constexpr_lut_to_dense``
``palettize6`` ``palettize_weights``, k-means, 64-entry LUT                (``per_block``: the iOS18 form)
=============  ==========================================================  ==============================

``granularity``: for linear modes ``per_channel`` gives one scale per output channel and ``per_block`` one scale per
``block_size`` input channels of each output channel; for palettization ``per_channel`` is coremltools' default of one
LUT per weight tensor and ``per_block`` one LUT per group of ``block_size`` output channels. int4 and anything
``per_block`` need the iOS18 ops, so the program is lifted to iOS18 first (coremltools refuses otherwise); weights
below ``weight_threshold`` elements (coremltools' 2048) stay in float, and ``per_block`` skips the depthwise
convolutions, whose single input channel cannot be cut into blocks. The details dict counts both.

**W8A8 without macOS.** ``coremltools.optimize.coreml.linear_quantize_activations`` calibrates by appending every
intermediate tensor to the model's outputs and calling ``MLModel.predict`` (``experimental/_model_debugger.py``),
which needs the Core ML framework, i.e. macOS. Here the statistics come from the ``coreml-reference`` interpreter
instead: :func:`activation_ranges` runs the float program op by op on the calibration images and records every
non-constant tensor's min and max over *all* images (coremltools 9's own loop overwrites its running min/max with
each new sample, so it keeps the last sample's range only), and the inputs and output of each ``concat`` share one
range, as coremltools does. Those ranges go to coremltools' own graph passes, the same three that
``linear_quantize_activations`` applies (``insert_prefix_quantize_dequantize_pair``,
``insert_suffix_quantize_dequantize_pair`` and ``dequantize_quantize_pair_elimination``), on the program lifted to
iOS17, where ``quantize`` / ``dequantize`` exist. The weights are then quantized to int8 as above. Scales are
symmetric int8, one per tensor, computed by coremltools from the ranges (which it rounds to float16).

The calibration samples are what the program's input takes: a Core ML image input is pixels in 0-255 (the
preprocessing is baked into the program), so ``calib.pixels`` as float32; a tensor input takes ``calib.batches()``.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ffnet_deploy.errors import ConfigError, QuantizationError, first_line, require
from ffnet_deploy.progress import NULL, Progress
from ffnet_deploy.quantize.calibration import CALIBRATING, CalibrationSet
from ffnet_deploy.quantize.config import WEIGHT_MODES

__all__ = ["DEPLOYMENT_TARGETS", "GRANULARITIES", "WEIGHT_MODES", "CoreMLCompression", "activation_ranges",
           "compress_mlmodel", "compression_op_counts", "release_package"]

GRANULARITIES = ("per_channel", "per_block")
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18")
"""Deployment targets a compressed program can be lifted to (Core ML specification versions 7, 8 and 9)."""

_SPEC_VERSION = {"iOS16": 7, "iOS17": 8, "iOS18": 9}
_TARGET_OF_SPEC = {v: k for k, v in _SPEC_VERSION.items()}
COMPRESSION_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")
"""The op types that decode compressed weights at load time."""
_WEIGHTED_OPS = ("conv", "conv_transpose", "linear", "matmul")
_MIN_RANGE = 1e-3  # smallest activation range: its int8 scale (7.9e-6) is still a non-zero float16


@dataclass(frozen=True)
class CoreMLCompression:
    """How to compress a Core ML program. ``CoreMLCompression("int8", activations=True)`` is W8A8."""

    weights: str | None = "int8"  # int8, int4, palettize4, palettize6, or None to leave the weights in float
    activations: bool = False  # also quantize activations to int8 (W8A8 with weights="int8"); needs calibration
    granularity: str = "per_channel"  # per_channel, or per_block (block_size input channels / LUT channel groups)
    block_size: int = 32  # per_block: input channels per scale (linear) or output channels per LUT (palettization)
    min_deployment_target: str | None = None  # iOS16, iOS17 or iOS18; None = the lowest the choice needs
    weight_threshold: int = 2048  # weights with fewer elements stay in float (coremltools' default)

    def required_target(self) -> str:
        """The lowest deployment target whose ops can express this compression."""
        if self.weights == "int4" or (self.weights is not None and self.granularity == "per_block"):
            return "iOS18"  # constexpr_blockwise_shift_scale, sub-byte int4, per-block LUTs
        if self.activations:
            return "iOS17"  # quantize / dequantize
        return "iOS16"

    def target(self) -> str:
        """The deployment target the compressed program is made for."""
        return self.min_deployment_target or self.required_target()

    def validate(self) -> None:
        """Check the combination.

        Raises:
            ConfigError: One line naming the field.
        """
        if self.weights is not None and self.weights not in WEIGHT_MODES:
            raise ConfigError(f"coreml compression | weights must be one of {', '.join(WEIGHT_MODES)} or None, got "
                              f"{self.weights!r}")
        if self.weights is None and not self.activations:
            raise ConfigError("coreml compression | nothing to do: set weights to one of "
                              f"{', '.join(WEIGHT_MODES)}, or activations=True")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"coreml compression | granularity must be per_channel or per_block, got "
                              f"{self.granularity!r}")
        if self.weight_threshold < 0:
            raise ConfigError(f"coreml compression | weight_threshold must be at least 0, got {self.weight_threshold}")
        if self.block_size < 1:
            raise ConfigError(f"coreml compression | block_size must be at least 1, got {self.block_size}")
        target = self.min_deployment_target
        if target is not None:
            if target not in DEPLOYMENT_TARGETS:
                raise ConfigError(f"coreml compression | min_deployment_target must be one of "
                                  f"{', '.join(DEPLOYMENT_TARGETS)}, got {target!r}")
            need = self.required_target()
            if _SPEC_VERSION[target] < _SPEC_VERSION[need]:
                raise ConfigError(f"coreml compression | {self.describe()} needs the {need} ops, but "
                                  f"min_deployment_target is {target}; use {need} or leave it unset")

    def describe(self) -> str:
        """A short label such as ``W8A8``, ``int4 per_block 32`` or ``palettize6``."""
        if self.activations and self.weights == "int8":
            label = "W8A8"
        else:
            label = " + ".join(p for p in (self.weights, "int8 activations" if self.activations else None) if p)
        if self.granularity == "per_block" and self.weights is not None:
            label += f" per_block {self.block_size}"
        return label


def _coremltools():
    ct = require("coremltools", "coreml", "coreml compression")
    # On Linux coremltools logs that its macOS-only native proxies are missing; expected, and noisy.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return ct


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a coremltools call without its progress bars and warnings (failures still arrive as exceptions)."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def release_package(mlmodel: Any) -> None:
    """Delete the temporary ``.mlpackage`` that coremltools keeps for an unsaved model until the process exits.

    Every converted or compressed ``MLModel`` holds its weights in a package under the system temp folder, removed
    only by an ``atexit`` hook; a pipeline that exports several programs would otherwise hold them all, and a killed
    process would leave them behind. The model is unusable afterwards: call this once it is saved or discarded.
    """
    if getattr(mlmodel, "is_temp_package", False) and getattr(mlmodel, "package_path", None):
        shutil.rmtree(mlmodel.package_path, ignore_errors=True)


def _lift(mlmodel: Any, target: str) -> Any:
    """The same program with its opset raised to ``target`` (coremltools' own spec -> pymil -> spec round trip)."""
    from coremltools.models.utils import _apply_graph_pass

    if mlmodel.get_spec().specificationVersion >= _SPEC_VERSION[target]:
        return mlmodel
    return _quietly(_apply_graph_pass, mlmodel, [], spec_version=_SPEC_VERSION[target])


def _calibration_feeds(mlmodel: Any, calib: CalibrationSet) -> tuple[str, list[np.ndarray]]:
    """The program input's name and one float32 (1, 3, H, W) array per calibration image, in the input's range."""
    inputs = list(mlmodel.get_spec().description.input)
    if len(inputs) != 1:
        raise ConfigError(f"coreml compression | calibration supports single-input programs, this one has "
                          f"{[i.name for i in inputs]}")
    feature = inputs[0]
    if feature.type.WhichOneof("Type") == "imageType":
        samples = [calib.pixels[i : i + 1].astype(np.float32) for i in range(len(calib))]
    else:
        samples = [batch.astype(np.float32) for batch in calib.batches(1)]
    if samples and samples[0].shape[2:] != _input_hw(feature):
        raise ConfigError(f"coreml compression | calibration images are {samples[0].shape[2:]}, the program takes "
                          f"{_input_hw(feature)}; load the calibration set with the model's transform")
    return feature.name, samples


def _input_hw(feature: Any) -> tuple[int, ...]:
    if feature.type.WhichOneof("Type") == "imageType":
        return int(feature.type.imageType.height), int(feature.type.imageType.width)
    return tuple(int(d) for d in feature.type.multiArrayType.shape[2:])


def activation_ranges(mlmodel: Any, calib: CalibrationSet, *, progress: Progress = NULL) -> dict:
    """Min/max of every tensor of the float program over the calibration images, by the interpreter.

    Args:
        mlmodel: The float ``ct.models.MLModel`` (an ML program, saved or held in a temporary package).
        calib: Calibration images.
        progress: Where the collection is reported: ``step(images done, total, "calibrating")`` after each image.

    Returns:
        Plain JSON for the statistics cache: ``{"ranges": {tensor name: [min, max]}}``, the function input and every
        non-constant op output except the program's outputs.

    Raises:
        ConfigError: Empty calibration set, or images of the wrong size.
    """
    from pathlib import Path

    from ffnet_deploy.runtimes._mil_program import MILProgram

    if len(calib) == 0:
        raise ConfigError("coreml compression | the calibration set is empty; pass --calib with images")
    name, samples = _calibration_feeds(mlmodel, calib)
    spec = mlmodel.get_spec()
    program = MILProgram.load(Path(mlmodel.package_path), spec)
    outputs = set(program.outputs)
    low: dict[str, float] = {}
    high: dict[str, float] = {}

    def update(tensor: str, value: np.ndarray) -> None:
        if tensor in outputs or value.dtype.kind not in "fiu" or value.size == 0:
            return
        lo, hi = float(np.min(value)), float(np.max(value))
        low[tensor] = min(low.get(tensor, lo), lo)
        high[tensor] = max(high.get(tensor, hi), hi)

    def observe(tensor: str, _op_type: str, value: Any) -> None:
        if isinstance(value, np.ndarray | np.generic):
            update(tensor, np.asarray(value))

    for done, sample in enumerate(samples, 1):
        update(name, sample)
        program.run({name: sample}, observer=observe)
        progress.step(done, len(samples), CALIBRATING)
    _share_concat_ranges(program, low, high)
    return {"ranges": {t: [low[t], high[t]] for t in low}}


def _share_concat_ranges(program: Any, low: dict[str, float], high: dict[str, float]) -> None:
    """Give the inputs and output of each ``concat`` (transitively) one range, so it needs no requantization."""
    groups: list[set[str]] = []
    for op in program.operations:
        if op.type != "concat":
            continue
        members = {n for n, _ in op.inputs.get("values", []) if n is not None} | {op.outputs[0]}
        for group in [g for g in groups if g & members]:
            members |= group
            groups.remove(group)
        groups.append(members)
    for group in groups:
        known = [t for t in group if t in low]
        if known:
            lo, hi = min(low[t] for t in known), max(high[t] for t in known)
            for t in known:
                low[t], high[t] = lo, hi


def _quantize_activations(mlmodel: Any, ranges: dict[str, list[float]], target: str) -> Any:
    """Insert int8 quantize/dequantize pairs with coremltools' own passes, from precomputed ranges."""
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models.utils import _apply_graph_pass

    stats = {}
    for name, (lo, hi) in ranges.items():
        # coremltools rounds the range to float16 and refuses a zero scale: a tensor that stayed (almost) zero over
        # the calibration set gets a +-_MIN_RANGE range instead.
        if max(abs(lo), abs(hi)) < _MIN_RANGE:
            lo, hi = -_MIN_RANGE, _MIN_RANGE
        stats[name] = {"rmin": np.float32(lo), "rmax": np.float32(hi)}
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
    passes = []
    for name in ("compression::insert_prefix_quantize_dequantize_pair",
                 "compression::insert_suffix_quantize_dequantize_pair"):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", config), PassOption("activation_stats", stats)])
        passes.append(graph_pass)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    try:
        return _quietly(_apply_graph_pass, mlmodel, passes, spec_version=_SPEC_VERSION[target])
    except KeyError as err:
        raise QuantizationError(f"coreml compression | no calibration range for tensor {err}; recompute the "
                                "activation ranges for this model (the cached ones belong to another program)") from err


def _require_fp16(spec: Any) -> None:
    """coremltools' activation quantization makes float16 scales, which only an fp16 program's ops accept."""
    function = spec.mlProgram.functions["main"]
    for op in function.block_specializations[function.opset].operations:
        if op.type in _WEIGHTED_OPS and op.outputs and op.outputs[0].type.tensorType.dataType != 10:  # 10 = fp16
            raise ConfigError("coreml compression | int8 activations need an fp16 program (coremltools makes "
                              "float16 scales), this one computes in fp32; export it with --precision fp16")


def _weight_config(compression: CoreMLCompression) -> tuple[Any, dict]:
    """The coremltools op config of the weight mode, and what it records in the details."""
    import coremltools.optimize.coreml as cto

    mode = compression.weights
    per_block = compression.granularity == "per_block"
    if mode in ("int8", "int4"):
        kwargs: dict[str, Any] = {"granularity": compression.granularity}
        if per_block:
            kwargs["block_size"] = compression.block_size
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=mode,
                                             weight_threshold=compression.weight_threshold, **kwargs)
        return config, {"method": "linear_symmetric", "dtype": mode, "nbits": 8 if mode == "int8" else 4,
                        "granularity": compression.granularity, "block_size": compression.block_size if per_block
                        else None, "weight_threshold": config.weight_threshold}
    nbits = 4 if mode == "palettize4" else 6
    kwargs = {"granularity": "per_grouped_channel", "group_size": compression.block_size} if per_block else {}
    config = cto.OpPalettizerConfig(nbits=nbits, mode="kmeans", weight_threshold=compression.weight_threshold,
                                    **kwargs)
    return config, {"method": "kmeans", "dtype": f"uint{nbits} indices", "nbits": nbits,
                    "granularity": compression.granularity, "block_size": compression.block_size if per_block
                    else None, "lut": "per_grouped_channel" if per_block else "per_tensor",
                    "weight_threshold": config.weight_threshold}


def compression_op_counts(spec: Any) -> dict[str, int]:
    """Counts of the compression-related ops of a program's main block, plus weights left in float.

    Returns:
        ``{op type: count}`` for :data:`COMPRESSION_OPS`, ``quantize`` and ``dequantize``, and
        ``"float_weights"``: conv/linear/matmul ops whose weight is still a plain ``const``.
    """
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    producer = {out.name: op.type for op in block.operations for out in op.outputs}
    counts: Counter = Counter()
    for op in block.operations:
        if op.type in (*COMPRESSION_OPS, "quantize", "dequantize"):
            counts[op.type] += 1
        if op.type in _WEIGHTED_OPS:
            key = "y" if op.type == "matmul" else "weight"
            args = op.inputs[key].arguments if key in op.inputs else []
            if args and args[0].WhichOneof("binding") == "name" and producer.get(args[0].name) == "const":
                counts["float_weights"] += 1
    return dict(sorted(counts.items()))


def compress_mlmodel(mlmodel: Any, compression: CoreMLCompression, calib: CalibrationSet | None = None, *,
                     progress: Progress = NULL, ranges: dict | None = None) -> tuple[Any, dict]:
    """Compress a float Core ML ML program: weights, and with ``activations=True`` activations too (W8A8).

    Args:
        mlmodel: A float ``ct.models.MLModel`` of type ``mlprogram`` (fp32 or fp16 compute precision).
        compression: What to do; validated here.
        calib: Calibration images, needed for activation quantization unless ``ranges`` are given.
        progress: Where the calibration is reported (:func:`activation_ranges`).
        ranges: Precomputed :func:`activation_ranges` output (e.g. from the statistics cache); skips calibration.

    Returns:
        The compressed ``MLModel`` (not yet saved; ``save`` it to publish) and a plain-JSON details dict: mode,
        dtype, nbits, granularity, block size, method, op counts (compressed / left in float / quantize pairs),
        deployment target and specification version, calibration count and how it was run.

    Raises:
        ConfigError: An invalid combination, a non-ML-program model, or activation quantization without data.
        QuantizationError: coremltools refused the program.
    """
    ct = _coremltools()
    compression.validate()
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ConfigError(f"coreml compression | the model is a {spec.WhichOneof('Type')}; only ML programs "
                          "(convert_to='mlprogram') can be compressed")
    target = compression.target()
    if spec.specificationVersion > _SPEC_VERSION[target]:
        target = _TARGET_OF_SPEC.get(spec.specificationVersion, target)  # never lower a program's own target
    details: dict[str, Any] = {"compression": compression.describe(), "weights": compression.weights,
                               "activations": "int8" if compression.activations else None,
                               "coremltools": ct.__version__}
    model = mlmodel
    try:
        if compression.activations:
            _require_fp16(spec)
            if ranges is None:
                if calib is None:
                    raise ConfigError("coreml compression | int8 activations need calibration images; pass --calib")
                ranges = activation_ranges(mlmodel, calib, progress=progress)
            model = _quantize_activations(model, ranges["ranges"], target)
            details["calibration"] = {
                "count": len(calib) if calib is not None else None,
                "source": "computed" if calib is not None else "given",
                "runner": "coreml-reference (numpy MIL interpreter; Core ML prediction needs macOS)",
                "statistic": "min/max over all images, symmetric int8 per tensor",
                "tensors": len(ranges["ranges"]),
            }
        else:
            model = _lift(model, target)
        if compression.weights is not None:
            import coremltools.optimize.coreml as cto

            config, weight_details = _weight_config(compression)
            details.update(weight_details)
            fn = cto.linear_quantize_weights if compression.weights in ("int8", "int4") else cto.palettize_weights
            step = _quietly(fn, model, cto.OptimizationConfig(global_config=config))
            if model is not mlmodel:
                release_package(model)  # the activation-quantized or lifted intermediate
            model = step
    except (ValueError, NotImplementedError, AssertionError, RuntimeError) as err:
        # coremltools reports refused programs (unsupported ops, targets, shapes) with these
        raise QuantizationError(f"coreml compression | coremltools refused {compression.describe()}: "
                                f"{first_line(err)}") from err
    out_spec = model.get_spec()
    counts = compression_op_counts(out_spec)
    details.update({
        "ops": counts,
        "weights_compressed": sum(counts.get(t, 0) for t in COMPRESSION_OPS),
        "weights_left_float": counts.get("float_weights", 0),
        "activation_quantize_ops": counts.get("quantize", 0),
        "minimum_deployment_target": _TARGET_OF_SPEC.get(out_spec.specificationVersion,
                                                         f"spec {out_spec.specificationVersion}"),
        "specification_version": int(out_spec.specificationVersion),
    })
    model.user_defined_metadata.update(dict(mlmodel.user_defined_metadata))
    model.user_defined_metadata["compression"] = compression.describe()
    return model, details

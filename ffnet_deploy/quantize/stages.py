"""The quantization steps the exporters call at their seams, with calibration, caching and the accuracy budget.

- ONNX (``--format onnx`` and ``tensorrt``): :func:`quantize_onnx_stage` turns the FP32 ONNX stage into an INT8 one
  (:mod:`~ffnet_deploy.quantize.onnx_int8`); for ``--target cpu`` it measures INT8 against FP32 on this CPU and says
  so when INT8 is not faster.
- OpenVINO: :func:`quantize_openvino_model` runs NNCF on the converted model
  (:mod:`~ffnet_deploy.quantize.openvino_int8`).
- Core ML: :func:`compress_coreml_model` (:mod:`~ffnet_deploy.quantize.coreml_compress`).
- ExecuTorch: :func:`quantize_executorch_model` (PT2E, :mod:`~ffnet_deploy.quantize.executorch_int8`).
- LiteRT: :func:`quantize_litert_model` quantizes the FP32 ``.tflite`` (:mod:`~ffnet_deploy.quantize.litert_int8`).

Each records what it did in a ``quantization`` block that the exporter puts in the manifest's ``details``: the method,
the calibration set (fingerprint, count, skipped files), the quantized and float layer groups, whether the statistics
came from the cache, and how long calibration took.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffnet_deploy.artifact.formats import get_format
from ffnet_deploy.data.transform import EvalTransform
from ffnet_deploy.environment import cpu_identity
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.hashing import sha256_file
from ffnet_deploy.progress import Progress, Sink, as_progress
from ffnet_deploy.quantize.calibration import (
    CacheKey,
    CalibrationSet,
    StatisticsCache,
    cached_statistics,
    load_calibration,
)
from ffnet_deploy.quantize.config import QuantizationConfig


def cache_backend(config) -> str:
    """The calibration-statistics cache of ``config.format``'s quantizer (``<name>.calibration.json``: the format
    declares it, ``FormatSpec.quantizer.cache_backend``; ONNX and TensorRT share ONNX Runtime's)."""
    quantizer = get_format(config.format).quantizer
    if quantizer is None:
        raise ConfigError(f"{config.format} export | this format has no int8 quantizer")
    return quantizer.cache_backend


def settings(config) -> QuantizationConfig:
    """The export's quantization settings (defaults when none were given)."""
    return config.quantization or QuantizationConfig()


def transform_for(model, config) -> EvalTransform:
    """Validation's transform for the exported model at the export's resolution (INT8 exports never wrap the model
    in baked-in preprocessing, so ``model`` is the FFNet itself)."""
    return EvalTransform.for_config(model.cfg, config.resolution)


NOT_FASTER = 1.05
"""A ``--target cpu`` INT8 graph under this speedup over FP32 gets a notice that recommends the FP32 model (medians of
a few seconds of interleaved rounds vary by a few percent)."""


def read_calibration(model, config, log: Sink) -> CalibrationSet | None:
    """The ``--calib`` images, decoded with validation's preprocessing; ``None`` when ``--calib`` was not given."""
    q = settings(config)
    if q.calib is None:
        return None
    log = as_progress(log)
    log.note(f"reading calibration data {q.calib} ({q.calib_size} images)")
    calib = load_calibration(q.calib, transform_for(model, config), q.calib_size, progress=log)
    skipped = calib.source.get("skipped", {})
    bad = sum(v for k, v in skipped.items() if k != "examples")
    log(f"calibration set: {len(calib)} images" + (f" ({bad} unusable files skipped)" if bad else ""))
    return calib


def cache_key(model_sha256: str, config, calib: CalibrationSet | None, transform: EvalTransform,
              input_range: str = "normalized") -> CacheKey:
    q = settings(config)
    return CacheKey(model_sha256, q.method, None if calib is None else calib.fingerprint,
                    None if calib is None else len(calib), {**transform.to_dict(), "input_range": input_range})


def quantization_record(q: QuantizationConfig, calib: CalibrationSet | None, entry, *, backend: str,
                        quantized_groups: list[str], float_groups: list[str], extra: dict[str, Any],
                        seconds: float) -> dict[str, Any]:
    """The manifest's ``details.quantization`` block."""
    data = calib.describe() if calib is not None else {**entry.data, "reused_from_cache_without_data": True}
    return {
        "backend": backend,
        "method": q.method,
        "calibration": {"data": str(q.calib) if q.calib is not None else None, "size": q.calib_size,
                        "fingerprint": data.get("fingerprint"), "num_images": data.get("num_images"),
                        "skipped": data.get("skipped"), "kind": data.get("kind")},
        "statistics_cache": {"path": str(entry.path), "hit": entry.hit,
                             "collect_seconds": round(entry.seconds, 3)},
        # Reading the images plus collecting the statistics (zero collection time on a cache hit).
        "calibration_seconds": round((calib.seconds if calib is not None else 0.0)
                                     + (0.0 if entry.hit else entry.seconds), 3),
        "quantize_seconds": round(seconds, 3),  # the whole quantization step, measurements included
        "quantized_groups": quantized_groups,
        "float_groups": float_groups,
        **extra,
    }


# --------------------------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------------------------


def quantize_onnx_stage(stage, model, config, log: Sink, target: str):
    """The INT8 version of the FP32 ONNX ``stage`` (an :class:`~ffnet_deploy.exporters.onnx.OnnxStage`).

    Args:
        stage: The FP32 ONNX stage, written in the work directory.
        model: The exported FFNet (for its preprocessing).
        config: The export settings; ``config.quantization`` holds the calibration settings.
        log: Progress callback.
        target: ``cpu`` or ``tensorrt``.

    Returns:
        A stage whose ``path`` is the INT8 graph (same file name, replaced) and whose ``details`` hold
        ``quantization``.
    """
    from ffnet_deploy.quantize import onnx_int8

    log = as_progress(log)
    q = settings(config)
    start = time.perf_counter()
    transform = transform_for(model, config)
    calib = read_calibration(model, config, log)
    work = stage.path.parent / ".int8"
    work.mkdir(exist_ok=True)
    try:
        prepared = onnx_int8.prepare_onnx(stage.path, work)
        ranges, entry = onnx_ranges(stage.path, prepared, config, calib, transform, log)
        float_groups: list[str] = []
        budget: dict[str, Any] = {}
        if q.max_drop is not None:
            from ffnet_deploy.quantize.sensitivity import OnnxBackend, fit_accuracy_budget

            backend = OnnxBackend(stage.path, prepared, ranges, target, work)
            try:
                fit = fit_accuracy_budget(backend, q.eval_data, transform, q.max_drop, log)
            finally:
                backend.close()
            float_groups, budget = fit.float_groups, {"accuracy_budget": fit.to_dict()}
        out = work / "model.int8.onnx"
        log(f"quantizing the ONNX graph for {target}" + (f" ({len(float_groups)} layer groups kept in float)"
                                                        if float_groups else ""))
        result = onnx_int8.quantize_onnx(prepared, out, ranges, target=target, exclude_groups=float_groups)
        import onnx

        written = onnx.load(str(out))
        extra: dict[str, Any] = {"target": target, "config": result.config, "quantized_nodes": result.quantized_nodes,
                                 "op_types": sorted(result.op_types), **budget,
                                 "portability": onnx_int8.portability(onnx_int8.SETTINGS[target],
                                                                      onnx_int8.max_abs_int8_weight(written))}
        notices = list(stage.notices)
        cpu = cpu_identity()
        if cpu["isa_class"] in extra["portability"]["unsafe_isa_classes"]:
            notices.append(
                f"this CPU ({cpu['isa_class']}) adds int8 products in 16 bits, which saturate on this graph's 8-bit "
                f"weights: the gate judged the saturated model; for CPUs like this one use --target cpu")
        if target in onnx_int8.CPU_TARGETS:
            log.step(0, 0, "measuring INT8 against FP32 on this CPU")
            speed = onnx_int8.measure_speedup(stage.path, out)
            extra["speedup_vs_fp32"] = {**dataclasses.asdict(speed), "isa_class": cpu["isa_class"],
                                        "cpu": cpu["cpu"]}
            if float_groups:
                # What the accuracy budget cost: the fully quantized graph against the one with groups in float.
                full = work / "model.full-int8.onnx"
                onnx_int8.quantize_onnx(prepared, full, ranges, target=target)
                cost = onnx_int8.measure_speedup(full, out)
                extra["float_groups_latency"] = {"all_int8_ms": cost.fp32_ms, "with_float_groups_ms": cost.int8_ms,
                                                 "relative_speed": round(cost.fp32_ms / cost.int8_ms, 3)}
                log(f"keeping {len(float_groups)} layer groups in float for the accuracy budget: "
                    f"{cost.int8_ms:.2f} ms instead of {cost.fp32_ms:.2f} ms fully INT8")
            spread = (f"{speed.speedup:.2f}x, blocks {speed.low:.2f}-{speed.high:.2f}x" if speed.low is not None
                      else f"{speed.speedup:.2f}x")
            noisy = "" if speed.verdict == "stable" else (
                f"; the timing was noisy ({'; '.join(speed.reasons)}): rerun on a quiet machine before choosing")
            if speed.speedup < NOT_FASTER or not speed.clear:
                claim = ("INT8 is not faster than FP32" if speed.speedup < NOT_FASTER or speed.verdict == "stable"
                         else "INT8 is not faster than FP32 measurably")
                notices.append(
                    f"{claim} in ONNX Runtime on this CPU ({cpu['isa_class']}, {cpu['cpu']}): "
                    f"{speed.int8_ms:.2f} ms vs {speed.fp32_ms:.2f} ms at batch 1, {speed.threads} threads "
                    f"({spread}){noisy}; keep the FP32 model for ONNX Runtime here, or use --format openvino "
                    "--precision int8"
                )
        out.replace(stage.path)
        record = quantization_record(q, calib, entry, backend="onnxruntime",
                                     quantized_groups=list(result.quantized_groups),
                                     float_groups=list(result.float_groups), extra=extra,
                                     seconds=time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ops = dict(sorted(Counter(n.op_type for n in written.graph.node).items()))
    return dataclasses.replace(stage, details=stage.details | {"op_counts": ops, "quantization": record},
                               notices=notices)


def onnx_ranges(fp32: Path, prepared: Path, config, calib: CalibrationSet | None, transform: EvalTransform,
                log: Sink) -> tuple[dict[str, tuple[float, float]], Any]:
    """Activation ranges of the ``prepared`` graph of ``fp32``: from the cache, or collected and cached."""
    from ffnet_deploy.quantize import onnx_int8

    q = settings(config)

    def collect() -> dict:
        log(f"collecting activation ranges ({q.method}) over {len(calib)} images")
        ranges = onnx_int8.calibrate_ranges(prepared, calib, q.method, progress=as_progress(log))
        return {"ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(ranges.items())}}

    entry = cached_statistics(StatisticsCache(q.cache_dir, cache_backend(config), log),
                              cache_key(sha256_file(fp32), config, calib, transform), collect, calib)
    return {name: (float(lo), float(hi)) for name, (lo, hi) in entry.statistics["ranges"].items()}, entry


# --------------------------------------------------------------------------------------------------------------------
# OpenVINO
# --------------------------------------------------------------------------------------------------------------------


def quantize_openvino_model(ov_model, stage, model, config, log: Sink):
    """NNCF INT8 of the converted FP32 ``ov_model`` (from the ONNX ``stage``); returns ``(model, record)``.

    Statistics are cached like ONNX Runtime's (keyed by the FP32 ONNX stage, which fixes the IR). With ``--max-drop``
    and labelled ``--eval-data``, NNCF's accuracy-control variant reverts layers to float until the budget holds.
    """
    from ffnet_deploy.quantize import openvino_int8

    log = as_progress(log)
    q = settings(config)
    start = time.perf_counter()
    transform = transform_for(model, config)
    calib = read_calibration(model, config, log)
    nncf_settings = openvino_int8.NNCFSettings(subset_size=q.calib_size)
    # NNCF feeds one image at a time: it quantizes the model at batch 1, which is then given back the export's batch
    # (fixed or dynamic); FakeQuantize nodes are per channel, not per batch, so the reshape changes no statistic.
    shape = ov_model.inputs[0].get_partial_shape()
    ov_model = _with_input_shape(ov_model, _batch_one(shape))
    extra: dict[str, Any] = {}
    if q.max_drop is not None:
        from ffnet_deploy.data.sources import source_from_spec

        if calib is None:
            raise ConfigError("openvino export | --max-drop runs NNCF's accuracy control, which needs --calib DATA")
        log(f"NNCF accuracy control: at most {q.max_drop} points lost on {q.eval_data}")
        with openvino_int8.nncf_output():
            result = openvino_int8.quantize_with_accuracy_control(
                ov_model, calib, source_from_spec(q.eval_data, split="test"), transform, q.max_drop, nncf_settings,
                progress=log)
        entry = _NoCache(calib)
        extra["accuracy_control"] = {"max_drop": q.max_drop, "eval_data": str(q.eval_data)}
    else:
        key = cache_key(sha256_file(stage.path), config, calib, transform)
        key = dataclasses.replace(key, method=f"{q.method}+nncf:{json_settings(nncf_settings)}")
        if q.method != "minmax":
            log(f"note: NNCF chooses its own range estimators; --calib-method {q.method} is recorded but only "
                "minmax-style statistics are collected")

        cache = StatisticsCache(q.cache_dir, cache_backend(config), log)
        entry = cache.lookup(key)
        with openvino_int8.nncf_output():
            if entry is None:
                if calib is None:
                    cached_statistics(cache, key, dict, None)  # raises: no data and no entry
                log(f"NNCF post-training quantization over {len(calib)} images (performance preset, fast bias "
                    "correction)")
                result = openvino_int8.quantize_openvino(ov_model, calib, nncf_settings, progress=log)
                entry = cache.store(key, result.statistics, result.seconds, calib.describe())
            else:
                log("NNCF post-training quantization from the cached statistics")
                result = openvino_int8.quantize_openvino(ov_model, calib, nncf_settings, progress=log,
                                                         statistics=entry.statistics)
    result.model = _with_input_shape(result.model, shape)
    details = result.details()
    extra["portability"] = openvino_int8.portability(nncf_settings)
    record = quantization_record(q, calib, entry, backend="openvino/nncf", quantized_groups=result.quantized_groups,
                                 float_groups=result.float_groups,
                                 extra={**extra, "nncf": {k: v for k, v in details.items()
                                                          if k not in ("quantized_groups", "float_groups")}},
                                 seconds=time.perf_counter() - start)
    return result.model, record


def _batch_one(shape):
    """``shape`` (an OpenVINO PartialShape) with its batch dimension set to 1."""
    import openvino as ov

    return ov.PartialShape([ov.Dimension(1), *list(shape)[1:]])


def _with_input_shape(ov_model, shape):
    """``ov_model`` with its single input reshaped to ``shape`` (nothing done when it already has it)."""
    if ov_model.inputs[0].get_partial_shape() != shape:
        ov_model.reshape({ov_model.inputs[0]: shape})
    return ov_model


def json_settings(value) -> str:
    import json

    return json.dumps(value.to_dict(), sort_keys=True)


class _NoCache:
    """The cache-entry fields of a quantization whose statistics were not cached (NNCF accuracy control)."""

    def __init__(self, calib: CalibrationSet) -> None:
        self.path, self.hit, self.seconds, self.data = "not cached (accuracy control)", False, 0.0, calib.describe()


# --------------------------------------------------------------------------------------------------------------------
# Core ML
# --------------------------------------------------------------------------------------------------------------------


def coreml_model_sha256(model, config, compression) -> str:
    """What a Core ML program's activation statistics depend on: the weights, the resolution, the input type and
    coremltools (a saved ``.mlpackage`` carries fresh identifiers, so its bytes cannot be the key)."""
    import hashlib

    import coremltools
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    options = config.options.to_dict() if config.options is not None else {}
    digest.update(repr((config.resolution, options, coremltools.__version__)).encode())
    return digest.hexdigest()


def compress_coreml_model(mlmodel, compression, model, config, log: Sink):
    """Weight compression, or W8A8 with activation ranges from the calibration data (cached); ``(model, record)``.

    Activation statistics come from running the float program in the ``coreml-reference`` interpreter, since Core
    ML prediction needs macOS (:mod:`~ffnet_deploy.quantize.coreml_compress`).
    """
    from ffnet_deploy.quantize import coreml_compress

    q = settings(config)
    start = time.perf_counter()
    ranges = None
    record: dict[str, Any] = {}
    if compression.activations:
        transform = transform_for(model, config)
        calib = read_calibration(model, config, log)
        options = config.options
        input_range = "0-255" if options is None or getattr(options, "input", "image") == "image" else "normalized"
        key = cache_key(coreml_model_sha256(model, config, compression), config, calib, transform, input_range)

        def collect() -> dict:
            log(f"collecting activation ranges over {len(calib)} images in the coreml-reference interpreter")
            return coreml_compress.activation_ranges(mlmodel, calib, progress=as_progress(log))

        entry = cached_statistics(StatisticsCache(q.cache_dir, cache_backend(config), log), key, collect, calib)
        ranges = entry.statistics
        record = quantization_record(q, calib, entry, backend="coreml", quantized_groups=[], float_groups=[],
                                     extra={}, seconds=0.0)
        record.pop("quantized_groups")
        record.pop("float_groups")
    log(f"compressing the Core ML program: {compression.describe()}")
    compressed, details = coreml_compress.compress_mlmodel(mlmodel, compression, None, ranges=ranges)
    if record:
        record["quantize_seconds"] = round(time.perf_counter() - start, 3)
    return compressed, {**details, **record}


# --------------------------------------------------------------------------------------------------------------------
# ExecuTorch and LiteRT: min/max observers over the calibration batches
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinMaxRecipe:
    """What differs between the ExecuTorch and the LiteRT INT8 stage; :func:`minmax_int8_stage` is the rest (read the
    calibration images, run them through the float model at the export's batch, cache the ranges, record).

    The callables take the stage's ``state``: what :attr:`prepare` returned (ExecuTorch's prepared graph; nothing for
    LiteRT, which calibrates the FP32 file).
    """

    fmt: str  # the format, the prefix of the refusal
    backend: str  # the record's backend
    recipe: str  # the record's recipe
    observers: str  # how the ranges are taken, for the log ("minmax observers")
    fits: str  # what the cached statistics must fit ("graph", "model"), for the refusal
    model_sha256: Callable[[], str]  # the cache key's model: what the ranges depend on
    method: str | None  # the cache key's method; None: ``--calib-method`` itself
    prepare: Callable[[], Any]  # after the images are read: the state
    calibrate: Callable[[Any, Iterator[Any], int, Progress], dict]  # (state, batches, images, progress) -> statistics
    restore: Callable[[Any, Any], Any]  # (state, cache entry) -> result; a misfit raises ``misfits``
    misfits: tuple[type[Exception], ...] = (KeyError, ValueError)
    finish: Callable[[Any], Any] | None = None  # result -> result, outside the misfit refusal


def minmax_int8_stage(model, config, log: Sink, batch: int, recipe: MinMaxRecipe) -> tuple[Any, dict]:
    """INT8 with static min/max ranges from ``--calib`` (cached), shared by ExecuTorch and LiteRT; returns
    ``(result, record)`` (the ``details.quantization`` record).

    The float model takes batches of ``batch``: a short last chunk repeats its last image (a repeated image changes
    no min or max).
    """
    import numpy as np

    log = as_progress(log)
    q = settings(config)
    start = time.perf_counter()
    transform = transform_for(model, config)
    calib = read_calibration(model, config, log)
    state = recipe.prepare()

    def batches() -> Iterator[Any]:
        for chunk in calib.batches(batch):
            if chunk.shape[0] < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - chunk.shape[0], axis=0)])
            yield chunk

    def collect() -> dict:
        log(f"collecting activation ranges ({recipe.observers}) over {len(calib)} images")
        return recipe.calibrate(state, batches(), len(calib), log)

    key = cache_key(recipe.model_sha256(), config, calib, transform)
    if recipe.method is not None:
        key = dataclasses.replace(key, method=recipe.method)
    entry = cached_statistics(StatisticsCache(q.cache_dir, cache_backend(config), log), key, collect, calib)
    try:
        result = recipe.restore(state, entry)
    except recipe.misfits as err:
        raise ConfigError(f"{recipe.fmt} export | the cached statistics in {entry.path} do not fit this "
                          f"{recipe.fits} ({err}); delete the file to recalibrate") from err
    if recipe.finish is not None:
        result = recipe.finish(result)
    record = quantization_record(q, calib, entry, backend=recipe.backend, quantized_groups=[], float_groups=[],
                                 extra={"recipe": recipe.recipe}, seconds=time.perf_counter() - start)
    record.pop("quantized_groups")
    record.pop("float_groups")
    return result, record


def executorch_model_sha256(model, config) -> str:
    """What the PT2E observers' ranges depend on: the weights, the input shape, and the executorch and torch
    versions (they decide the exported graph, hence the observers' names); and the layout of the cached states."""
    import hashlib
    from importlib.metadata import version

    import torch

    from ffnet_deploy.quantize.executorch_int8 import REVISION

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    digest.update(repr((config.resolution, config.batch, version("executorch"), torch.__version__, REVISION)).encode())
    return digest.hexdigest()


def quantize_executorch_model(model, example: tuple, config, log: Sink):
    """PT2E INT8 of ``model`` for XNNPACK, calibrated on ``--calib`` (statistics cached); ``(converted, record)``.

    Args:
        model: The FP32 FFNet (eval mode).
        example: Its example input, at the export's batch and resolution.
        config: The export settings; ``config.quantization`` holds the calibration settings.
        log: Where the stage reports (:mod:`ffnet_deploy.progress`).

    Returns:
        The converted module with its Q/DQ nodes (to be exported and lowered) and the ``details.quantization``
        record.
    """
    from ffnet_deploy.quantize import executorch_int8

    log = as_progress(log)

    def prepare():
        log("preparing the model for PT2E quantization (XNNPACK quantizer, per-channel symmetric)")
        return executorch_int8.prepare(model, example)

    def calibrate(prepared, batches, total: int, progress: Progress) -> dict:
        executorch_int8.calibrate(prepared, batches, total, progress=progress)
        return executorch_int8.observer_states(prepared)

    def restore(prepared, entry):
        if entry.hit:  # a fresh collection left its ranges in the observers
            executorch_int8.load_observer_states(prepared, entry.statistics)
        return prepared

    return minmax_int8_stage(model, config, log, int(example[0].shape[0]), MinMaxRecipe(
        fmt="executorch", backend="executorch/pt2e-xnnpack",
        recipe="XNNPACKQuantizer, symmetric, per-channel weights, static per-tensor activations",
        observers="histogram observers, min/max for weights", fits="graph",
        model_sha256=lambda: executorch_model_sha256(model, config), method=None, prepare=prepare,
        calibrate=calibrate, restore=restore,
        misfits=(KeyError, ValueError, RuntimeError), finish=executorch_int8.convert))


def quantize_litert_model(fp32: Path, out: Path, model, config, log: Sink, *, quantize_gelu: bool = False):
    """Full-integer INT8 of the FP32 LiteRT model at ``fp32`` into ``out`` with ``ai-edge-quantizer``, calibrated on
    ``--calib`` (statistics cached, keyed by the FP32 model's bytes and the recipe); returns the
    ``details.quantization`` record.

    Args:
        fp32: The converted FP32 ``.tflite`` (in the export's work directory).
        out: Where the INT8 model is written (a path of the work directory).
        model: The FP32 FFNet (for the calibration transform).
        config: The export settings; ``config.quantization`` holds the calibration settings.
        log: Where the stage reports (:mod:`ffnet_deploy.progress`).
        quantize_gelu: Quantize the GELUs too (XNNPACK then leaves them outside the delegate; for tests).
    """
    import hashlib

    from ffnet_deploy.quantize import litert_int8

    log = as_progress(log)
    entries = litert_int8.recipe(quantize_gelu)
    recipe_digest = hashlib.sha256(litert_int8.recipe_id(entries).encode()).hexdigest()[:16]

    def restore(_state, entry) -> None:
        log("quantizing with ai-edge-quantizer (static_wi8_ai8" + (")" if quantize_gelu else ", GELU float)"))
        litert_int8.quantize(fp32, entries, entry.statistics, out)

    _, record = minmax_int8_stage(model, config, log, config.batch, MinMaxRecipe(
        fmt="litert", backend="litert/ai-edge-quantizer",
        recipe="static_wi8_ai8: symmetric int8 weights per channel, static asymmetric int8 activations per tensor"
               + ("" if quantize_gelu else "; GELU float"),
        observers="min/max", fits="model", model_sha256=lambda: sha256_file(fp32),
        method=f"{settings(config).method}+ai-edge-quantizer:{recipe_digest}", prepare=lambda: None,
        calibrate=lambda _state, batches, total, progress: litert_int8.calibrate(fp32, entries, batches, total,
                                                                                progress=progress),
        restore=restore))
    return record


def describe_record(record: dict | None) -> list[tuple[str, str]]:
    """What a ``quantization`` (or ``compression``) record says, as ``(field, text)`` rows for a person: the
    calibration set, the statistics cache, the layer groups kept in float, INT8 against FP32 here, the schemes.

    ``export`` shows them under the artifact's fields; ``[]`` for no record.
    """
    if not record:
        return []
    rows = []
    calib = record.get("calibration") or {}
    if calib.get("num_images"):
        rows.append(("calibration", f"{calib['num_images']} images of {calib.get('data') or 'the cached set'}, "
                                    f"{record.get('method')}, {record.get('calibration_seconds', 0):.1f} s"))
    cache = record.get("statistics_cache")
    if cache:
        rows.append(("statistics cache", f"{'hit' if cache['hit'] else 'written'}: {cache['path']}"))
    if "quantized_groups" in record:
        floats = record.get("float_groups") or []
        rows.append(("layer groups", f"{len(record['quantized_groups'])} quantized, {len(floats)} in float"
                                     + (f" ({', '.join(floats)})" if floats else "")))
    speed = record.get("speedup_vs_fp32")
    if speed:
        from ffnet_deploy.runtimes.noise import PairedRatio, format_ratio

        ratio = f"{speed['speedup']:.2f}x"
        if speed.get("low") is not None:
            ratio = format_ratio(PairedRatio(speed["speedup"], speed["low"], speed["high"], ()), "x")
        rows.append(("INT8 vs FP32 here", f"{speed['int8_ms']:.2f} ms vs {speed['fp32_ms']:.2f} ms "
                                          f"({ratio}; {speed.get('verdict') or 'not judged'})"))
    for key in ("weights", "activations", "minimum_deployment_target"):
        if record.get(key) not in (None, False):
            rows.append((key.replace("_", " "), str(record[key])))
    return rows

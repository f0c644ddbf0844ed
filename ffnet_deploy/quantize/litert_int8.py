"""INT8 for LiteRT: full-integer post-training quantization of the FP32 ``.tflite`` with ``ai-edge-quantizer``.

The recipe is ``ai-edge-quantizer``'s ``static_wi8_ai8`` (symmetric int8 weights per output channel, asymmetric int8
activations per tensor, static ranges from min/max over the calibration images), with one change: **GELU stays
float** (:data:`GELU_FLOAT`). XNNPACK has no int8 GELU, so a quantized GELU falls out of the delegate: on the digits
model 9 of 11 GELUs ran on LiteRT's builtin kernels, in 10 partitions; with GELU float, XNNPACK takes the
dequantize-GELU-quantize around it and the graph is one partition. The model's input and output become int8 with a
``(scale, zero_point)`` each: the ``litert`` runner quantizes the normalized image and dequantizes the logits, and so
must the app (the manifest's ``details.io`` holds the pairs).

The steps: :func:`signature` of the FP32 model, :func:`calibrate` (the calibration images through ``Quantizer.
calibrate``), then :func:`quantize` writes the INT8 model. The ranges :func:`calibrate` returns are the statistics the
calibration cache keeps (JSON lists per tensor, :func:`to_statistics` / :func:`from_statistics`): a cache hit skips
running the calibration images.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.progress import NULL, Progress
from ffnet_deploy.quantize.calibration import CALIBRATING

METHOD = "minmax"
"""The only range estimator of this recipe (``ai-edge-quantizer``'s ``min_max_uniform_quantize``)."""

GELU_FLOAT = {"regex": ".*", "operation": "GELU", "algorithm_key": "no_quantize"}
"""The recipe entry that keeps every GELU float (module docstring); later entries of a recipe override earlier ones."""


def recipe(quantize_gelu: bool = False) -> list[dict[str, Any]]:
    """The quantization recipe: ``static_wi8_ai8``, with GELU float unless ``quantize_gelu``."""
    from ai_edge_quantizer import recipe as recipes

    return [*recipes.static_wi8_ai8(), *([] if quantize_gelu else [GELU_FLOAT])]


def recipe_id(entries: list[dict[str, Any]]) -> str:
    """A stable text of a recipe, for the calibration cache key (its enums as their values)."""
    return json.dumps(entries, sort_keys=True, default=lambda v: getattr(v, "value", str(v)))


def signature(model_path: Path) -> tuple[str, str]:
    """``(signature key, input name)`` of the FP32 model's single-input signature (``serving_default``, ``args_0``)."""
    from ffnet_deploy.artifact.tflite import open_interpreter

    interpreter = open_interpreter(model_path, "litert export", threads=1)
    ((key, io),) = interpreter.get_signature_list().items()
    (name,) = io["inputs"]
    return key, name


def calibrate(model_path: Path, entries: list[dict[str, Any]], batches: Iterable[np.ndarray], total: int,
              progress: Progress = NULL) -> dict[str, Any]:
    """Min/max ranges of every tensor of the FP32 model over the calibration ``batches`` (normalized float32
    arrays at the model's batch), as the cache stores them (:func:`to_statistics`); ``step(images done, total,
    "calibrating")`` is reported as each batch is taken (``Quantizer.calibrate`` then runs them all at once)."""
    from ai_edge_quantizer import quantizer

    from ffnet_deploy.artifact.tflite import quiet_stderr

    key, name = signature(model_path)
    samples = []
    done = 0
    for batch in batches:
        samples.append({name: np.ascontiguousarray(batch, dtype=np.float32)})
        done += batch.shape[0]
        progress.step(min(done, total), total, CALIBRATING)
    q = quantizer.Quantizer(str(model_path))
    q.load_quantization_recipe(entries)
    with quiet_stderr():
        result = q.calibrate({key: samples})
    return to_statistics(result)


def to_statistics(result: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """``Quantizer.calibrate``'s ranges as JSON lists: ``{"tensors": {name: {"min", "max", "shape"}}}``."""
    out = {}
    for name, values in sorted(result.items()):
        lo, hi = np.asarray(values["min"], np.float32), np.asarray(values["max"], np.float32)
        out[name] = {"min": lo.flatten().tolist(), "max": hi.flatten().tolist(), "shape": list(lo.shape)}
    return {"tensors": out}


def from_statistics(statistics: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """The ranges ``Quantizer.quantize`` takes, from the cached statistics."""
    out = {}
    for name, state in statistics["tensors"].items():
        shape = tuple(state["shape"])
        out[name] = {"min": np.asarray(state["min"], np.float32).reshape(shape),
                     "max": np.asarray(state["max"], np.float32).reshape(shape)}
    return out


def quantize(model_path: Path, entries: list[dict[str, Any]], statistics: dict[str, Any], out: Path) -> None:
    """Write the INT8 model of the FP32 ``model_path`` to ``out`` with the calibrated ``statistics``.

    Raises:
        ValueError: When the statistics do not hold every tensor the recipe quantizes (another graph).
    """
    from ai_edge_quantizer import quantizer

    from ffnet_deploy.artifact.tflite import quiet_stderr

    q = quantizer.Quantizer(str(model_path))
    q.load_quantization_recipe(entries)
    # export_model prints a size summary on stdout, which must not reach a --json output.
    with quiet_stderr(), contextlib.redirect_stdout(io.StringIO()):
        result = q.quantize(from_statistics(statistics))
        result.export_model(str(out), overwrite=True)

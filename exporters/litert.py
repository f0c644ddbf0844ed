"""LiteRT export: ``model.tflite`` for Android apps (LiteRT, formerly TensorFlow Lite), run with XNNPACK on the CPU.

The steps: ``litert_torch.convert(model, (example,))`` and ``.export(path)`` (``litert-torch``, the renamed
ai-edge-torch). The model keeps PyTorch's NCHW float32 input and ``(N, classes)`` logits. ``--precision int8``
quantizes the converted FP32 model with ``ai-edge-quantizer`` (full-integer static activations, GELU float so that
XNNPACK takes the whole graph), calibrated on ``--calib`` through the project's calibration data and statistics cache
(:func:`ffnet_deploy.quantize.stages.quantize_litert_model`); its input and output are then int8, each with a
``(scale, zero_point)`` recorded in ``details.io``. Both are written inside the export's work directory, so the model is
published complete or not at all.

The format (:data:`FORMAT`): ``.tflite``, recognized by its content (the FlatBuffer file identifier ``TFL3``), run by
the ``litert`` runner (``ai_edge_litert``'s interpreter, XNNPACK applied) for the parity gate, validation and bench.
On Linux those are parity and functionality checks; latency that means something is measured on the phone with
LiteRT's ``benchmark_model`` (README, "Android").

**Delegation is part of parity**, as for ExecuTorch (:mod:`ffnet_deploy.validate.delegation`, the one check both
use): the manifest records the XNNPACK partitions and, per operator, how many nodes are inside and outside them
(``details.delegation``), and every validation of a ``.tflite`` (the gate included) reads the model itself
(:mod:`ffnet_deploy.artifact.tflite`) and adds a ``delegation`` check that a convolution or GELU outside the delegate
fails, in one line naming the operators.

Precision read back (:func:`read_litert_precision`): the data types of the constant tensors; ``int8`` holding most
weight elements makes it int8, ``float16`` fp16, else fp32.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ffnet_deploy.artifact.formats import Extra, FormatSpec, PrecisionEvidence, Quantizer, RuntimeChoice
from ffnet_deploy.artifact.inspect import precision_of_weights, read_for_precision
from ffnet_deploy.artifact.tflite import looks_like_tflite
from ffnet_deploy.errors import ExportError, FFNetDeployError, first_line
from ffnet_deploy.exporters.base import (
    ExportConfig,
    ExportedArtifact,
    Exporter,
    FormatOptions,
    Log,
    io_specs,
    refuse_app_side_settings,
    register_exporter,
    unwrap,
)

if TYPE_CHECKING:
    from torch import nn

MODEL_FILE = "model.tflite"
FP32_FILE = "fp32.tflite"  # the converted FP32 model an int8 export quantizes (inside the work directory only)

FLOAT_TYPES = ("float32", "float16")


@dataclass(frozen=True)
class LiteRTOptions(FormatOptions):
    """``--format litert`` takes no options of its own (XNNPACK on the CPU is the delegate checked here)."""

    format_name: ClassVar[str] = "litert"


# --------------------------------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------------------------------


def read_litert_precision(path: Path) -> PrecisionEvidence:
    """The precision a ``.tflite`` computes in, read from its constant tensors (rules: module docstring)."""
    from ffnet_deploy.artifact.tflite import read_tflite

    summary = read_for_precision(lambda: read_tflite(path, "litert"), path, "ai-edge-litert")
    if isinstance(summary, PrecisionEvidence):
        return summary
    counts = summary.constant_elements
    low = counts.get("int8", 0)
    floats = sum(counts.get(t, 0) for t in FLOAT_TYPES)
    if not low + floats:
        return PrecisionEvidence(None, "no int8 or float constant tensors", path)
    return precision_of_weights(path, low, floats, half=counts.get("float16", 0),
                                evidence=("int8 weights ({share})", "float16 weights ({share})",
                                          "float32 weights ({share})"))


def model_file(spec: Any) -> Path:
    """The ``.tflite`` of a validation target (``validate.engine.ArtifactSpec``): the file, or its folder's model."""
    path = Path(spec.path)
    if path.is_dir():
        path = path / (spec.manifest.artifact.path if spec.manifest is not None else MODEL_FILE)
    return path


def delegation_checks(spec: Any) -> list:
    """The ``delegation`` check of a validation target (a ``FormatSpec.checks`` hook): the operators of the model
    in no XNNPACK partition, read from the file (the shared check: :mod:`ffnet_deploy.validate.delegation`)."""
    from ffnet_deploy.artifact.tflite import read_tflite
    from ffnet_deploy.validate.delegation import Delegation, delegation_check

    summary = read_tflite(model_file(spec), "litert")
    return [delegation_check(Delegation(summary.delegate_calls, summary.outside, summary.delegated_nodes))]


def not_runnable_hint(folder: Path | None) -> str:
    return "; on a phone, time the .tflite with LiteRT's benchmark_model (README, Android)"


FORMAT = FormatSpec(
    name="litert", title="LiteRT", order=60, suffixes=(".tflite",),
    precisions=("fp32", "int8"), default_precision="fp32",
    runtimes=(RuntimeChoice("litert"),), bench_runtime="litert",
    runs_on="an Android phone (LiteRT, XNNPACK or GPU delegate); Linux runs its parity and host timing",
    read_precision=read_litert_precision, recognizes=looks_like_tflite, checks=delegation_checks,
    not_runnable_hint=not_runnable_hint, in_demo=True, demo_if_installed=True,
    extra=Extra("litert", ("litert_torch", "ai_edge_quantizer", "ai_edge_litert.interpreter")),
    device_steps=("adb push {artifact} /data/local/tmp/{id}.tflite",
                  "adb shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/{id}.tflite --num_threads=4 "
                  "--use_xnnpack=true --num_runs=100 --warmup_runs=10",
                  "write the avg ms of 'Inference timings in us' into phone.csv (runtime litert, compute_units "
                  "XNNPACK; GPU with --use_gpu=true)",
                  "ffnet-deploy report add --csv phone.csv --device-name PHONE --out phone/results.json"),
    quantizer=Quantizer(cache_backend="litert"),
)
"""The LiteRT format (module docstring)."""


def delegation_record(summary: Any) -> dict[str, Any]:
    """The manifest's ``details.delegation``: the XNNPACK partitions of the written model, per operator."""
    names = sorted({*summary.delegated_nodes, *summary.outside})
    ops = {name: {"delegated": summary.delegated_nodes.get(name, 0), "not_delegated": summary.outside.get(name, 0)}
           for name in names}
    return {"backend": "XNNPACK", "delegated_subgraphs": summary.delegate_calls.get("XNNPACK", 0),
            "delegated_nodes": sum(summary.delegated_nodes.values()),
            "not_delegated_nodes": sum(summary.outside.values()), "not_delegated": dict(summary.outside),
            "operators": ops}


@contextmanager
def _quiet_converter() -> Iterator[list[str]]:
    """litert-torch prints a progress tree on stdout (``LITERT_TORCH_SHOW_PROGRESS``) and TensorFlow's C++ logs on
    stderr: neither may reach a ``--json`` output; the stderr lines are kept for an error message."""
    from ffnet_deploy.artifact.tflite import quiet_stderr

    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with quiet_stderr() as said:
            yield said
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


def convert(model: nn.Module, example: tuple, path: Path) -> None:
    """``model`` converted to a LiteRT FlatBuffer at ``path`` (litert-torch)."""
    with _quiet_converter():
        import litert_torch

        litert_torch.convert(model, example).export(str(path))


def io_quantization(path: Path) -> dict[str, Any]:
    """The data type and ``(scale, zero_point)`` of the model's input and output, as the app must feed and read
    them (an int8 model's are int8; a float model's scale is 0)."""
    from ffnet_deploy.artifact.tflite import open_interpreter

    interpreter = open_interpreter(path, "litert export", threads=1)

    def one(d: dict) -> dict[str, Any]:
        scale, zero = d["quantization"]
        return {"dtype": d["dtype"].__name__, "scale": float(scale), "zero_point": int(zero)}

    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    return {"input": one(inp), "output": one(out)}


@register_exporter(FORMAT)
class LiteRTExporter(Exporter):
    """``model.tflite``: the model converted by litert-torch, FP32 or full-integer INT8 (ai-edge-quantizer)."""

    options_class = LiteRTOptions
    quantization_flags = ("--calib", "--calib-size", "--calib-method", "--eval-data", "--calib-cache")
    quantize_gelu: ClassVar[bool] = False  # a test sets it to make XNNPACK leave the GELUs out (delegation gate)

    def check_available(self) -> None:
        with _quiet_converter():  # importing litert-torch logs TensorFlow's start-up lines on stderr
            super().check_available()

    def validate(self, config: ExportConfig) -> None:
        super().validate(config)
        refuse_app_side_settings(config, "litert", holder="model",
                                 calibration="ai-edge-quantizer's static recipe uses min/max ranges")

    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log, *,
               source_sha256: str | None = None) -> ExportedArtifact:
        import torch

        precision = self.resolve_precision(config)
        example = (torch.zeros(config.batch, 3, config.resolution, config.resolution),)
        target = workdir / (FP32_FILE if precision == "int8" else MODEL_FILE)
        start = time.perf_counter()
        log("converting with litert-torch")
        try:
            convert(model, example, target)
        except FFNetDeployError:
            raise
        except Exception as err:  # torch.export and the MLIR converter raise many types; the first line says which
            raise ExportError(f"litert export | conversion failed: {type(err).__name__}: "
                              f"{first_line(err, '')}") from err
        convert_seconds = time.perf_counter() - start
        quantization = None
        if precision == "int8":
            from ffnet_deploy.quantize.stages import quantize_litert_model

            quantization = quantize_litert_model(target, workdir / MODEL_FILE, model, config, log,
                                                 quantize_gelu=self.quantize_gelu)
            target.unlink()  # the FP32 model is a step, not part of the artifact
        from ffnet_deploy.artifact.tflite import read_tflite
        from ffnet_deploy.validate.delegation import gated, outside_summary

        summary = read_tflite(workdir / MODEL_FILE, "litert export")
        delegation = delegation_record(summary)
        if summary.outside:
            log(f"not delegated: {outside_summary(summary.outside)}"
                + (" (convolution/GELU among them: the parity gate fails)" if gated(summary.outside) else ""))
        inputs, outputs = io_specs(config, unwrap(model).num_classes)
        from importlib.metadata import version

        return ExportedArtifact(
            path=MODEL_FILE, inputs=inputs, outputs=outputs,
            backend_versions={p: version(p) for p in ("litert-torch", "ai-edge-litert")}
            | ({"ai-edge-quantizer": version("ai-edge-quantizer")} if quantization else {}),
            details={"delegate": "xnnpack", "delegation": delegation, "weights": precision,
                     "io": io_quantization(workdir / MODEL_FILE), "convert_seconds": round(convert_seconds, 3)}
            | ({"quantization": quantization} if quantization else {}),
        )

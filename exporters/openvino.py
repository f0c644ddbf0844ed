"""OpenVINO IR export: ``model.xml`` + ``model.bin`` converted from the ONNX stage.

Converting from the ONNX stage (:func:`~ffnet_deploy.exporters.onnx.export_onnx_stage`, rather than from the torch
module) keeps every tensor name of the ONNX graph, so the ``images``/``logits`` names and the manifest's
``block_outputs`` are the same in both formats. The stage's ``model.onnx`` is an intermediate: it is removed after
conversion unless ``--keep-onnx`` (:attr:`OpenVINOOptions.keep_onnx`) keeps it in the artifact directory, where the
manifest lists it with its sha256 under ``files``. ``--precision fp16``
stores the weights in FP16 (``ov.save_model(compress_to_fp16=True)``); OpenVINO decompresses them at load time,
and the inference precision stays the device's choice. After saving, the IR is read back and compiled on CPU to
check that its input and output names and shapes are the ONNX ones.

The format (:data:`FORMAT`): ``.xml`` (+ ``.bin``), run by OpenVINO (validation and bench), fp32/fp16/int8 (int8:
NNCF). A folder that keeps its ``model.onnx`` (``--keep-onnx``) is validated twice: the IR, and the intermediate graph
on the ONNX format's runner as the graph it is (:func:`validation_targets`). Precision read back
(:func:`read_openvino_precision`, the IR's XML parsed with the standard library): ``FakeQuantize`` ops or 8/4-bit
weight constants make it int8; ``f16`` weight constants (``compress_to_fp16``, decompressed by a ``Convert`` at
load) fp16; else fp32.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ffnet_deploy.artifact.formats import Extra, FormatSpec, Quantizer, RuntimeChoice
from ffnet_deploy.artifact.inspect import PrecisionEvidence, precision_of_weights
from ffnet_deploy.errors import ExportError, first_line
from ffnet_deploy.exporters.base import (
    ExportConfig,
    ExportedArtifact,
    Exporter,
    Log,
    TensorSpec,
    option,
    register_exporter,
)
from ffnet_deploy.exporters.onnx import STAGE_FILE, OnnxOptions, OnnxStage, export_onnx_stage
from ffnet_deploy.interrupts import signal_stack_kept

if TYPE_CHECKING:
    from torch import nn

"""Gate tolerance per weight precision: FP16 weights round each weight to 11 significant bits."""

STAGE_SCRATCH = ".onnx-stage"
"""Work-directory subfolder of an intermediate ONNX stage (removed after conversion)."""


@dataclass(frozen=True)
class OpenVINOOptions(OnnxOptions):
    """Options of ``--format openvino``: the ONNX stage's (``opset``, ``simplify``) plus what OpenVINO adds."""

    format_name: ClassVar[str] = "openvino"

    keep_onnx: bool = option(False, "--keep-onnx")  # keep the intermediate model.onnx in the artifact directory

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.keep_onnx, bool):
            raise self.error(f"keep_onnx must be True or False, got {self.keep_onnx!r}")


# --------------------------------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------------------------------

# OpenVINO element types of quantized / compressed integer weights.
OV_LOWBIT_TYPES = frozenset({"u8", "i8", "u4", "i4", "nf4", "f8e4m3", "f8e5m2"})
OV_FLOAT_TYPES = frozenset({"f32", "f16", "bf16"})


def read_openvino_precision(path: Path) -> PrecisionEvidence:
    """The precision an OpenVINO IR computes in, read from its ``.xml`` (rules: module docstring)."""
    import math
    import xml.etree.ElementTree as ET

    elements: dict[str, int] = {}
    fake_quantize = 0
    try:
        # iterparse and clear: the IR's XML can be large, and only each layer's type and constant type are needed.
        for _event, elem in ET.iterparse(str(path), events=("end",)):
            if elem.tag != "layer":
                continue
            kind = elem.get("type")
            if kind == "FakeQuantize":
                fake_quantize += 1
            elif kind == "Const":
                data = elem.find("data")
                if data is not None:
                    shape = [int(d) for d in (data.get("shape") or "").split(",") if d.strip()]
                    et = data.get("element_type", "")
                    elements[et] = elements.get(et, 0) + math.prod(shape)
            elem.clear()
    except (ET.ParseError, OSError, ValueError) as err:
        return PrecisionEvidence(None, f"cannot be read as OpenVINO IR XML ({err})", path)
    if fake_quantize:
        return PrecisionEvidence("int8", f"{fake_quantize} FakeQuantize op(s)", path)
    kinds = ", ".join(sorted(k for k in elements if k in OV_LOWBIT_TYPES))
    return precision_of_weights(path, low=sum(v for k, v in elements.items() if k in OV_LOWBIT_TYPES),
                                floats=sum(v for k, v in elements.items() if k in OV_FLOAT_TYPES),
                                half=elements.get("f16", 0) + elements.get("bf16", 0),
                                evidence=(f"{kinds} weight constants ({{share}})",
                                          "f16 weight constants, compressed ({share})",
                                          "f32 weight constants ({share}), no FakeQuantize"))


def validation_targets(request) -> list:
    """The IR on its runner, and with ``--keep-onnx`` the intermediate ``model.onnx`` too, judged as the graph it
    is (the manifest's precision describes the IR's weights): a :data:`FormatSpec.targets` hook."""
    targets = [request.default()]
    onnx = request.folder / STAGE_FILE
    if request.path.is_dir() and onnx.is_file():
        targets.append(request.target(onnx, request.runtime_for("onnx"), request.inspect(onnx, "onnx"),
                                      "the intermediate ONNX", graph=True))
    return targets


def openvino_sensitivity_backend(stage: OnnxStage, config: ExportConfig, calib: Any, transform: Any, work: Path,
                                 log: Log) -> Any:
    """The NNCF backend ``sensitivity --format openvino`` ranks layer groups with."""
    from ffnet_deploy.quantize.sensitivity import OpenVINOBackend

    return OpenVINOBackend(stage.path, calib, work)


def is_openvino_ir(path: Path) -> bool:
    """Whether ``path`` holds an OpenVINO IR: XML text whose root element is ``<net>`` (read from its first 4 KiB)."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith((b"<?xml", b"<net")) and b"<net" in head


FORMAT = FormatSpec(
    name="openvino", title="OpenVINO IR", order=20, suffixes=(".xml",),
    precisions=("fp32", "fp16", "int8"), default_precision="fp32",
    runtimes=(RuntimeChoice("openvino"),), bench_runtime="openvino",
    runs_on="an x86 or Arm CPU with OpenVINO",
    extra=Extra("openvino", ("openvino",)),  # onnx is a core dependency
    read_precision=read_openvino_precision, recognizes=is_openvino_ir, targets=validation_targets, in_demo=True,
    quantizer=Quantizer(cache_backend="openvino", sensitivity=openvino_sensitivity_backend, sensitivity_label="NNCF"),
)
"""The OpenVINO IR format (module docstring)."""


@register_exporter(FORMAT)
class OpenVINOExporter(Exporter):
    """``model.xml``/``model.bin`` (OpenVINO IR) with FP32 or FP16-compressed weights, or NNCF INT8."""

    options_class = OpenVINOOptions

    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log, *,
               source_sha256: str | None = None) -> ExportedArtifact:
        import openvino as ov

        precision = self.resolve_precision(config)
        options = self.resolve_options(config)
        # A kept stage is written straight into the artifact; otherwise into a scratch folder that goes as a whole,
        # with anything the ONNX writer put beside the graph.
        stage_dir = workdir if options.keep_onnx else workdir / STAGE_SCRATCH
        stage_dir.mkdir(exist_ok=True)
        try:
            stage = export_onnx_stage(model, config, options, stage_dir, log)
            # seam: a graph transform (the INT8 quantizer) turns `stage` into another OnnxStage here. OpenVINO
            # refuses ONNX Runtime's S8S8 Q/DQ graph, so INT8 here is NNCF on the converted FP32 model instead.
            log.stage("convert")
            log.note(f"converting to OpenVINO IR ({precision} weights)")
            try:
                ov_model = ov.convert_model(str(stage.path))
            except Exception as err:  # OpenVINO raises its own RuntimeError subclasses
                raise ExportError(f"openvino export | conversion failed: {first_line(err)}") from err
            quantization = None
            if precision == "int8":
                from ffnet_deploy.quantize.stages import quantize_openvino_model

                ov_model, quantization = quantize_openvino_model(ov_model, stage, model, config, log)
            try:
                ov.save_model(ov_model, str(workdir / "model.xml"), compress_to_fp16=precision == "fp16")
            except Exception as err:  # OpenVINO raises its own RuntimeError subclasses
                raise ExportError(f"openvino export | saving the IR failed: {first_line(err)}") from err
        finally:
            if not options.keep_onnx:
                shutil.rmtree(stage_dir, ignore_errors=True)

        log.note("checking the IR's inputs and outputs")
        check_ir(workdir / "model.xml", stage.inputs, stage.outputs, stage.block_outputs)
        return ExportedArtifact(
            path="model.xml",
            inputs=stage.inputs,
            outputs=stage.outputs,
            backend_versions=stage.versions | {"openvino": ov.__version__},
            block_outputs=stage.block_outputs,
            details=stage.details | {"weights": precision, "onnx_kept": options.keep_onnx}
            | ({"quantization": quantization} if quantization else {}),
            notices=list(stage.notices),
        )


def check_ir(xml: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], block_outputs: dict[str, str]) -> None:
    """Compile the IR on CPU and compare its I/O names and shapes with the ONNX spec; check block tensor names.

    Raises:
        ExportError: Naming the first port or block tensor that differs.
    """
    import openvino as ov

    with signal_stack_kept():  # OpenVINO's CPU plugin swaps this thread's signal stack until its Core is freed
        core = ov.Core()
        model = core.read_model(str(xml))
        compiled = core.compile_model(model, "CPU")

    def describe(port) -> tuple[set[str], tuple[int | None, ...]]:
        shape = port.get_partial_shape()
        dims = tuple(d.get_length() if d.is_static else None for d in shape)
        return set(port.get_names()), dims

    for kind, ports, specs in (("input", compiled.inputs, inputs), ("output", compiled.outputs, outputs)):
        if len(ports) != len(specs):
            raise ExportError(f"openvino export | IR has {len(ports)} {kind}s, the ONNX has {len(specs)}")
        for port, spec in zip(ports, specs, strict=True):
            names, dims = describe(port)
            if spec.name not in names or dims != tuple(spec.shape):
                raise ExportError(
                    f"openvino export | IR {kind} {sorted(names)} {dims} differs from the ONNX {kind} "
                    f"{spec.name!r} {tuple(spec.shape)}"
                )
    tensor_names = {name for op in model.get_ops() for out in op.outputs() for name in out.get_names()}
    lost = [k for k, v in block_outputs.items() if v not in tensor_names]
    if lost:
        raise ExportError(f"openvino export | block output tensors of {lost[:3]} are not named in the IR")

"""OpenVINO IR export: ``model.xml`` + ``model.bin`` converted from the ONNX stage.

Converting from the ONNX stage (:func:`~ffnet_deploy.exporters.onnx.export_onnx_stage`, rather than from the torch
module) keeps every tensor name of the ONNX graph, so the ``images``/``logits`` names and the manifest's
``block_outputs`` are the same in both formats. The stage's ``model.onnx`` is an intermediate: it is removed after
conversion unless ``--keep-onnx`` (:attr:`OpenVINOOptions.keep_onnx`) keeps it in the artifact directory, where the
manifest lists it with its sha256 under ``files``. ``--precision fp16``
stores the weights in FP16 (``ov.save_model(compress_to_fp16=True)``); OpenVINO decompresses them at load time,
and the inference precision stays the device's choice. After saving, the IR is read back and compiled on CPU to
check that its input and output names and shapes are the ONNX ones.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import nn

from ffnet_deploy.errors import ExportError
from ffnet_deploy.exporters.base import (
    ExportConfig,
    ExportedArtifact,
    Exporter,
    Log,
    TensorSpec,
    option,
    register_exporter,
)
from ffnet_deploy.exporters.onnx import OnnxOptions, export_onnx_stage

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


@register_exporter("openvino")
class OpenVINOExporter(Exporter):
    """``model.xml``/``model.bin`` (OpenVINO IR) with FP32 or FP16-compressed weights, or NNCF INT8."""

    options_class = OpenVINOOptions
    supported_precisions = ("fp32", "fp16", "int8")
    default_precision = "fp32"
    requires = (("openvino", "openvino"),)  # onnx is a core dependency
    artifact_suffix = ".xml"

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
            log(f"converting to OpenVINO IR ({precision} weights)")
            try:
                ov_model = ov.convert_model(str(stage.path))
            except Exception as err:  # OpenVINO raises its own RuntimeError subclasses
                raise ExportError(f"openvino export | conversion failed: {str(err).splitlines()[0]}") from err
            quantization = None
            if precision == "int8":
                from ffnet_deploy.quantize.stages import quantize_openvino_model

                ov_model, quantization = quantize_openvino_model(ov_model, stage, model, config, log)
            try:
                ov.save_model(ov_model, str(workdir / "model.xml"), compress_to_fp16=precision == "fp16")
            except Exception as err:  # OpenVINO raises its own RuntimeError subclasses
                raise ExportError(f"openvino export | saving the IR failed: {str(err).splitlines()[0]}") from err
        finally:
            if not options.keep_onnx:
                shutil.rmtree(stage_dir, ignore_errors=True)

        log("checking the IR's inputs and outputs")
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

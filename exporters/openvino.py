"""OpenVINO IR export: ``model.xml`` + ``model.bin`` converted from the exported ONNX.

Converting from the ONNX (rather than from the torch module) keeps every tensor name of the ONNX graph, so the
``images``/``logits`` names and the manifest's ``block_outputs`` are the same in both formats. ``--precision fp16``
stores the weights in FP16 (``ov.save_model(compress_to_fp16=True)``); OpenVINO decompresses them at load time,
and the inference precision stays the device's choice. After saving, the IR is read back and compiled on CPU to
check that its input and output names and shapes are the ONNX ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from ffnet_deploy.errors import ExportError
from ffnet_deploy.exporters.base import (
    ExportConfig,
    ExportedArtifact,
    Exporter,
    Log,
    ParityTarget,
    TensorSpec,
    io_specs,
    register_exporter,
    unwrap,
)
from ffnet_deploy.exporters.onnx import PARITY_RTOL_FP32, onnx_details, write_onnx

PARITY_RTOL = {"fp32": PARITY_RTOL_FP32, "fp16": 1e-2}
"""Gate tolerance per weight precision: FP16 weights round each weight to 11 significant bits."""


@register_exporter("openvino")
class OpenVINOExporter(Exporter):
    """``model.xml``/``model.bin`` (OpenVINO IR) with FP32 or FP16-compressed weights."""

    supported_precisions = ("fp32", "fp16")
    default_precision = "fp32"
    requires = (("openvino", "openvino"), ("onnx", "onnx"))
    artifact_suffix = ".xml"

    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log) -> ExportedArtifact:
        import openvino as ov

        precision = self.resolve_precision(config)
        scratch = workdir / ".onnx-source"
        scratch.mkdir()
        info = write_onnx(model, config, scratch / "model.onnx", log)
        log(f"converting to OpenVINO IR ({precision} weights)")
        try:
            ov_model = ov.convert_model(str(info.path))
            ov.save_model(ov_model, str(workdir / "model.xml"), compress_to_fp16=precision == "fp16")
        except Exception as err:  # OpenVINO raises its own RuntimeError subclasses
            raise ExportError(f"openvino export | conversion failed: {str(err).splitlines()[0]}") from err
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

        inputs, outputs = io_specs(config, unwrap(model).num_classes)
        log("checking the IR's inputs and outputs")
        check_ir(workdir / "model.xml", inputs, outputs, info.block_outputs)
        details = onnx_details(info, config)
        details["weights"] = precision
        return ExportedArtifact(
            path="model.xml",
            inputs=inputs,
            outputs=outputs,
            backend_versions={"openvino": ov.__version__},
            block_outputs=info.block_outputs,
            parity_targets=[ParityTarget("openvino", "model.xml", PARITY_RTOL[precision],
                                         {"inference_precision": "f32"})],
            details=details,
            notices=[info.simplify_note] if info.simplify_note else [],
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

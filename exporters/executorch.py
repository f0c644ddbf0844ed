"""ExecuTorch export: ``model.pte`` for Android (and iOS) apps, with the XNNPACK delegate.

The steps are ExecuTorch's: ``torch.export`` the model, ``to_edge_transform_and_lower`` with the XNNPACK
partitioner (every subgraph XNNPACK can take becomes one delegate call), ``to_executorch`` and the program's bytes.
``--precision int8`` quantizes first with PT2E and XNNPACK's quantizer, calibrated on ``--calib`` through the
project's calibration data and statistics cache (:func:`ffnet_deploy.quantize.stages.quantize_executorch_model`).
The program is written inside the export's work directory, so it is published complete or not at all.

The format (:data:`FORMAT`): ``.pte``, run by the ``executorch`` runner (``executorch.runtime``) for the parity gate,
validation and bench. On Linux those are parity and functionality checks; latency that means something is measured
on the phone (README, "Android").

**Delegation is part of parity.** A graph that is only partly delegated runs its remaining ops on ExecuTorch's
portable CPU kernels, often many times slower, and still computes the right numbers, so a numeric gate cannot see it.
The manifest records the delegation of the edge program (``details.delegation``: delegated subgraphs and nodes, and
per operator how many nodes were delegated and how many were not), and every validation of a ``.pte`` (the export
gate included) reads the program itself (:mod:`ffnet_deploy.artifact.pte`) and adds a ``delegation`` check: a
convolution or a GELU outside the delegate fails it, with one line naming the operators
(:func:`delegation_checks`). Other operators outside it are listed in the check's detail without failing it.

Precision read back (:func:`read_executorch_precision`): the element types of the XNNPACK delegate's constant
tensors; int8 types (``qcint8`` per-channel weights, ``qint8``) holding most weight elements make it int8,
``fp16`` fp16, else fp32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ffnet_deploy.artifact.formats import Extra, FormatSpec, PrecisionEvidence, Quantizer, RuntimeChoice
from ffnet_deploy.artifact.inspect import precision_of_weights, read_for_precision
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

MODEL_FILE = "model.pte"

INT8_TYPES = frozenset({"xnn_datatype_qint8", "xnn_datatype_quint8", "xnn_datatype_qcint8", "xnn_datatype_qcint4",
                        "xnn_datatype_qdint8", "xnn_datatype_qbint4", "xnn_datatype_qpint8"})
"""XNNPACK data types of quantized weights and activations (int32 bias types are not counted: biases are few)."""
FLOAT_TYPES = frozenset({"xnn_datatype_fp32", "xnn_datatype_fp16"})


@dataclass(frozen=True)
class ExecuTorchOptions(FormatOptions):
    """``--format executorch`` takes no options of its own (the XNNPACK delegate is the only backend here)."""

    format_name: ClassVar[str] = "executorch"


# --------------------------------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------------------------------


def read_executorch_precision(path: Path) -> PrecisionEvidence:
    """The precision a ``.pte`` computes in, read from its XNNPACK delegate (rules: module docstring)."""
    from ffnet_deploy.artifact.pte import read_pte

    summary = read_for_precision(lambda: read_pte(path, "executorch"), path, "executorch")
    if isinstance(summary, PrecisionEvidence):
        return summary
    counts = summary.constant_elements
    if not counts:
        return PrecisionEvidence(None, "no XNNPACK delegate holds the weights", path)
    kinds = ", ".join(sorted(k.removeprefix("xnn_datatype_") for k in counts if k in INT8_TYPES))
    return precision_of_weights(path, low=sum(v for k, v in counts.items() if k in INT8_TYPES),
                                floats=sum(v for k, v in counts.items() if k in FLOAT_TYPES),
                                half=counts.get("xnn_datatype_fp16", 0),
                                evidence=(f"XNNPACK {kinds} weights ({{share}})", "XNNPACK fp16 weights ({share})",
                                          "XNNPACK fp32 weights ({share})"))


def delegation_checks(spec: Any) -> list:
    """The ``delegation`` check of a validation target (a ``FormatSpec.checks`` hook): the operators of the program
    that run outside any delegate, read from the file (the shared check: :mod:`ffnet_deploy.validate.delegation`)."""
    from ffnet_deploy.artifact.pte import read_pte
    from ffnet_deploy.validate.delegation import Delegation, delegation_check

    path = Path(spec.path)
    if path.is_dir():
        path = path / (spec.manifest.artifact.path if spec.manifest is not None else MODEL_FILE)
    summary = read_pte(path, "executorch")
    return [delegation_check(Delegation(summary.delegate_calls, summary.outside, summary.delegated_nodes))]


def not_runnable_hint(folder: Path | None) -> str:
    return "; on a phone, time the .pte with ExecuTorch's executor_runner or benchmark app (README, Android)"


FORMAT = FormatSpec(
    name="executorch", title="ExecuTorch", order=50, suffixes=(".pte",),
    precisions=("fp32", "int8"), default_precision="fp32",
    runtimes=(RuntimeChoice("executorch"),), bench_runtime="executorch",
    runs_on="an Android phone (ExecuTorch, XNNPACK); Linux runs its parity and host timing",
    read_precision=read_executorch_precision, checks=delegation_checks, not_runnable_hint=not_runnable_hint,
    extra=Extra("executorch", ("executorch.exir",)), in_demo=True, demo_if_installed=True,
    device_steps=("adb push {artifact} /data/local/tmp/{id}.pte",
                  "adb shell /data/local/tmp/executor_runner --model_path /data/local/tmp/{id}.pte "
                  "--num_executions 100",
                  "write the median ms per execution into phone.csv (runtime executorch, compute_units XNNPACK)",
                  "ffnet-deploy report add --csv phone.csv --device-name PHONE --out phone/results.json"),
    quantizer=Quantizer(cache_backend="executorch"),
)
"""The ExecuTorch format (module docstring)."""


def partitioners() -> list:
    """The partitioners the program is lowered with: XNNPACK's, with every op configuration it has."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


def delegation_record(edge: Any) -> dict[str, Any]:
    """The manifest's ``details.delegation``: what the partitioner delegated, from the lowered edge program."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    ops = {name: {"delegated": b.delegated, "not_delegated": b.non_delegated}
           for name, b in sorted(info.delegation_by_operator.items())}
    return {"backend": "XnnpackBackend", "delegated_subgraphs": info.num_delegated_subgraphs,
            "delegated_nodes": info.num_delegated_nodes, "not_delegated_nodes": info.num_non_delegated_nodes,
            "not_delegated": {k: v["not_delegated"] for k, v in ops.items() if v["not_delegated"]},
            "operators": ops}


@register_exporter(FORMAT)
class ExecuTorchExporter(Exporter):
    """``model.pte``: the model lowered to ExecuTorch with the XNNPACK delegate, FP32 or PT2E INT8."""

    options_class = ExecuTorchOptions
    quantization_flags = ("--calib", "--calib-size", "--calib-method", "--eval-data", "--calib-cache")

    def validate(self, config: ExportConfig) -> None:
        super().validate(config)
        refuse_app_side_settings(config, "executorch", holder="program",
                                 calibration="XNNPACK's PT2E quantizer fixes its observers (histograms for "
                                 "activations, min/max for weights)")

    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log, *,
               source_sha256: str | None = None) -> ExportedArtifact:
        import torch
        from executorch.exir import to_edge_transform_and_lower

        precision = self.resolve_precision(config)
        example = (torch.zeros(config.batch, 3, config.resolution, config.resolution),)
        quantization = None
        try:
            if precision == "int8":
                from ffnet_deploy.quantize.stages import quantize_executorch_model

                graph, quantization = quantize_executorch_model(model, example, config, log)
            else:
                graph = model
            start = time.perf_counter()  # export and lowering only (the quantization record times its own part)
            log("exporting with torch.export")
            exported = torch.export.export(graph, example)
            log("lowering to the XNNPACK delegate")
            edge = to_edge_transform_and_lower(exported, partitioner=partitioners())
            delegation = delegation_record(edge)
            program = edge.to_executorch()
        except FFNetDeployError:
            raise
        except Exception as err:  # torch.export and ExecuTorch raise many types; the first line says which step
            raise ExportError(f"executorch export | lowering failed: {type(err).__name__}: "
                              f"{first_line(err, '')}") from err
        (workdir / MODEL_FILE).write_bytes(program.buffer)
        lower_seconds = time.perf_counter() - start
        # getitem unpacks a delegate's outputs; it computes nothing.
        computing = {k: v for k, v in delegation["not_delegated"].items() if k != "getitem"}
        if computing:
            from ffnet_deploy.validate.delegation import outside_summary

            log(f"not delegated: {outside_summary(computing)}")
        inputs, outputs = io_specs(config, unwrap(model).num_classes)
        from importlib.metadata import version

        return ExportedArtifact(
            path=MODEL_FILE, inputs=inputs, outputs=outputs,
            backend_versions={"executorch": version("executorch")},
            details={"delegate": "xnnpack", "delegation": delegation, "weights": precision,
                     "lower_seconds": round(lower_seconds, 3)}
            | ({"quantization": quantization} if quantization else {}),
        )

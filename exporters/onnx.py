"""ONNX export: TorchScript exporter, full checker, onnxsim, block-output map and a GELU fusion check.

Exporter choice: ``torch.onnx.export(..., dynamo=False)``, the TorchScript exporter. torch 2.9+ defaults to the
dynamo exporter, but only the TorchScript exporter names every node after its module path
(``/stages.1/stages.1.2/channel_mixer/Add``), which is what lets the manifest's ``block_outputs`` point at the
tensor each FFNet block produces, a map ``validate --localize`` relies on. FFNet is a plain feed-forward conv net
with no data-dependent control flow, so the tracing exporter loses nothing here.

GELU: at the default opset 17 the exporter writes ``nn.GELU`` as its exact Erf decomposition
``x * 0.5 * (1 + erf(x / sqrt(2)))`` (Div, Erf, Add, Mul, Mul); from opset 20 it writes the ONNX ``Gelu`` op.
ONNX Runtime's extended graph optimizer fuses the Erf pattern into one ``com.microsoft.Gelu`` kernel and runs the
opset-20 ``Gelu`` op natively; OpenVINO fuses the Erf pattern too (its ``GeluFusionWithErf*`` passes). Every export
measures the ONNX Runtime side (:func:`gelu_report`) and records it in the manifest under ``details.gelu``.
onnxsim's ``fuse_preceding_mul_into_conv`` folds the GELU's ``* 0.5`` into the next conv and so breaks that fusion;
it is skipped, and a simplified graph that fuses fewer GELUs than the traced one is rejected.

The ONNX graph is a stage of its own, because other formats consume it: :func:`export_onnx_stage` writes it with
:class:`OnnxOptions` and returns an :class:`OnnxStage` (file, inputs and outputs, ``block_outputs``, manifest
details, notices). The ONNX exporter publishes the stage as is; the OpenVINO exporter converts ``stage.path`` to IR
(and keeps the file only with ``--keep-onnx``); the TensorRT exporter ships it as its TRT-ready ONNX. Starting every
graph format from this one stage keeps tensor names, and with them ``block_outputs``, the same in all of them.

The seam for graph transforms is between the stage and its conversion. A transform such as the INT8 quantizer
(ONNX in, Q/DQ ONNX out) takes an :class:`OnnxStage` and returns another one, e.g.
``dataclasses.replace(stage, path=quantized, details=stage.details | {"quantization": ...})``; the consumers read
only the stage's fields, so it plugs in at the ``# seam`` comment of each exporter without changing the converters.

FP16 (``--precision fp16``) is such a transform too: :func:`convert_stage_fp16` turns the fp32 stage into float16
weights and float16 compute, with a Cast at each end so that ``images`` and ``logits`` stay float32
(``keep_io_types``) and the artifact's spec does not change. Whether the compute really runs in half precision is the
execution provider's choice: the CUDA provider has float16 kernels, while ONNX Runtime's x86 CPU provider has none
for Conv or Gemm and upcasts the weights to float32 at load (its inserted ``InsertedPrecisionFreeCast`` nodes), so
there the file behaves as an fp32 model with fp16-rounded weights, runs slower than the fp32 export (ffnet_digits:
0.159 vs 0.123 ms p50, one thread), and its Erf pattern no longer fuses into ``Gelu`` (the CPU kernel is float32
only; ``details.gelu`` records it for the file that ships). The ``bench`` suite skips fp16 ONNX Runtime on CPU.

The format (:data:`FORMAT`): ``.onnx`` files, run by ONNX Runtime (validation and bench), fp32/fp16/int8 (int8: the
ONNX Runtime quantizer, ``--target cpu|cpu-vnni|tensorrt``). Its file ships as ``model.onnx`` inside other formats'
folders (OpenVINO's ``--keep-onnx``, TensorRT's TRT-ready graph), where validation checks it as the graph it is.
Precision read back (:func:`read_onnx_precision`): ``QuantizeLinear``/``DequantizeLinear``/``QLinear*``/
``ConvInteger``/``MatMulInteger`` ops make it int8; float16 weights, or ``Cast`` ops to float16 (mixed-precision
compute), fp16; anything else fp32.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ffnet_deploy.artifact.formats import FormatSpec, Quantizer, RuntimeChoice
from ffnet_deploy.artifact.inspect import PrecisionEvidence, weight_share
from ffnet_deploy.errors import ExportError, first_line
from ffnet_deploy.exporters.base import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportConfig,
    ExportedArtifact,
    Exporter,
    FormatOptions,
    Log,
    TensorSpec,
    block_key,
    expected_block_keys,
    io_specs,
    option,
    register_exporter,
    unwrap,
)
from ffnet_deploy.progress import as_progress
from ffnet_deploy.quantize.onnx_int8 import TARGETS as ONNX_TARGETS  # any CPU, VNNI-class CPUs, TensorRT

if TYPE_CHECKING:  # torch is imported where a model is exported, not with the format declaration
    import torch
    from torch import nn

OPSET_RANGE = (13, 21)
"""ONNX opsets an export may target (inclusive)."""

DEFAULT_OPSET = 17

STAGE_FILE = "model.onnx"
"""File name of the ONNX stage inside the directory it is written to."""

"""Max |artifact - torch| / max |torch| allowed for an FP32 graph run on CPU."""

TENSORRT_GELU_NOTE = (
    "not measured here (needs TensorRT and a GPU): TensorRT's ONNX parser imports the opset-20 Gelu op as one "
    "layer and the Erf form as elementwise layers that its pointwise fusion merges; check the fused layer names in "
    "'trtexec --verbose' or the engine inspector on the device"
)


@dataclass(frozen=True)
class OnnxOptions(FormatOptions):
    """Options of the ONNX graph stage: ``--format onnx``, and the start of every format converted from ONNX.

    ``OpenVINOOptions`` and ``TensorRTOptions`` subclass it, so ``OpenVINOOptions(opset=20)`` sets the opset of the
    ONNX that OpenVINO converts.
    """

    format_name: ClassVar[str] = "onnx"

    opset: int = option(DEFAULT_OPSET, "--opset")  # ONNX opset, within OPSET_RANGE (20+ writes the Gelu op)
    simplify: bool = option(True, "--no-simplify")  # run onnxsim (a failure keeps the unsimplified graph)

    def validate(self) -> None:
        lo, hi = OPSET_RANGE
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not lo <= self.opset <= hi:
            raise self.error(f"--opset must be an integer within {lo}..{hi}, got {self.opset!r}")
        if not isinstance(self.simplify, bool):
            raise self.error(f"simplify must be True or False, got {self.simplify!r}")

    def onnx_options(self) -> OnnxOptions:
        """Only the ONNX stage's part (a subclass's own fields dropped), as the stage records it."""
        return OnnxOptions(opset=self.opset, simplify=self.simplify)


@dataclass(frozen=True)
class OnnxStage:
    """The ONNX graph stage: what :func:`export_onnx_stage` wrote, for whoever consumes it (see the module doc)."""

    path: Path  # the written .onnx file
    options: OnnxOptions  # the options it was written with
    inputs: list[TensorSpec]  # graph inputs (``images``), batch None when dynamic
    outputs: list[TensorSpec]  # graph outputs (``logits``)
    block_outputs: dict[str, str]  # "stages.S.B"/"patch_embed" -> tensor name, verified in the final graph
    details: dict[str, Any]  # manifest "details" of the graph: opset, exporter, simplified, op_counts, gelu
    notices: list[str]  # what the user must be told (an onnxsim fallback)
    versions: dict[str, str]  # onnx, onnxruntime (and onnxsim) versions that produced it


def prepare_module(model: nn.Module, config: ExportConfig) -> nn.Module:
    """The module that is traced: ``model``, behind :class:`Preprocess` when normalization is baked in."""
    if config.include_preprocessing:
        cfg = unwrap(model).cfg
        from ffnet_deploy.exporters.base import Preprocess

        return Preprocess(model, cfg.mean, cfg.std, config.input_range).eval()
    return model


def dummy_input(config: ExportConfig) -> torch.Tensor:
    """A zero input of the export's shape and dtype (opt batch for a dynamic export)."""
    import torch

    _, opt, _ = config.batch_range()
    shape = (opt, 3, config.resolution, config.resolution)
    if config.input_dtype().name == "uint8":
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.zeros(shape, dtype=torch.float32)


def torch_onnx_export(module: nn.Module, config: ExportConfig, opset: int, path: Path) -> None:
    """Run the TorchScript ONNX exporter with the ``images``/``logits`` names and optional dynamic batch."""
    import torch

    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if config.dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (module-scoped node names); its deprecation notice is noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(
                module,
                (dummy_input(config),),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )


def resolve_block_outputs(graph, keys: list[str]) -> dict[str, str]:
    """Map each FFNet block to the one tensor its scope hands to the rest of the graph.

    A node belongs to a block by its module-scoped name (:func:`~ffnet_deploy.exporters.base.block_key`). A block's
    output is the tensor produced inside the block and consumed outside it (or a graph output). Names are read
    from the graph itself, so the map is rebuilt, not carried over, after any rewrite such as onnxsim.

    Args:
        graph: An ``onnx.GraphProto`` exported with module scopes.
        keys: The block keys to find (``expected_block_keys(model)``).

    Raises:
        ExportError: If a block has no unique output tensor (the graph lost its scope names).
    """
    # Constants are not activations, and onnxsim shares one constant between blocks (the GELU's 0.5, 1, sqrt 2),
    # so they are left out of the map.
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    owner: dict[str, str | None] = {}
    produced: dict[str, list[str]] = {}
    for node in nodes:
        key = block_key(node.name)
        for out in node.output:
            owner[out] = key
            if key is not None:
                produced.setdefault(key, []).append(out)
    leaving: set[str] = {o.name for o in graph.output}
    for node in nodes:
        key = block_key(node.name)
        for inp in node.input:
            if inp in owner and owner[inp] is not None and owner[inp] != key:
                leaving.add(inp)
    result, problems = {}, []
    for key in keys:
        outs = [t for t in produced.get(key, []) if t in leaving]
        if len(outs) == 1:
            result[key] = outs[0]
        else:
            problems.append(f"{key}: {len(outs)} candidate tensors")
    if problems:
        raise ExportError(
            f"onnx export | cannot map FFNet blocks to graph tensors ({'; '.join(problems[:4])}); node names lost "
            "their module scopes, which the block_outputs map needs"
        )
    return result


def gelu_report(model_proto, opset: int) -> dict:
    """Which GELU form the graph holds and how much of it ONNX Runtime fuses.

    ONNX Runtime writes its optimized graph (extended level, CPU provider, no hardware-specific layout passes) to a
    scratch file; the fused ``Gelu`` nodes in it are counted against the GELUs in the exported graph.
    """
    import onnx
    import onnxruntime as ort

    ops = Counter(n.op_type for n in model_proto.graph.node)
    if ops.get("Gelu"):
        form, count = "onnx Gelu op (opset >= 20)", ops["Gelu"]
    else:
        form, count = "erf decomposition: x * 0.5 * (1 + Erf(x / sqrt(2)))", ops.get("Erf", 0)
    with tempfile.TemporaryDirectory(prefix="ffnet-gelu-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "opt.onnx"
        onnx.save(model_proto, str(src))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(dst)
        options.log_severity_level = 3
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(dst), load_external_data=False)
    fused = sum(1 for n in optimized.graph.node if n.op_type == "Gelu")
    left = sum(1 for n in optimized.graph.node if n.op_type == "Erf")
    return {
        "opset": opset,
        "exported_form": form,
        "count": count,
        "onnxruntime": {
            "version": ort.__version__,
            "fused_gelu_nodes": fused,
            "remaining_erf_nodes": left,
            "all_fused": fused == count and left == 0,
        },
        "tensorrt": TENSORRT_GELU_NOTE,
    }


def export_onnx_stage(model: nn.Module, config: ExportConfig, options: OnnxOptions, workdir: Path,
                      log: Log) -> OnnxStage:
    """Write the ONNX stage of ``model`` to ``workdir/model.onnx``: trace, full check, simplify, map block outputs,
    check GELU fusion.

    Args:
        model: Eval-mode FFNet (fused or not).
        config: Export settings (resolution resolved).
        options: The ONNX options (an ``OpenVINOOptions`` or ``TensorRTOptions`` is one too); validated.
        workdir: An existing directory to write into.
        log: Progress callback.

    Returns:
        The stage, for the exporter or converter that consumes it.

    Raises:
        ExportError: If tracing or the ONNX checker fails, or block outputs cannot be mapped.
    """
    import onnx
    import onnxruntime

    options = options.onnx_options()
    path = workdir / STAGE_FILE
    module = prepare_module(model, config)
    keys = expected_block_keys(unwrap(model))
    log = as_progress(log)
    log.stage("trace")
    log.note(f"tracing to ONNX (opset {options.opset}, TorchScript exporter)")
    try:
        torch_onnx_export(module, config, options.opset, path)
    except Exception as err:  # the exporter raises many internal types; all mean the same to the user
        raise ExportError(f"onnx export | torch.onnx.export failed: {first_line(err)}") from err
    proto = onnx.load(str(path))
    _check(path, "exported")
    # Map blocks before simplifying: if onnxsim renames what we need, the unsimplified graph is still valid.
    resolve_block_outputs(proto.graph, keys)

    simplified, note = False, None
    log.note("checking GELU fusion in ONNX Runtime")
    gelu = gelu_report(proto, options.opset)
    if options.simplify:
        log.stage("simplify")
        log.note("simplifying with onnxsim")
        try:
            candidate = _simplify(proto)
            candidate_blocks = resolve_block_outputs(candidate.graph, keys)
            if any(name not in _tensor_names(candidate.graph) for name in candidate_blocks.values()):
                raise RuntimeError("block output tensors missing after simplification")
            candidate_gelu = gelu_report(candidate, options.opset)
            fused, fused_before = (g["onnxruntime"]["fused_gelu_nodes"] for g in (candidate_gelu, gelu))
            if fused < fused_before:
                raise RuntimeError(f"it broke ONNX Runtime's GELU fusion ({fused} of {fused_before} GELUs fused)")
            proto, simplified, gelu = candidate, True, candidate_gelu
        except Exception as err:  # onnxsim failures are recoverable: the unsimplified graph is kept
            why = first_line(err)
            note = f"onnxsim failed ({why}); kept the unsimplified graph"
            log.warn(f"warning: {note}")
        if simplified:
            onnx.save(proto, str(path))
            _check(path, "simplified")

    blocks = resolve_block_outputs(proto.graph, keys)
    names = _tensor_names(proto.graph)
    missing = [k for k, v in blocks.items() if v not in names]
    if missing:
        raise ExportError(f"onnx export | block outputs {missing[:3]} are not tensors of the final graph")
    ops = dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))
    details = {
        "opset": options.opset,
        "exporter": "torch.onnx.export(dynamo=False) (TorchScript; module-scoped node names)",
        "simplified": simplified,
        "simplify_note": note,
        "op_counts": ops,
        "gelu": gelu,
    }
    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    if options.simplify:
        versions["onnxsim"] = _onnxsim_version()
    inputs, outputs = io_specs(config, unwrap(model).num_classes)
    return OnnxStage(path, options, inputs, outputs, blocks, details, [note] if note else [], versions)


FP16_KEPT_OPS: tuple[str, ...] = ()
"""Op types the fp16 conversion leaves in float32, on top of the converter's own default block list (ops with no
float16 definition or kernel: the ai.onnx.ml ops, TopK, Range, CumSum, Min, Max, Upsample, ...; none is in an FFNet
graph). Empty, measured on ffnet_test and ffnet_digits: every op FFNet exports (Conv, Gemm, Add, Mul, Div, Erf or
Gelu, GlobalAveragePool, Flatten, and the Cast/Mul/Add of baked preprocessing) has a float16 ONNX definition, and none
needs float32 range or accuracy. Erf is bounded in [-1, 1] and its argument x / sqrt(2) is no larger than the
activation; blocking it would not bring back ONNX Runtime's CPU Gelu fusion anyway (the Div, Add and Mul around it
stay float16). FFNet has no Resize, and the parity gate judges the converted graph under the fp16 profile."""


def convert_stage_fp16(stage: OnnxStage, keys: list[str], log: Log) -> OnnxStage:
    """The fp16 form of an fp32 stage: float16 weights and compute, float32 ``images`` and ``logits``.

    The converter casts every float initializer and tensor type to float16 except in the ops it is told to block
    (its default list plus :data:`FP16_KEPT_OPS`), and with ``keep_io_types`` puts a Cast after the input and before
    the output. It appends those Casts at the end of the node list, so the graph is sorted again before the full
    ONNX check. Node and tensor names are kept, so ``block_outputs`` is re-resolved, not remapped.

    Args:
        stage: The fp32 stage from :func:`export_onnx_stage`; its file is replaced.
        keys: The block keys (``expected_block_keys(model)``).
        log: Progress callback.

    Returns:
        A stage at the same path whose ``details`` hold ``fp16`` (converter, ``keep_io_types``, ops kept in float32,
        initializer counts) and the GELU report of the converted graph.

    Raises:
        ExportError: If the converted graph fails the ONNX checker or lost a block output.
    """
    import onnx
    import onnxruntime
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converter = "onnxruntime.transformers.float16.convert_float_to_float16"
    blocked = sorted({*float16.DEFAULT_OP_BLOCK_LIST, *FP16_KEPT_OPS})
    proto = onnx.load(str(stage.path))
    present = {n.op_type for n in proto.graph.node}
    log = as_progress(log)
    log.stage("convert")
    log.note(f"converting to float16 ({converter}, float32 input and output kept)")
    with warnings.catch_warnings():
        # It warns about each weight it clamps to float16's range; the parity gate judges the result.
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(proto, keep_io_types=True, op_block_list=blocked)
    try:
        OnnxModel.graph_topological_sort(half.graph)  # stable: the traced order survives, the Casts move up
    except RuntimeError as err:
        raise ExportError(f"onnx export | the float16 graph cannot be ordered: {err}") from None
    onnx.save(half, str(stage.path))
    _check(stage.path, "float16")
    blocks = resolve_block_outputs(half.graph, keys)
    if blocks != stage.block_outputs:
        raise ExportError("onnx export | the float16 conversion renamed block output tensors; export fp32 instead")
    dtypes = Counter(onnx.TensorProto.DataType.Name(t.data_type).lower() for t in half.graph.initializer)
    record = {
        "converter": f"{converter} (onnxruntime {onnxruntime.__version__})",
        "keep_io_types": True,
        "kept_fp32_ops": sorted(present & set(blocked)),  # op types of this graph left in float32
        "initializers": dict(sorted(dtypes.items())),  # initializer count per data type after conversion
    }
    ops = dict(sorted(Counter(n.op_type for n in half.graph.node).items()))
    details = stage.details | {"op_counts": ops, "gelu": gelu_report(half, stage.options.opset), "fp16": record}
    return dataclasses.replace(stage, details=details)


ONNXSIM_SKIPPED = ("fuse_preceding_mul_into_conv",)
"""onnxsim passes left out. Folding the Mul that follows a GELU into the next conv's weights removes the ``* 0.5`` of
the Erf pattern, after which ONNX Runtime no longer fuses it into one Gelu kernel (measured: 0 of 11 fused)."""


def _simplify(proto):
    """onnxsim with :data:`ONNXSIM_SKIPPED` (older onnxsim builds that reject the list get plain defaults)."""
    import onnxsim

    try:
        candidate, ok = onnxsim.simplify(proto, skipped_optimizers=list(ONNXSIM_SKIPPED))
    except TypeError:  # an onnxsim without skipped_optimizers
        candidate, ok = onnxsim.simplify(proto)
    if not ok:
        raise RuntimeError("onnxsim's own check of the simplified model failed")
    return candidate


def _check(path: Path, what: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # ValidationError and shape-inference errors
        raise ExportError(f"onnx export | the {what} graph fails onnx.checker: {first_line(err)}") from err


def _tensor_names(graph) -> set[str]:
    return {o for n in graph.node for o in n.output} | {i.name for i in graph.input}


# --------------------------------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------------------------------

# ONNX ops that only a quantized graph holds (QLinear* ops are matched by prefix).
ONNX_QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                            "MatMulInteger"})


def read_onnx_precision(path: Path) -> PrecisionEvidence:
    """The precision an ONNX file computes in, read from its graph (rules: module docstring)."""
    import math

    import onnx

    try:
        # Only the graph's structure and each tensor's data type are needed: external weight files stay unread.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf/onnx raise many types for a file that is not ONNX; the runner reports it
        return PrecisionEvidence(None, f"cannot be read as ONNX ({type(err).__name__})", path)
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    quant = sorted({n.op_type for n in nodes if n.op_type in ONNX_QUANT_OPS or n.op_type.startswith("QLinear")})
    if quant:
        return PrecisionEvidence("int8", f"quantized ops: {', '.join(quant)}", path)
    tensors = [*model.graph.initializer,
               *(a.t for n in nodes if n.op_type == "Constant" for a in n.attribute if a.name == "value")]
    sizes = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0, onnx.TensorProto.BFLOAT16: 0}
    for t in tensors:
        if t.data_type in sizes:
            sizes[t.data_type] += math.prod(t.dims)
    half = sizes[onnx.TensorProto.FLOAT16] + sizes[onnx.TensorProto.BFLOAT16]
    total = half + sizes[onnx.TensorProto.FLOAT]
    if half > total - half:
        return PrecisionEvidence("fp16", f"float16 weights ({weight_share(half, total)})", path)
    half_casts = sum(1 for n in nodes if n.op_type == "Cast"
                     for a in n.attribute if a.name == "to" and a.i in (onnx.TensorProto.FLOAT16,
                                                                        onnx.TensorProto.BFLOAT16))
    if half_casts:
        return PrecisionEvidence("fp16", f"{half_casts} Cast op(s) to float16 (mixed-precision compute)", path)
    return PrecisionEvidence("fp32", f"float32 weights ({weight_share(total - half, total)}), no quantized or "
                             "float16 ops", path)


def onnx_sensitivity_backend(stage: OnnxStage, config: ExportConfig, calib: Any, transform: Any, work: Path,
                             log: Log) -> Any:
    """The ONNX Runtime backend ``sensitivity --format onnx`` ranks layer groups with."""
    from ffnet_deploy.quantize import onnx_int8
    from ffnet_deploy.quantize import sensitivity as sens
    from ffnet_deploy.quantize.stages import onnx_ranges

    prepared = onnx_int8.prepare_onnx(stage.path, work)
    ranges, _ = onnx_ranges(stage.path, prepared, config, calib, transform, log)
    return sens.OnnxBackend(stage.path, prepared, ranges, config.quantization.target or ONNX_TARGETS[0], work)


def is_onnx_model(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model: a protobuf ``ModelProto`` whose top-level fields run to the end of the
    file and include ``ir_version`` (1, varint), ``graph`` (7) and ``opset_import`` (8). Only the field headers are
    read (payloads are skipped), so a large model costs a few reads; a Core ML protobuf has no field 7 or 8."""
    try:
        size = path.stat().st_size
        seen: set[tuple[int, int]] = set()
        with path.open("rb") as f:
            for _ in range(100_000):
                if f.tell() == size:
                    return {(1, 0), (7, 2), (8, 2)} <= seen
                tag = _varint(f)
                number, wire = tag >> 3, tag & 7
                if number == 0:
                    return False
                if wire == 0:
                    _varint(f)
                elif wire in (1, 5):
                    f.seek(8 if wire == 1 else 4, 1)
                elif wire == 2:
                    length = _varint(f)
                    if f.tell() + length > size:
                        return False
                    f.seek(length, 1)
                else:
                    return False
                seen.add((number, wire))
    except (OSError, ValueError):
        return False
    return False


def _varint(f) -> int:
    value = shift = 0
    for _ in range(10):
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise ValueError("varint too long")


FORMAT = FormatSpec(
    name="onnx", title="ONNX", order=10, suffixes=(".onnx",),
    precisions=("fp32", "fp16", "int8"), default_precision="fp32",
    runtimes=(RuntimeChoice("onnxruntime"),), bench_runtime="onnxruntime",
    runs_on="any machine (ONNX Runtime on the CPU)",
    read_precision=read_onnx_precision, recognizes=is_onnx_model, stage_file=STAGE_FILE, in_demo=True,
    # No extra: onnx and onnxruntime are core dependencies.
    quantizer=Quantizer(cache_backend="onnxruntime", targets=ONNX_TARGETS, sensitivity=onnx_sensitivity_backend,
                        sensitivity_label="ONNX Runtime",
                        help="INT8 ONNX for: cpu (ONNX Runtime on any CPU, default), cpu-vnni (8-bit weights: CPUs "
                             "with VNNI, AVX-VNNI, AMX or ARM64 only) or tensorrt (explicit symmetric QDQ)."),
)
"""The ONNX format (module docstring)."""


@register_exporter(FORMAT)
class OnnxExporter(Exporter):
    """``model.onnx``: input ``images`` (N,3,H,W), output ``logits``; run by ONNX Runtime, OpenVINO, TensorRT."""

    options_class = OnnxOptions
    quantization_flags = (*Exporter.quantization_flags, "--target")

    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log, *,
               source_sha256: str | None = None) -> ExportedArtifact:
        stage = export_onnx_stage(model, config, self.resolve_options(config), workdir, log)
        # seam: a graph transform (the INT8 quantizer's Q/DQ ONNX) turns `stage` into another OnnxStage here.
        precision = self.resolve_precision(config)
        if precision == "int8":
            from ffnet_deploy.quantize.stages import quantize_onnx_stage

            target = (config.quantization.target if config.quantization else None) or FORMAT.quantizer.targets[0]
            stage = quantize_onnx_stage(stage, model, config, log, target)
        elif precision == "fp16":
            stage = convert_stage_fp16(stage, expected_block_keys(unwrap(model)), log)
        return ExportedArtifact(
            path=stage.path.name,
            inputs=stage.inputs,
            outputs=stage.outputs,
            backend_versions=dict(stage.versions),
            block_outputs=stage.block_outputs,
            details=dict(stage.details),
            notices=list(stage.notices),
        )


def _onnxsim_version() -> str:
    try:
        import onnxsim

        return str(getattr(onnxsim, "__version__", "unknown"))
    except ImportError:
        return "not installed"


def plain_onnx_export(model: torch.nn.Module, resolution: int, batch: int, path: Path) -> None:
    """An in-memory model (a peer or a mixer variant, not an FFNet checkpoint) through plain ``torch.onnx.export``
    (opset 17, no simplification): the ONNX that ``bench`` times for models it has no artifact of, and the baseline
    the export study compares the exporter with."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(batch, 3, resolution, resolution),), str(path), dynamo=False,
                          opset_version=17, input_names=["images"], output_names=["logits"])

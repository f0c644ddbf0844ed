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

The graph-writing helpers here are shared with the OpenVINO and TensorRT exporters, which start from this ONNX so
that tensor names, and with them ``block_outputs``, are the same in every graph format.
"""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ffnet_deploy.errors import ExportError
from ffnet_deploy.exporters.base import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportConfig,
    ExportedArtifact,
    Exporter,
    Log,
    ParityTarget,
    Preprocess,
    block_key,
    expected_block_keys,
    io_specs,
    register_exporter,
    unwrap,
)

PARITY_RTOL_FP32 = 1e-4
"""Max |artifact - torch| / max |torch| allowed for an FP32 graph run on CPU."""

TENSORRT_GELU_NOTE = (
    "not measured here (needs TensorRT and a GPU): TensorRT's ONNX parser imports the opset-20 Gelu op as one "
    "layer and the Erf form as elementwise layers that its pointwise fusion merges; check the fused layer names in "
    "'trtexec --verbose' or the engine inspector on the device"
)


@dataclass
class OnnxGraphInfo:
    """What :func:`write_onnx` produced and learned about the graph."""

    path: Path  # the written .onnx file
    simplified: bool  # whether onnxsim's result was kept
    simplify_note: str | None  # why not, when it was not
    block_outputs: dict[str, str]  # block key -> tensor name, verified in the final graph
    op_counts: dict[str, int] = field(default_factory=dict)  # op type -> count in the final graph
    gelu: dict = field(default_factory=dict)  # see gelu_report


def prepare_module(model: nn.Module, config: ExportConfig) -> nn.Module:
    """The module that is traced: ``model``, behind :class:`Preprocess` when normalization is baked in."""
    if config.include_preprocessing:
        cfg = unwrap(model).cfg
        return Preprocess(model, cfg.mean, cfg.std, config.input_range).eval()
    return model


def dummy_input(config: ExportConfig) -> torch.Tensor:
    """A zero input of the export's shape and dtype (opt batch for a dynamic export)."""
    _, opt, _ = config.batch_range()
    shape = (opt, 3, config.resolution, config.resolution)
    if config.input_dtype().name == "uint8":
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.zeros(shape, dtype=torch.float32)


def torch_onnx_export(module: nn.Module, config: ExportConfig, path: Path) -> None:
    """Run the TorchScript ONNX exporter with the ``images``/``logits`` names and optional dynamic batch."""
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
                opset_version=config.opset,
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


def write_onnx(model: nn.Module, config: ExportConfig, path: Path, log: Log) -> OnnxGraphInfo:
    """Export ``model`` to ``path``: trace, full check, simplify, map block outputs, check GELU fusion.

    Args:
        model: Eval-mode FFNet (fused or not).
        config: Export settings (resolution resolved).
        path: Target ``.onnx`` file; its directory must exist.
        log: Progress callback.

    Raises:
        ExportError: If tracing or the ONNX checker fails, or block outputs cannot be mapped.
    """
    import onnx

    module = prepare_module(model, config)
    keys = expected_block_keys(unwrap(model))
    log(f"tracing to ONNX (opset {config.opset}, TorchScript exporter)")
    try:
        torch_onnx_export(module, config, path)
    except Exception as err:  # the exporter raises many internal types; all mean the same to the user
        raise ExportError(f"onnx export | torch.onnx.export failed: {str(err).splitlines()[0]}") from err
    proto = onnx.load(str(path))
    _check(path, "exported")
    # Map blocks before simplifying: if onnxsim renames what we need, the unsimplified graph is still valid.
    resolve_block_outputs(proto.graph, keys)

    simplified, note = False, None
    log("checking GELU fusion in ONNX Runtime")
    gelu = gelu_report(proto, config.opset)
    if config.simplify:
        log("simplifying with onnxsim")
        try:
            candidate = _simplify(proto)
            candidate_blocks = resolve_block_outputs(candidate.graph, keys)
            if any(name not in _tensor_names(candidate.graph) for name in candidate_blocks.values()):
                raise RuntimeError("block output tensors missing after simplification")
            candidate_gelu = gelu_report(candidate, config.opset)
            fused, fused_before = (g["onnxruntime"]["fused_gelu_nodes"] for g in (candidate_gelu, gelu))
            if fused < fused_before:
                raise RuntimeError(f"it broke ONNX Runtime's GELU fusion ({fused} of {fused_before} GELUs fused)")
            proto, simplified, gelu = candidate, True, candidate_gelu
        except Exception as err:  # onnxsim failures are recoverable: the unsimplified graph is kept
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            note = f"onnxsim failed ({why}); kept the unsimplified graph"
            log(f"warning: {note}")
        if simplified:
            onnx.save(proto, str(path))
            _check(path, "simplified")

    blocks = resolve_block_outputs(proto.graph, keys)
    names = _tensor_names(proto.graph)
    missing = [k for k, v in blocks.items() if v not in names]
    if missing:
        raise ExportError(f"onnx export | block outputs {missing[:3]} are not tensors of the final graph")
    ops = dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))
    return OnnxGraphInfo(path, simplified, note, blocks, ops, gelu)


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
        raise ExportError(f"onnx export | the {what} graph fails onnx.checker: {str(err).splitlines()[0]}") from err


def _tensor_names(graph) -> set[str]:
    return {o for n in graph.node for o in n.output} | {i.name for i in graph.input}


@register_exporter("onnx")
class OnnxExporter(Exporter):
    """``model.onnx``: input ``images`` (N,3,H,W), output ``logits``; run by ONNX Runtime, OpenVINO, TensorRT."""

    supported_precisions = ("fp32",)
    default_precision = "fp32"
    requires = (("onnx", "onnx"), ("onnxruntime", "onnx"))
    artifact_suffix = ".onnx"

    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log) -> ExportedArtifact:
        import onnx
        import onnxruntime

        info = write_onnx(model, config, workdir / "model.onnx", log)
        inputs, outputs = io_specs(config, unwrap(model).num_classes)
        versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
        if config.simplify:
            versions["onnxsim"] = _onnxsim_version()
        return ExportedArtifact(
            path="model.onnx",
            inputs=inputs,
            outputs=outputs,
            backend_versions=versions,
            block_outputs=info.block_outputs,
            parity_targets=[ParityTarget("onnxruntime", "model.onnx", PARITY_RTOL_FP32)],
            details=onnx_details(info, config),
            notices=[info.simplify_note] if info.simplify_note else [],
        )


def onnx_details(info: OnnxGraphInfo, config: ExportConfig) -> dict:
    """The manifest ``details`` block of an ONNX graph."""
    return {
        "opset": config.opset,
        "exporter": "torch.onnx.export(dynamo=False) (TorchScript; module-scoped node names)",
        "simplified": info.simplified,
        "simplify_note": info.simplify_note,
        "op_counts": info.op_counts,
        "gelu": info.gelu,
    }


def _onnxsim_version() -> str:
    try:
        import onnxsim

        return str(getattr(onnxsim, "__version__", "unknown"))
    except ImportError:
        return "not installed"

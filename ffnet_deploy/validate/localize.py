"""``validate --localize``: find where in the network an artifact's error first grows.

Two methods, chosen by the artifact's runtime:

- **Per FFNet block** (ONNX Runtime, OpenVINO): the manifest's ``block_outputs`` map names the graph tensor that holds
  the output of ``model.patch_embed`` and of every ``model.stages[S][B]``. The runner returns those tensors as
  extra outputs; forward hooks on the same modules of the PyTorch reference give the matching activations. Each
  pair gets an SQNR, and the first block below the threshold is where the artifact stops computing what the model
  computes. A block is a function of its input only, so this works whether the artifact was reparameterized or not.
- **Per MIL op** (the coreml-reference interpreter): the Core ML program is run twice through the interpreter's
  per-op observer, once as it is and once with every op computed in fp32, and each op's output is compared between
  the two runs. This compares the program *against itself in fp32*: it finds where reduced precision (fp16) loses
  accuracy, which is the usual Core ML FP16 complaint, but it cannot find a wrong weight, since both runs use the
  same weights. For wrong weights, localize the ONNX or OpenVINO export of the same checkpoint.

SQNR (signal-to-quantization-noise ratio) of an activation, in dB::

    SQNR = 10 log10( sum(ref^2) / sum((ref - out)^2) )

(:func:`ffnet_deploy.validate.metrics.sqnr_db`: ``inf`` when the two are identical, ``nan`` when either holds a
NaN or Inf, ``-inf`` for a zero reference with noise). Healthy fp32 artifacts sit above ~60 dB at every block, fp16
around 40-60 dB, int8 around 15-30 dB; a wrong weight drops its block to near or below 0 dB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ffnet_deploy.errors import FFNetDeployError, RuntimeBackendError
from ffnet_deploy.validate.metrics import sqnr_db


@dataclass(frozen=True)
class LayerSQNR:
    """SQNR of one block (or MIL op) output."""

    name: str  # "patch_embed", "stages.S.B", or a MIL op name
    sqnr_db: float  # 10 log10(signal / noise); inf when identical, nan when non-finite
    tensor: str | None = None  # graph tensor compared (artifact side)
    shape: tuple[int, ...] | None = None  # activation shape
    op_type: str | None = None  # MIL op type (Core ML only)


@dataclass
class Localization:
    """Per-layer SQNR of one artifact and the first layer that falls below the threshold."""

    method: str  # "blocks" (torch activations vs runner extra outputs) or "mil-ops" (program vs itself in fp32)
    threshold_db: float  # layers below this SQNR are flagged
    layers: list[LayerSQNR] = field(default_factory=list)  # in execution order
    samples: int = 0  # images used
    note: str = ""  # what the comparison can and cannot find

    @property
    def first_below(self) -> LayerSQNR | None:
        """The first layer whose SQNR is below the threshold (or non-finite), in execution order."""
        for layer in self.layers:
            if math.isnan(layer.sqnr_db) or layer.sqnr_db < self.threshold_db:
                return layer
        return None

    @property
    def largest_drop(self) -> tuple[LayerSQNR, float] | None:
        """The layer with the largest SQNR fall from the previous finite-SQNR layer, with the fall in dB."""
        best, drop, prev = None, 0.0, None
        for layer in self.layers:
            if not math.isfinite(layer.sqnr_db):
                continue
            if prev is not None and (best is None or prev - layer.sqnr_db > drop):
                best, drop = layer, prev - layer.sqnr_db
            prev = layer.sqnr_db
        return (best, drop) if best is not None else None

    @property
    def summary(self) -> str:
        """One line for tables and failure messages."""
        first = self.first_below
        if first is None:
            return f"no {self._unit} below {self.threshold_db:g} dB SQNR ({len(self.layers)} compared)"
        kind = f" ({first.op_type})" if first.op_type else ""
        return f"first {self._unit} below {self.threshold_db:g} dB: {first.name}{kind} at {first.sqnr_db:.1f} dB"

    @property
    def _unit(self) -> str:
        return "block" if self.method == "blocks" else "MIL op"

    def to_dict(self) -> dict:
        first = self.first_below
        drop = self.largest_drop

        def enc(v: float) -> float | str:
            return v if math.isfinite(v) else str(v)

        return {
            "method": self.method,
            "threshold_db": self.threshold_db,
            "samples": self.samples,
            "note": self.note,
            "first_below": first.name if first else None,
            "first_below_sqnr_db": enc(first.sqnr_db) if first else None,
            "largest_drop": {"name": drop[0].name, "drop_db": enc(drop[1])} if drop else None,
            "summary": self.summary,
            "layers": [{**asdict(layer), "sqnr_db": enc(layer.sqnr_db),
                        "shape": list(layer.shape) if layer.shape else None} for layer in self.layers],
        }


# --------------------------------------------------------------------------------------------------------------------
# Per-block (ONNX Runtime, OpenVINO)
# --------------------------------------------------------------------------------------------------------------------


def block_names(model) -> list[str]:
    """``["patch_embed", "stages.0.0", ...]``: every FFNet block boundary, in execution order."""
    return ["patch_embed"] + [f"stages.{s}.{b}" for s, stage in enumerate(model.stages) for b in range(len(stage))]


def torch_block_outputs(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run the reference once and capture the output of ``patch_embed`` and every ``stages[S][B]``.

    Args:
        model: The FFNet reference (fused or not: a block's output is the same function either way).
        images: Normalized float32 batch ``(B, 3, H, W)``.

    Returns:
        Activations by block name, as float32 numpy arrays, in execution order.
    """
    import torch

    captured: dict[str, np.ndarray] = {}
    handles = []
    modules = {"patch_embed": model.patch_embed}
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            modules[f"stages.{s}.{b}"] = block

    def hook(name: str):
        def fn(_module, _inputs, output) -> None:
            captured[name] = output.detach().float().cpu().numpy()

        return fn

    for name, module in modules.items():
        handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    return {name: captured[name] for name in modules if name in captured}


def localize_blocks(runtime: str, artifact, block_outputs: Mapping[str, str], model, batch, input_range: str,
                    threshold_db: float, runner_options: Mapping[str, Any] | None = None) -> Localization:
    """Per-block SQNR of an ONNX/OpenVINO artifact against the PyTorch reference.

    Args:
        runtime: Runner name (``"onnxruntime"`` or ``"openvino"``); it must accept ``extra_outputs``.
        artifact: Artifact directory or model file.
        block_outputs: ``{"stages.S.B": tensor name}`` from the manifest.
        model: The PyTorch reference.
        batch: A :class:`ffnet_deploy.data.sources.Batch`; a few images are enough.
        input_range: What the artifact's input takes (``"normalized"``, ``"0-1"``, ``"0-255"``).
        threshold_db: Flag blocks below this SQNR.
        runner_options: Extra runner options.

    Raises:
        RuntimeBackendError: If the manifest has no block map or the runner cannot expose the tensors.
    """
    from ffnet_deploy.runtimes import create_runner

    if not block_outputs:
        raise RuntimeBackendError(f"localize | {artifact} has no block_outputs in its manifest; re-export it with "
                                  "'ffnet-deploy export' (per-block localization needs the tensor names)")
    names = block_names(model)
    order = [n for n in names if n in block_outputs]
    missing = [n for n in names if n not in block_outputs]
    tensors = [block_outputs[n] for n in order]
    runner = create_runner(runtime, artifact, extra_outputs=tensors, **dict(runner_options or {}))
    with runner:
        outs, n = _run_batch(runner, batch, input_range)
    ref = torch_block_outputs(model, batch.images[:n])
    layers = []
    for block, tensor in zip(order, tensors, strict=True):
        if tensor not in outs:
            raise RuntimeBackendError(f"localize | {runtime} did not return tensor {tensor!r} of block {block}")
        layers.append(LayerSQNR(block, sqnr_db(ref[block], outs[tensor], what=f"localize | activation of {block}"),
                                tensor, tuple(ref[block].shape)))
    note = "artifact block outputs vs PyTorch activations of the same modules"
    if missing:
        note += f"; not in the manifest's block_outputs: {', '.join(missing)}"
    return Localization("blocks", threshold_db, layers, samples=n, note=note)


# --------------------------------------------------------------------------------------------------------------------
# Per MIL op (coreml-reference)
# --------------------------------------------------------------------------------------------------------------------

MIL_NOTE = ("Core ML program compared against itself computed in fp32: finds precision loss (fp16), "
            "not wrong weights")


def localize_mil_ops(runtime: str, artifact, batch, input_range: str, threshold_db: float,
                     runner_options: Mapping[str, Any] | None = None) -> Localization:
    """Per-MIL-op SQNR of a Core ML program against the same program computed in fp32.

    Uses the coreml-reference interpreter's per-op observer; see the module docstring for what this can find.

    Raises:
        RuntimeBackendError: If the runner does not offer the observer or the fp32 mode.
    """
    from ffnet_deploy.runtimes import create_runner

    options = dict(runner_options or {})

    def run(fp32: bool) -> tuple[list[tuple[str, str | None]], dict[str, list[np.ndarray]], int]:
        order: list[tuple[str, str | None]] = []
        values: dict[str, list[np.ndarray]] = {}

        def observer(op_name: str, op_type: str | None, value) -> None:
            array = np.asarray(value)
            if array.dtype.kind not in "fc" or array.size == 0:
                return  # shapes, indices and flags carry no precision loss
            if op_name not in values:
                order.append((op_name, op_type))
                values[op_name] = []
            values[op_name].append(array.astype(np.float64).ravel())  # one entry per chunk the runner ran

        try:
            runner = create_runner(runtime, artifact, observer=observer, compute_fp32=fp32, **options)
        except TypeError as err:
            raise RuntimeBackendError(f"localize | runner {runtime!r} has no per-op observer / fp32 mode ({err})") \
                from err
        with runner:
            _, n = _run_batch(runner, batch, input_range)
        return order, values, n

    order, as_is, n = run(False)
    _, fp32, _ = run(True)
    layers = []
    for op_name, op_type in order:
        if op_name not in fp32 or len(fp32[op_name]) != len(as_is[op_name]):
            continue
        a, b = np.concatenate(fp32[op_name]), np.concatenate(as_is[op_name])
        if a.shape != b.shape:
            continue
        layers.append(LayerSQNR(op_name, sqnr_db(a, b, what=f"localize | output of {op_name}"), op_name, None,
                                op_type))
    return Localization("mil-ops", threshold_db, layers, samples=n, note=MIL_NOTE)


# --------------------------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------------------------

def localize_artifact(spec, model, batch, threshold_db: float) -> Localization:
    """Localize one artifact's error with the method its runtime declares (``BaseRunner.localize``: ``"blocks"``
    for runners that return intermediate tensors, ``"mil-ops"`` for the Core ML reference interpreter).

    Args:
        spec: A :class:`ffnet_deploy.validate.engine.ArtifactSpec`.
        model: The PyTorch reference.
        batch: A :class:`ffnet_deploy.data.sources.Batch` (a few images are enough).
        threshold_db: SQNR threshold.

    Raises:
        FFNetDeployError: If the runtime supports no localization method or the artifact lacks what it needs.
    """
    from ffnet_deploy.runtimes import RUNTIMES

    input_range = spec.input_range or "normalized"
    method = RUNTIMES.get(spec.runtime).localize if spec.runtime in RUNTIMES else None
    if method == "blocks":
        return localize_blocks(spec.runtime, spec.path, spec.block_outputs, model, batch, input_range, threshold_db)
    if method == "mil-ops":
        return localize_mil_ops(spec.runtime, spec.path, batch, input_range, threshold_db)
    supported = [n for n in RUNTIMES.names() if RUNTIMES.get(n).localize]
    raise FFNetDeployError(f"localize | runtime {spec.runtime!r} has no localization; supported: "
                           f"{', '.join(supported)}")


def _run_batch(runner, batch, input_range: str) -> tuple[dict[str, np.ndarray], int]:
    """Run an active runner on a batch; return ``(outputs concatenated over the batch, images used)``.

    An artifact with a fixed batch dimension is run chunk by chunk; images that do not fill a last chunk are left
    out rather than padded, so every activation compared belongs to a real image.
    """
    from ffnet_deploy.data.transform import feed_from_pixels

    meta = next(iter(runner.input_metadata().values()))
    n = len(batch.names)
    step = (meta.shape[0] if meta.shape else None) or n
    if step > n:
        raise RuntimeBackendError(f"localize | the artifact takes batches of {step}, only {n} images at hand")
    n -= n % step
    feed = feed_from_pixels(batch.pixels[:n], batch.images[:n], input_range, meta.dtype)
    parts = [runner.infer({meta.name: feed[i:i + step]}) for i in range(0, n, step)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}, n


def format_layers(loc: Localization, limit: int | None = None) -> Sequence[LayerSQNR]:
    """The layers worth printing: all blocks, or for MIL ops the ones around the first failure."""
    if loc.method == "blocks" or limit is None or len(loc.layers) <= limit:
        return loc.layers
    first = loc.first_below
    idx = loc.layers.index(first) if first else 0
    lo = max(0, idx - limit // 2)
    return loc.layers[lo:lo + limit]

"""Where the time of one CPU inference goes: per-op profiles of ONNX Runtime and OpenVINO, against this machine's roof.

Run: ``python -m ffnet_deploy.benchmarks.where_time_goes [--variant ffnet_1] [--resolution 256] [--threads 2]
[--iters 20] [--out DIR]``. Results land in ``DIR/where_time_goes.{md,json}`` (default ``./benchmarks/results``,
relative to the current directory; see :mod:`ffnet_deploy.benchmarks.common`).

What it does, batch 1, random weights (time does not depend on them):

1. measures this machine's GEMM peak with :func:`~ffnet_deploy.benchmarks.roofline.gemm_probe` (FP32 and BF16),
   once before and once after the measurements, keeping the better (:func:`~ffnet_deploy.benchmarks.roofline.best_of`);
2. exports the variant with the project's exporter (``ffnet-deploy export``, ONNX and OpenVINO IR);
3. times ONNX Runtime FP32, OpenVINO FP32 and OpenVINO BF16 (inference precision hint) through the project's runners
   in interleaved rounds (:func:`~ffnet_deploy.benchmarks.common.interleaved_timing`, ORT threads not spinning),
   and turns each median latency into a fraction of the roof
   (:func:`~ffnet_deploy.benchmarks.roofline.roofline_fraction`);
4. profiles the same three, each in its own session: ONNX Runtime's profiler (``enable_profiling``) and OpenVINO's
   per-layer performance counters (``PERF_COUNT``, ``InferRequest.profiling_info``), ``--iters`` runs after
   warm-up in 4 chunks of consecutive runs, the chunks interleaved across the three sessions, and averages each
   kernel's time over the faster half of its session's chunks (by wall time; a burst of another process on a
   shared machine stays out);
5. sorts every executed kernel into a category (:data:`CATEGORY_LABELS`): dense k x k convs (the stem), pointwise
   1x1 convs, depthwise convs per kernel size, activations, elementwise ops, pooling and the head, layout reorders,
   other. A kernel is matched to the ONNX node it came from by name, and convs are categorized by that node's
   weight shape and ``group``;
6. puts next to each category's time its FLOPs, counted on the exported ONNX graph (``onnx.shape_inference``:
   ``2 x output elements x in_channels/group x kh x kw`` per Conv, ``2 x M x N x K`` per Gemm), and the GFLOP/s it
   achieved against the probe's peak.

Read the categories with the runtimes' fusions in mind: the time of an op fused into another kernel is counted in
that kernel. ONNX Runtime folds each residual ``Add`` into the conv before it (NCHWc ``Conv`` with a sum input) and
runs GELU as one ``Gelu`` kernel; OpenVINO folds both GELU and the residual ``Add`` into the conv kernels (post-ops),
so its activation and elementwise rows are empty and its conv rows carry that work. The tables list, per runtime,
the graph ops that ran fused (OpenVINO reports them as ``NOT_RUN``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.benchmarks.roofline import Roofline, best_of, gemm_probe, roofline_fraction
from ffnet_deploy.runtimes.onnxruntime import no_spinning
from studies.common import RESULTS_DIR, interleaved_timing, write_results

CATEGORY_LABELS = {
    "dense_conv": "dense k x k convs (stem)",
    "pointwise_conv": "pointwise 1x1 convs",
    "depthwise_conv": "depthwise convs",  # split per kernel size: depthwise_conv_7x7, depthwise_conv_3x3, ...
    "grouped_conv": "grouped (not depthwise) convs",
    "activation": "GELU / activations",
    "elementwise": "Add / Mul / elementwise",
    "pool_head": "pooling / head (GAP, flatten, linear)",
    "layout": "reorders / layout conversions",
    "other": "other",
}
"""Category key -> label. Depthwise convs get one key per kernel size, ``depthwise_conv_<kh>x<kw>``."""

CONV_CATEGORY_PREFIXES = ("dense_conv", "pointwise_conv", "depthwise_conv", "grouped_conv")

_OP_CATEGORIES = {
    "activation": {
        "Gelu",
        "BiasGelu",
        "FastGelu",
        "QuickGelu",
        "Erf",
        "Relu",
        "Sigmoid",
        "Tanh",
        "Swish",
        "HSwish",
        "HardSwish",
        "Mish",
        "Clip",
        "Elu",
        "PRelu",
        "LeakyRelu",
    },
    "elementwise": {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Sum",
        "Eltwise",
        "Subgraph",
        "Multiply",
        "Subtract",
        "Divide",
        "Pow",
        "Sqrt",
        "Neg",
        "Abs",
        "Exp",
    },
    "pool_head": {
        "GlobalAveragePool",
        "AveragePool",
        "MaxPool",
        "ReduceMean",
        "Pooling",
        "Flatten",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Gemm",
        "MatMul",
        "FusedGemm",
        "FusedMatMul",
        "FullyConnected",
    },
    "layout": {"ReorderInput", "ReorderOutput", "Reorder", "Transpose", "Convert"},
}
"""Runtime or ONNX op type -> category, for kernels that are not convs."""

CONV_OP_TYPES = {"Conv", "FusedConv", "NchwcConv", "Convolution", "GroupConvolution"}


def conv_category(kernel: tuple[int, int], group: int, in_channels: int) -> str:
    """Category of a convolution from its kernel size, ``group`` and input channels."""
    kh, kw = kernel
    if group > 1 and group == in_channels:
        return f"depthwise_conv_{kh}x{kw}"
    if group > 1:
        return "grouped_conv"
    return "pointwise_conv" if (kh, kw) == (1, 1) else "dense_conv"


def op_category(op_type: str) -> str:
    """Category of a non-conv kernel from its (ONNX Runtime, OpenVINO or ONNX) op type."""
    for category, types in _OP_CATEGORIES.items():
        if op_type in types:
            return category
    return "other"


def category_label(key: str) -> str:
    if key.startswith("depthwise_conv_"):
        return f"depthwise {key.removeprefix('depthwise_conv_')} convs"
    return CATEGORY_LABELS[key]


def category_order(key: str) -> tuple:
    """Table order: convs (depthwise by kernel size, largest first), then the rest in :data:`CATEGORY_LABELS` order."""
    if key.startswith("depthwise_conv_"):
        kh, kw = (int(v) for v in key.removeprefix("depthwise_conv_").split("x"))
        return (list(CATEGORY_LABELS).index("depthwise_conv"), -kh * kw)
    return (list(CATEGORY_LABELS).index(key), 0)


@dataclass(frozen=True)
class GraphOp:
    """One node of the exported ONNX graph, with its category and FLOPs."""

    name: str  # ONNX node name
    op_type: str  # ONNX op type
    category: str  # see CATEGORY_LABELS
    flops: int  # 2 x multiply-accumulates (Conv, Gemm, MatMul); 0 for everything else


def graph_ops(onnx_path: str | Path) -> dict[str, GraphOp]:
    """Every node of an ONNX model, keyed by node name, with its category and FLOPs.

    Conv FLOPs are ``2 x output elements x (in_channels / group) x kh x kw``, from the weight initializer's shape and
    the output shape that ``onnx.shape_inference`` infers; Gemm / MatMul FLOPs are ``2 x output elements x K``.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    ops = {}
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        flops = 0
        if node.op_type == "Conv":
            w, out = shapes[node.input[1]], shapes[node.output[0]]
            group = int(attrs.get("group", 1))
            category = conv_category((w[2], w[3]), group, w[1] * group)
            flops = 2 * math.prod(out) * w[1] * w[2] * w[3]
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            k = a[0] if attrs.get("transA", 0) else a[-1]
            flops = 2 * math.prod(shapes[node.output[0]]) * k
            category = "pool_head"
        else:
            category = op_category(node.op_type)
        ops[name] = GraphOp(name, node.op_type, category, flops)
    return ops


def _output_producers(onnx_path: str | Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {out: node.name for node in model.graph.node for out in node.output}


def classify_kernel(
    name: str, op_type: str, graph: dict[str, GraphOp], producers: dict[str, str], shapes: list | None = None
) -> tuple[str, str | None]:
    """Category of one executed kernel, and the ONNX node it was matched to (``None`` when matched by type only).

    Args:
        name: The kernel's name in the runtime's profile.
        op_type: Its op type there.
        graph: :func:`graph_ops` of the model.
        producers: ONNX tensor name -> producing node name (ONNX Runtime names NCHWc convs after their output).
        shapes: The kernel's input shapes where the profile has them (ONNX Runtime), to categorize an unmatched conv.
    """
    if op_category(op_type) == "layout":
        return "layout", None
    # OpenVINO names a conv "<ONNX node>/WithoutBiases"; ONNX Runtime names an NCHWc conv "<output tensor>_nchwc".
    candidates = [name, name.removesuffix("/WithoutBiases"), producers.get(name.removesuffix("_nchwc"), "")]
    for candidate in candidates:
        if candidate in graph:
            node = graph[candidate]
            if node.op_type == "Conv" or op_type not in CONV_OP_TYPES:
                return node.category, candidate
    if op_type in CONV_OP_TYPES and shapes and len(shapes) >= 2 and len(shapes[1]) == 4:
        x, w = shapes[0], shapes[1]
        return conv_category((w[2], w[3]), x[1] // w[1], x[1]), None
    if op_type in CONV_OP_TYPES:
        return "other", None
    return op_category(op_type), None


@dataclass
class KernelProfile:
    """Per-kernel times of one runtime, averaged over the faster half of the profiled runs."""

    runtime: str  # "onnxruntime/fp32", "openvino/fp32", "openvino/bf16"
    kernels: list[dict]  # {"name", "op_type", "impl", "category", "node", "ms"} in execution order
    run_ms: float  # mean wall time of the kept runs as the runtime reports it (ORT model_run, OV request.latency)
    runs: int  # profiled runs kept (the faster half)
    fused: dict[str, int]  # op type -> graph ops that ran inside other kernels (as far as the profile says)

    @property
    def kernel_ms(self) -> float:
        return sum(k["ms"] for k in self.kernels)


def chunk_size(iters: int) -> int:
    """Runs per chunk: a quarter of the profiled runs (at least 1), so that there are about 4 chunks to choose from."""
    return max(1, iters // 4)


def _typical_chunks(
    chunks: list[tuple[dict[str, float], float, int]], meta: dict[str, dict]
) -> tuple[list[dict], float, int]:
    """Each kernel's mean time per run over the faster half of the chunks, and those runs' mean wall time.

    A chunk is a run of consecutive profiled runs: ``(kernel name -> total ms, total wall ms, runs)``. Chunks, not
    single runs, because OpenVINO's counters are running averages, from which only the total of consecutive runs can
    be recovered exactly. Keeping the faster half (by wall time per run) keeps a burst of another process on a shared
    machine out of the breakdown, and one mean over one set of runs keeps the books balanced: the kernels add up to
    the kernel total of exactly the runs whose wall time is reported.

    Returns:
        Kernels in first-seen order with their ``ms``, the mean wall time of the kept runs, and how many were kept.
    """
    keep = sorted(chunks, key=lambda c: c[1] / c[2])[: max(1, (len(chunks) + 1) // 2)]
    runs = sum(c[2] for c in keep)
    kernels = [
        {**info, "name": name, "ms": sum(c[0].get(name, 0.0) for c in keep) / runs} for name, info in meta.items()
    ]
    return kernels, sum(c[1] for c in keep) / runs, runs


class Profiler:
    """A runtime with its per-kernel profiler on, run chunk by chunk over one graph and one input.

    Used as a context manager: ``warm_up(n)``, then ``run_chunk(k)`` as often as wanted (interleaved with other
    profilers), then ``result()``. Subclasses make the runner and read their runtime's profile.
    """

    runtime: str

    def __init__(self, runner: Any, graph: dict[str, GraphOp], producers: dict[str, str], feed: dict) -> None:
        self.runner, self.graph, self.producers, self.feed = runner, graph, producers, feed

    def __enter__(self) -> Profiler:
        self.runner.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.runner.is_active:
            self.runner.deactivate()

    def warm_up(self, runs: int) -> None:
        raise NotImplementedError

    def run_chunk(self, runs: int) -> None:
        raise NotImplementedError

    def result(self) -> KernelProfile:
        raise NotImplementedError


class OnnxRuntimeProfiler(Profiler):
    """ONNX Runtime FP32 with its profiler on (``enable_profiling``)."""

    runtime = "onnxruntime/fp32"

    def __init__(
        self,
        model_dir: Path,
        graph: dict[str, GraphOp],
        producers: dict[str, str],
        feed: dict,
        threads: int,
        work_dir: Path,
    ) -> None:
        from ffnet_deploy.runtimes import create_runner

        def options(o: Any) -> None:
            no_spinning(o)
            o.enable_profiling = True
            o.profile_file_prefix = str(work_dir / "ort_profile")

        runner = create_runner("onnxruntime", model_dir, threads=threads, session_options=options)
        super().__init__(runner, graph, producers, feed)
        self.warmup = 0
        self.chunk_sizes: list[int] = []

    def warm_up(self, runs: int) -> None:
        for _ in range(runs):
            self.runner.infer(self.feed)
        self.warmup += runs

    def run_chunk(self, runs: int) -> None:
        for _ in range(runs):
            self.runner.infer(self.feed)
        self.chunk_sizes.append(runs)

    def result(self) -> KernelProfile:
        """End profiling and read the profile: per-kernel times per chunk, then :func:`_typical_chunks`."""
        events = json.loads(Path(self.runner.session.end_profiling()).read_text())
        runs = sorted(
            (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
        )[self.warmup :]
        nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        per_run: list[dict[str, float]] = [defaultdict(float) for _ in runs]
        meta: dict[str, dict] = {}
        for e in sorted(nodes, key=lambda e: e["ts"]):
            index = next((i for i, r in enumerate(runs) if r["ts"] <= e["ts"] <= r["ts"] + r["dur"]), None)
            if index is None:
                continue  # a warm-up run
            name = e["name"].removesuffix("_kernel_time")
            op_type = e["args"].get("op_name", "")
            if name not in meta:
                shapes = [next(iter(s.values())) for s in e["args"].get("input_type_shape", [])]
                category, node = classify_kernel(name, op_type, self.graph, self.producers, shapes)
                impl = e["args"].get("provider", "") + (" NCHWc" if name.endswith("_nchwc") else "")
                meta[name] = {"op_type": op_type, "impl": impl, "category": category, "node": node}
            per_run[index][name] += e["dur"] / 1e3
        ran = Counter(m["op_type"] for m in meta.values())
        in_graph = Counter(op.op_type for op in self.graph.values() if op.op_type != "Constant")
        # ORT's profile does not list fused nodes; the difference per op type is what ran inside other kernels
        # (e.g. the 5 ONNX nodes of an erf GELU become one Gelu kernel; residual Adds become the conv's sum input).
        fused = {t: n - ran.get(t, 0) for t, n in in_graph.items() if n > ran.get(t, 0)}
        chunks, start = [], 0
        for size in self.chunk_sizes:
            totals: dict[str, float] = defaultdict(float)
            for times in per_run[start : start + size]:
                for name, ms in times.items():
                    totals[name] += ms
            chunks.append((totals, sum(r["dur"] / 1e3 for r in runs[start : start + size]), size))
            start += size
        kernels, run_ms, kept = _typical_chunks(chunks, meta)
        return KernelProfile(self.runtime, kernels, run_ms, kept, fused)


class OpenVINOProfiler(Profiler):
    """OpenVINO with per-layer performance counters (``PERF_COUNT``).

    ``InferRequest.profiling_info`` holds each kernel's running average over every inference of the compiled model
    so far (warm-up included), so exact totals exist only for runs of consecutive inferences,
    ``n * avg(n) - m * avg(m)``: the counters are read after the warm-up and after every chunk.
    """

    def __init__(
        self,
        model_dir: Path,
        graph: dict[str, GraphOp],
        producers: dict[str, str],
        feed: dict,
        threads: int,
        precision: str,
    ) -> None:
        from ffnet_deploy.runtimes import create_runner

        self.runtime = f"openvino/{'fp32' if precision == 'f32' else precision}"
        runner = create_runner(
            "openvino",
            model_dir,
            threads=threads,
            inference_precision=precision,
            session_options=lambda config: config.update({"PERF_COUNT": True}),
        )
        super().__init__(runner, graph, producers, feed)
        self.meta: dict[str, dict] = {}
        self.fused: Counter = Counter()
        self.chunks: list[tuple[dict[str, float], float, int]] = []
        self.done = 0
        self.before: dict[str, float] = {}

    def __enter__(self) -> OpenVINOProfiler:
        super().__enter__()
        # A request of our own: the runner's does not expose its profiling_info.
        self.request = self.runner.compiled.create_infer_request()
        self.inputs = {i: self.feed[spec.name] for i, spec in enumerate(self.runner.input_metadata().values())}
        return self

    def __exit__(self, *exc: Any) -> None:
        self.request = None
        super().__exit__(*exc)

    def _totals(self, record_fused: bool = False) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.request.profiling_info:
            if str(p.status).endswith("EXECUTED"):
                if p.node_name not in self.meta:
                    category, node = classify_kernel(p.node_name, p.node_type, self.graph, self.producers)
                    self.meta[p.node_name] = {
                        "op_type": p.node_type,
                        "impl": p.exec_type,
                        "category": category,
                        "node": node,
                    }
                out[p.node_name] = out.get(p.node_name, 0.0) + self.done * p.real_time.total_seconds() * 1e3
            elif record_fused and p.node_type not in ("Parameter", "Result", "Input", "Output", "Const"):
                self.fused[p.node_type] += 1
        return out

    def warm_up(self, runs: int) -> None:
        for _ in range(runs):
            self.request.infer(self.inputs)
        self.done += runs
        self.before = self._totals(record_fused=True)

    def run_chunk(self, runs: int) -> None:
        wall = 0.0
        for _ in range(runs):
            self.request.infer(self.inputs)
            wall += self.request.latency
        self.done += runs
        after = self._totals()
        self.chunks.append(({k: v - self.before.get(k, 0.0) for k, v in after.items()}, wall, runs))
        self.before = after

    def result(self) -> KernelProfile:
        kernels, run_ms, kept = _typical_chunks(self.chunks, self.meta)
        return KernelProfile(self.runtime, kernels, run_ms, kept, dict(self.fused))



def profile_interleaved(profilers: list[Profiler], iters: int, warmup: int) -> list[KernelProfile]:
    """Warm every profiler up, then run ``iters`` profiled runs each, in chunks interleaved across the profilers
    (A, B, C, A, B, C, ...), so that a busy phase of a shared machine hits them alike; return their profiles."""
    size = chunk_size(iters)
    with contextlib.ExitStack() as stack:
        for p in profilers:
            stack.enter_context(p)
            p.warm_up(warmup)
        for start in range(0, iters, size):
            for p in profilers:
                p.run_chunk(min(size, iters - start))
        return [p.result() for p in profilers]


def breakdown(profile: KernelProfile, graph: dict[str, GraphOp], peak_gflops: float | None) -> list[dict]:
    """One row per category: time, share, kernels, and for convs and the head the FLOPs and achieved GFLOP/s.

    FLOPs come from the ONNX graph, per category, so they are the same for every runtime; ``fraction_of_peak`` is
    the category's achieved rate over ``peak_gflops``.
    """
    ms: dict[str, float] = defaultdict(float)
    kernels: Counter = Counter()
    for k in profile.kernels:
        ms[k["category"]] += k["ms"]
        kernels[k["category"]] += 1
    flops: dict[str, int] = defaultdict(int)
    for op in graph.values():
        flops[op.category] += op.flops
    total_ms = profile.kernel_ms
    total_flops = sum(flops.values())
    rows = []
    for key in sorted(set(ms) | {c for c, f in flops.items() if f}, key=category_order):
        gflops = flops[key] / (ms[key] * 1e-3) / 1e9 if flops[key] and ms[key] > 0 else None
        rows.append(
            {
                "category": key,
                "label": category_label(key),
                "kernels": kernels[key],
                "ms": ms[key],
                "share": ms[key] / total_ms if total_ms else 0.0,
                "gflop": flops[key] / 1e9,
                "flop_share": flops[key] / total_flops if total_flops else 0.0,
                "gflops": gflops,
                "fraction_of_peak": gflops / peak_gflops if gflops is not None and peak_gflops else None,
            }
        )
    return rows


def run(
    variant: str = "ffnet_1",
    resolution: int = 256,
    threads: int = 2,
    iters: int = 20,
    warmup: int = 5,
    probe_budget_s: float = 3.0,
    seed: int = 0,
    roof: Roofline | None = None,
) -> dict:
    """Probe the roof, export, time and profile the three runtime/precision pairs; return JSON-ready results.

    Args:
        variant: FFNet variant, random weights.
        resolution: Input side in pixels.
        threads: CPU threads of every runtime and of the GEMM probe.
        iters: Interleaved timing rounds, and profiled runs per runtime.
        warmup: Untimed runs first.
        probe_budget_s: ``budget_s`` of each of the two GEMM probes.
        seed: Seed of the weights and the input.
        roof: A roof measured earlier at ``threads``; when given, nothing is probed.
    """
    import torch

    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.models.ffnet import count_macs, create_ffnet
    from ffnet_deploy.runtimes import create_runner

    load_before = os.getloadavg()
    first_probe = roof or gemm_probe(threads, budget_s=probe_budget_s, dtypes=("fp32", "bf16"))
    torch.manual_seed(seed)
    gmacs = count_macs(create_ffnet(variant, deploy=True), resolution) / 1e9
    feed = {"images": np.random.default_rng(seed).standard_normal((1, 3, resolution, resolution), dtype=np.float32)}
    with tempfile.TemporaryDirectory(prefix="ffnet-where-time-goes-") as tmp:
        tmp = Path(tmp)
        dirs = {}
        for fmt in ("onnx", "openvino"):
            dirs[fmt] = export(ExportConfig(fmt, tmp / fmt, resolution=resolution), None, variant).output
        onnx_path = dirs["onnx"] / "model.onnx"
        graph = graph_ops(onnx_path)
        producers = _output_producers(onnx_path)

        runners = {
            "onnxruntime/fp32": create_runner(
                "onnxruntime", dirs["onnx"], threads=threads, session_options=no_spinning
            ),
            "openvino/fp32": create_runner("openvino", dirs["openvino"], threads=threads, inference_precision="f32"),
        }
        if first_probe.bf16_gflops is not None:
            runners["openvino/bf16"] = create_runner(
                "openvino", dirs["openvino"], threads=threads, inference_precision="bf16"
            )
        try:
            for r in runners.values():
                r.activate()
            timings = interleaved_timing(
                {n: (lambda r=r: r.infer(feed)) for n, r in runners.items()}, warmup=warmup, rounds=iters
            )
        finally:
            for r in runners.values():
                if r.is_active:
                    r.deactivate()

        profilers: list[Profiler] = [
            OnnxRuntimeProfiler(dirs["onnx"], graph, producers, feed, threads, tmp),
            OpenVINOProfiler(dirs["openvino"], graph, producers, feed, threads, "f32"),
        ]
        if "openvino/bf16" in runners:
            profilers.append(OpenVINOProfiler(dirs["openvino"], graph, producers, feed, threads, "bf16"))
        profiles = profile_interleaved(profilers, iters, warmup)

    # A second probe after the measurements: on a shared machine either probe may meet another process.
    if roof is None:
        roof = best_of(first_probe, gemm_probe(threads, budget_s=probe_budget_s, dtypes=("fp32", "bf16")))
    peaks = {
        "onnxruntime/fp32": roof.peak_gflops("fp32"),
        "openvino/fp32": roof.peak_gflops("fp32"),
        "openvino/bf16": roof.peak_gflops("bf16"),
    }
    floor_ms = 2 * gmacs / roof.fp32_gflops * 1e3
    runtimes = {}
    for prof in profiles:
        peak = peaks[prof.runtime]
        latency = timings[prof.runtime]["median_ms"]
        runtimes[prof.runtime] = {
            "latency": timings[prof.runtime],
            "peak_gflops": peak,
            "floor_ms": 2 * gmacs / peak * 1e3 if peak else None,
            "roofline_fraction": roofline_fraction(gmacs, 1, latency, peak) if peak else None,
            # The fastest round is the one least disturbed by other processes on a shared machine.
            "roofline_fraction_at_min": (
                roofline_fraction(gmacs, 1, timings[prof.runtime]["min_ms"], peak) if peak else None
            ),
            "profiled_run_ms": prof.run_ms,
            "kernel_ms": prof.kernel_ms,
            "outside_kernels_ms": prof.run_ms - prof.kernel_ms,
            "profiled_runs": prof.runs,
            "categories": breakdown(prof, graph, peak),
            "fused_graph_ops": prof.fused,
            "kernels": prof.kernels,
        }
    return {
        "variant": variant,
        "resolution": resolution,
        "batch": 1,
        "threads": threads,
        "iters": iters,
        "warmup": warmup,
        "gmacs": gmacs,
        "gflop": 2 * gmacs,
        "graph_flops": {
            "conv": sum(op.flops for op in graph.values() if op.op_type == "Conv"),
            "gemm": sum(op.flops for op in graph.values() if op.op_type in ("Gemm", "MatMul")),
        },
        "roofline": roof.to_dict(),
        "fp32_floor_ms": floor_ms,
        "runtimes": runtimes,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "summary": summarize(runtimes, roof, gmacs),
    }


def _category_sum(rows: Iterable[dict], match: Callable[[str], bool]) -> dict:
    picked = [r for r in rows if match(r["category"])]
    ms = sum(r["ms"] for r in picked)
    gflop = sum(r["gflop"] for r in picked)
    return {
        "ms": ms,
        "share": sum(r["share"] for r in picked),
        "flop_share": sum(r["flop_share"] for r in picked),
        "gflops": gflop / (ms * 1e-3) if ms > 0 and gflop else None,
    }


def summarize(runtimes: dict, roof: Roofline, gmacs: float) -> list[str]:
    """A few sentences, generated from the numbers, that say where each runtime's time goes."""
    lines = []
    best = max(runtimes, key=lambda n: runtimes[n]["roofline_fraction"] or 0.0)
    for name, r in runtimes.items():
        rows = r["categories"]
        if r["roofline_fraction"] is None:
            continue
        pw = _category_sum(rows, lambda c: c == "pointwise_conv")
        dw = _category_sum(rows, lambda c: c.startswith("depthwise_conv"))
        dense = _category_sum(rows, lambda c: c == "dense_conv")
        rest = _category_sum(rows, lambda c: not c.startswith(CONV_CATEGORY_PREFIXES) and c != "pool_head")
        peak = r["peak_gflops"]
        text = (
            f"**{name}**: {r['latency']['median_ms']:.1f} ms median, {r['roofline_fraction']:.2f} of the "
            f"roofline ({2 * gmacs:.2f} GFLOP at {peak:.0f} GFLOP/s = {r['floor_ms']:.1f} ms floor; fastest round "
            f"{r['latency']['min_ms']:.1f} ms = {r['roofline_fraction_at_min']:.2f}). Of "
            f"{r['kernel_ms']:.1f} ms in kernels, pointwise 1x1 convs take {pw['share']:.0%} for "
            f"{pw['flop_share']:.0%} of the FLOPs at {pw['gflops'] or 0:.0f} GFLOP/s "
            f"({(pw['gflops'] or 0) / peak:.2f} of peak); depthwise convs take {dw['share']:.0%} of the time for "
            f"{dw['flop_share']:.0%} of the FLOPs at {dw['gflops'] or 0:.0f} GFLOP/s; the dense stem convs "
            f"{dense['share']:.0%} for {dense['flop_share']:.0%} at {dense['gflops'] or 0:.0f} GFLOP/s; "
            f"activations, elementwise ops and layout reorders that run as their own kernels "
            f"{rest['share']:.0%} ({rest['ms']:.1f} ms). Outside the kernels (scheduling, thread hand-off) "
            f"{r['outside_kernels_ms']:.1f} ms of the {r['profiled_run_ms']:.1f} ms profiled run."
        )
        if dw["ms"] > 0 and pw["gflops"]:
            # What the kernels would take if depthwise work went at the pointwise convs' rate: the size of the gap.
            ideal = r["kernel_ms"] - dw["ms"] + dw["ms"] * (dw["gflops"] or 0) / pw["gflops"]
            text += (
                f" Were the depthwise convs as efficient as the pointwise ones, the kernels would take "
                f"{ideal:.1f} ms instead of {r['kernel_ms']:.1f} ms."
            )
        lines.append(text)
    b = runtimes[best]
    verdict = "meets" if b["roofline_fraction"] >= 0.85 else "does not meet"
    lines.append(
        f"Best: **{best}** at {b['roofline_fraction']:.3f} of its roofline, which {verdict} the 0.85 goal. "
        f"Depthwise convs are memory-bound (about 2 FLOPs per element loaded for a 3x3, ~100 for a 7x7 "
        f"at best), so their time is set by bandwidth, not by the GEMM peak."
    )
    return lines


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def to_markdown(r: dict) -> str:
    roof = r["roofline"]
    out = [
        f"# Where the time goes: {r['variant']} {r['resolution']}x{r['resolution']}, batch 1, {r['threads']} "
        f"threads, CPU",
        "",
        f"Model: {r['gmacs']:.3f} GMACs = {r['gflop']:.2f} GFLOP (reparameterized graph; convs "
        f"{r['graph_flops']['conv'] / 1e9:.3f} GFLOP + head {r['graph_flops']['gemm'] / 1e9:.4f} GFLOP).",
        "",
        f"Roof (`gemm_probe`, {roof['threads']} threads, {roof['seconds']:.1f} s): FP32 **{roof['fp32_gflops']:.0f} "
        f"GFLOP/s** ({roof['engine']['fp32']}), BF16 **{_fmt(roof['bf16_gflops'], '.0f')} GFLOP/s** "
        f"({roof['engine'].get('bf16', 'not measured')}). FP32 floor of the model: {r['fp32_floor_ms']:.1f} ms.",
        "",
        *(f"- {n}" for n in roof["notes"]),
        "",
        f"Machine load (1/5/15-min load average, {os.cpu_count()} cpus) before: "
        f"{', '.join(f'{v:.2f}' for v in r['load_average']['before'])}; after: "
        f"{', '.join(f'{v:.2f}' for v in r['load_average']['after'])}. A load near or above the CPU count means "
        "other processes shared the cores and every number here is pessimistic.",
        "",
        "## Latency against the roof",
        "",
        "| runtime / precision | median ms | min ms | peak GFLOP/s | floor ms | roofline fraction (median) "
        "| roofline fraction (min) | profiled run ms "
        "| in kernels ms | outside kernels ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rt in r["runtimes"].items():
        out.append(
            f"| {name} | {rt['latency']['median_ms']:.2f} | {rt['latency']['min_ms']:.2f} "
            f"| {_fmt(rt['peak_gflops'], '.0f')} | {_fmt(rt['floor_ms'], '.1f')} "
            f"| {_fmt(rt['roofline_fraction'], '.2f')} | {_fmt(rt['roofline_fraction_at_min'], '.2f')} "
            f"| {rt['profiled_run_ms']:.2f} | {rt['kernel_ms']:.2f} "
            f"| {rt['outside_kernels_ms']:.2f} |"
        )
    out += [
        "",
        f"Median and min over {r['iters']} interleaved rounds after {r['warmup']} warm-up runs, profilers off; "
        "the profile columns come from separate profiled sessions (per-kernel mean over the faster half of 4 chunks "
        f"of {r['iters']} profiled runs).",
        "",
        "## Findings",
        "",
        "\n\n".join(r["summary"]),
    ]
    for name, rt in r["runtimes"].items():
        out += [
            "",
            f"## {name}: time per category",
            "",
            "| category | kernels | ms | share of kernel time | GFLOP | share of FLOPs | GFLOP/s | of peak |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in rt["categories"]:
            out.append(
                f"| {c['label']} | {c['kernels']} | {c['ms']:.2f} | {c['share']:.1%} | {c['gflop']:.3f} "
                f"| {c['flop_share']:.1%} | {_fmt(c['gflops'], '.0f')} | {_fmt(c['fraction_of_peak'], '.2f')} |"
            )
        rate = r["gflop"] / (rt["kernel_ms"] * 1e-3)
        of_peak = rate / rt["peak_gflops"] if rt["peak_gflops"] else None
        out.append(
            f"| **total** | {sum(c['kernels'] for c in rt['categories'])} | {rt['kernel_ms']:.2f} | 100% "
            f"| {sum(c['gflop'] for c in rt['categories']):.3f} | 100% | {rate:.0f} | {_fmt(of_peak, '.2f')} |"
        )
        if rt["fused_graph_ops"]:
            fused = ", ".join(f"{t} x{n}" for t, n in sorted(rt["fused_graph_ops"].items()))
            out += ["", f"Graph ops that ran inside other kernels (not profiled on their own): {fused}."]
        top = sorted(rt["kernels"], key=lambda k: -k["ms"])[:8]
        out += [
            "",
            "Slowest kernels: "
            + "; ".join(f"`{k['name']}` ({k['op_type']}, {k['impl']}) {k['ms']:.2f} ms" for k in top)
            + ".",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="ffnet_1")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=20, help="timed and profiled runs per runtime (default 20)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--probe-budget", type=float, default=3.0, help="seconds of GEMM timing for the roof (default 3)")
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help=f"folder for where_time_goes.md and .json (default: ./{RESULTS_DIR.as_posix()})",
    )
    p.add_argument("--no-write", action="store_true", help="print only; write no result files")
    args = p.parse_args(argv)
    result = run(args.variant, args.resolution, args.threads, args.iters, args.warmup, args.probe_budget)
    md = to_markdown(result)
    print(md)
    if not args.no_write:
        write_results("where_time_goes", md, result, results_dir=args.out)
    return result


if __name__ == "__main__":
    main()

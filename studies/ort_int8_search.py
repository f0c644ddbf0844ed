"""ONNX Runtime INT8 on this CPU: what makes it slower or faster than FP32, and the fastest accurate configuration.

Run: ``python -m ffnet_deploy.benchmarks.ort_int8_search [--variant ffnet_1] [--resolution 256] [--threads 2]
[--rounds 15] [--fp32 model.onnx] [--quick] [--out DIR]``. Results land in ``DIR/ort_int8_search.{md,json}``;
``benchmarks/results/ort_int8_investigation.md`` is the written analysis of one run.

The model: ``--variant`` with random weights made realistic: layer scales drawn from U(0.1, 1) (the 1e-6 init would
make every residual branch vanish) and BatchNorm statistics re-estimated on crops of scikit-learn's sample photos,
normalized with the ImageNet mean/std, before ``ffnet-deploy export``. Calibration (min/max over 32 crops) and
evaluation (32 other crops) use the same photos. Correct means logit SQNR >= 20 dB against FP32 on the evaluation
crops (top-1 agreement is reported next to it).

Three parts:

1. **Search.** Every configuration (:data:`CONFIGS`: quantized op types and conv kinds, QDQ vs QOperator, U8S8 /
   S8S8 / U8U8, reduce_range, per-channel, symmetric activations, pre-processing by ``quant_pre_process`` or an
   ORT-optimized graph, ``extra_options``, session settings such as ``session.qdqisint8allowed``) is quantized from
   the same calibrated ranges by :func:`ffnet_deploy.quantize.onnx_int8.quantize_with_settings`. FP32 and all INT8
   models then run in the ``onnxruntime`` runner (:func:`ort_runner`: ``--threads`` intra-op threads, spinning off,
   the candidate's session config entries), timed in interleaved rounds in one run (FP32, A, B, ..., FP32, A, B,
   ...) by the project's timing loop, so that the ratios vs FP32 are fair on a shared machine. The main configurations
   (:data:`PAIRED`) are then also timed pair by pair with :func:`~ffnet_deploy.quantize.onnx_int8.measure_speedup`,
   the exporter's own check, free of the cache effects of rotating through ~35 models.
2. **Profiles.** ONNX Runtime's profiler (``SessionOptions.enable_profiling``) on FP32 and the main INT8 variants:
   time per op type per inference, which kernels run (``QLinearConv`` or NCHWc ``Conv``, ``Transpose``,
   ``ReorderInput/Output``, ``QuantizeLinear/DequantizeLinear``), and convolution time split by kind (pointwise 1x1,
   3x3 / 7x7 depthwise, dense 3x3).
3. **Conclusion.** The fastest configuration that stays correct, and its ratio vs FP32.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.quantize import onnx_int8 as q
from ffnet_deploy.quantize.groups import layer_group
from ffnet_deploy.runtimes.onnxruntime import no_spinning
from ffnet_deploy.validate.metrics import sqnr_db, top1_agreement
from studies.common import RESULTS_DIR, runner_timing, write_results

STEM = "ort_int8_search"
SQNR_MIN_DB = 20.0
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


@dataclass(frozen=True)
class Candidate:
    """One INT8 configuration of the search."""

    name: str  # short name in the tables
    settings: q.OrtQuantSettings  # what the quantizer is given
    prep: str = "shape"  # graph the quantizer reads: shape (prepare_onnx), preprocess, ort_basic, ort_extended
    session: dict = field(default_factory=dict)  # extra ORT session config entries at inference
    include_groups: tuple[str, ...] | None = None  # quantize only these layer groups
    note: str = ""  # what it tests


_ALL = q.OrtQuantSettings()  # all op types, all convs, QDQ S8S8 per-channel
_U8S8 = replace(_ALL, activation_type="uint8")
_CONV = replace(_U8S8, op_types=("Conv", "Gemm"), exclude_gelu=True)


def _opts(**kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kwargs.items()))


def _stage_groups(stage: int, groups: list[str]) -> tuple[str, ...]:
    return tuple(g for g in groups if g.startswith(f"stages.{stage}."))


def candidates(groups: list[str], quick: bool) -> list[Candidate]:
    """The configurations searched; ``groups`` are the model's layer groups (for the per-stage rows)."""
    c = [
        Candidate("qdq_s8s8_all", _ALL, note="ORT default types (S8S8), QDQ, every op type"),
        Candidate("qdq_s8s8_all_pertensor", replace(_ALL, per_channel=False), note="quantize_static defaults exactly"),
        Candidate("qdq_s8s8_all_int8allowed", _ALL, session={"session.qdqisint8allowed": "1"},
                  note="S8S8 with session.qdqisint8allowed=1 (keep s8 activations)"),
        Candidate("qdq_u8s8_all", _U8S8, note="uint8 activations"),
        Candidate("qdq_u8u8_all", replace(_U8S8, weight_type="uint8"), note="uint8 weights too"),
        Candidate("qop_u8s8_all", replace(_U8S8, quant_format="qoperator"), note="QOperator (QLinearConv, ...)"),
        Candidate("qop_s8s8_all", replace(_ALL, quant_format="qoperator"), note="QOperator, int8 activations"),
        Candidate("qdq_u8s8_reduce_range", replace(_U8S8, reduce_range=True), note="7-bit weights"),
        Candidate("qdq_u8s8_x64precision", _U8S8, session={"session.x64quantprecision": "1"},
                  note="AVX2 overflow-safe u8s8 path (no effect expected with VNNI)"),
        Candidate("qdq_u8s8_no_gelu", replace(_U8S8, exclude_gelu=True), note="GELU (Div/Erf/Add/Mul/Mul) in float"),
        Candidate("qdq_u8s8_conv_gemm", _CONV, note="only Conv + Gemm; GELU, residual Adds float"),
        Candidate("qdq_u8s8_conv_gemm_add", replace(_CONV, op_types=("Conv", "Gemm", "Add")),
                  note="Conv + Gemm + residual Adds; GELU float"),
        Candidate("qdq_u8s8_no_depthwise", replace(_CONV, conv_kinds=("pointwise", "dense")),
                  note="Conv + Gemm without depthwise convs (GELU float, not fused)"),
        Candidate("qdq_u8s8_pointwise", replace(_CONV, conv_kinds=("pointwise",)), note="only 1x1 convs + Gemm"),
        Candidate("qop_u8s8_no_depthwise", replace(_CONV, quant_format="qoperator", conv_kinds=("pointwise", "dense")),
                  note="QOperator, Conv + Gemm without depthwise convs"),
        Candidate("qdq_u8s8_no_dw_fused_gelu", replace(_CONV, conv_kinds=("pointwise", "dense"), fuse_gelu=True),
                  note="no depthwise, float GELUs fused into com.microsoft.Gelu after quantization"),
        Candidate("qdq_u8s8_all_but_gelu_fused", replace(_U8S8, exclude_gelu=True, fuse_gelu=True),
                  note="every op type but GELU (fused), depthwise included"),
        Candidate("qdq_u8s8_no_dw_add", replace(_CONV, op_types=("Conv", "Gemm", "Add"),
                                                conv_kinds=("pointwise", "dense")),
                  note="Conv + Gemm + residual Adds without depthwise convs"),
        Candidate("qdq_u8s8_depthwise_only", replace(_CONV, op_types=("Conv",), conv_kinds=("depthwise",)),
                  note="only depthwise convs (to time the int8 depthwise kernel)"),
        Candidate("qdq_s8s8_no_depthwise", replace(_CONV, activation_type="int8", conv_kinds=("pointwise", "dense")),
                  note="S8S8, Conv + Gemm without depthwise"),
        Candidate("qdq_u8s8_no_dw_asym_off", replace(_CONV, conv_kinds=("pointwise", "dense"),
                                                     extra_options=_opts(ActivationSymmetric=True)),
                  note="no depthwise, ActivationSymmetric"),
        Candidate("qdq_u8s8_no_dw_pertensor", replace(_CONV, conv_kinds=("pointwise", "dense"), per_channel=False),
                  note="no depthwise, per-tensor weights"),
        Candidate("qdq_u8s8_no_dw_bias_float", replace(_CONV, conv_kinds=("pointwise", "dense"),
                                                       extra_options=_opts(QuantizeBias=False)),
                  note="no depthwise, QuantizeBias=False (no QLinearConv fusion expected)"),
        Candidate("qdq_u8s8_no_dw_dedicated", replace(_CONV, conv_kinds=("pointwise", "dense"),
                                                      extra_options=_opts(DedicatedQDQPair=True)),
                  note="no depthwise, DedicatedQDQPair"),
        Candidate("qdq_u8s8_all_keep_removable", replace(_U8S8, extra_options=_opts(QDQKeepRemovableActivations=True,
                                                                                     ForceQuantizeNoInputCheck=True)),
                  note="all ops, QDQKeepRemovableActivations + ForceQuantizeNoInputCheck"),
        Candidate("qdq_u8s8_no_dw_preprocess", replace(_CONV, conv_kinds=("pointwise", "dense")), prep="preprocess",
                  note="no depthwise, graph from quant_pre_process"),
        Candidate("qdq_u8s8_no_dw_ort_basic", replace(_CONV, conv_kinds=("pointwise", "dense")), prep="ort_basic",
                  note="no depthwise, graph pre-optimized by ORT (BASIC)"),
        Candidate("qdq_u8s8_no_dw_ort_ext", replace(_CONV, conv_kinds=("pointwise", "dense")), prep="ort_extended",
                  note="no depthwise, graph pre-optimized by ORT (EXTENDED: fused Gelu kept float)"),
        Candidate("qdq_u8s8_all_ort_ext", _U8S8, prep="ort_extended",
                  note="all ops, ORT EXTENDED graph (fused Gelu)"),
        Candidate("tensorrt_target", q.TENSORRT_SETTINGS, note="the tensorrt target's QDQ on the CPU provider"),
        Candidate("cpu_target", q.CPU_SETTINGS, note="the cpu target (CPU_SETTINGS)"),
    ]
    for stage in range(4):
        sg = _stage_groups(stage, groups)
        if sg:
            c.append(Candidate(f"qdq_u8s8_stage{stage}_only", _CONV, include_groups=sg,
                               note=f"Conv + Gemm quantized in stage {stage} only"))
    if quick:
        keep = {"qdq_s8s8_all", "qdq_u8s8_all", "qop_u8s8_all", "qdq_u8s8_conv_gemm", "qdq_u8s8_pointwise",
                "qdq_u8s8_no_depthwise", "cpu_target", "tensorrt_target"}
        c = [x for x in c if x.name in keep]
    return c


PAIRED = ("cpu_target", "qdq_u8s8_no_depthwise", "qdq_u8s8_all", "qdq_s8s8_all", "tensorrt_target")
PROFILED = ("qdq_s8s8_all", "qdq_u8s8_all", "qop_u8s8_all", "qdq_u8s8_conv_gemm", "qdq_u8s8_no_depthwise",
            "qdq_u8s8_pointwise", "cpu_target")


# --------------------------------------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------------------------------------


def photo_crops(n: int, size: int, seed: int) -> np.ndarray:
    """Normalized float32 (n, 3, size, size) random crops of scikit-learn's sample photos, randomly flipped."""
    import torch
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    images = [np.asarray(i) for i in load_sample_images().images]
    out = []
    for _ in range(n):
        im = images[rng.integers(len(images))]
        h, w, _ = im.shape
        s = int(rng.integers(size, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = torch.from_numpy(im[y:y + s, x:x + s].astype(np.float32) / 255).permute(2, 0, 1)[None]
        crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0].numpy()
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        out.append((crop - MEAN) / STD)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def realistic_fp32(variant: str, resolution: int, workdir: Path, seed: int = 0) -> Path:
    """Export ``variant`` with U(0.1, 1) layer scales and BatchNorm statistics re-estimated on photo crops."""
    import torch

    from ffnet_deploy.export import export
    from ffnet_deploy.exporters import ExportConfig
    from ffnet_deploy.models.checkpoint import save_checkpoint
    from ffnet_deploy.models.ffnet import create_ffnet

    torch.manual_seed(seed)
    model = create_ffnet(variant)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape) * 0.9 + 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over all batches
        model.train()
        for i in range(16):
            model(torch.from_numpy(photo_crops(8, resolution, seed=1000 + i)))
    model.eval()
    ckpt = workdir / "bn.pth"
    save_checkpoint(model, ckpt)
    return export(ExportConfig("onnx", workdir / "fp32", resolution=resolution), ckpt, variant).artifact


class _Calib:
    """Minimal calibration set over normalized arrays (what calibrate_ranges reads)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int = 1):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i:i + batch_size]


def prepare(fp32: Path, prep: str, workdir: Path) -> Path:
    """The graph the quantizer reads, for each ``Candidate.prep``."""
    import onnxruntime as ort

    out = workdir / f"prep_{prep}.onnx"
    if out.exists():
        return out
    if prep == "shape":
        return q.prepare_onnx(fp32, workdir / "shape")
    if prep == "preprocess":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32), str(out))
        return out
    level = {"ort_basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             "ort_extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[prep]
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    return out


# --------------------------------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------------------------------


def conv_kinds_by_name(fp32: Path) -> dict[str, str]:
    """Source Conv node name -> ``pointwise`` / ``dense`` / ``dw3x3`` / ``dw7x7``."""
    import onnx

    model = onnx.load(str(fp32))
    inits = {t.name: t for t in model.graph.initializer}
    kinds = {}
    for n in model.graph.node:
        if n.op_type == "Conv":
            kind = q.conv_kind(n, inits)
            if kind == "depthwise":
                k = q._attr(n, "kernel_shape", [0])[0]
                kind = f"dw{k}x{k}"
            kinds[n.name] = kind
    return kinds


def profile(path: Path, threads: int, runs: int, kinds: dict[str, str], session: dict) -> dict:
    """Per-inference time per op type and per conv kind from ORT's profiler, and the kernels' node counts."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    no_spinning(options)
    for k, v in session.items():
        options.add_session_config_entry(k, v)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="ffnet-ort-prof-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "prof")
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        spec = s.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in spec.shape],
                                                     dtype=np.float32)
        for _ in range(3):
            s.run(None, {spec.name: x})
        start_us = None
        t0 = time.perf_counter()
        for _ in range(runs):
            s.run(None, {spec.name: x})
        wall = (time.perf_counter() - t0) * 1e3 / runs
        events = json.loads(Path(s.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start_us = runs_seen[-runs]["ts"] if len(runs_seen) >= runs else 0
    per_op: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    per_kind: collections.Counter = collections.Counter()
    names = sorted(kinds, key=len, reverse=True)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start_us:
            continue
        op = e["args"]["op_name"]
        per_op[op] += e["dur"]
        count[op] += 1
        if "Conv" in op:
            node = e["name"][: -len("_kernel_time")]
            src = next((n for n in names if node.startswith(n)), None)
            per_kind[f"{op}/{kinds.get(src, '?')}"] += e["dur"]
    ms = {op: round(d / runs / 1e3, 3) for op, d in per_op.most_common()}
    return {"wall_ms": round(wall, 3), "kernel_ms": round(sum(per_op.values()) / runs / 1e3, 3), "op_ms": ms,
            "op_nodes": {op: count[op] // runs for op in ms},
            "conv_kind_ms": {k: round(d / runs / 1e3, 3) for k, d in sorted(per_kind.items())}}


# --------------------------------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------------------------------


def ort_runner(path: Path, threads: int, entries: dict | None = None):
    """The onnxruntime runner on ``threads`` intra-op threads, spinning off, plus extra session config entries
    (``{"session.qdqisint8allowed": "1"}``), given through its ``session_options`` hook."""
    from ffnet_deploy.runtimes import create_runner

    def options(o: Any) -> None:
        no_spinning(o)  # spinning workers would steal the cores from the other contenders in interleaved rounds
        for key, value in (entries or {}).items():
            o.add_session_config_entry(key, value)

    return create_runner("onnxruntime", path, threads=threads, session_options=options)


def run(variant: str = "ffnet_1", resolution: int = 256, threads: int = 2, rounds: int = 15, quick: bool = False,
        calib_n: int = 32, eval_n: int = 32, profile_runs: int = 10, fp32_path: Path | None = None) -> dict:
    """Build, calibrate, quantize every candidate, check accuracy, time interleaved, profile; JSON-ready results."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="ffnet-ort-int8-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        fp32 = Path(fp32_path) if fp32_path else realistic_fp32(variant, resolution, tmp)
        calib = _Calib(photo_crops(calib_n, resolution, seed=1))
        evalx = photo_crops(eval_n, resolution, seed=2)
        groups = sorted({g for g in (layer_group(n.name) for n in onnx.load(str(fp32)).graph.node) if g})
        cands = candidates(groups, quick)
        ranges: dict[str, dict] = {}
        built: dict[str, Any] = {}
        for c in cands:
            src = prepare(fp32, c.prep, tmp)
            if c.prep not in ranges:
                ranges[c.prep] = q.calibrate_ranges(src, calib, "minmax")
            out = tmp / f"{c.name}.onnx"
            built[c.name] = q.quantize_with_settings(src, out, ranges[c.prep], c.settings,
                                                     include_groups=c.include_groups, target=c.name)
        prep_seconds = time.perf_counter() - t0

        def logits(r: Any) -> np.ndarray:
            out = r.output_names()[0]
            return np.concatenate([r.infer({"images": evalx[i:i + 1]})[out] for i in range(eval_n)])

        with contextlib.ExitStack() as stack:  # every runner stays active from the accuracy pass to the timing
            runners = {"fp32": stack.enter_context(ort_runner(fp32, threads))}
            runners.update({c.name: stack.enter_context(ort_runner(built[c.name].path, threads, c.session))
                            for c in cands})
            ref = logits(runners["fp32"])

            def accuracy_of(r: Any) -> dict:
                out = logits(r)
                return {"sqnr_db": round(sqnr_db(ref, out), 2), "top1_agreement": top1_agreement(ref, out)}

            accuracy = {c.name: {"minmax": accuracy_of(runners[c.name])} for c in cands}
            # The same graphs from percentile ranges (same structure, so the same speed): accuracy only.
            for c in cands:
                src = prepare(fp32, c.prep, tmp)
                key = f"{c.prep}/percentile"
                if key not in ranges:
                    ranges[key] = q.calibrate_ranges(src, calib, "percentile")
                pct = q.quantize_with_settings(src, tmp / "pct.onnx", ranges[key], c.settings,
                                               include_groups=c.include_groups)
                with ort_runner(pct.path, threads, c.session) as r:
                    accuracy[c.name]["percentile"] = accuracy_of(r)
                pct.path.unlink()
            feed = {"images": evalx[:1]}
            timings = runner_timing(runners, feed, warmup=3, rounds=rounds)
        kinds = conv_kinds_by_name(fp32)
        by_name = {c.name: c for c in cands}
        profiles = {"fp32": profile(fp32, threads, profile_runs, kinds, {})}
        for name in PROFILED:
            if name in built:
                profiles[name] = profile(built[name].path, threads, profile_runs, kinds, by_name[name].session)
        # The exporter's own check, pair by pair: measure_speedup (FP32 and one INT8 model alternating), which is
        # free of the cache effects of a 30-model rotation (FP32 weights are 4x larger and suffer more from them).
        pairs = {name: asdict(q.measure_speedup(fp32, built[name].path, threads=threads, rounds=60, seconds=20,
                                                feed=evalx[:1]))
                 for name in PAIRED if name in built}
        # Interleaved at the end too: FP32 with the NCHWc layout transformer off, to show what NCHWc buys FP32.
        nchwc = {"fp32": ort_runner(fp32, threads),
                 "fp32_no_nchwc": ort_runner(fp32, threads, {
                     "optimization.disable_specified_optimizers": "NchwcTransformer"})}
        nchwc_t = runner_timing(nchwc, feed, warmup=3, rounds=rounds)
    fp32_ms = timings["fp32"]["median_ms"]
    rows = []
    for c in cands:
        ms = timings[c.name]["median_ms"]
        b = built[c.name]
        best_method = max(accuracy[c.name], key=lambda m: accuracy[c.name][m]["sqnr_db"])
        rows.append({"name": c.name, "note": c.note, "prep": c.prep, "session": c.session,
                     "settings": c.settings.to_dict(), "include_groups": list(c.include_groups or []) or None,
                     "median_ms": round(ms, 3), "p90_ms": round(timings[c.name]["p90_ms"], 3),
                     "ratio_vs_fp32": round(ms / fp32_ms, 3), "speedup": round(fp32_ms / ms, 3),
                     "quantized_nodes": b.quantized_nodes, "op_types": b.op_types, "accuracy": accuracy[c.name],
                     "best_method": best_method, **accuracy[c.name][best_method],
                     "correct": accuracy[c.name][best_method]["sqnr_db"] >= SQNR_MIN_DB})
    correct = [r for r in rows if r["correct"]]
    best = min(correct, key=lambda r: r["median_ms"]) if correct else None
    # Speed/accuracy trade-off: configurations no other one beats on both latency and SQNR.
    pareto = sorted((r["name"] for r in rows if not any(
        o["median_ms"] < r["median_ms"] and o["sqnr_db"] > r["sqnr_db"] for o in rows)),
        key=lambda n: next(r["median_ms"] for r in rows if r["name"] == n))
    return {"variant": variant, "resolution": resolution, "threads": threads, "rounds": rounds,
            "fp32_path": str(fp32) if fp32_path else None,
            "calibration": f"minmax and percentile over {calib_n} photo crops", "pareto": pareto,
            "evaluation": f"{eval_n} other photo crops", "sqnr_min_db": SQNR_MIN_DB,
            "fp32_ms": round(fp32_ms, 3), "fp32_p90_ms": round(timings["fp32"]["p90_ms"], 3),
            "candidates": rows, "best_correct": best, "profiles": profiles,
            "nchwc": {k: round(v["median_ms"], 3) for k, v in nchwc_t.items()}, "pairs": pairs,
            "setup_seconds": round(prep_seconds, 1)}


def _fmt_ops(p: dict, n: int = 8) -> str:
    return ", ".join(f"{op} {ms:.1f} ({p['op_nodes'][op]})" for op, ms in list(p["op_ms"].items())[:n])


def to_markdown(r: dict) -> str:
    """Render the results."""
    lines = [
        f"# ONNX Runtime INT8 on this CPU: {r['variant']} {r['resolution']}x{r['resolution']}, batch 1, "
        f"{r['threads']} threads, spinning off",
        "",
        f"FP32 median **{r['fp32_ms']:.2f} ms**. Every INT8 configuration was timed in the same run, interleaved with "
        f"FP32 ({r['rounds']} rounds; FP32, A, B, ... per round), so the ratios are comparable even on a shared, "
        f"noisy machine; absolute milliseconds are not. Accuracy: logits against FP32 on {r['evaluation']}; correct "
        f"= SQNR >= {r['sqnr_min_db']:.0f} dB. Calibration: {r['calibration']}.",
        "",
    ]
    best = r["best_correct"]
    if best:
        verdict = "faster" if best["speedup"] > 1 else "slower"
        lines += [f"**Fastest correct INT8 configuration: `{best['name']}` ({best['note']}): "
                  f"{best['median_ms']:.2f} ms, "
                  f"{best['ratio_vs_fp32']:.2f}x FP32's latency, i.e. {verdict} than FP32 "
                  f"(speed-up {best['speedup']:.2f}x), SQNR {best['sqnr_db']:.1f} dB with {best['best_method']} "
                  f"ranges, top-1 agreement "
                  f"{best['top1_agreement']:.2f}.**", ""]
    else:
        lines += [f"**No configuration reaches {r['sqnr_min_db']:.0f} dB.**", ""]
    lines += ["Speed/accuracy front (no other configuration is both faster and more accurate): "
              + ", ".join(f"`{n}`" for n in r["pareto"]) + ".", ""]
    lines += ["## Configurations", "",
              "| configuration | ms | INT8 / FP32 | SQNR dB minmax / percentile | top-1 agr. minmax / percentile "
              "| quantized nodes | what it tests |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for c in sorted(r["candidates"], key=lambda c: c["median_ms"]):
        mark = "" if c["correct"] else " (inaccurate)"
        a = c["accuracy"]
        lines.append(f"| `{c['name']}`{mark} | {c['median_ms']:.2f} | {c['ratio_vs_fp32']:.2f} | "
                     f"{a['minmax']['sqnr_db']:.1f} / {a['percentile']['sqnr_db']:.1f} | "
                     f"{a['minmax']['top1_agreement']:.2f} / {a['percentile']['top1_agreement']:.2f} | "
                     f"{c['quantized_nodes']} | {c['note']} |")
    lines += ["", "Pair by pair (`measure_speedup`: FP32 and one INT8 model alternating, 60 rounds or 20 s, the "
              "exporter's own check):", "", "| configuration | FP32 ms | INT8 ms | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| `{n}` | {p['fp32_ms']:.2f} | {p['int8_ms']:.2f} | {p['speedup']:.2f}x |"
              for n, p in r["pairs"].items()]
    lines += ["", f"FP32 with ORT's NCHWc layout transformer disabled (interleaved with FP32): "
              f"{r['nchwc']['fp32_no_nchwc']:.2f} ms vs {r['nchwc']['fp32']:.2f} ms.", "",
              "## Profiles (ORT profiler, ms per inference; node counts in parentheses)", "",
              "Each profile runs on its own (not interleaved), so compare shares within a row, not across rows.", "",
              "| model | wall ms | kernel ms | top ops |", "|---|---:|---:|---|"]
    for name, p in r["profiles"].items():
        lines.append(f"| `{name}` | {p['wall_ms']:.1f} | {p['kernel_ms']:.1f} | {_fmt_ops(p)} |")
    lines += ["", "Convolution time by kernel and kind (ms per inference):", "",
              "| model | " + " | ".join(["pointwise", "dense", "dw3x3", "dw7x7"]) + " |", "|---|---:|---:|---:|---:|"]
    for name, p in r["profiles"].items():
        cells = []
        for kind in ("pointwise", "dense", "dw3x3", "dw7x7"):
            parts = [f"{k.split('/')[0]} {v:.1f}" for k, v in p["conv_kind_ms"].items() if k.endswith("/" + kind)]
            cells.append(", ".join(parts) or "-")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="ffnet_1")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="only the main configurations")
    p.add_argument("--fp32", type=Path, default=None, help="reuse an FP32 model.onnx instead of exporting one")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, metavar="DIR")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    result = run(args.variant, args.resolution, args.threads, args.rounds, args.quick, fp32_path=args.fp32)
    md = to_markdown(result)
    print(md)
    if not args.no_write:
        write_results(STEM, md, result, results_dir=args.out)
    return result


if __name__ == "__main__":
    main()

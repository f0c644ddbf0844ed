"""CPU latency of the reparameterized export against a plain ``torch.onnx.export`` of the unfused model.

Run: ``python -m ffnet_deploy.benchmarks.export_latency [--variant ffnet_1] [--resolution 256] [--threads 2]
[--out DIR]``. Results land in ``DIR/export_latency.{md,json}`` (default ``./benchmarks/results``, relative to the
current directory; see :mod:`ffnet_deploy.benchmarks.common`).

Contenders, each on ONNX Runtime and on OpenVINO (FP32 inference, CPU, ``--threads`` threads):

* ``plain``: ``torch.onnx.export(unfused_model, x, opset_version=17, dynamo=False)`` and nothing else: BatchNorm,
  RepVGG branches, patch-merging skips and layer scales stay in the graph (ONNX Runtime and OpenVINO may still fold
  some of them in their own graph optimizers, which is part of what this measures);
* ``ffnet-deploy``: ``ffnet-deploy export`` (reparameterized, onnxsim-simplified ONNX; the OpenVINO IR is converted
  from it).

All four run through the project's runners (``create_runner`` with ``threads``). ONNX Runtime's intra-op threads
spin-wait after each run by default; in an interleaved benchmark they would steal the cores from whichever contender
runs next (measured here: the second ORT contender looked 1.5x slower than the same graph run first), so the ORT
runners get :func:`no_spinning` as their ``session_options`` hook. OpenVINO runs with FP32 inference precision.

All four are timed in interleaved rounds within one run, and each runtime's ratio plain / ffnet-deploy of median
latencies is reported. Weights are random (latency does not depend on them); before timing, each contender's logits
are compared with the plain graph on ONNX Runtime by :func:`ffnet_deploy.validate.metrics.compare_outputs`, the same
metrics ``ffnet-deploy validate`` reports.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.exporters.onnx import plain_onnx_export
from ffnet_deploy.models.ffnet import create_ffnet
from ffnet_deploy.runtimes import create_runner
from ffnet_deploy.runtimes.onnxruntime import no_spinning
from ffnet_deploy.validate.metrics import compare_outputs
from studies.common import interleaved_timing, run_standard

PARITY_METRICS = ("max_abs_error", "max_rel_error", "cosine_mean", "top1_agreement")
"""The :class:`~ffnet_deploy.validate.metrics.OutputMetrics` fields the report keeps per contender."""


def run(variant: str = "ffnet_1", resolution: int = 256, batch: int = 1, threads: int = 2, rounds: int = 30,
        warmup: int = 5, seed: int = 0) -> dict:
    """Export both ways, check they agree, time all four runner/graph pairs interleaved; return JSON-ready data."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="ffnet-export-latency-") as tmp:
        tmp = Path(tmp)
        model = create_ffnet(variant).eval()
        plain = tmp / "plain.onnx"
        plain_onnx_export(model, resolution, batch, plain)
        import openvino as ov

        ov.save_model(ov.convert_model(str(plain)), str(tmp / "plain.xml"), compress_to_fp16=False)
        weights = tmp / "weights.pth"
        torch.save({"state_dict": model.state_dict()}, weights)
        artifacts = {}
        for fmt in ("onnx", "openvino"):
            # The runners take the artifact directory and read its manifest themselves.
            artifacts[fmt] = export(ExportConfig(fmt, tmp / fmt, resolution=resolution, batch=batch), weights).output

        x = np.random.default_rng(seed).standard_normal((batch, 3, resolution, resolution), dtype=np.float32)
        runners = {
            "onnxruntime/plain": create_runner("onnxruntime", plain, threads=threads, session_options=no_spinning),
            "onnxruntime/ffnet-deploy": create_runner("onnxruntime", artifacts["onnx"], threads=threads,
                                                      session_options=no_spinning),
            "openvino/plain": create_runner("openvino", tmp / "plain.xml", threads=threads, inference_precision="f32"),
            "openvino/ffnet-deploy": create_runner("openvino", artifacts["openvino"], threads=threads,
                                                   inference_precision="f32"),
        }
        onnx_files = {"plain": plain, "ffnet-deploy": runners["onnxruntime/ffnet-deploy"].manifest.model_path}
        try:
            for r in runners.values():
                r.activate()
            outputs = {name: r.infer({"images": x})["logits"] for name, r in runners.items()}
            ref = outputs["onnxruntime/plain"]
            parity = {}
            for name, out in outputs.items():
                metrics = compare_outputs(ref.reshape(batch, -1), out.reshape(batch, -1))
                parity[name] = {k: getattr(metrics, k) for k in PARITY_METRICS}
            timings = interleaved_timing({name: (lambda r=r: r.infer({"images": x})) for name, r in runners.items()},
                                         warmup=warmup, rounds=rounds)
        finally:
            for r in runners.values():
                if r.is_active:
                    r.deactivate()
        import onnx

        node_counts = {name: len(onnx.load(str(path), load_external_data=False).graph.node)
                       for name, path in onnx_files.items()}
    ratios = {rt: timings[f"{rt}/plain"]["median_ms"] / timings[f"{rt}/ffnet-deploy"]["median_ms"]
              for rt in ("onnxruntime", "openvino")}
    return {
        "variant": variant, "resolution": resolution, "batch": batch, "threads": threads, "rounds": rounds,
        "precision": "fp32", "timings": timings, "ratio_plain_over_export": ratios,
        "parity_vs_plain_onnxruntime": parity, "onnx_nodes": node_counts,
    }


def to_markdown(r: dict) -> str:
    t = r["timings"]
    rows = [f"| {name} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | {v['min_ms']:.2f} |" for name, v in t.items()]
    ratios = r["ratio_plain_over_export"]
    return "\n".join([
        f"# Export latency: reparameterized export vs plain torch.onnx.export, {r['variant']} "
        f"{r['resolution']}x{r['resolution']}, batch {r['batch']}, {r['threads']} threads, FP32, CPU",
        "",
        "| runtime / graph | median ms | p90 ms | min ms |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"**Ratio plain / ffnet-deploy (median latency): ONNX Runtime {ratios['onnxruntime']:.2f}x, "
        f"OpenVINO {ratios['openvino']:.2f}x**, from one run of {r['rounds']} interleaved rounds.",
        "",
        f"ONNX nodes: plain {r['onnx_nodes']['plain']}, ffnet-deploy {r['onnx_nodes']['ffnet-deploy']}.",
        "",
        "Logits against the plain graph on ONNX Runtime (`compare_outputs`, the metrics of `ffnet-deploy validate`):",
        "",
        "| runtime / graph | max abs error | max rel error | cosine (mean) | top-1 agreement |",
        "|---|---:|---:|---:|---:|",
        *(f"| {name} | {m['max_abs_error']:.1e} | {m['max_rel_error']:.1e} | {m['cosine_mean']:.6f} "
          f"| {m['top1_agreement']:.2f} |" for name, m in r["parity_vs_plain_onnxruntime"].items()),
    ])


def main(argv: list[str] | None = None) -> dict:
    return run_standard("export_latency", __doc__.splitlines()[0], run, to_markdown, argv, rounds=30)


if __name__ == "__main__":
    main()

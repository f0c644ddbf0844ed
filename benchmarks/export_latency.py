"""CPU latency of the reparameterized export against a plain ``torch.onnx.export`` of the unfused model.

Run: ``python -m ffnet_deploy.benchmarks.export_latency [--variant ffnet_1] [--resolution 256] [--threads 2]``.
Results land in ``benchmarks/results/export_latency.{md,json}``.

Contenders, each on ONNX Runtime and on OpenVINO (FP32 inference, CPU, ``--threads`` threads):

* ``plain``: ``torch.onnx.export(unfused_model, x, opset_version=17, dynamo=False)`` and nothing else: BatchNorm,
  RepVGG branches, patch-merging skips and layer scales stay in the graph (ONNX Runtime and OpenVINO may still fold
  some of them in their own graph optimizers, which is part of what this measures);
* ``ffnet-deploy``: ``ffnet-deploy export`` (reparameterized, onnxsim-simplified ONNX; the OpenVINO IR is converted
  from it).

ONNX Runtime sessions are created with thread spinning off (see :class:`_OrtNoSpin`); OpenVINO runs through its
runner with ``num_threads`` and FP32 inference precision.

All four are timed in interleaved rounds within one run, and each runtime's ratio plain / ffnet-deploy of median
latencies is reported. Weights are random (latency does not depend on them); outputs of the two graphs are checked
to agree before timing.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ffnet_deploy.benchmarks.common import interleaved_timing, run_standard
from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.models.ffnet import create_ffnet
from ffnet_deploy.runtimes import create_runner


def plain_onnx_export(model: torch.nn.Module, resolution: int, batch: int, path: Path) -> None:
    """The baseline: the unfused model through ``torch.onnx.export`` with no further processing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(batch, 3, resolution, resolution),), str(path), dynamo=False,
                          opset_version=17, input_names=["images"], output_names=["logits"])


class _OrtNoSpin:
    """An ONNX Runtime session whose worker threads sleep between runs.

    ONNX Runtime's intra-op threads spin-wait after each run by default; in an interleaved benchmark they would
    steal the cores from whichever contender runs next (measured here: the second ORT contender looked 1.5x slower
    than the same graph run first). The runners do not expose that switch, so the two ORT contenders use this.
    """

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def activate(self) -> None:
        """Nothing to do: the session loads in the constructor."""

    def deactivate(self) -> None:
        self.session = None

    def infer(self, feed: dict) -> dict:
        return dict(zip(["logits"], self.session.run(["logits"], feed), strict=True))


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
            result = export(ExportConfig(fmt, tmp / fmt, resolution=resolution, batch=batch), weights)
            artifacts[fmt] = result.output / result.manifest["artifact"]["path"]

        x = np.random.default_rng(seed).standard_normal((batch, 3, resolution, resolution), dtype=np.float32)
        runners = {
            "onnxruntime/plain": _OrtNoSpin(plain, threads),
            "onnxruntime/ffnet-deploy": _OrtNoSpin(artifacts["onnx"], threads),
            "openvino/plain": create_runner("openvino", tmp / "plain.xml", num_threads=threads,
                                            inference_precision="f32"),
            "openvino/ffnet-deploy": create_runner("openvino", artifacts["openvino"], num_threads=threads,
                                                   inference_precision="f32"),
        }
        for r in runners.values():
            r.activate()
        try:
            outputs = {name: r.infer({"images": x})["logits"] for name, r in runners.items()}
            ref = outputs["onnxruntime/plain"].astype(np.float64)
            agreement = {name: float(np.max(np.abs(o - ref)) / np.max(np.abs(ref))) for name, o in outputs.items()}
            timings = interleaved_timing({name: (lambda r=r: r.infer({"images": x})) for name, r in runners.items()},
                                         warmup=warmup, rounds=rounds)
        finally:
            for r in runners.values():
                r.deactivate()
        node_counts = {}
        import onnx

        for name, path in (("plain", plain), ("ffnet-deploy", artifacts["onnx"])):
            node_counts[name] = len(onnx.load(str(path), load_external_data=False).graph.node)
    ratios = {rt: timings[f"{rt}/plain"]["median_ms"] / timings[f"{rt}/ffnet-deploy"]["median_ms"]
              for rt in ("onnxruntime", "openvino")}
    return {
        "variant": variant, "resolution": resolution, "batch": batch, "threads": threads, "rounds": rounds,
        "precision": "fp32", "timings": timings, "ratio_plain_over_export": ratios,
        "max_rel_difference_vs_plain_onnxruntime": agreement, "onnx_nodes": node_counts,
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
        f"ONNX nodes: plain {r['onnx_nodes']['plain']}, ffnet-deploy {r['onnx_nodes']['ffnet-deploy']}. "
        "Max relative output difference against the plain graph on ONNX Runtime: "
        + ", ".join(f"{k} {v:.1e}" for k, v in r["max_rel_difference_vs_plain_onnxruntime"].items()) + ".",
    ])


def main(argv: list[str] | None = None) -> dict:
    return run_standard("export_latency", __doc__.splitlines()[0], run, to_markdown, argv, rounds=30)


if __name__ == "__main__":
    main()

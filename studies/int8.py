"""INT8 on every backend: latency against the same runtime's FP32 (one run), accuracy, and calibration time.

Run: ``python -m ffnet_deploy.benchmarks.int8 [--models digits,ffnet_1,ffnet_2] [--threads 2] [--out DIR]``.
Results land in ``DIR/int8.{md,json}`` (default ``./benchmarks/results``).

Models:

* ``digits``: the demo checkpoint (``ffnet-deploy demo-checkpoint``: ``ffnet_digits`` trained on scikit-learn's
  digits), calibrated on the digits training split and scored on the held-out test split, so accuracy means
  something.
* ``ffnet_1`` / ``ffnet_2`` at 256: official-format checkpoints with random weights whose BatchNorm statistics were
  re-estimated on crops of natural photos (scikit-learn's sample images), so activations have realistic ranges.
  They are calibrated and scored on separate sets of photo crops; with random weights, accuracy is meaningless, so
  these rows report logit SQNR and top-1 agreement against FP32 only.

Rows, each an artifact written by ``ffnet-deploy export`` (the library call):

* ONNX Runtime FP32, INT8 ``--target cpu`` and INT8 ``--target tensorrt`` (the explicit QDQ graph, run on ONNX
  Runtime), timed interleaved in one run;
* OpenVINO FP32 and NNCF INT8, timed interleaved in one run;
* Core ML W8A8, int8 weights and palettize-4, run by the ``coreml-reference`` interpreter (accuracy only: Core ML
  latency needs a Mac; the interpreter's time is numpy's).

Every row reports logit SQNR and top-1 agreement against the FP32 PyTorch model on the evaluation images, accuracy
and its drop (digits), and the calibration time from the artifact's manifest. A second INT8 export with the same
inputs shows the statistics-cache hit.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ffnet_deploy.data.photos import photo_bn_checkpoint, photo_crops
from ffnet_deploy.data.sources import source_from_spec
from ffnet_deploy.data.transform import EvalTransform, feed_from_pixels
from ffnet_deploy.export import export
from ffnet_deploy.exporters.base import ExportConfig
from ffnet_deploy.quantize.config import QuantizationConfig
from ffnet_deploy.runtimes import create_runner
from ffnet_deploy.runtimes.onnxruntime import no_spinning
from ffnet_deploy.validate.metrics import sqnr_db, top1_accuracy, top1_agreement
from studies.common import RESULTS_DIR, interleaved_timing, write_results

MODELS = ("digits", "ffnet_1", "ffnet_2")


# --------------------------------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------------------------------


def prepare(name: str, work: Path, calib_size: int, eval_size: int) -> dict:
    """Checkpoint, calibration and evaluation data of one benchmark model."""
    if name == "digits":
        from ffnet_deploy.demo import demo_checkpoint

        result = demo_checkpoint()
        return {"checkpoint": Path(result.path), "calib": "digits", "eval": "digits", "resolution": None,
                "labelled": True, "calib_size": calib_size, "eval_size": None}
    work.mkdir(parents=True, exist_ok=True)
    ckpt = photo_bn_checkpoint(name, work / f"{name}.pth")
    return {"checkpoint": ckpt, "calib": str(photo_crops(work / "calib", calib_size, 320, seed=1)),
            "eval": str(photo_crops(work / "eval", eval_size, 320, seed=2)), "resolution": 256, "labelled": False,
            "calib_size": calib_size, "eval_size": eval_size,
            "calib_name": f"{calib_size} random crops of scikit-learn's sample photos (seed 1)",
            "eval_name": f"{eval_size} other crops (seed 2)"}


# --------------------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------------------

ROWS = (
    # (row name, format, precision, quantization changes, runtime)
    ("ONNX Runtime FP32", "onnx", "fp32", None, "onnxruntime"),
    ("ONNX Runtime INT8 (--target cpu)", "onnx", "int8", {"target": "cpu"}, "onnxruntime"),
    ("ONNX Runtime QDQ (--target tensorrt)", "onnx", "int8", {"target": "tensorrt"}, "onnxruntime"),
    ("OpenVINO FP32", "openvino", "fp32", None, "openvino"),
    ("OpenVINO INT8 (NNCF)", "openvino", "int8", {}, "openvino"),
    ("Core ML W8A8", "coreml", "int8", {}, "coreml-reference"),
    ("Core ML int8 weights", "coreml", "fp16", {"weights": "int8"}, "coreml-reference"),
    ("Core ML palettize-4", "coreml", "fp16", {"weights": "palettize4"}, "coreml-reference"),
)
TIMED = {"onnxruntime": ("ONNX Runtime FP32", ("ONNX Runtime INT8 (--target cpu)",
                                               "ONNX Runtime QDQ (--target tensorrt)")),
         "openvino": ("OpenVINO FP32", ("OpenVINO INT8 (NNCF)",))}


def evaluation(spec: dict, transform: EvalTransform) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(uint8 pixels, labels or None, FP32 PyTorch logits)`` of the evaluation images."""
    from ffnet_deploy.models.checkpoint import load_ffnet

    source = source_from_spec(spec["eval"], split="test", limit=spec["eval_size"])
    pixels, labels = [], []
    for batch in source.batches(transform, 32):
        pixels.append(batch.pixels)
        if batch.labels is not None:
            labels.append(batch.labels)
    px = np.concatenate(pixels)
    model = load_ffnet(spec["checkpoint"])
    with torch.no_grad():
        logits = np.concatenate([model(torch.from_numpy(transform.normalize(px[i:i + 32]))).numpy()
                                 for i in range(0, len(px), 32)])
    return px, (np.concatenate(labels) if labels else None), logits


def run_artifact(result, runtime: str, pixels: np.ndarray, threads: int, limit: int | None) -> np.ndarray:
    m = result.manifest
    spec = m.inputs[0]
    transform = EvalTransform(m.resolution, m.preprocessing.crop_pct, m.preprocessing.mean, m.preprocessing.std)
    outs = []
    hook = no_spinning if runtime == "onnxruntime" else None
    with create_runner(runtime, result.output, threads=threads, session_options=hook) as runner:
        dtype = np.float32
        for i in range(len(pixels) if limit is None else min(limit, len(pixels))):
            px = pixels[i:i + 1]
            feed = feed_from_pixels(px, transform.normalize(px), m.preprocessing.input_range, dtype)
            out = runner.infer({spec.name: feed})
            logits = next(v for k, v in out.items() if k == m.outputs[0].name)
            outs.append(np.asarray(logits, dtype=np.float32).reshape(1, -1))
    return np.concatenate(outs)


def benchmark_model(name: str, work: Path, threads: int, rounds: int, calib_size: int, eval_size: int,
                    coreml_eval: int) -> dict:
    spec = prepare(name, work, calib_size, eval_size)
    rows: dict[str, dict] = {}
    results = {}
    for row, fmt, precision, changes, runtime in ROWS:
        q = None
        if changes is not None:
            q = QuantizationConfig(calib=spec["calib"] if precision == "int8" else None,
                                   calib_size=spec["calib_size"], cache_dir=work / "cache", **changes)
        config = ExportConfig(fmt, work / "artifacts" / row.replace(" ", "_").replace("(", "").replace(")", ""),
                              resolution=spec["resolution"], precision=precision, quantization=q,
                              check_parity=False, force=True)
        t0 = time.perf_counter()
        try:
            results[row] = export(config, spec["checkpoint"])
        except Exception as err:  # a backend that fails here is a row that says so, not a lost benchmark
            rows[row] = {"runtime": runtime, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
            continue
        details = results[row].manifest.details
        record = details.get("quantization") or details.get("compression") or {}
        rows[row] = {"runtime": runtime, "format": fmt, "precision": precision, "export_seconds":
                     round(time.perf_counter() - t0, 2),
                     "calibration_seconds": record.get("calibration_seconds"),
                     "statistics_cache": (record.get("statistics_cache") or {}).get("hit"),
                     "float_groups": record.get("float_groups"), "quantized_groups": len(
                         record.get("quantized_groups") or []) or None,
                     "export_notices": list(results[row].notices)}

    # Cache: the same INT8 export again must reuse the statistics.
    cache_rerun = None
    if "ONNX Runtime INT8 (--target cpu)" in results:
        q = QuantizationConfig(calib=spec["calib"], calib_size=spec["calib_size"], cache_dir=work / "cache",
                               target="cpu")
        again = export(ExportConfig("onnx", work / "artifacts" / "rerun", resolution=spec["resolution"],
                                    precision="int8", quantization=q, check_parity=False, force=True),
                       spec["checkpoint"])
        rec = again.manifest.details["quantization"]
        cache_rerun = {"hit": rec["statistics_cache"]["hit"], "calibration_seconds": rec["calibration_seconds"],
                       "first_calibration_seconds": rows["ONNX Runtime INT8 (--target cpu)"]["calibration_seconds"]}

    first = next(iter(results.values()))
    m = first.manifest
    transform = EvalTransform(m.resolution, m.preprocessing.crop_pct, m.preprocessing.mean, m.preprocessing.std)
    pixels, labels, reference = evaluation(spec, transform)
    ref_acc = None if labels is None else top1_accuracy(reference, labels)
    for row, result in results.items():
        runtime = rows[row]["runtime"]
        limit = coreml_eval if runtime == "coreml-reference" and spec["resolution"] else None
        logits = run_artifact(result, runtime, pixels, threads, limit)
        ref = reference[: len(logits)]
        r = rows[row]
        r["eval_images"] = len(logits)
        r["sqnr_db"] = round(sqnr_db(ref, logits), 2)
        r["top1_agreement"] = round(top1_agreement(ref, logits), 4)
        if labels is not None:
            acc = top1_accuracy(logits, labels[: len(logits)])
            ref_part = top1_accuracy(ref, labels[: len(logits)])
            r["accuracy"], r["accuracy_drop"] = round(acc, 2), round(ref_part - acc, 2)

    for runtime, (base, others) in TIMED.items():
        present = [n for n in (base, *others) if n in results]
        if base not in results or len(present) < 2:
            continue
        runners = {}
        feeds = {}
        try:
            for n in present:
                hook = no_spinning if runtime == "onnxruntime" else None
                runners[n] = create_runner(runtime, results[n].output, threads=threads, session_options=hook)
                runners[n].activate()
                feeds[n] = np.ascontiguousarray(transform.normalize(pixels[:1]))
            calls = {n: (lambda r=runners[n], x=feeds[n]: r.infer(x)) for n in present}
            timing = interleaved_timing(calls, warmup=5, rounds=rounds)
        finally:
            for r in runners.values():
                r.deactivate()
        for n in present:
            rows[n]["median_ms"] = round(timing[n]["median_ms"], 3)
            rows[n]["p90_ms"] = round(timing[n]["p90_ms"], 3)
            rows[n]["speedup_vs_fp32"] = round(timing[base]["median_ms"] / timing[n]["median_ms"], 3)
    return {"model": name, "resolution": m.resolution, "variant": m.variant, "fp32_accuracy": ref_acc,
            "data": {"calib": spec.get("calib_name", spec["calib"]), "eval": spec.get("eval_name", spec["eval"]),
                     "calib_size": spec["calib_size"],
                     "eval_images": len(pixels), "labelled": spec["labelled"]},
            "rows": rows, "cache_rerun": cache_rerun}


def to_markdown(data: dict) -> str:
    out = ["# INT8 on every backend", "",
           f"Batch 1, {data['threads']} threads. Speedup: median latency of the same runtime's FP32 artifact over "
           "this one, measured interleaved in one run. SQNR and top-1 agreement: logits against the FP32 PyTorch "
           "model on the evaluation images. Core ML rows run in the coreml-reference interpreter (accuracy only; "
           "Core ML latency needs a Mac).", ""]
    for model in data["models"]:
        d = model["data"]
        out += [f"## {model['model']} ({model['variant']} at {model['resolution']} px)", "",
                f"Calibration: {d['calib']} ({d['calib_size']} images); evaluation: {d['eval']} "
                f"({d['eval_images']} images)" + (f"; FP32 PyTorch accuracy {model['fp32_accuracy']:.2f} %"
                                                   if model["fp32_accuracy"] is not None else "; random-weight "
                                                   "backbone: accuracy not meaningful"), "",
                "| backend / mode | median ms | speedup vs FP32 | logit SQNR dB | top-1 agreement | accuracy % | drop "
                "| calibration s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in model["rows"].items():
            if "error" in r:
                out.append(f"| {name} | failed: {r['error']} | | | | | | |")
                continue
            out.append("| " + " | ".join([
                name, _f(r.get("median_ms"), ".2f"), _f(r.get("speedup_vs_fp32"), ".2f", "x"),
                _f(r.get("sqnr_db"), ".1f"), _f(r.get("top1_agreement"), ".3f"), _f(r.get("accuracy"), ".2f"),
                _f(r.get("accuracy_drop"), "+.2f"), _f(r.get("calibration_seconds"), ".1f")]) + " |")
        notes = [f"{n}: {notice}" for n, r in model["rows"].items() for notice in r.get("export_notices", [])
                 if "not faster" in notice or "palett" in notice]
        floats = [f"{n}: kept in float: {', '.join(r['float_groups'])}" for n, r in model["rows"].items()
                  if r.get("float_groups")]
        if model.get("cache_rerun"):
            c = model["cache_rerun"]
            notes.append(f"statistics cache: the same ONNX INT8 export again {'hit' if c['hit'] else 'MISSED'} the "
                         f"cache (calibration {c['first_calibration_seconds']:.1f} s -> "
                         f"{c['calibration_seconds']:.1f} s)")
        if notes or floats:
            out += [""] + [f"- {n}" for n in notes + floats]
        out.append("")
    out += ["## Reading the table", "",
            "- **Accuracy is measured on the digits model**, the only one here with trained weights. The full-size "
            "rows use random weights with BatchNorm statistics re-estimated on photos: their activations have "
            "realistic ranges, which is what the latency and calibration numbers need, but their logits are "
            "near-ties, so top-1 agreement on them is mostly noise and their SQNR is a worst case (random Gaussian "
            "weights have no structure for 4-bit palettization to exploit, hence its ~4 dB there).",
            "- **Calibration s**: reading the calibration images plus collecting the activation statistics; on the "
            "cache rerun only the reading remains. Core ML W8A8 collects them in the numpy `coreml-reference` "
            "interpreter. The ONNX QDQ row reuses the statistics of the INT8 cpu row (same model, same data): a "
            "cache hit.",
            "- **ONNX Runtime INT8 (--target cpu)** quantizes the pointwise convs, the dense stem convs and the head "
            "and keeps the depthwise convs and GELUs in float (`ort_int8_investigation.md` says why). At 32 px the "
            "digits model takes a quarter of a millisecond and the Q/DQ overhead wins, so INT8 is slower there and "
            "the export says so; at 256 px it pays.",
            "- **ONNX Runtime QDQ (--target tensorrt)** is the explicit symmetric Q/DQ graph TensorRT builds INT8 "
            "engines from; ONNX Runtime runs it to check its accuracy, not to be fast (its S8S8 path dequantizes "
            "most convs back to float).", ""]
    return "\n".join(out)


def _f(value, fmt: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else str(value)
    return f"{value:{fmt}}{suffix}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: digits, ffnet_1, ffnet_2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--calib-size", type=int, default=64, help="calibration images per model")
    p.add_argument("--eval-size", type=int, default=64, help="photo crops scored for the full-size models")
    p.add_argument("--coreml-eval", type=int, default=8, help="images the Core ML interpreter scores at full size")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, metavar="DIR")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = []
    with tempfile.TemporaryDirectory(prefix="ffnet-int8-bench-") as tmp:
        for name in args.models.split(","):
            if name not in MODELS:
                p.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
            calib = 300 if name == "digits" else args.calib_size
            models.append(benchmark_model(name, Path(tmp) / name, args.threads, args.rounds, calib, args.eval_size,
                                          args.coreml_eval))
    data = {"threads": args.threads, "rounds": args.rounds, "models": models}
    md = to_markdown(data)
    print(md)
    if not args.no_write:
        write_results("int8", md, data, results_dir=args.out)
    return data


if __name__ == "__main__":
    main()

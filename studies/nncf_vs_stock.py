"""OpenVINO INT8 latency and accuracy: our NNCF settings against stock ``nncf.quantize`` and FP32, in one run.

Run: ``python -m ffnet_deploy.benchmarks.nncf_vs_stock [--variant ffnet_1] [--resolution 256] [--threads 2]
[--rounds 30] [--calib 32] [--out DIR]``. Results land in ``DIR/nncf_vs_stock.{md,json}``.

The model is the variant with random weights whose BatchNorm statistics are re-estimated on crops of natural photos
(scikit-learn's sample images), so that activations have realistic ranges. Contenders, all timed in interleaved rounds
at batch 1 with ``INFERENCE_NUM_THREADS=threads`` and ``PERFORMANCE_HINT=LATENCY``:

- ``fp32``: the reparameterized IR, inference precision f32;
- ``stock_unfused``: ``nncf.quantize(model, dataset)`` with every default on the *unfused* IR (``--no-reparam``: the
  stock tool chain, BatchNorm and branches left to OpenVINO), compiled with OpenVINO's default inference precision;
- ``stock_fused``: the same stock call on our reparameterized IR;
- ``ours``: :func:`ffnet_deploy.quantize.openvino_int8.quantize_openvino` with its defaults on the reparameterized IR
  (f32 inference precision for what stays float), plus variants.

Accuracy is against the FP32 IR on other photo crops: logit SQNR (dB) and top-1 agreement.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ffnet_deploy.validate.metrics import sqnr_db, top1_agreement
from studies.common import interleaved_timing, standard_parser, write_results

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def photo_crops(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` uint8 (3, size, size) random crops of scikit-learn's sample photos, resized bicubically, some flipped."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    images = [np.asarray(i) for i in load_sample_images().images]
    out = []
    for _ in range(n):
        im = images[rng.integers(len(images))]
        side = int(rng.integers(min(size, min(im.shape[:2])), min(im.shape[:2]) + 1))
        y = int(rng.integers(0, im.shape[0] - side + 1))
        x = int(rng.integers(0, im.shape[1] - side + 1))
        crop = np.asarray(Image.fromarray(im[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(crop.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


def build_models(variant: str, resolution: int, workdir: Path, seed: int = 0) -> dict[str, Path]:
    """Random-weight ``variant`` with photo-estimated BatchNorm statistics, exported fused and unfused to OpenVINO."""
    import torch

    from ffnet_deploy.export import export
    from ffnet_deploy.exporters import ExportConfig
    from ffnet_deploy.models.checkpoint import save_checkpoint
    from ffnet_deploy.models.ffnet import create_ffnet

    torch.manual_seed(seed)
    model = create_ffnet(variant)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over all batches
            m.reset_running_stats()
    model.train()
    mean = np.array(MEAN, np.float32)[:, None, None]
    std = np.array(STD, np.float32)[:, None, None]
    with torch.no_grad():
        for i in range(16):
            px = photo_crops(8, resolution, seed=1000 + i).astype(np.float32) / 255.0
            model(torch.from_numpy((px - mean) / std))
    model.eval()
    ckpt = save_checkpoint(model, workdir / f"{variant}_bn.pth")
    out = {}
    for name, reparam in (("fused", True), ("unfused", False)):
        r = export(ExportConfig("openvino", workdir / name, resolution=resolution, reparameterize=reparam), ckpt,
                   variant)
        out[name] = Path(r.artifact)
    return out


def run(variant: str = "ffnet_1", resolution: int = 256, batch: int = 1, threads: int = 2, rounds: int = 30,
        calib_size: int = 32, eval_size: int = 64, workdir: Path | None = None) -> dict:
    """Quantize stock and ours, time everything interleaved, and compare logits with FP32."""
    import nncf
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    from ffnet_deploy.data.transform import eval_transform
    from ffnet_deploy.quantize.calibration import calibration_set_from_arrays
    from ffnet_deploy.quantize.openvino_int8 import NNCFSettings, quantize_openvino

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="nncf_vs_stock-")
        workdir = Path(tmp.name)
    if not (workdir / "fused" / "model.xml").exists():
        paths = build_models(variant, resolution, workdir)
    else:
        paths = {n: workdir / n / "model.xml" for n in ("fused", "unfused")}
    transform = eval_transform(resolution, 0.875, MEAN, STD)
    calib = calibration_set_from_arrays(photo_crops(calib_size, resolution, seed=1), transform, "photo-crops")
    eval_x = transform.normalize(photo_crops(eval_size, resolution, seed=2))

    core = ov.Core()
    fused = core.read_model(str(paths["fused"]))
    unfused = core.read_model(str(paths["unfused"]))
    stock_data = nncf.Dataset(list(calib.batches(1)))

    models: dict[str, tuple[object, str | None]] = {}
    quant_seconds: dict[str, float] = {}
    details: dict[str, dict] = {}
    models["fp32"] = (fused, "f32")
    t0 = time.perf_counter()
    models["stock_unfused"] = (nncf.quantize(unfused.clone(), stock_data), None)
    quant_seconds["stock_unfused"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stock_fused = nncf.quantize(fused.clone(), stock_data)
    quant_seconds["stock_fused"] = time.perf_counter() - t0
    models["stock_fused"] = (stock_fused, None)
    ours = quantize_openvino(fused, calib, NNCFSettings())
    quant_seconds["ours"] = ours.seconds
    details["ours"] = ours.details()
    models["ours"] = (ours.model, "f32")
    models["ours_bf16"] = (ours.model, "bf16")
    float_ends = quantize_openvino(fused, calib, NNCFSettings(ignored_groups=("patch_embed", "head")))
    quant_seconds["ours_float_stem_head"] = float_ends.seconds
    details["ours_float_stem_head"] = float_ends.details()
    models["ours_float_stem_head"] = (float_ends.model, "f32")

    compiled = {}
    precisions = {}
    for name, (model, precision) in models.items():
        config = {props.inference_num_threads(): threads,
                  hints.performance_mode(): hints.PerformanceMode.LATENCY}
        if precision is not None:
            config[hints.inference_precision()] = {"f32": ov.Type.f32, "bf16": ov.Type.bf16}[precision]
        compiled[name] = core.compile_model(model, "CPU", config)
        precisions[name] = compiled[name].get_property(hints.inference_precision()).get_type_name()

    outputs = {}
    for name, c in compiled.items():
        request = c.create_infer_request()
        outputs[name] = np.concatenate([request.infer({0: eval_x[i:i + 1]})[c.outputs[0]].copy()
                                        for i in range(len(eval_x))])
    ref = outputs["fp32"]
    accuracy = {name: {"sqnr_db": sqnr_db(ref, out), "top1_agreement": top1_agreement(ref, out)}
                for name, out in outputs.items()}

    x = np.ascontiguousarray(np.repeat(eval_x[:1], batch, axis=0))
    requests = {name: c.create_infer_request() for name, c in compiled.items()}
    timings = interleaved_timing({name: (lambda r=r: r.infer({0: x})) for name, r in requests.items()},
                                 warmup=5, rounds=rounds)
    fp32_ms = timings["fp32"]["median_ms"]
    speedup = {name: fp32_ms / t["median_ms"] for name, t in timings.items()}
    if tmp is not None:
        tmp.cleanup()
    return {"variant": variant, "resolution": resolution, "batch": batch, "threads": threads, "rounds": rounds,
            "calibration_images": calib_size, "eval_images": eval_size, "nncf": nncf.__version__,
            "openvino": ov.get_version(), "inference_precision": precisions, "timings": timings,
            "speedup_over_fp32": speedup,
            "ours_over_stock_unfused": timings["stock_unfused"]["median_ms"] / timings["ours"]["median_ms"],
            "ours_over_stock_fused": timings["stock_fused"]["median_ms"] / timings["ours"]["median_ms"],
            "accuracy": accuracy, "quantize_seconds": quant_seconds, "details": details}


DESCRIPTIONS = {
    "fp32": "FP32 IR (reparameterized), f32",
    "stock_unfused": "stock `nncf.quantize` defaults, unfused IR, OpenVINO default precision",
    "stock_fused": "stock `nncf.quantize` defaults, reparameterized IR, OpenVINO default precision",
    "ours": "ours (`NNCFSettings()`), reparameterized IR, f32 for float parts",
    "ours_bf16": "ours, same model, bf16 for float parts",
    "ours_float_stem_head": "ours, `patch_embed` and `head` kept float, f32",
}


def to_markdown(r: dict) -> str:
    lines = [
        f"# OpenVINO INT8: ours vs stock NNCF, {r['variant']} {r['resolution']}x{r['resolution']}, batch {r['batch']}, "
        f"{r['threads']} threads",
        "",
        f"NNCF {r['nncf']}, OpenVINO {r['openvino']}; {r['calibration_images']} calibration photo crops; accuracy on "
        f"{r['eval_images']} other crops against the FP32 IR. {r['rounds']} interleaved rounds in one run "
        "(machine shared, so compare ratios, not absolute ms).",
        "",
        "| contender | precision hint | median ms | p90 ms | vs FP32 | logit SQNR dB | top-1 agree | quantize s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in r["timings"].items():
        acc = r["accuracy"][name]
        qs = r["quantize_seconds"].get(name)
        lines.append(
            f"| {DESCRIPTIONS.get(name, name)} | {r['inference_precision'][name]} | {t['median_ms']:.2f} | "
            f"{t['p90_ms']:.2f} | {r['speedup_over_fp32'][name]:.2f}x | "
            f"{'inf' if acc['sqnr_db'] == float('inf') else format(acc['sqnr_db'], '.1f')} | "
            f"{acc['top1_agreement']:.3f} | {'' if qs is None else format(qs, '.1f')} |")
    lines += [
        "",
        f"**Ours over stock (median latency): {r['ours_over_stock_unfused']:.2f}x vs the stock tool chain (unfused "
        f"IR), {r['ours_over_stock_fused']:.2f}x vs stock NNCF on the same reparameterized IR.**",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p: argparse.ArgumentParser = standard_parser(__doc__.splitlines()[0], rounds=30)
    p.add_argument("--calib", type=int, default=32, help="calibration photo crops (default 32)")
    p.add_argument("--eval", type=int, default=64, help="photo crops for the accuracy comparison (default 64)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the exported IRs here and reuse them on the next run (default: a temporary folder)")
    args = p.parse_args(argv)
    result = run(args.variant, args.resolution, args.batch, args.threads, args.rounds, args.calib, args.eval,
                 args.workdir)
    md = to_markdown(result)
    print(md)
    if not args.no_write:
        write_results("nncf_vs_stock", md, result, results_dir=args.out)
    return result


if __name__ == "__main__":
    main()

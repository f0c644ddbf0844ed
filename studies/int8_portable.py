"""INT8 on every CPU class: which ONNX Runtime / NNCF recipe stays accurate without VNNI, and what it costs.

Run: ``python -m studies.int8_portable [--models digits,ffnet_1] [--rounds 40] [--no-emulation] [--out DIR]``.
Results land in ``DIR/int8_portable.{md,json}`` (default ``benchmarks/results``).

Each candidate INT8 model is run three ways on the same inputs:

- **here**: ONNX Runtime / OpenVINO with default optimizations on this machine's CPU (fused integer kernels of this
  ISA class);
- **reference math**: ONNX Runtime with every graph optimization off, so Q/DQ execute as the ONNX spec's float
  arithmetic; what a kernel that never saturates computes;
- **AVX2 (emulated)**: the same as *here*, under ``qemu-x86_64 -cpu Haswell`` (AVX2 and FMA, no AVX-512, no VNNI),
  so the runtimes pick their non-VNNI kernels whatever the host is.

Models: the demo checkpoint (``ffnet_digits``, 32 px; calibrated on 300 training digits, scored on the 500 held-out
test digits) and full-size ``ffnet_1`` at 256 px with random weights whose BatchNorm statistics come from photo crops
(calibrated on 64 crops, scored on 32 others by logit SQNR and top-1 agreement against FP32). Speed: INT8 against
FP32 in interleaved rounds on this machine (``onnx_int8.measure_speedup``, the export's own check).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ffnet_deploy.data.photos import photo_bn_checkpoint, photo_crops
from ffnet_deploy.environment import environment_info
from ffnet_deploy.quantize import onnx_int8
from ffnet_deploy.validate.metrics import sqnr_db, top1_accuracy, top1_agreement
from studies.common import RESULTS_DIR, write_results

HERE = Path(__file__).resolve().parent

EMULATED_CPU = "Haswell"

ORT_CANDIDATES = {
    "u8s8": ("8-bit weights: `--target cpu-vnni` (the `cpu` recipe before)", onnx_int8.CPU_VNNI_SETTINGS),
    "u8s8_reduce_range": ("7-bit weights in [-64, 64] (`reduce_range`): `--target cpu`", onnx_int8.CPU_SETTINGS),
    "u8u8": ("uint8 weights", dataclasses.replace(onnx_int8.CPU_VNNI_SETTINGS, weight_type="uint8")),
    "s8s8": ("int8 activations", dataclasses.replace(onnx_int8.CPU_VNNI_SETTINGS, activation_type="int8")),
    "tensorrt": ("`--target tensorrt` (symmetric S8S8 QDQ) on ONNX Runtime's CPU provider",
                 onnx_int8.TENSORRT_SETTINGS),
}
NNCF_CANDIDATES = {
    "nncf_first_layer": ("NNCF default: 7-bit weights in the first layer only", "first_layer_only"),
    "nncf_overflow_fix": ("NNCF overflow fix on every layer (7-bit weights)", "enable"),
    "nncf_no_fix": ("NNCF without overflow fix (8-bit weights)", "disable"),
}


class _Arrays:
    """A calibration set over normalized float arrays (what ``calibrate_ranges`` and NNCF read)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int = 1):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i:i + batch_size]


def model_data(name: str, work: Path) -> dict:
    """Checkpoint, resolution, normalized calibration and evaluation arrays, labels (digits only)."""
    from ffnet_deploy.data import EvalTransform, source_from_spec

    if name == "digits":
        from ffnet_deploy.demo import demo_checkpoint

        ckpt, resolution, calib_spec, eval_spec, n_calib, n_eval = (Path(demo_checkpoint().path), 32, "digits",
                                                                    "digits", 300, None)
        calib_split = "train"
    else:
        work.mkdir(parents=True, exist_ok=True)
        ckpt, resolution, n_calib, n_eval = photo_bn_checkpoint(name, work / f"{name}.pth"), 256, 64, 32
        calib_spec, eval_spec = (str(photo_crops(work / "calib", n_calib, 320, seed=1)),
                                 str(photo_crops(work / "eval", n_eval, 320, seed=2)))
        calib_split = "test"
    from ffnet_deploy.models.checkpoint import load_ffnet

    model = load_ffnet(ckpt)
    transform = EvalTransform.for_config(model.cfg, resolution)

    def arrays(spec: str, split: str, limit: int | None):
        px, labels = [], []
        for batch in source_from_spec(spec, split=split, limit=limit).batches(transform, 64):
            px.append(transform.normalize(batch.pixels))
            if batch.labels is not None:
                labels.append(batch.labels)
        return np.ascontiguousarray(np.concatenate(px), dtype=np.float32), (np.concatenate(labels) if labels else None)

    calib, _ = arrays(calib_spec, calib_split, n_calib)
    x, labels = arrays(eval_spec, "test", n_eval)
    return {"checkpoint": ckpt, "resolution": resolution, "calib": calib, "eval": x, "labels": labels}


def build(name: str, data: dict, work: Path) -> dict[str, dict]:
    """Export FP32 ONNX and IR, then every candidate; name -> ``{"path", "runtime", "what"}``."""
    import openvino as ov

    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.quantize.openvino_int8 import NNCFSettings, quantize_openvino

    models: dict[str, dict] = {}
    for fmt in ("onnx", "openvino"):
        out = work / f"{name}-{fmt}-fp32"
        export(ExportConfig(fmt, out, resolution=data["resolution"], check_parity=False, force=True),
               data["checkpoint"])
        models[f"{fmt}_fp32"] = {"path": str(out / ("model.onnx" if fmt == "onnx" else "model.xml")),
                                 "runtime": "onnxruntime" if fmt == "onnx" else "openvino", "what": "FP32"}
    fp32 = Path(models["onnx_fp32"]["path"])
    prepared = onnx_int8.prepare_onnx(fp32, work / f"{name}-prep")
    ranges = onnx_int8.calibrate_ranges(prepared, _Arrays(data["calib"]), "minmax")
    for key, (what, settings) in ORT_CANDIDATES.items():
        out = work / f"{name}-{key}.onnx"
        onnx_int8.quantize_with_settings(prepared, out, ranges, settings, target=key)
        models[key] = {"path": str(out), "runtime": "onnxruntime", "what": what, "settings": settings.to_dict()}
    ir = ov.Core().read_model(models["openvino_fp32"]["path"])
    for key, (what, fix) in NNCF_CANDIDATES.items():
        q = quantize_openvino(ir, _Arrays(data["calib"]), NNCFSettings(overflow_fix=fix,
                                                                        subset_size=len(data["calib"])))
        out = work / f"{name}-{key}.xml"
        ov.save_model(q.model, str(out), compress_to_fp16=False)
        models[key] = {"path": str(out), "runtime": "openvino", "what": what, "overflow_fix": fix}
    return models


def logits(models: dict[str, dict], x: np.ndarray, work: Path, *, emulate: bool, reference_math: bool = False,
           ) -> tuple[dict[str, np.ndarray], list[str], float]:
    """Every model's logits on ``x`` in a worker process (under ``qemu-x86_64 -cpu Haswell`` with ``emulate``)."""
    np.save(work / "x.npy", x)
    job = {"inputs": str(work / "x.npy"), "out": str(work / "logits.npz"),
           "models": {k: {"path": m["path"], "runtime": m["runtime"], "reference_math": reference_math}
                      for k, m in models.items() if not (reference_math and m["runtime"] != "onnxruntime")}}
    (work / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, str(HERE / "ort_logits.py"), str(work / "job.json")]
    if emulate:
        cmd = ["qemu-x86_64", "-cpu", EMULATED_CPU, *cmd]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    features = json.loads(done.stdout.strip().splitlines()[-1])["cpu_features"]
    with np.load(work / "logits.npz") as z:
        return {k: z[k] for k in z.files}, features, time.perf_counter() - t0


def scores(ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict:
    r = {"sqnr_db": round(sqnr_db(ref, out), 2), "top1_agreement": round(top1_agreement(ref, out), 4)}
    if labels is not None:
        r["accuracy"] = round(top1_accuracy(out, labels), 2)
        r["accuracy_drop"] = round(top1_accuracy(ref, labels) - r["accuracy"], 2)
    return r


def speed(models: dict[str, dict], rounds: int) -> dict[str, dict]:
    """INT8 / FP32 of every ONNX Runtime candidate, each pair timed interleaved, twice (two blocks)."""
    out = {}
    fp32 = Path(models["onnx_fp32"]["path"])
    for key in ORT_CANDIDATES:
        blocks = [onnx_int8.measure_speedup(fp32, Path(models[key]["path"]), rounds=rounds, seconds=30.0)
                  for _ in range(2)]
        out[key] = {"fp32_ms": [round(b.fp32_ms, 3) for b in blocks], "int8_ms": [round(b.int8_ms, 3) for b in blocks],
                    "speedup": [round(b.speedup, 3) for b in blocks]}
    return out


def study_model(name: str, work: Path, rounds: int, emulate: bool) -> dict:
    import torch

    from ffnet_deploy.models.checkpoint import load_ffnet

    data = model_data(name, work / name)
    models = build(name, data, work)
    model = load_ffnet(data["checkpoint"])
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(data["eval"][i:i + 64])).numpy()
                              for i in range(0, len(data["eval"]), 64)])
    timing = speed(models, rounds)  # first, while nothing else of this study runs
    views = {"here": logits(models, data["eval"], work, emulate=False),
             "reference_math": logits(models, data["eval"], work, emulate=False, reference_math=True)}
    if emulate:
        views["avx2_emulated"] = logits(models, data["eval"], work, emulate=True)
    rows = {}
    for key, m in models.items():
        rows[key] = {"what": m["what"], "runtime": m["runtime"],
                     **{k: v for k, v in m.items() if k in ("settings", "overflow_fix")}}
        for view, (outs, _, _) in views.items():
            if key in outs:
                rows[key][view] = scores(ref, outs[key], data["labels"])
    for key, t in timing.items():
        rows[key]["speed"] = t
    return {"model": name, "resolution": data["resolution"], "eval_images": len(data["eval"]),
            "calib_images": len(data["calib"]),
            "fp32_accuracy": None if data["labels"] is None else round(top1_accuracy(ref, data["labels"]), 2),
            "views": {v: {"cpu_features": f, "seconds": round(s, 1)} for v, (_, f, s) in views.items()},
            "rows": rows}


REASONING = """## What holds where

Run here: this machine's class (see above) and AVX2 without VNNI (emulated). The other classes cannot be run on this
machine or emulated by qemu 7.2 (its TCG has no AVX-512), so they are reasoned from how the kernels compute:

| ISA class | u8 x s8 kernel (ONNX Runtime's MLAS) | `--target cpu` | `--target cpu-vnni` |
|---|---|---|---|
| `avx2` (Haswell .. Zen 3) | `vpmaddubsw`: pairs summed in int16, saturating | exact (measured, emulated) | saturates |
| `avx512` (Skylake-SP) | `vpmaddubsw` on 512-bit lanes | exact (2 x 255 x 64 < 32768) | saturates |
| `avx512-vnni` (Cascade Lake, Zen 4) | `vpdpbusd`: 4 products summed in int32 | exact (measured here) | exact |
| `avx-vnni` (Alder Lake, Zen 5) | `vpdpbusd` on 256-bit lanes | exact | exact |
| `amx` (Sapphire Rapids) | `tdpbusd` tiles, int32 accumulation | exact | exact |
| `arm64-dotprod`, `arm64-i8mm` | `sdot`/`udot`/`smmla`, int32 accumulation | exact | exact |
| `arm64` (no dot product) | widening `smull`/`umull` + `sadalp`, int32 | exact | exact |

"Exact" means the fused kernels compute what the ONNX reference math computes (the *reference math* column), so the
accuracy measured on one exact class holds on every exact class. S8S8 does not avoid the problem: on x86 ONNX Runtime
shifts int8 activations to uint8 and runs the same u8 x s8 kernels (measured: it saturates like U8S8). U8U8 widens to
16 bits before multiplying and never saturates, but its kernels are no faster than FP32 here, which defeats INT8.

**OpenVINO (NNCF).** oneDNN's x86 int8 convolutions without VNNI also sum u8 x s8 pairs in 16 bits; NNCF's
`overflow_fix` halves the weight range to avoid it (`first_layer_only` by default, `enable` for every layer). The
table above shows what each setting keeps on the emulated AVX2 CPU.

**Core ML W8A8** (reasoned; Core ML runs on Apple silicon only): the Neural Engine on A17 Pro / M4 and later executes
int8 x int8 with 32-bit accumulation, older Neural Engines and the GPU dequantize the int8 weights and activations to
fp16 and compute in fp16, and the CPU path (BNNS) accumulates int8 products in 32 bits. None adds products in 16-bit
integer lanes, so no saturation mode like x86's exists; the `coreml-reference` interpreter that checks W8A8 on Linux
computes the dequantized arithmetic, which is what those paths compute up to fp16 rounding.
"""


def choice(data: dict) -> str:
    """The decision the numbers support, with the numbers it rests on (ffnet_1 when measured, else the first model)."""
    m = next((m for m in data["models"] if m["model"] == "ffnet_1"), data["models"][0])
    rows = m["rows"]

    def speed(key: str) -> float:
        return sum(rows[key]["speed"]["speedup"]) / len(rows[key]["speed"]["speedup"])

    def sqnr(key: str, view: str) -> str:
        r = rows[key].get(view)
        return f"{r['sqnr_db']:.1f} dB" if r else "-"

    return "\n".join([
        "## Choice", "",
        f"On {m['model']} ({m['resolution']} px), measured here ({data['environment']['isa_class']}):",
        f"- 8-bit weights (`--target cpu-vnni`): {speed('u8s8'):.2f}x FP32, {sqnr('u8s8', 'here')} here, "
        f"{sqnr('u8s8', 'avx2_emulated')} on AVX2: it saturates there.",
        f"- 7-bit weights (`--target cpu`, the default): {speed('u8s8_reduce_range'):.2f}x FP32, "
        f"{sqnr('u8s8_reduce_range', 'here')} here and {sqnr('u8s8_reduce_range', 'avx2_emulated')} on AVX2: the "
        "same kernels, the same speed, the same numbers everywhere, at the price of one bit of weight precision.",
        f"- uint8 weights: exact everywhere ({sqnr('u8u8', 'avx2_emulated')} on AVX2) but {speed('u8u8'):.2f}x FP32: "
        "no reason to ship INT8 at all.",
        "",
        "So `--target cpu` stores 7-bit weights: the only portable form that keeps INT8's speed. `--target cpu-vnni` "
        "keeps the 8-bit weights for fleets known to have VNNI, AVX-VNNI, AMX or ARM64 (same speed, more accurate "
        "there); its manifest lists where it is safe, and `validate` on another class says so. NNCF: no overflow-fix "
        f"setting held on the emulated AVX2 CPU for {m['model']} ({sqnr('nncf_first_layer', 'avx2_emulated')}, "
        f"{sqnr('nncf_overflow_fix', 'avx2_emulated')}, {sqnr('nncf_no_fix', 'avx2_emulated')} for first-layer, "
        f"every-layer and no fix, against {sqnr('nncf_first_layer', 'here')} here), so OpenVINO INT8 manifests do "
        "not claim the `avx2`/`avx512` classes, keep NNCF's default (the best here), and `validate` on those classes "
        "judges them on their own run.", ""])


def _cell(r: dict | None, labelled: bool) -> str:
    if r is None:
        return "-"
    if labelled:
        return f"{r['accuracy']:.1f} % ({r['top1_agreement'] * 100:.1f} %)"
    return f"{r['sqnr_db']:.1f} dB ({r['top1_agreement'] * 100:.0f} %)"


def to_markdown(data: dict) -> str:
    env = data["environment"]
    lines = ["# INT8 on every CPU class: ONNX Runtime and NNCF recipes with and without VNNI", "",
             f"Measured on ISA class **{env['isa_class']}**; onnxruntime {env['versions'].get('onnxruntime')}, "
             f"openvino {env['versions'].get('openvino')}. Emulated: `qemu-x86_64 -cpu {EMULATED_CPU}` (AVX2 + FMA, "
             "no AVX-512, no VNNI).", ""]
    for m in data["models"]:
        labelled = m["fp32_accuracy"] is not None
        metric = ("digits top-1 accuracy (top-1 agreement with FP32)" if labelled
                  else "logit SQNR against FP32 (top-1 agreement)")
        lines += [f"## {m['model']} at {m['resolution']} px", "",
                  f"{m['eval_images']} evaluation images, {m['calib_images']} calibration images"
                  + (f"; FP32 PyTorch top-1 {m['fp32_accuracy']:.1f} %" if labelled else "") + f". Cells: {metric}.",
                  "", "| candidate | what | here | reference math | AVX2 (emulated) | INT8 speed-up vs FP32 here |",
                  "|---|---|---:|---:|---:|---:|"]
        for key, r in m["rows"].items():
            sp = r.get("speed")
            sp_text = " / ".join(f"{s:.2f}x" for s in sp["speedup"]) if sp else "-"
            lines.append(f"| `{key}` | {r['what']} ({r['runtime']}) | {_cell(r.get('here'), labelled)} | "
                         f"{_cell(r.get('reference_math'), labelled)} | {_cell(r.get('avx2_emulated'), labelled)} | "
                         f"{sp_text} |")
        lines.append("")
        if any(r.get("speed") for r in m["rows"].values()):
            lines += ["Speed: two blocks of interleaved FP32/INT8 rounds each (`measure_speedup`, 2 threads); "
                      "FP32 / INT8 medians in ms: " + "; ".join(
                          f"`{k}` {r['speed']['fp32_ms'][0]:.2f}/{r['speed']['int8_ms'][0]:.2f}, "
                          f"{r['speed']['fp32_ms'][1]:.2f}/{r['speed']['int8_ms'][1]:.2f}"
                          for k, r in m["rows"].items() if r.get("speed")) + ".", ""]
    return "\n".join(lines) + "\n" + choice(data) + "\n" + REASONING


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,ffnet_1")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--no-emulation", action="store_true")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    emulate = not args.no_emulation
    if emulate and shutil.which("qemu-x86_64") is None:
        parser.error("qemu-x86_64 not found: apt-get install qemu-user, or pass --no-emulation")
    work = Path(tempfile.mkdtemp(prefix="int8-portable-"))
    try:
        models = [study_model(m, work, args.rounds, emulate) for m in args.models.split(",")]
        data = {"environment": environment_info(), "models": models}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results("int8_portable", to_markdown(data), data, args.out)
    return data


if __name__ == "__main__":
    main()

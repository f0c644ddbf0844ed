"""``ffnet-deploy bench``: what to measure (jobs), and measuring it with the protocol of :mod:`.protocol`.

A *job* is one future row: a runtime, a precision, a model at a resolution and batch, and how to build its runner.
Jobs come from three places:

- :func:`artifact_jobs`: artifact directories written by ``ffnet-deploy export`` (the runtime follows the format:
  ONNX on ONNX Runtime, IR on OpenVINO, engines on TensorRT, Core ML on Core ML with each compute unit);
- :func:`variant_jobs`: a variant (random weights, or a checkpoint), exported here into a work folder for every
  requested runtime and precision, plus eager PyTorch;
- :func:`spec_jobs`: in-memory models (:class:`~ffnet_deploy.benchmarks.specs.ModelSpec`): the mixer comparison and
  the peers.

A runtime or precision that cannot run here becomes a ``skipped`` row with the reason, never an error. Jobs that are
compared with each other share a *group* and are timed interleaved. A group never mixes runtimes: a thread pool that
spins after its call (OpenMP in torch: measured here, ONNX Runtime's FP32 median went from 34.9 to 45.3 ms when eager
PyTorch ran between its calls) would slow whichever runtime runs next. So a group is one runtime's precisions of one
model (INT8 against FP32 on ONNX Runtime), or, for the mixer comparison and the peers, every model on one runtime;
ratios across runtimes come from groups run one after the other. ONNX Runtime's workers are told not to spin.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.manifest import Manifest, read_manifest
from ffnet_deploy.benchmarks.results import BenchResult, BenchRow, Device
from ffnet_deploy.benchmarks.specs import MIXER_RESOLUTIONS
from ffnet_deploy.environment import cap_threads
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.runtimes import BaseRunner, create_runner
from ffnet_deploy.runtimes.onnxruntime import no_spinning
from ffnet_deploy.runtimes.timing import Contender, Progress, Protocol, latency_stats, measure, throughput
from ffnet_deploy.validate.engine import runtime_unavailable

RUNTIME_NAMES = ("torch", "onnxruntime", "openvino", "tensorrt", "coreml")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_RUNTIMES = ("torch", "onnxruntime", "openvino")
RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", "coreml": "coreml"}
FORMAT_OF_RUNTIME = {v: k for k, v in RUNTIME_OF_FORMAT.items()}
COREML_COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_ONLY")
OPENVINO_HINT = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}
"""OpenVINO inference precision per bench precision. fp16 means fp16 *weights* (the IR); on a CPU its arithmetic is
f32 unless the CPU has fp16 units, and int8 runs int8 kernels with f32 for the layers NNCF kept in float, so the
numbers compare with fp32 on the same footing. bf16 is the fp32 IR executed in bf16."""

CALIB_PHOTOS = 64
"""Calibration images for INT8 rows of a random-weights bench without ``--calib``: crops of scikit-learn's photos."""


@dataclass
class Job:
    """One row to measure: its template, how to build the runner, and its interleaving group."""

    row: BenchRow
    make_runner: Callable[[], BaseRunner] | None = None
    input_shape: tuple[int, ...] = ()
    input_dtype: str = "float32"
    group: tuple = ()

    def feed(self, seed: int = 0) -> np.ndarray:
        """The input, made once: random pixels (uint8 inputs) or standard-normal floats."""
        rng = np.random.default_rng(seed)
        if self.input_dtype == "uint8":
            return rng.integers(0, 256, self.input_shape, dtype=np.uint8)
        if self.input_dtype == "image-rgb":  # Core ML image features take float pixels 0-255
            return rng.uniform(0, 255, self.input_shape).astype(np.float32)
        return rng.standard_normal(self.input_shape, dtype=np.float32)


def parse_list(text: str | Sequence[str] | None, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``, every item checked against ``allowed`` (one-line error naming the flag)."""
    if text is None:
        return ()
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ConfigError(f"bench | {flag} takes a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return tuple(dict.fromkeys(items))


def parse_batches(text: str | Sequence[int], option: str = "--batch", example: str = "1,8") -> tuple[int, ...]:
    """``"1,8"`` -> ``(1, 8)``; each a positive int (``option`` and ``example`` are for the message)."""
    try:
        items = [int(t) for t in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        items = []
    if not items or any(b < 1 for b in items):
        raise ConfigError(f"bench | {option} takes positive integers separated by commas (e.g. {example}); "
                          f"got {text!r}")
    return tuple(dict.fromkeys(items))


# -- what can run here --------------------------------------------------------------------------------------------


@functools.cache
def _isa() -> frozenset[str]:
    from ffnet_deploy.environment import environment_info

    return frozenset(environment_info()["isa_flags"])


def has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16, AMX, or Arm's BF16)."""
    from ffnet_deploy.benchmarks.roofline import BF16_FLAGS

    return bool(_isa() & set(BF16_FLAGS))


def unsupported(runtime: str, precision: str) -> str | None:
    """Why ``runtime`` cannot run ``precision`` on this machine, or ``None``."""
    if runtime == "torch":
        if precision == "bf16":
            return None if has_bf16() else "this CPU has no bf16 arithmetic (AVX512-BF16 or AMX)"
        if precision != "fp32":
            return f"eager PyTorch on CPU has no {precision} inference path here; bench onnxruntime or openvino"
    if runtime == "onnxruntime" and precision == "bf16":
        return "ONNX Runtime's CPU provider has no bf16 convolution kernels; use openvino for bf16 on a CPU"
    if runtime == "openvino" and precision == "bf16" and not has_bf16():
        return "this CPU has no bf16 arithmetic (AVX512-BF16 or AMX)"
    if runtime == "tensorrt" and precision == "bf16":
        return "bench builds TensorRT engines in fp32, fp16 or int8"
    if runtime == "coreml" and precision == "bf16":
        return "Core ML has no bf16"
    return None


# -- model facts ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def ffnet_facts(variant: str, resolution: int, num_classes: int = 1000) -> tuple[float, float, float | None]:
    """``(GMACs per image, params in millions, published top-1)`` of a reparameterized FFNet variant."""
    from ffnet_deploy.models.config import get_config
    from ffnet_deploy.models.ffnet import count_macs, create_ffnet

    model = create_ffnet(variant, num_classes=num_classes, deploy=True).eval()
    macs = count_macs(model, resolution)
    params = sum(p.numel() for p in model.parameters())
    top1 = get_config(variant).top1 if num_classes == 1000 else None
    return macs / 1e9, params / 1e6, top1


# -- jobs -----------------------------------------------------------------------------------------------------------


def _skipped(row: BenchRow, reason: str) -> Job:
    return Job(row=replace(row, status="skipped", reason=reason))


def runner_factory(runtime: str, artifact: Path | None, precision: str, threads: int | None,
                   compute_units: str | None = None, model: Any = None, resolution: int | None = None
                   ) -> Callable[[], BaseRunner]:
    """A zero-argument builder of the runner that executes ``artifact`` (or ``model``, for torch) at ``precision``."""
    def make() -> BaseRunner:
        if runtime == "torch":
            module = model if precision != "bf16" else _bf16(model)
            return create_runner("torch", None, model=module, threads=threads, resolution=resolution)
        if runtime == "onnxruntime":
            return create_runner("onnxruntime", artifact, threads=threads, session_options=no_spinning)
        if runtime == "openvino":
            return create_runner("openvino", artifact, threads=threads, inference_precision=OPENVINO_HINT[precision])
        if runtime == "coreml":
            return create_runner("coreml", artifact, threads=threads, compute_units=compute_units or "ALL")
        return create_runner(runtime, artifact, threads=threads)

    return make


def _bf16(model: Any) -> Any:
    """A bf16 copy of a float32 module (weights and activations) that takes and returns float32."""
    import copy

    import torch

    inner = copy.deepcopy(model).to(torch.bfloat16).eval()

    class Bf16(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.to(torch.bfloat16)).float()

    return Bf16()


def artifact_jobs(directories: Sequence[str | Path], *, runtimes: Sequence[str] | None = None,
                  precisions: Sequence[str] | None = None, batches: Sequence[int] = (1,),
                  threads: int | None = None) -> list[Job]:
    """Jobs for artifact directories written by ``ffnet-deploy export``.

    The runtime follows the artifact's format and the precision its manifest; an OpenVINO fp32 IR also gets a bf16
    row when ``precisions`` asks for bf16. ``runtimes``/``precisions`` filter (``None``: all). A fixed-batch
    artifact runs at its own batch; a dynamic one at each of ``batches`` within its range.

    Raises:
        ConfigError: A path that is not an artifact directory (one line naming it).
    """
    jobs: list[Job] = []
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir() or not (directory / "manifest.json").is_file():
            raise ConfigError(f"bench | {directory} is not an artifact directory (no manifest.json); pass folders "
                              "written by 'ffnet-deploy export', or use --variant")
        manifest = read_manifest(directory)
        runtime = RUNTIME_OF_FORMAT[manifest.format]
        if runtimes and runtime not in runtimes:
            continue
        wanted = [manifest.precision]
        if manifest.format == "openvino" and manifest.precision == "fp32" and precisions and "bf16" in precisions:
            wanted.append("bf16")
        for precision in wanted:
            if precisions and precision not in precisions:
                continue
            jobs += _artifact_precision_jobs(directory, manifest, runtime, precision, batches, threads)
    return jobs


def _artifact_precision_jobs(directory: Path, manifest: Manifest, runtime: str, precision: str,
                             batches: Sequence[int], threads: int | None) -> list[Job]:
    gmacs, params, top1 = ffnet_facts(manifest.variant, manifest.resolution, manifest.num_classes)
    spec = manifest.inputs[0]
    b = manifest.batch
    sizes = [n for n in batches if b.min <= n <= b.max] if b.dynamic else [b.opt]
    jobs = []
    units = COREML_COMPUTE_UNITS if runtime == "coreml" else (None,)
    for batch in sizes or [b.opt]:
        for cu in units:
            row = BenchRow(model=manifest.variant, runtime=runtime, precision=precision,
                           resolution=manifest.resolution, batch=batch, threads=threads, compute_units=cu,
                           artifact=str(directory), gmacs=gmacs, params_m=params, published_top1=top1,
                           provenance={"random_weights": manifest.random_weights} if manifest.random_weights else {})
            # An artifact that exists is timed whatever its precision; only a missing runtime (or bf16 on a CPU
            # without it) stops it.
            reason = runtime_unavailable(runtime) or (unsupported(runtime, precision) if precision == "bf16" else None)
            if reason:
                jobs.append(_skipped(row, reason))
                continue
            shape = tuple(batch if d is None else d for d in spec.shape)
            shape = (batch, *shape[1:])
            jobs.append(Job(row=row, make_runner=runner_factory(runtime, directory, precision, threads, cu),
                            input_shape=shape, input_dtype=spec.dtype,
                            group=(manifest.variant, manifest.resolution, batch, runtime)))
    return jobs


def variant_jobs(variant: str | None, checkpoint: str | Path | None, workdir: Path, *,
                 runtimes: Sequence[str] = DEFAULT_RUNTIMES, precisions: Sequence[str] = ("fp32",),
                 resolution: int | None = None, batches: Sequence[int] = (1,), threads: int | None = None,
                 calib: str | Path | None = None, calib_size: int | None = None, trust: bool = False,
                 log: Callable[[str], None] | None = None) -> list[Job]:
    """Export ``variant`` (random weights, or ``checkpoint``) into ``workdir`` for each runtime and precision, and
    return the jobs that run the exports (plus eager PyTorch on the reparameterized model).

    INT8 exports calibrate on ``calib``; without it, on crops of scikit-learn's sample photos (random weights: only
    latency counts). The exports skip their parity gate: ``validate`` checks artifacts, bench times them.
    """
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.models.checkpoint import open_checkpoint
    from ffnet_deploy.models.config import get_config
    from ffnet_deploy.quantize.config import QuantizationConfig

    say = log or (lambda _m: None)
    if checkpoint is None:
        # Random weights, but BatchNorm statistics re-estimated on photo crops: with the raw initialisation the
        # activation ranges are degenerate, and ONNX Runtime then keeps Q/DQ pairs it would otherwise fold (measured
        # on ffnet_1: INT8 1.00x FP32 from the raw init, 1.53x with photo statistics; FP32 35 ms either way).
        from ffnet_deploy.data.photos import photo_bn_checkpoint

        variant = variant or "ffnet_1"
        say(f"random {variant} weights, BatchNorm statistics from photo crops")
        checkpoint = photo_bn_checkpoint(variant, workdir / f"{variant}-photo-bn.pth.tar")
        random_weights = True
    else:
        random_weights = False
    loaded = open_checkpoint(checkpoint, variant, trust=trust)
    model, variant = loaded.model, loaded.variant
    resolution = resolution or get_config(variant).resolution
    fused = model.reparameterize() if not model.is_fused else model
    loaded = replace(loaded, model=fused)  # every export below starts from the fused model instead of fusing again
    gmacs, params, top1 = ffnet_facts(variant, resolution, fused.num_classes)
    jobs: list[Job] = []
    exports: dict[tuple[str, str, int], Path] = {}
    for runtime in runtimes:
        for precision in precisions:
            for batch in batches:
                row = BenchRow(model=variant, runtime=runtime, precision=precision, resolution=resolution,
                               batch=batch, threads=threads, gmacs=gmacs, params_m=params, published_top1=top1,
                               provenance={"random_weights": "BatchNorm statistics from photo crops"}
                               if random_weights else {})
                reason = runtime_unavailable(runtime) or unsupported(runtime, precision)
                if reason:
                    jobs.append(_skipped(row, reason))
                    continue
                group = (variant, resolution, batch, runtime)
                if runtime == "torch":
                    jobs.append(Job(row=row, make_runner=runner_factory("torch", None, precision, threads,
                                                                        model=fused, resolution=resolution),
                                    input_shape=(batch, 3, resolution, resolution), group=group))
                    continue
                fmt = FORMAT_OF_RUNTIME[runtime]
                export_precision = "fp32" if precision == "bf16" else precision
                made = _exporter_precisions(fmt)
                if export_precision not in made:
                    jobs.append(_skipped(row, f"the {fmt} exporter makes {', '.join(made)}"))
                    continue
                key = (fmt, export_precision, batch)
                if key not in exports:
                    out = workdir / f"{variant}-{resolution}-{fmt}-{export_precision}-b{batch}"
                    quant = None
                    if export_precision == "int8":
                        data = calib if calib is not None else _photo_calibration(workdir, resolution)
                        size = calib_size or (CALIB_PHOTOS if calib is None else 300)
                        quant = QuantizationConfig(calib=data, calib_size=size,
                                                   cache_dir=workdir / "calibration" / f"{variant}-{resolution}")
                    say(f"exporting {variant} {fmt} {export_precision} (batch {batch})")
                    try:
                        export(ExportConfig(fmt, out, resolution=resolution, batch=batch, precision=export_precision,
                                            quantization=quant, check_parity=False), loaded)
                    except Exception as err:  # noqa: BLE001 - a failed export becomes a failed row
                        jobs.append(Job(row=replace(row, status="failed", reason=f"export failed: {err}")))
                        continue
                    exports[key] = out
                for job in artifact_jobs([exports[key]], precisions=[precision], batches=[batch], threads=threads):
                    job.row = replace(job.row, provenance=row.provenance)
                    jobs.append(job)
    return jobs


def _exporter_precisions(fmt: str) -> tuple[str, ...]:
    from ffnet_deploy.exporters import get_exporter

    return tuple(get_exporter(fmt).supported_precisions)


def _photo_calibration(workdir: Path, resolution: int) -> Path:
    folder = workdir / "calibration-photos"
    if not folder.is_dir():
        from ffnet_deploy.data.photos import photo_crops

        photo_crops(folder, CALIB_PHOTOS, max(resolution, 64), seed=0)
    return folder


def spec_jobs(specs: Sequence[Any], workdir: Path, *, runtimes: Sequence[str] = DEFAULT_RUNTIMES,
              precisions: Sequence[str] = ("fp32",), batches: Sequence[int] = (1,), threads: int | None = None,
              group_by_resolution: bool = False, log: Callable[[str], None] | None = None) -> list[Job]:
    """Jobs for in-memory models (:class:`~ffnet_deploy.benchmarks.specs.ModelSpec`): FP32 ONNX for ONNX Runtime,
    the IR converted from it for OpenVINO (fp32 and bf16), and eager PyTorch.

    ``group_by_resolution`` interleaves the models of one resolution on one runtime (the mixer comparison);
    otherwise every model on one runtime is interleaved (the peers).
    """
    say = log or (lambda _m: None)
    jobs: list[Job] = []
    for spec in specs:
        say(f"building {spec.name} at {spec.resolution}")
        model = spec.build()
        gmacs = spec.macs(model) / 1e9
        params = sum(p.numel() for p in model.parameters()) / 1e6
        files: dict[tuple[str, int], Path] = {}
        for runtime in runtimes:
            for precision in precisions:
                for batch in batches:
                    row = BenchRow(model=spec.name, runtime=runtime, precision=precision, resolution=spec.resolution,
                                   batch=batch, threads=threads, family=spec.family, mixer=spec.mixer, gmacs=gmacs,
                                   params_m=params, published_top1=spec.published_top1,
                                   provenance={"random_weights": True,
                                               **({"top1_source": spec.top1_source} if spec.top1_source else {})})
                    reason = runtime_unavailable(runtime) or unsupported(runtime, precision)
                    if not reason and (runtime not in ("torch", "onnxruntime", "openvino") or precision == "int8"):
                        reason = "the mixer and peer comparisons run fp32 and bf16 on the CPU runtimes"
                    if reason:
                        jobs.append(_skipped(row, reason))
                        continue
                    group = (spec.resolution, batch, runtime) if group_by_resolution else (batch, runtime)
                    shape = (batch, 3, spec.resolution, spec.resolution)
                    if runtime == "torch":
                        factory = runner_factory("torch", None, precision, threads, model=model,
                                                 resolution=spec.resolution)
                        jobs.append(Job(row=row, make_runner=factory, input_shape=shape, group=group))
                        continue
                    try:
                        path = _model_file(spec, model, runtime, batch, workdir, files, say)
                    except Exception as err:  # noqa: BLE001 - a model that does not convert is a failed row
                        jobs.append(Job(row=replace(row, status="failed", reason=f"conversion failed: {err}")))
                        continue
                    jobs.append(Job(row=row, make_runner=runner_factory(runtime, path, precision, threads),
                                    input_shape=shape, group=group))
    return jobs


def _model_file(spec: Any, model: Any, runtime: str, batch: int, workdir: Path, files: dict,
                say: Callable[[str], None]) -> Path:
    """The ONNX file (ONNX Runtime) or IR (OpenVINO) of an in-memory model, converted once per batch."""
    import torch

    stem = workdir / f"{spec.name.replace('/', '-')}-{spec.resolution}-b{batch}"
    onnx_path = stem.with_suffix(".onnx")
    if ("onnx", batch) not in files:
        from ffnet_deploy.exporters.onnx import plain_onnx_export

        say(f"exporting {spec.name} at {spec.resolution} to ONNX")
        with torch.no_grad():
            plain_onnx_export(model, spec.resolution, batch, onnx_path)
        files[("onnx", batch)] = onnx_path
    if runtime == "onnxruntime":
        return files[("onnx", batch)]
    if ("openvino", batch) not in files:
        import openvino as ov

        xml = stem.with_suffix(".xml")
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        files[("openvino", batch)] = xml
    return files[("openvino", batch)]


# -- running --------------------------------------------------------------------------------------------------------


def run_jobs(jobs: Sequence[Job], protocol: Protocol, *, roofline: Any = None,
             progress: Progress | None = None) -> list[BenchRow]:
    """Measure every runnable job, group by group (interleaved within a group); returns the rows in job order."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        if job.make_runner is not None and job.row.status == "ok":
            groups.setdefault(job.group, []).append(i)
    rows = [job.row for job in jobs]
    for indices in groups.values():
        contenders = []
        for i in indices:
            job = jobs[i]
            label = f"{job.row.model} {job.row.runtime} {job.row.precision}" + (
                f" {job.row.compute_units}" if job.row.compute_units else "") + f" @{job.row.resolution}"
            if job.row.batch != 1:
                label += f" b{job.row.batch}"
            contenders.append(Contender(name=label, make_runner=job.make_runner, feed=job.feed(i)))
        measure(contenders, protocol, progress)
        for i, c in zip(indices, contenders, strict=True):
            row = rows[i]
            if c.error is not None or not c.samples_ms:
                rows[i] = replace(row, status="failed", reason=c.error or "no samples")
                continue
            stats = latency_stats(c.samples_ms)
            fraction = None
            if roofline is not None and row.gmacs:
                peak = roofline.peak_gflops(row.precision)
                if peak:
                    from ffnet_deploy.benchmarks.roofline import roofline_fraction

                    fraction = roofline_fraction(row.gmacs, row.batch, stats["p50"], peak)
            provenance = dict(row.provenance)
            if c.memory_method and c.memory_method != "VmHWM":
                provenance["memory"] = c.memory_method
            if c.runner is not None and c.runner.notices:
                provenance["notices"] = list(c.runner.notices)
            rows[i] = replace(row, latency_ms=stats, iterations=len(c.samples_ms),
                              throughput_ips=_finite(throughput(row.batch, stats["p50"])),
                              first_inference_ms=c.first_inference_ms, peak_rss_mb=c.peak_rss_mb,
                              roofline_fraction=fraction, execution_precision=c.execution_precision,
                              provenance=provenance)
    return rows


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def default_threads() -> int:
    """Threads of one inference when ``--threads`` is not given: every CPU this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def make_result(rows: Sequence[BenchRow], protocol: Protocol, *, device_name: str | None, command: str,
                roofline: Any = None) -> BenchResult:
    """The :class:`BenchResult` of one run on this machine."""
    return BenchResult(device=Device.here(device_name), rows=tuple(rows), command=command,
                       protocol=protocol.to_dict(), roofline=roofline.to_dict() if roofline is not None else None)


# -- one bench run --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchRequest:
    """Everything ``ffnet-deploy bench`` was asked to do (the CLI options, as a Python user passes them)."""

    artifacts: tuple[Path, ...] = ()
    variant: str | None = None
    checkpoint: Path | None = None
    runtimes: tuple[str, ...] | None = None  # None: torch, onnxruntime, openvino (artifacts: each one's own)
    precisions: tuple[str, ...] | None = None  # None: fp32 (artifacts: each one's own)
    resolution: int | None = None
    batches: tuple[int, ...] = (1,)
    threads: int | None = None  # None: every CPU this process may use
    protocol: Protocol = Protocol()
    device_name: str | None = None
    compare_mixers: bool = False
    mixer_resolutions: tuple[int, ...] = MIXER_RESOLUTIONS
    mixer_base: str = "ffnet_1"
    peers: bool = False
    calib: str | Path | None = None
    roofline: bool = True
    trust: bool = False

    def variants(self) -> list[str | None]:
        """``--variant a,b`` names several variants (each at its own default resolution unless --resolution)."""
        if self.variant is None:
            return [None]
        return [v.strip() for v in self.variant.split(",") if v.strip()]

    def validate(self) -> None:
        if self.variant is not None:
            from ffnet_deploy.models.config import VARIANTS

            unknown = [v for v in self.variants() if v not in VARIANTS]
            if unknown or not self.variants():
                raise ConfigError(f"bench | unknown variant {', '.join(unknown) or repr(self.variant)}; choose from "
                                  f"{', '.join(VARIANTS)} (comma-separated for several)")
            if self.checkpoint is not None and len(self.variants()) > 1:
                raise ConfigError("bench | one --checkpoint has one variant; pass a single --variant with it")
        modes = sum([bool(self.artifacts), self.variant is not None or self.checkpoint is not None,
                     self.compare_mixers or self.peers])
        if modes == 0:
            raise ConfigError("bench | nothing to measure: pass artifact directories, --variant/--checkpoint, "
                              "--compare-mixers or --peers")
        if bool(self.artifacts) and (self.variant is not None or self.checkpoint is not None):
            raise ConfigError("bench | pass artifact directories or --variant/--checkpoint, not both")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"bench | --threads must be a positive integer, got {self.threads}")
        if self.resolution is not None and (self.resolution < 32 or self.resolution % 32):
            raise ConfigError(f"bench | --resolution must be a multiple of 32 (at least 32), got {self.resolution}")
        if self.calib is not None:
            from ffnet_deploy.data.sources import source_from_spec

            source_from_spec(self.calib, split="train")  # one line for a missing or unusable folder


def bench(request: BenchRequest, workdir: Path, *, command: str = "", log: Callable[[str], None] | None = None,
          progress: Progress | None = None) -> BenchResult:
    """Run one bench: build the jobs, probe the roofline, measure, and return the result.

    Args:
        request: What to measure.
        workdir: A scratch folder for exports (the caller removes it).
        command: The command line, recorded in the result.
        log: One line per step (exports, probes).
        progress: The timing progress (see :data:`~ffnet_deploy.runtimes.timing.Progress`).
    """
    request.validate()
    say = log or (lambda _m: None)
    threads, capped = cap_threads(request.threads, "bench")
    if capped:
        say(f"note: {capped}")
    threads = threads or default_threads()
    runtimes = request.runtimes or DEFAULT_RUNTIMES
    precisions = request.precisions or ("fp32",)
    jobs: list[Job] = []
    if request.artifacts:  # artifacts run on their own runtime and precision unless the options narrow them
        jobs += artifact_jobs(request.artifacts, runtimes=request.runtimes, precisions=request.precisions,
                              batches=request.batches, threads=threads)
        if not jobs:
            raise ConfigError("bench | no artifact matches --runtimes/--precisions; widen them or pass other "
                              "artifact directories")
    if request.variant is not None or request.checkpoint is not None:
        for variant in request.variants():
            jobs += variant_jobs(variant, request.checkpoint, workdir, runtimes=runtimes,
                                 precisions=precisions, resolution=request.resolution,
                                 batches=request.batches, threads=threads, calib=request.calib, trust=request.trust,
                                 log=say)
    if request.compare_mixers:
        from ffnet_deploy.benchmarks.specs import mixer_specs

        jobs += spec_jobs(mixer_specs(request.mixer_resolutions, base=request.mixer_base), workdir,
                          runtimes=runtimes, precisions=[p for p in precisions if p != "int8"]
                          or ["fp32"], batches=request.batches, threads=threads, group_by_resolution=True, log=say)
    if request.peers:
        from ffnet_deploy.benchmarks.specs import ffnet_spec, peer_specs

        jobs += spec_jobs([ffnet_spec(request.mixer_base), *peer_specs()], workdir, runtimes=runtimes,
                          precisions=[p for p in precisions if p != "int8"] or ["fp32"],
                          batches=request.batches, threads=threads, log=say)
    roofline = None
    if request.roofline:
        from ffnet_deploy.benchmarks.roofline import gemm_probe

        say(f"probing this CPU's GEMM roofline ({threads} threads)")
        roofline = gemm_probe(threads)
    rows = run_jobs(jobs, request.protocol, roofline=roofline, progress=progress)
    return make_result(rows, request.protocol, device_name=request.device_name, command=command, roofline=roofline)


PLOT_NAMES = ("latency_vs_top1", "by_runtime", "vs_resolution")
"""The plots :func:`write_outputs` draws, as ``<name>.png`` beside the results."""


def write_outputs(result: BenchResult, out: Path) -> dict[str, Path]:
    """Write ``results.{json,csv,md}`` and the plots into ``out``; the Markdown embeds the mixer and peer tables
    and links the plots. Returns every path written."""
    from ffnet_deploy.atomic import removed_on_failure
    from ffnet_deploy.benchmarks import plots
    from ffnet_deploy.benchmarks.mixers import mixer_table, peer_table
    from ffnet_deploy.benchmarks.results import to_markdown, write_result

    pngs: dict[str, Path] = {}
    drawers = {"latency_vs_top1": plots.plot_latency_vs_top1, "by_runtime": plots.plot_by_runtime,
               "vs_resolution": plots.plot_vs_resolution}
    with removed_on_failure(out):  # a folder this call made goes again if a write fails (a full disk, Ctrl-C)
        for name in PLOT_NAMES:
            path = drawers[name](result, out / f"{name}.png", may_replace=plots.not_our_plot)
            if path is not None:
                pngs[name] = Path(path)
        sections = [to_markdown(result)]
        ok = result.ok_rows()
        if any(r.family == "mixer" for r in ok):
            sections.append(mixer_table(result.rows))  # each table brings its own heading
        if any(r.family == "peer" for r in ok):
            sections.append(peer_table(result.rows))
        if pngs:
            sections.append("## Plots\n\n" + "\n".join(f"![{name}]({p.name})" for name, p in pngs.items()) + "\n")
        paths = write_result(result, out, markdown="\n".join(sections))
    return {**paths, **pngs}

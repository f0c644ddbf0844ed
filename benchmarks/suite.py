"""``ffnet-deploy bench``: what to measure (jobs), and measuring it with the protocol of :mod:`.protocol`.

A *job* is one future row: a runtime, a precision, a model at a resolution and batch, and how to build its runner.
Jobs come from three places:

- :func:`artifact_jobs`: artifact directories written by ``ffnet-deploy export`` (the runtime is the one the format
  declares for bench, ``FormatSpec.bench_runtime``: ONNX on ONNX Runtime, IR on OpenVINO, engines on TensorRT, Core ML
  on Core ML with each of its timing variants, the compute units);
- :func:`variant_jobs`: a variant (random weights, or a checkpoint), exported here into a work folder for every
  requested runtime and precision, plus eager PyTorch;
- :func:`spec_jobs`: in-memory models (:class:`~ffnet_deploy.benchmarks.specs.ModelSpec`): the mixer comparison and
  the peers.

A runtime or precision that cannot run here becomes a ``skipped`` row with the reason, never an error. Jobs that are
compared with each other share a *group* and are timed interleaved. A group never mixes runtimes: a thread pool that
spins after its call (OpenMP in torch: measured here, ONNX Runtime's FP32 median went from 34.9 to 45.3 ms when eager
PyTorch ran between its calls) would slow whichever runtime runs next. So a group is one runtime's precisions of one
model (INT8 against FP32 on ONNX Runtime), or, for the mixer comparison and the peers, every model on one runtime.
ONNX Runtime's workers are told not to spin; eager PyTorch runs in a worker process of its own whose OpenMP pool is
told not to spin either (``OMP_WAIT_POLICY=PASSIVE``, :mod:`ffnet_deploy.runtimes._worker`).

Every group is timed in the same blocks (:func:`ffnet_deploy.runtimes.timing.measure_groups`): each block runs every
group's rounds in turn, so a ratio across runtimes (an artifact against eager PyTorch) is paired by block like one
within a group, and every row gets a noise verdict (:mod:`ffnet_deploy.runtimes.noise`). The GEMM roofline probe is
timed in those blocks too, as a group of its own, so that it meets the same machine as the rows: a row that runs
faster than it is reported with "not a ceiling here".
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

from ffnet_deploy.artifact.formats import bench_format_of, bench_runtimes, get_format
from ffnet_deploy.artifact.manifest import Manifest, read_manifest
from ffnet_deploy.artifact.precisions import baseline_precision, get_precision, precision_names
from ffnet_deploy.benchmarks.results import BenchResult, BenchRow, Device
from ffnet_deploy.benchmarks.specs import MIXER_RESOLUTIONS
from ffnet_deploy.environment import cap_threads
from ffnet_deploy.errors import ConfigError, FFNetDeployError
from ffnet_deploy.progress import NULL, Progress
from ffnet_deploy.runtimes import RUNTIMES, BaseRunner, create_runner
from ffnet_deploy.runtimes.timing import Contender, Protocol, latency_stats, measure_groups, throughput
from ffnet_deploy.validate.engine import runtime_unavailable

# Which runtimes and precisions bench knows, which runner times which format and with which options are declared by
# the formats (artifact.formats), the precisions (artifact.precisions) and the runners (BaseRunner capabilities).


def runtime_names() -> tuple[str, ...]:
    """The runtimes bench times: the in-memory reference (eager PyTorch), then each format's bench runner."""
    in_memory = [n for n in RUNTIMES.names() if not RUNTIMES.get(n).needs_artifact]
    return tuple(dict.fromkeys([*in_memory, *bench_runtimes().values()]))


def cpu_runtimes() -> tuple[str, ...]:
    """The runtimes that time any model on this CPU, in-memory or converted from plain ONNX: ``--variant``'s
    default, and the mixer and peer comparisons'."""
    return tuple(n for n in runtime_names() if not RUNTIMES.get(n).needs_artifact or RUNTIMES.get(n).converts_onnx)


def bench_precisions() -> tuple[str, ...]:
    """Every precision bench takes (stored and execution-only), in their declared order."""
    return precision_names()

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


def has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16, AMX, or Arm's BF16)."""
    from ffnet_deploy.environment import has_bf16 as cpu_has_bf16

    return cpu_has_bf16()


def unsupported(runtime: str, precision: str) -> str | None:
    """Why ``runtime`` cannot run ``precision`` on this machine, or ``None`` (the runner says:
    ``BaseRunner.precision_unavailable``)."""
    return RUNTIMES.get(runtime).precision_unavailable(precision)


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


@dataclass(frozen=True)
class RunnerFactory:
    """A zero-argument builder of the runner that executes ``artifact`` (or ``model``, for an in-memory runner) at
    ``precision``, with the options the runner asks for (``BaseRunner.bench_options``, ``bench_model``);
    ``compute_units`` is the runner's timing variant. Its fields say what a timing worker needs to build the same
    runner in a process of its own (:func:`run_jobs`)."""

    runtime: str
    artifact: Path | None
    precision: str
    threads: int | None
    compute_units: str | None = None
    model: Any = None
    resolution: int | None = None

    def __call__(self) -> BaseRunner:
        cls = RUNTIMES.get(self.runtime)
        if not cls.needs_artifact:
            return create_runner(self.runtime, None, model=cls.bench_model(self.model, self.precision),
                                 threads=self.threads, resolution=self.resolution)
        return create_runner(self.runtime, self.artifact, threads=self.threads,
                             **cls.bench_options(self.precision, self.compute_units))


def runner_factory(runtime: str, artifact: Path | None, precision: str, threads: int | None,
                   compute_units: str | None = None, model: Any = None, resolution: int | None = None
                   ) -> Callable[[], BaseRunner]:
    """The :class:`RunnerFactory` of these options."""
    return RunnerFactory(runtime, artifact, precision, threads, compute_units, model, resolution)


def artifact_jobs(directories: Sequence[str | Path], *, runtimes: Sequence[str] | None = None,
                  precisions: Sequence[str] | None = None, batches: Sequence[int] = (1,),
                  threads: int | None = None) -> list[Job]:
    """Jobs for artifact directories written by ``ffnet-deploy export``.

    The runtime follows the artifact's format and the precision its manifest; an artifact also gets a row for each
    execution-only precision ``precisions`` asks for that its runner executes from the artifact's precision (an
    OpenVINO fp32 IR in bf16). ``runtimes``/``precisions`` filter (``None``: all). A fixed-batch
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
        runtime = get_format(manifest.format).bench_runtime
        if runtimes and runtime not in runtimes:
            continue
        wanted = [manifest.precision]
        runner = RUNTIMES.get(runtime)
        wanted += [p for p in precisions or () if p in runner.executes
                   and get_precision(p).executes_as == manifest.precision]
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
    units = RUNTIMES.get(runtime).timing_variants
    for batch in sizes or [b.opt]:
        for cu in units:
            row = BenchRow(model=manifest.variant, runtime=runtime, precision=precision,
                           resolution=manifest.resolution, batch=batch, threads=threads, compute_units=cu,
                           artifact=str(directory), gmacs=gmacs, params_m=params, published_top1=top1,
                           provenance={"random_weights": manifest.random_weights} if manifest.random_weights else {})
            # An artifact that exists is timed whatever its precision; only a missing runtime (or bf16 on a CPU
            # without it) stops it.
            reason = runtime_unavailable(runtime) or (None if get_precision(precision).stored
                                                      else unsupported(runtime, precision))
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
                 runtimes: Sequence[str] | None = None, precisions: Sequence[str] | None = None,
                 resolution: int | None = None, batches: Sequence[int] = (1,), threads: int | None = None,
                 calib: str | Path | None = None, calib_size: int | None = None, trust: bool = False,
                 progress: Progress = NULL) -> list[Job]:
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

    say = progress.note
    runtimes = cpu_runtimes() if runtimes is None else runtimes
    precisions = (baseline_precision(),) if precisions is None else precisions
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
                if not RUNTIMES.get(runtime).needs_artifact:
                    jobs.append(Job(row=row, make_runner=runner_factory(runtime, None, precision, threads,
                                                                        model=fused, resolution=resolution),
                                    input_shape=(batch, 3, resolution, resolution), group=group))
                    continue
                fmt = bench_format_of(runtime)
                if fmt is None:
                    jobs.append(_skipped(row, f"no format is timed on {runtime}"))
                    continue
                export_precision = get_precision(precision).artifact_precision
                made = get_format(fmt).precisions
                if export_precision not in made:
                    jobs.append(_skipped(row, f"the {fmt} exporter makes {', '.join(made)}"))
                    continue
                key = (fmt, export_precision, batch)
                if key not in exports:
                    out = workdir / f"{variant}-{resolution}-{fmt}-{export_precision}-b{batch}"
                    quant = None
                    if get_precision(export_precision).calibrated:
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


def _photo_calibration(workdir: Path, resolution: int) -> Path:
    folder = workdir / "calibration-photos"
    if not folder.is_dir():
        from ffnet_deploy.data.photos import photo_crops

        photo_crops(folder, CALIB_PHOTOS, max(resolution, 64), seed=0)
    return folder


def spec_jobs(specs: Sequence[Any], workdir: Path, *, runtimes: Sequence[str] | None = None,
              precisions: Sequence[str] | None = None, batches: Sequence[int] = (1,), threads: int | None = None,
              group_by_resolution: bool = False, progress: Progress = NULL) -> list[Job]:
    """Jobs for in-memory models (:class:`~ffnet_deploy.benchmarks.specs.ModelSpec`): FP32 ONNX for ONNX Runtime,
    the IR converted from it for OpenVINO (fp32 and bf16), and eager PyTorch.

    ``group_by_resolution`` interleaves the models of one resolution on one runtime (the mixer comparison);
    otherwise every model on one runtime is interleaved (the peers).
    """
    say = progress.note
    runtimes = cpu_runtimes() if runtimes is None else runtimes
    precisions = (baseline_precision(),) if precisions is None else precisions
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
                    if not reason and (runtime not in cpu_runtimes() or get_precision(precision).calibrated):
                        reason = "the mixer and peer comparisons run fp32 and bf16 on the CPU runtimes"
                    if reason:
                        jobs.append(_skipped(row, reason))
                        continue
                    group = (spec.resolution, batch, runtime) if group_by_resolution else (batch, runtime)
                    shape = (batch, 3, spec.resolution, spec.resolution)
                    if not RUNTIMES.get(runtime).needs_artifact:
                        factory = runner_factory(runtime, None, precision, threads, model=model,
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
    """The file ``runtime`` loads for an in-memory model: its plain ONNX export (once per batch), as the runner takes
    it (ONNX Runtime: as is; OpenVINO: the IR converted from it, ``BaseRunner.model_from_onnx``)."""
    import torch

    stem = workdir / f"{spec.name.replace('/', '-')}-{spec.resolution}-b{batch}"
    onnx_path = stem.with_suffix(".onnx")
    if ("onnx", batch) not in files:
        from ffnet_deploy.exporters.onnx import plain_onnx_export

        say(f"exporting {spec.name} at {spec.resolution} to ONNX")
        with torch.no_grad():
            plain_onnx_export(model, spec.resolution, batch, onnx_path)
        files[("onnx", batch)] = onnx_path
    if (runtime, batch) not in files:
        files[(runtime, batch)] = RUNTIMES.get(runtime).model_from_onnx(files[("onnx", batch)])
    return files[(runtime, batch)]


# -- running --------------------------------------------------------------------------------------------------------


def run_jobs(jobs: Sequence[Job], protocol: Protocol, *, roofline: Any = None,
             progress: Progress = NULL) -> list[BenchRow]:
    """The rows of :func:`measure_rows` (without the roofline as timed in the blocks)."""
    return measure_rows(jobs, protocol, roofline=roofline, progress=progress)[0]


def measure_rows(jobs: Sequence[Job], protocol: Protocol, *, roofline: Any = None,
                 progress: Progress = NULL) -> tuple[list[BenchRow], Any]:
    """Measure every runnable job, every group in the same blocks (interleaved within a group), the roofline's GEMMs
    as one more group when ``roofline`` has picks and there are several blocks; returns the rows in job order, each
    with its paired comparison and verdict, and the roofline as timed in the blocks (``roofline`` itself without
    blocks)."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        if job.make_runner is not None and job.row.status == "ok":
            groups.setdefault(job.group, []).append(i)
    rows = [job.row for job in jobs]
    contenders: dict[int, Contender] = {}
    pools: dict[int, tuple[str | None, bool]] = {}
    for indices in groups.values():
        for i in indices:
            job = jobs[i]
            label = f"{job.row.model} {job.row.runtime} {job.row.precision}" + (
                f" {job.row.compute_units}" if job.row.compute_units else "") + f" @{job.row.resolution}"
            if job.row.batch != 1:
                label += f" b{job.row.batch}"
            contenders[i], pools[i] = _contender(label, job, i)
    gemm: dict[str, Contender] = {}
    if roofline is not None and protocol.blocks > 1 and roofline.picks:
        from ffnet_deploy.runtimes._worker import WorkerContender

        for dtype, (engine, n) in roofline.picks.items():
            gemm[dtype] = WorkerContender(f"GEMM {dtype} {n}", {
                "kind": "call", "factory": "ffnet_deploy.benchmarks.roofline:gemm_call",
                "args": [engine, dtype, n, roofline.threads], "threads": roofline.threads})
    lists = [[contenders[i] for i in indices] for indices in groups.values()]
    waits = measure_groups(lists + ([list(gemm.values())] if gemm else []), protocol, progress)
    if gemm:
        from ffnet_deploy.benchmarks.roofline import interleaved

        ok = {d: c.block_best_ms for d, c in gemm.items() if c.error is None and c.block_best_ms}
        if ok:
            roofline = interleaved(roofline, ok)
    for g, indices in enumerate(groups.values()):
        for i in indices:
            row, c = rows[i], contenders[i]
            if c.error is not None or not c.samples_ms:
                rows[i] = replace(row, status="failed", reason=c.error or "no samples")
                continue
            stats = latency_stats(c.samples_ms)
            provenance = dict(row.provenance)
            if c.memory_method and c.memory_method != "VmHWM":
                provenance["memory"] = c.memory_method
            if c.runner is not None and c.runner.notices:
                provenance["notices"] = list(c.runner.notices)
            policy, in_worker = pools[i]
            rows[i] = replace(row, latency_ms=stats, iterations=len(c.samples_ms),
                              host_measurement=row.host_measurement or _latency_note(row.runtime),
                              throughput_ips=_finite(throughput(row.batch, stats["p50"])),
                              first_inference_ms=c.first_inference_ms, peak_rss_mb=c.peak_rss_mb,
                              execution_precision=c.execution_precision, provenance=provenance,
                              blocks_ms=tuple(b if math.isfinite(b) else None for b in c.block_best_ms),
                              cpu_wait=waits[g], omp_wait_policy=policy, worker=in_worker)
            rows[i] = _with_roofline(rows[i], roofline, stats["p50"])
    return judge(rows, protocol.blocks), roofline


def _contender(label: str, job: Job, seed: int) -> tuple[Contender, tuple[str | None, bool]]:
    """The contender of ``job`` and, for an in-memory (eager PyTorch) runner, its OpenMP wait policy and whether it
    runs in a worker: there always, unless the model cannot be pickled for one (then in this process, as it is)."""
    factory = job.make_runner
    feed = job.feed(seed)
    if isinstance(factory, RunnerFactory) and not RUNTIMES.get(factory.runtime).needs_artifact:
        import shutil

        from ffnet_deploy.runtimes._worker import WAIT_POLICY, WorkerContender, temp_folder, torch_job

        folder = temp_folder()
        try:
            spec = torch_job(factory.model, factory.precision, factory.threads, factory.resolution, feed, folder)
        except Exception:  # noqa: BLE001 - a model that does not pickle runs here, and says how its pool waits
            shutil.rmtree(folder, ignore_errors=True)
        else:
            return (WorkerContender(label, spec, cleanup=lambda: shutil.rmtree(folder, ignore_errors=True)),
                    (WAIT_POLICY, True))
        return (Contender(name=label, make_runner=factory, feed=feed),
                (os.environ.get("OMP_WAIT_POLICY") or "default (spins)", False))
    return Contender(name=label, make_runner=factory, feed=feed), (None, False)


def _with_roofline(row: BenchRow, roofline: Any, p50: float) -> BenchRow:
    """``row`` with its roofline fraction: paired by block with the interleaved GEMM when there is one."""
    if roofline is None or not row.gmacs:
        return row
    from ffnet_deploy.artifact.precisions import PRECISIONS
    from ffnet_deploy.benchmarks.roofline import roofline_fraction

    peak = roofline.peak_gflops(row.precision)
    if not peak:
        return row
    fraction = roofline_fraction(row.gmacs, row.batch, p50, peak)
    dtype = PRECISIONS.get(row.precision).roofline_dtype
    gemm_blocks = roofline.block_rates.get(dtype, ()) if roofline.interleaved else ()
    paired = [roofline_fraction(row.gmacs, row.batch, ms, rate) for ms, rate in zip(row.blocks_ms, gemm_blocks,
                                                                                     strict=False)
              if ms and rate]
    if paired:
        import statistics

        fraction = statistics.median(paired)
    return replace(row, roofline_fraction=fraction, roofline_exceeded=fraction > 1.0)


def judge(rows: Sequence[BenchRow], blocks: int) -> list[BenchRow]:
    """Every measured row with its reference, its paired ratio to it and its verdict
    (:func:`ffnet_deploy.runtimes.noise.verdict`).

    The reference of a row is eager PyTorch at the baseline precision of the same model, resolution and batch when it
    ran with a quiet OpenMP pool (a spinning pool's times swing with the load: never a reference), else the same
    runtime's baseline-precision row of that model; the reference row itself is judged by its own block times.
    """
    from ffnet_deploy.benchmarks.results import Ratio
    from ffnet_deploy.runtimes._worker import WAIT_POLICY
    from ffnet_deploy.runtimes.noise import own_spread, paired_ratio, verdict

    reference_runtime = runtime_names()[0]
    baseline = baseline_precision()
    ok = [r for r in rows if r.status == "ok" and r.source == "measured" and r.blocks_ms]

    def same(a: BenchRow, b: BenchRow) -> bool:
        return (a.model, a.resolution, a.batch) == (b.model, b.resolution, b.batch) and a is not b

    out = []
    for row in rows:
        if row not in ok:
            out.append(row)
            continue
        ref = next((r for r in ok if same(r, row) and r.runtime == reference_runtime and r.precision == baseline
                    and r.omp_wait_policy == WAIT_POLICY), None)
        if ref is None or row.runtime == reference_runtime:
            ref = next((r for r in ok if same(r, row) and r.runtime == row.runtime and r.precision == baseline
                        and r.compute_units == row.compute_units), None)
        ratio = paired_ratio(ref.blocks_ms, row.blocks_ms) if ref is not None else None
        waits = [w for w in (row.cpu_wait, ref.cpu_wait if ref is not None else None) if w is not None]
        v = verdict(ratio, own_spread([b for b in row.blocks_ms if b is not None]), blocks=blocks,
                    cpu_wait=max(waits) if waits else None)
        out.append(replace(row, reference=f"{ref.runtime} {ref.precision}" if ratio is not None else None,
                           ratio=Ratio(ratio.median, ratio.low, ratio.high, ratio.blocks) if ratio else None,
                           verdict=v.verdict, noise_reasons=v.reasons))
    return out


def _latency_note(runtime: str) -> str | None:
    """The runner's note when its timings here are not its target device's (``BaseRunner.latency_note``)."""
    from ffnet_deploy.runtimes import RUNTIMES

    return RUNTIMES.get(runtime).latency_note if runtime in RUNTIMES else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def default_threads() -> int:
    """Threads of one inference when ``--threads`` is not given: every CPU this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def make_result(rows: Sequence[BenchRow], protocol: Protocol, *, device_name: str | None, command: str,
                roofline: Any = None, noise: Any = None) -> BenchResult:
    """The :class:`BenchResult` of one run on this machine."""
    return BenchResult(device=Device.here(device_name), rows=tuple(rows), command=command,
                       protocol=protocol.to_dict(), roofline=roofline.to_dict() if roofline is not None else None,
                       noise=noise)


def table_noise(rows: Sequence[BenchRow], protocol: Protocol, load_before: dict | None, load_after: dict | None,
                threads: int | None) -> Any:
    """The table's :class:`~ffnet_deploy.benchmarks.results.Noise`: noisy when any measured row is, or when the
    load average says the machine was oversubscribed (:func:`ffnet_deploy.runtimes.noise.verdict`)."""
    from ffnet_deploy.benchmarks.results import Noise, load_of
    from ffnet_deploy.environment import usable_cpus
    from ffnet_deploy.runtimes.noise import Verdict, combine, verdict

    measured = [r for r in rows if r.status == "ok" and r.verdict is not None]
    cpus = usable_cpus()
    load = verdict(load_before=load_before["1m"] if load_before else None,
                   load_after=load_after["1m"] if load_after else None, cpus=cpus, own_threads=threads or 0)
    rows_v = [Verdict(r.verdict, tuple(f"{r.model} {r.runtime} {r.precision}: {why}" for why in r.noise_reasons))
              for r in measured]
    total = combine([*rows_v, load])
    waits = [r.cpu_wait for r in measured if r.cpu_wait is not None]
    return Noise(verdict=total.verdict, reasons=total.reasons, load_before=load_of(load_before),
                 load_after=load_of(load_after), usable_cpus=cpus, blocks=protocol.blocks,
                 cpu_wait=max(waits) if waits else None)


# -- one bench run --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchRequest:
    """Everything ``ffnet-deploy bench`` was asked to do (the CLI options, as a Python user passes them)."""

    artifacts: tuple[Path, ...] = ()
    variant: str | None = None
    checkpoint: Path | None = None
    runtimes: tuple[str, ...] | None = None  # None: cpu_runtimes(), torch, onnxruntime, openvino (artifacts: each one's
    # own)
    precisions: tuple[str, ...] | None = None  # None: the baseline, fp32 (artifacts: each one's own)
    resolution: int | None = None
    batches: tuple[int, ...] = (1,)
    threads: int | None = None  # None: every CPU this process may use
    protocol: Protocol = Protocol(blocks=5)
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


def bench(request: BenchRequest, workdir: Path, *, command: str = "", progress: Progress = NULL) -> BenchResult:
    """Run one bench: build the jobs, probe the roofline, measure, and return the result.

    Args:
        request: What to measure.
        workdir: A scratch folder for exports (the caller removes it).
        command: The command line, recorded in the result.
        progress: Gets a note per preparation (exports, probes) and the timing steps
            (:func:`~ffnet_deploy.runtimes.timing.measure`).
    """
    request.validate()
    from ffnet_deploy.runtimes.noise import load_snapshot

    load_before = load_snapshot()
    say = progress.note
    threads, capped = cap_threads(request.threads, "bench")
    if capped:
        say(f"note: {capped}")
    threads = threads or default_threads()
    runtimes = request.runtimes or cpu_runtimes()
    precisions = request.precisions or (baseline_precision(),)
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
                                 progress=progress)
    if request.compare_mixers:
        from ffnet_deploy.benchmarks.specs import mixer_specs

        jobs += spec_jobs(mixer_specs(request.mixer_resolutions, base=request.mixer_base), workdir,
                          runtimes=runtimes, precisions=_uncalibrated(precisions), batches=request.batches,
                          threads=threads, group_by_resolution=True, progress=progress)
    if request.peers:
        from ffnet_deploy.benchmarks.specs import ffnet_spec, peer_specs

        jobs += spec_jobs([ffnet_spec(request.mixer_base), *peer_specs()], workdir, runtimes=runtimes,
                          precisions=_uncalibrated(precisions), batches=request.batches, threads=threads,
                          progress=progress)
    roofline = None
    if request.roofline:
        from ffnet_deploy.benchmarks.roofline import gemm_probe

        say(f"probing this CPU's GEMM roofline ({threads} threads)")
        roofline = gemm_probe(threads)
    rows, roofline = measure_rows(jobs, request.protocol, roofline=roofline, progress=progress)
    noise = table_noise(rows, request.protocol, load_before, load_snapshot(), threads)
    return make_result(rows, request.protocol, device_name=request.device_name, command=command, roofline=roofline,
                       noise=noise)


def _uncalibrated(precisions: Sequence[str]) -> list[str]:
    """In-memory models have no calibration data: the mixer and peer comparisons drop calibrated precisions."""
    return [p for p in precisions if not get_precision(p).calibrated] or [baseline_precision()]


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


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder holding results files ffnet-deploy did not write: before
    anything is measured (:func:`write_outputs` checks each file again when it writes it)."""
    from ffnet_deploy.atomic import replace_refusal
    from ffnet_deploy.benchmarks.plots import not_our_plot
    from ffnet_deploy.benchmarks.results import not_written_by_bench

    if out.exists() and not out.is_dir():
        raise FFNetDeployError(f"bench | --out {out} is a file; pass a folder for the results")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # found now, not after the measurements
        raise FFNetDeployError(f"bench | --out {out} cannot be created: {blocker} is a file; pass another folder")
    # checked again when each file is written; here, before anything is measured
    verdicts = {**{f"results.{kind}": not_written_by_bench for kind in ("json", "csv", "md")},
                **{f"{name}.png": not_our_plot for name in PLOT_NAMES}}
    for name, verdict in verdicts.items():
        reason = replace_refusal(out / name, verdict)
        if reason:
            raise FFNetDeployError(f"bench | refusing to overwrite {out / name}: {reason}; choose another --out "
                                   "folder")


def bench_scratch(request: BenchRequest, *, command: str = "", progress: Progress = NULL) -> BenchResult:
    """:func:`bench` in a scratch folder of its own (``ffnet-bench-*`` under the temporary folder), removed
    afterwards whatever happens."""
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="ffnet-bench-"))
    try:
        return bench(request, work, command=command, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""TensorRT export: a TRT-ready ONNX, the exact ``trtexec`` command, and an engine where TensorRT and a GPU exist.

An engine is specific to the GPU and the TensorRT version that built it, so the normal workflow is to export on a
workstation and build on the device (e.g. a Jetson): the artifact directory then holds ``model.onnx`` and
``build_engine.sh``, and the export exits 0 with a notice. Where ``tensorrt`` imports and CUDA is available, the
engine is also built here with the Python API (``model.engine``).

The ONNX is the ONNX stage (:func:`~ffnet_deploy.exporters.onnx.export_onnx_stage`), written with the ONNX part of
:class:`TensorRTOptions` and always kept: it is what the device builds from. Both build paths come from one
:class:`TrtBuildPlan`, so the script and the Python build use the same settings: precision, optimization profile
(only for ``--dynamic-batch``; trtexec refuses shapes for a static model), workspace pool limit, persistent timing
cache, and DLA core with GPU fallback.

Versions: the commands target TensorRT 10.x, which JetPack 6 ships. TensorRT 11 removed the weak-typing precision
flags (``--fp16``, ``BuilderFlag.FP16``); FP16 there needs an ONNX converted to mixed precision beforehand, and
11.x does not support DLA. The Python build detects this and says so instead of failing obscurely. INT8 is meant to
come from an explicit Q/DQ ONNX (the quantization work); the deprecated implicit calibrator is never used.

The format (:data:`FORMAT`): ``.engine``/``.plan`` files, fp16 (default), fp32 or int8 (the ONNX Runtime quantizer's
explicit symmetric Q/DQ graph, ``--target tensorrt``; a dynamic batch is allowed). Validation
(:func:`validation_targets`) runs the engine on the ``tensorrt`` runner when it was built and the TensorRT-ready
``model.onnx`` on the ONNX format's runner, judged as the graph it is (fp32 for a weakly typed graph); a model file
inside the folder is validated as TensorRT. The timing cache is a build cache that every engine build updates, so it is
not hash-checked (:func:`mutable_files`). Precision read back (:func:`read_tensorrt_precision`): the precision of the
*engine*, which is what the manifest describes. The TensorRT-ready ONNX of an fp16 engine is an fp32 graph (weak
typing: ``trtexec --fp16`` picks the layer precisions), so the engine's precision is read from the ONNX *and* the
build: a quantized graph builds an int8 engine, a float16 graph or ``--fp16`` in ``build_engine.sh`` an fp16 one,
anything else an fp32 one. A serialized engine on its own is not inspected.
"""

from __future__ import annotations

import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ffnet_deploy.artifact.formats import FormatSpec, Quantizer, RuntimeChoice
from ffnet_deploy.artifact.inspect import PrecisionEvidence
from ffnet_deploy.artifact.manifest import Manifest
from ffnet_deploy.atomic import write_bytes
from ffnet_deploy.errors import ConfigError, ExportError
from ffnet_deploy.exporters.base import (
    INPUT_NAME,
    ExportConfig,
    ExportedArtifact,
    Exporter,
    Log,
    option,
    register_exporter,
    unwrap,
)
from ffnet_deploy.exporters.onnx import FORMAT as ONNX_FORMAT
from ffnet_deploy.exporters.onnx import STAGE_FILE, OnnxOptions, export_onnx_stage, read_onnx_precision

if TYPE_CHECKING:
    from torch import nn

"""Gate tolerance of a GPU engine: TensorRT allows TF32 for FP32 layers by default, FP16 rounds activations."""

DEFAULT_TIMING_CACHE = "timing.cache"
"""The timing cache ``build_engine.sh`` reads and updates, relative to the artifact directory."""

TRTEXEC_FALLBACKS = ("/usr/src/tensorrt/bin/trtexec",)
"""Where ``build_engine.sh`` looks for ``trtexec`` after ``$TRTEXEC`` and ``PATH``: JetPack installs it there and does
not put it on ``PATH``."""


@dataclass(frozen=True)
class TensorRTOptions(OnnxOptions):
    """Options of ``--format tensorrt``: the ONNX stage's (``opset``, ``simplify``) plus the engine build's."""

    format_name: ClassVar[str] = "tensorrt"

    workspace_mb: int = option(4096, "--trt-workspace")  # builder workspace memory pool limit, MiB
    dla_core: int | None = option(None, "--dla-core")  # Jetson DLA core (with GPU fallback), or None for GPU only
    # Persistent timing cache of the engine build on this machine (read and updated), or None. Never written into
    # build_engine.sh: a timing cache belongs to one GPU, so the device's build keeps its own next to the artifact.
    timing_cache: Path | None = option(None, "--timing-cache")

    def validate(self) -> None:
        super().validate()
        if isinstance(self.workspace_mb, bool) or not isinstance(self.workspace_mb, int) or self.workspace_mb < 1:
            raise self.error(f"--trt-workspace must be a positive number of MiB, got {self.workspace_mb!r}")
        if self.dla_core is not None and (isinstance(self.dla_core, bool) or not isinstance(self.dla_core, int)
                                          or self.dla_core < 0):
            raise self.error(f"--dla-core must be a DLA core number >= 0, got {self.dla_core!r}")
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            raise self.error(f"--timing-cache must be a file path, got the directory {self.timing_cache}")


@dataclass(frozen=True)
class TrtBuildPlan:
    """Everything an engine build needs, shared by the ``trtexec`` script and the Python API build."""

    onnx: str  # ONNX file, relative to the artifact directory
    engine: str  # engine file to write, relative to the artifact directory
    precision: str  # "fp32", "fp16" or "int8" (an explicit-QDQ graph; float layers run FP16)
    input_name: str  # network input the profile applies to
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None  # (min, opt, max), None = static
    workspace_mb: int  # workspace memory pool limit, MiB
    timing_cache: str  # timing cache of the script's build, relative to the artifact directory
    dla_core: int | None  # DLA core, None = GPU only

    @classmethod
    def from_config(cls, config: ExportConfig, options: TensorRTOptions, precision: str,
                    onnx: str = "model.onnx") -> TrtBuildPlan:
        """The plan of an export whose ONNX stage is ``onnx`` (relative to the artifact directory)."""
        r = config.resolution
        shapes = None
        if config.dynamic_batch:
            lo, opt, hi = config.dynamic_batch
            shapes = ((lo, 3, r, r), (opt, 3, r, r), (hi, 3, r, r))
        return cls(onnx, "model.engine", precision, INPUT_NAME, shapes, options.workspace_mb, DEFAULT_TIMING_CACHE,
                   options.dla_core)

    def trtexec_args(self) -> list[str]:
        """The ``trtexec`` arguments (TensorRT 10.x flag names)."""
        args = [f"--onnx={self.onnx}", f"--saveEngine={self.engine}"]
        if self.precision == "fp16":
            args.append("--fp16")
        elif self.precision == "int8":
            # Explicit quantization: the Q/DQ nodes fix the INT8 layers; --fp16 lets the rest run in half precision.
            args += ["--int8", "--fp16"]
        if self.shapes:
            for flag, shape in zip(("--minShapes", "--optShapes", "--maxShapes"), self.shapes, strict=True):
                args.append(f"{flag}={self.input_name}:{'x'.join(map(str, shape))}")
        args.append(f"--memPoolSize=workspace:{self.workspace_mb}M")
        args.append(f"--timingCacheFile={self.timing_cache}")
        if self.dla_core is not None:
            args += [f"--useDLACore={self.dla_core}", "--allowGPUFallback"]
        return args

    def command(self, trtexec: str = "trtexec") -> str:
        """The whole command line, shell-quoted."""
        return shlex.join([trtexec, *self.trtexec_args()])


def build_script(plan: TrtBuildPlan, header: str) -> str:
    """The ``build_engine.sh`` text: finds ``trtexec`` and runs the plan's command from the artifact directory.

    ``trtexec`` is ``$TRTEXEC`` when set, else the one on ``PATH``, else :data:`TRTEXEC_FALLBACKS` (JetPack's
    ``/usr/src/tensorrt/bin``); without one the script says where it looked and exits 127. Every path in the command
    is relative to the artifact directory (the script ``cd``s there first), so the directory can be copied anywhere;
    ``$TIMING_CACHE`` replaces the timing cache file (e.g. one shared by several artifacts on the device).
    """
    cache_arg = f"--timingCacheFile={plan.timing_cache}"
    args = " \\\n    ".join('"--timingCacheFile=$TIMING_CACHE"' if a == cache_arg else shlex.quote(a)
                              for a in plan.trtexec_args())
    fallbacks = " ".join(shlex.quote(f) for f in TRTEXEC_FALLBACKS)
    return (
        "#!/usr/bin/env bash\n"
        f"# {header}\n"
        "# Build the TensorRT engine ON THE TARGET DEVICE: an engine is specific to the GPU and TensorRT version.\n"
        "# Flags are TensorRT 10.x (JetPack 6). TensorRT 11 removed --fp16 and DLA support; see the manifest.\n"
        "# trtexec: $TRTEXEC, else PATH, else JetPack's location. Timing cache: $TIMING_CACHE, else the one here.\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        'if [[ -n "${TRTEXEC:-}" ]]; then\n'
        '  if ! command -v "$TRTEXEC" >/dev/null 2>&1; then\n'
        '    echo "build_engine.sh: TRTEXEC=$TRTEXEC is not an executable; point it at trtexec or unset it" >&2\n'
        "    exit 127\n"
        "  fi\n"
        "elif command -v trtexec >/dev/null 2>&1; then\n"
        "  TRTEXEC=trtexec\n"
        "else\n"
        f"  for candidate in {fallbacks}; do\n"
        '    if [[ -x "$candidate" ]]; then TRTEXEC="$candidate"; break; fi\n'
        "  done\n"
        '  if [[ -z "${TRTEXEC:-}" ]]; then\n'
        f'    echo "build_engine.sh: trtexec not found in \\$TRTEXEC, on PATH or at {fallbacks}; install TensorRT or '
        'run TRTEXEC=/path/to/trtexec $0" >&2\n'
        "    exit 127\n"
        "  fi\n"
        "fi\n"
        f'TIMING_CACHE="${{TIMING_CACHE:-{plan.timing_cache}}}"\n'
        f'"$TRTEXEC" \\\n    {args}\n'
        f'echo "wrote $(pwd)/{plan.engine}"\n'
    )


def tensorrt_unavailable_reason() -> str | None:
    """``None`` when an engine can be built here, else why not (no ``tensorrt`` package, no CUDA GPU)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (pip install 'ffnet-deploy[tensorrt]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    return None


def build_engine(plan: TrtBuildPlan, workdir: Path, log: Log, timing_cache: Path | None = None) -> Path:
    """Build and serialize the engine with the TensorRT Python API, updating the timing cache file.

    Args:
        plan: The build plan (the script's).
        workdir: The artifact directory.
        log: Progress callback.
        timing_cache: This machine's persistent cache (``--timing-cache``); default: the plan's, in ``workdir``.

    Raises:
        ExportError: ONNX parse errors, an unsupported precision in this TensorRT version, or a failed build.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(workdir / plan.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"tensorrt export | the ONNX parser rejected {plan.onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    if plan.precision in ("fp16", "int8"):
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ExportError(
                f"tensorrt export | TensorRT {trt.__version__} removed the FP16 builder flag (strong typing only); "
                "build FP32 here, or convert the ONNX to mixed precision first, or build with TensorRT 10.x"
            )
        config.set_flag(trt.BuilderFlag.FP16)
        if plan.precision == "int8" and hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)  # with Q/DQ in the graph no calibrator is used (explicit mode)
    if plan.shapes:
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input_name, *plan.shapes)
        config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_path = Path(timing_cache) if timing_cache is not None else workdir / plan.timing_cache
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"building the TensorRT {trt.__version__} engine ({plan.precision})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("tensorrt export | build_serialized_network failed; rerun with trtexec --verbose for details")
    engine = workdir / plan.engine
    engine.write_bytes(bytes(serialized))
    write_bytes(cache_path, bytes(config.get_timing_cache().serialize()), "tensorrt export", ExportError)
    return engine


# --------------------------------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------------------------------

BUILD_SCRIPT = "build_engine.sh"

# trtexec precision flags, strongest first.
_TRT_FLAGS = (("int8", re.compile(r"(?<![\w-])--(int8|best)\b")), ("fp16", re.compile(r"(?<![\w-])--fp16\b")))


def read_tensorrt_precision(path: Path) -> PrecisionEvidence:
    """The precision of a TensorRT artifact's engine, read from its graph and its build script (rules: module
    docstring); ``path`` is the artifact directory or any file in it."""
    folder = path if path.is_dir() else path.parent
    onnx_file = path if path.suffix.lower() in ONNX_FORMAT.suffixes else folder / STAGE_FILE
    script = folder / BUILD_SCRIPT
    graph = read_onnx_precision(onnx_file) if onnx_file.is_file() else None
    if graph is not None and graph.precision in ("int8", "fp16"):
        # A quantized graph builds an int8 engine and a float16 graph an fp16 one, whatever the builder flags say.
        return PrecisionEvidence(graph.precision, f"the engine is built from {onnx_file.name}: {graph.evidence}",
                                 folder)
    if not script.is_file():
        why = "its build_engine.sh is not next to it" if graph is not None else "its ONNX and build script are not"
        return PrecisionEvidence(None, f"a serialized TensorRT engine is not inspected, and {why}", folder)
    text = script.read_text(errors="replace")
    command = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for precision, flag in _TRT_FLAGS:
        match = flag.search(command)
        if match:
            graph_note = f" from an {graph.precision} graph" if graph is not None else ""
            return PrecisionEvidence(precision, f"build_engine.sh builds with {match.group(0)}{graph_note}", folder)
    graph_note = f", {onnx_file.name}: {graph.evidence}" if graph is not None else ""
    return PrecisionEvidence("fp32", f"build_engine.sh has no reduced-precision flag{graph_note}", folder)


def validation_targets(request) -> list:
    """The engine on the TensorRT runner (when it was built), then the TensorRT-ready ONNX on the ONNX format's
    runner, judged as the graph it is: a :data:`FormatSpec.targets` hook.

    Raises:
        ConfigError: When the folder holds neither.
    """
    path, folder, manifest = request.path, request.folder, request.manifest
    runtime = FORMAT.validate_runtime()
    targets = []
    engine = path if path.suffix.lower() in FORMAT.suffixes else None
    if engine is None and manifest is not None and Path(manifest.artifact.path).suffix in FORMAT.suffixes:
        engine = folder / manifest.artifact.path
    if engine is not None and engine.exists():
        targets.append(request.target(engine, runtime, request.model_found, "the engine's build"))
    onnx = path if path.suffix.lower() in ONNX_FORMAT.suffixes else folder / STAGE_FILE
    if onnx.exists():
        graph_runtime = request.runtime_for(ONNX_FORMAT.name)
        # Not said when the engine runs here too (validate then runs the engine, the gate runs both).
        engine_runs = bool(targets) and request.runtime_unavailable(runtime) is None
        graph_note = [] if engine_runs else ["the TensorRT engine itself was not run: its TensorRT-ready ONNX graph "
                                             f"was checked on {graph_runtime} instead"]
        graph = request.inspect(onnx, ONNX_FORMAT.name)
        targets.append(request.target(onnx, graph_runtime, graph, "the TensorRT-ready ONNX", graph=True,
                                      note=graph_note))
    if not targets:
        raise ConfigError(f"validate | {path} holds neither a TensorRT engine nor its model.onnx; re-export it")
    return targets


def not_runnable_hint(folder: Path | None) -> str:
    """What to do when the TensorRT runner cannot run here: check the graph the engine is built from (said when
    ``folder`` holds it, or always when no folder is given)."""
    if folder is None or (folder / STAGE_FILE).is_file():
        return f"; to check the ONNX graph the engine is built from, pass --runtime {ONNX_FORMAT.validate_runtime()}"
    return ""


def mutable_files(manifest: Manifest) -> set[str]:
    """The timing cache: read *and updated* by every engine build (``build_engine.sh`` on the device), a build
    cache, not part of the model."""
    plan = (manifest.details or {}).get("build_plan") or {}
    cache = plan.get("timing_cache")
    return {cache} if isinstance(cache, str) and not Path(cache).is_absolute() else set()


FORMAT = FormatSpec(
    name="tensorrt", title="TensorRT", order=40, suffixes=(".engine", ".plan"),
    precisions=("fp32", "fp16", "int8"), default_precision="fp16",
    runtimes=(RuntimeChoice("tensorrt"),), bench_runtime="tensorrt",
    runs_on="the target device with an NVIDIA GPU and TensorRT (e.g. a Jetson)",
    device="nvidia-gpu", export_device="nvidia-gpu",
    read_precision=read_tensorrt_precision, reads_folder=True, claims_folder=True, targets=validation_targets,
    not_runnable_hint=not_runnable_hint, mutable_files=mutable_files,
    # No extra: onnx/onnxruntime are core dependencies; TensorRT itself is optional (module docstring).
    # INT8 is the ONNX Runtime quantizer's explicit Q/DQ graph: its statistics cache is ONNX Runtime's.
    quantizer=Quantizer(cache_backend="onnxruntime", targets=("tensorrt",), dynamic_batch=True),
)
"""The TensorRT format (module docstring)."""


@register_exporter(FORMAT)
class TensorRTExporter(Exporter):
    """``model.onnx`` + ``build_engine.sh`` (+ ``model.engine`` when TensorRT and a GPU are here)."""

    options_class = TensorRTOptions
    quantization_flags = (*Exporter.quantization_flags, "--target")

    def validate(self, config: ExportConfig) -> None:
        super().validate(config)
        q = config.quantization
        if q is not None and q.target not in (None, *FORMAT.quantizer.targets):
            raise ConfigError(f"tensorrt export | --target {q.target} is for --format onnx; a TensorRT INT8 export "
                              "always writes the explicit symmetric QDQ graph (--target tensorrt)")
        if self.resolve_options(config).dla_core is not None and self.resolve_precision(config) == "fp32":
            raise ConfigError("tensorrt export | DLA runs FP16 or INT8 only; use --precision fp16 with --dla-core")

    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log, *,
               source_sha256: str | None = None) -> ExportedArtifact:
        from ffnet_deploy._version import __version__

        precision = self.resolve_precision(config)
        options = self.resolve_options(config)
        stage = export_onnx_stage(model, config, options, workdir, log)
        # seam: a graph transform (the INT8 quantizer's Q/DQ ONNX) turns `stage` into another OnnxStage here.
        if precision == "int8":
            from ffnet_deploy.quantize.stages import quantize_onnx_stage

            stage = quantize_onnx_stage(stage, model, config, log, FORMAT.quantizer.targets[0])
        plan = TrtBuildPlan.from_config(config, options, precision, onnx=stage.path.name)
        script = workdir / BUILD_SCRIPT
        header = (f"ffnet-deploy {__version__}: {unwrap(model).cfg.name} {config.resolution}px {precision}, "
                  f"batch {':'.join(map(str, config.batch_range())) if config.dynamic_batch else config.batch}")
        script.write_text(build_script(plan, header))
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

        versions = dict(stage.versions)
        notices = list(stage.notices)
        details = stage.details | {"trtexec_command": plan.command(), "build_plan": _plan_dict(plan)}
        reason = tensorrt_unavailable_reason()
        if reason is None:
            import tensorrt as trt

            build_engine(plan, workdir, log, options.timing_cache)
            versions["tensorrt"] = trt.__version__
            path, details["engine_built"] = plan.engine, True
        else:
            path, details["engine_built"] = plan.onnx, False
            details["engine_not_built_because"] = reason
            versions["tensorrt"] = "not installed"
            notices.append(
                f"TensorRT engine not built here: {reason}. Copy the artifact directory to the target device and run "
                f"./build_engine.sh there ({plan.command()})"
            )
        return ExportedArtifact(path=path, inputs=stage.inputs, outputs=stage.outputs, backend_versions=versions,
                                block_outputs=stage.block_outputs, details=details,
                                notices=notices)


def _plan_dict(plan: TrtBuildPlan) -> dict:
    return {
        "precision": plan.precision,
        "shapes": None if plan.shapes is None
        else dict(zip(("min", "opt", "max"), map(list, plan.shapes), strict=True)),
        "workspace_mb": plan.workspace_mb,
        "timing_cache": plan.timing_cache,
        "dla_core": plan.dla_core,
        "gpu_fallback": plan.dla_core is not None,
    }


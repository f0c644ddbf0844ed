"""The artifact formats: one :class:`FormatSpec` each, declared next to its exporter, in :data:`FORMATS`.

A format is one room (``exporters/<format>.py``). Its module declares, once, next to its exporter class::

    @register_exporter(FormatSpec(name="onnx", title="ONNX", order=10, suffixes=(".onnx",), ...))
    class OnnxExporter(Exporter): ...

and everything else that needs to know about formats asks this registry instead of keeping a list: the manifest
(which formats a manifest may declare), :mod:`~ffnet_deploy.artifact.inspect` (how to read the precision back from
the files), the validate engine (which file suffix is which format, which runner checks it, which extra targets an
artifact folder holds), bench (which runner times it), the pipeline (its plan, ``--formats``, the demo's formats,
where each artifact can run) and the CLI's help texts. Runners are matched by name (:attr:`FormatSpec.runtimes`,
:attr:`FormatSpec.bench_runtime`) and declare what they load themselves (``BaseRunner.formats``).

This module sits below the exporters, so it imports none of them by name: the first lookup imports the exporters
package, which imports every module in its folder (:func:`ffnet_deploy.exporters.load_all`), and each registers its
format. A test adds a toy format for the length of a ``with`` block (``FORMATS.temporarily``, through
:func:`ffnet_deploy.exporters.base.exporter_registered`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.registry import Registry


@dataclass(frozen=True)
class PrecisionEvidence:
    """The precision a model file computes in, and what in the file shows it (what a format's ``read_precision``
    returns; :mod:`ffnet_deploy.artifact.inspect` uses it)."""

    precision: str | None  # "fp32", "fp16", "int8"; None when the file could not be inspected here
    evidence: str  # e.g. "float16 weights (99% of weight values)", or why it could not be inspected
    path: Path  # the file (or artifact directory) inspected

    @property
    def known(self) -> bool:
        return self.precision is not None

    def describe(self) -> str:
        """``fp16 (float16 weights (...))`` or ``not inspected (why)``."""
        return f"{self.precision} ({self.evidence})" if self.known else f"not inspected ({self.evidence})"


@dataclass(frozen=True)
class RuntimeChoice:
    """A runner that can run a format, on some platforms only (``sys.platform`` values; empty: everywhere)."""

    runtime: str  # registered runtime name
    platforms: tuple[str, ...] = ()  # e.g. ("darwin",): Core ML's native runner

    def applies(self, platform: str | None = None) -> bool:
        return not self.platforms or (platform or sys.platform) in self.platforms


@dataclass(frozen=True)
class Extra:
    """The optional ``ffnet-deploy`` extra a format's export needs, and the modules of it the export imports.

    Declared once, on the format (:attr:`FormatSpec.extra`): the exporter's check (``Exporter.requires`` is derived
    from it, and a missing module is the one-line ``pip install 'ffnet-deploy[{name}]'`` error) and the demo's
    installed check (:func:`demo_formats`) both read it.
    """

    name: str  # the extra in pyproject.toml: pip install 'ffnet-deploy[{name}]'
    modules: tuple[str, ...]  # what the export imports from it, e.g. ("executorch.exir",)

    @property
    def requires(self) -> tuple[tuple[str, str], ...]:
        """``(module, extra)`` pairs, as :func:`ffnet_deploy.errors.require` and the runners' ``requires`` take."""
        return tuple((module, self.name) for module in self.modules)

    def installed(self) -> bool:
        """Whether the extra is installed: each module's top-level package is found, without importing anything
        (importing a submodule would import its package; an import hook may refuse one: not installed)."""
        return all(_installed(module.partition(".")[0]) for module in self.modules)


@dataclass(frozen=True)
class Quantizer:
    """How a format makes ``int8``: what the quantization options and commands need to know about it."""

    cache_backend: str  # calibration-statistics cache file: <cache_backend>.calibration.json (an on-disk name)
    targets: tuple[str, ...] = ()  # --target values it takes, default first (empty: it takes no --target)
    dynamic_batch: bool = False  # an int8 export may have a dynamic batch
    sensitivity: Callable[..., Any] | None = None  # builds the backend `sensitivity --format <name>` ranks with:
    # (stage, config, calib, transform, work, log) -> a ffnet_deploy.quantize.sensitivity backend
    sensitivity_label: str = ""  # what `sensitivity --format` help says runs it ("ONNX Runtime")
    help: str = ""  # what --target means for it, for the CLI's help ("INT8 ONNX for: cpu (...)")


@dataclass(frozen=True)
class FormatSpec:
    """Everything the toolchain knows about one artifact format, declared once in its exporter's module.

    Hooks (the callables) run in the format's own module, so what is special about a format (TensorRT's engine
    folder, OpenVINO's kept ONNX) stays there. See :mod:`ffnet_deploy.exporters.base` for how a room declares it.
    """

    name: str  # "onnx": --format, the manifest's "format", folder names
    title: str  # "ONNX", for help texts and reports
    order: int  # position in every list (formats, the pipeline's jobs, reports): lower first
    suffixes: tuple[str, ...]  # model files of this format, main one first (a bare file's format is its suffix's)
    precisions: tuple[str, ...]  # stored precisions its exporter makes
    default_precision: str  # what an export makes without --precision
    runtimes: tuple[RuntimeChoice, ...]  # validation and the export gate: the first that applies on this platform
    bench_runtime: str  # what bench times it with (a latency comes from the real engine, never a reference
    # interpreter)
    runs_on: str  # where it runs, as `pipeline --plan` prints it
    read_precision: Callable[[Path], PrecisionEvidence]  # the precision its files compute in, read from the file
    device: str = "cpu"  # the machine a job of this format needs, whole (export, validate, bench): "cpu" (any
    # x86 or Arm machine), "mac", "nvidia-gpu", "android"; a CI matrix maps it to runner labels, Ray to a resource
    export_device: str = "cpu"  # the machine its export and parity check need (Core ML: any; TensorRT: the GPU)
    recognizes: Callable[[Path], bool] | None = None  # whether a file's bytes are this format's model (not its name:
    # validate refuses a file another format recognizes, content_format); a format whose files are another's
    # container (ONNX bytes under its own suffix) recognizes them too; None: it cannot tell its files
    reads_folder: bool = False  # read_precision takes the artifact directory or any file in it, which may not exist
    stage_file: str | None = None  # its file's name when it ships inside another format's folder (model.onnx)
    claims_folder: bool = False  # a model file inside its artifact folder is validated as this format (TensorRT's
    # model.onnx is the engine's graph)
    targets: Callable[[Any], list] | None = None  # validation targets of an artifact (validate.engine.TargetRequest
    # -> ArtifactSpec list); None: the artifact on its runtime
    not_runnable_hint: Callable[[Path | None], str] | None = None  # appended when its runtime cannot run here
    checks: Callable[[Any], list] | None = None  # (validate.engine.ArtifactSpec) -> validate Checks read from the
    # model file itself, added to every validation of it that ran (ExecuTorch's delegation)
    mutable_files: Callable[[Any], set[str]] | None = None  # (Manifest) -> listed files that change after export
    device_steps: tuple[str, ...] = ()  # what the target device itself runs, when it cannot run the pipeline (a
    # phone), as `pipeline --plan` prints it: command templates with {artifact} (the model file) and {id} (the job)
    extra: Extra | None = None  # the optional extra its export needs (None: the core dependencies are enough)
    in_demo: bool = False  # `pipeline --demo` makes it (runs on any machine, no GPU, no extra hardware)
    demo_if_installed: bool = False  # the demo leaves it out when its extra is not installed, rather than fail the
    # main job on it (False: the demo's job fails, naming the extra to install)
    quantizer: Quantizer | None = None  # how it makes int8 (None: through none of the quantize backends)
    exporter: Any = None  # the Exporter class (set by register_exporter)

    def validate_runtime(self, platform: str | None = None) -> str:
        """The runner validation uses on this platform (the first of :attr:`runtimes` that applies).

        Raises:
            ConfigError: When none applies here.
        """
        for choice in self.runtimes:
            if choice.applies(platform):
                return choice.runtime
        raise ConfigError(f"validate | no runtime for {self.name} artifacts on {platform or sys.platform}")

    @property
    def main_suffix(self) -> str:
        return self.suffixes[0]


def load_builtin_formats() -> None:
    """Import the exporters package, which imports every module of its folder; each registers its format."""
    importlib.import_module("ffnet_deploy.exporters").load_all()


FORMATS: Registry[FormatSpec] = Registry("export format", loader=load_builtin_formats)
"""Every artifact format, by name; :func:`format_names` lists them in their declared order."""


def register_format(spec: FormatSpec) -> FormatSpec:
    """Register ``spec`` under its name (``register_exporter`` does, with the exporter class)."""
    if spec.default_precision not in spec.precisions:
        raise ValueError(f"format {spec.name!r}: default precision {spec.default_precision!r} is not one it makes")
    return FORMATS.register(spec.name)(spec)


def get_format(name: str) -> FormatSpec:
    """The spec of ``name``.

    Raises:
        ConfigError: For an unknown format (the message lists the known ones).
    """
    return FORMATS.get(name)


def format_names() -> tuple[str, ...]:
    """Every registered format, in declared order (onnx, openvino, coreml, tensorrt, then any added)."""
    return tuple(s.name for s in sorted(FORMATS.values(), key=lambda s: (s.order, s.name)))


def format_specs() -> tuple[FormatSpec, ...]:
    """Every registered spec, in declared order."""
    return tuple(FORMATS.get(n) for n in format_names())


def format_of_suffix(suffix: str) -> str | None:
    """The format whose model files end in ``suffix`` (case-insensitive), or ``None``."""
    suffix = suffix.lower()
    return next((s.name for s in format_specs() if suffix in s.suffixes), None)


def content_format(path: Path) -> str | None:
    """The format whose model a file's bytes are (the first whose ``recognizes`` says so), or ``None`` when no
    format recognizes it (a folder, or a format that cannot tell its files, TensorRT's engines)."""
    if not path.is_file():
        return None
    return next((s.name for s in format_specs() if s.recognizes is not None and s.recognizes(path)), None)


def model_suffixes(main_only: bool = False) -> tuple[str, ...]:
    """Every model-file suffix, in format order (``main_only``: each format's main one)."""
    return tuple(x for s in format_specs() for x in (s.suffixes[:1] if main_only else s.suffixes))


def bench_runtimes() -> Mapping[str, str]:
    """Format -> the runner bench times it with, in format order."""
    return {s.name: s.bench_runtime for s in format_specs()}


def bench_format_of(runtime: str) -> str | None:
    """The format bench exports for ``runtime`` (whose bench runner it is), or ``None``."""
    return next((f for f, r in bench_runtimes().items() if r == runtime), None)


def demo_formats() -> tuple[str, ...]:
    """The formats `pipeline --demo` makes: those marked for it, less those it makes only when their extra is
    installed (:attr:`FormatSpec.demo_if_installed`) and it is not."""
    return tuple(s.name for s in format_specs()
                 if s.in_demo and not (s.demo_if_installed and s.extra is not None and not s.extra.installed()))


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (an import hook may refuse it: not installed)."""
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def quantizer_targets() -> tuple[str, ...]:
    """Every ``--target`` value of any format's quantizer, in format order."""
    return tuple(dict.fromkeys(t for s in format_specs() if s.quantizer for t in s.quantizer.targets))


def listing(names, conjunction: str = "or") -> str:
    """``"onnx, openvino, coreml or tensorrt"``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}"

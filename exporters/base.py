"""What every exporter shares: the export settings, the registry, the base class and the artifact record.

An exporter turns an (already reparameterized) FFNet into one deployable artifact inside a work directory. It knows
nothing about checkpoints, temporary directories, manifests or parity: :func:`ffnet_deploy.export.export` does those
once for every format.

A format is one room
--------------------
Adding a format is one module, ``exporters/<format>.py``, plus its test ``tests/exporters/test_<format>.py`` (a guard
test fails without it). Nothing else changes: the exporters package imports every module of its folder
(:func:`ffnet_deploy.exporters.load_all`), and the module declares its format once, next to its exporter, as a frozen
:class:`~ffnet_deploy.artifact.formats.FormatSpec` handed to :func:`register_exporter`::

    def _read_precision(path: Path) -> PrecisionEvidence: ...     # what the file itself says (artifact.inspect)

    @register_exporter(FormatSpec(
        name="tflite", title="TFLite", order=50,
        suffixes=(".tflite",),                          # a bare model file of this format
        extra=Extra("tflite", ("tflite_converter",)),   # the optional extra its export imports, if any
        precisions=("fp32", "int8"), default_precision="fp32",
        runtimes=(RuntimeChoice("tflite"),),            # validation's runner; platform-conditional choices allowed
        bench_runtime="tflite",                          # what bench times it with
        runs_on="an Android device (TFLite)",            # what `pipeline --plan` prints
        device="android",                                # the machine its job needs (a CI matrix's runner)
        read_precision=_read_precision,
        quantizer=Quantizer(cache_backend="tflite"),     # only if it makes int8
    ))
    class TFLiteExporter(Exporter):
        options_class = TFLiteOptions
        def export(self, model, config, workdir, log, *, source_sha256=None): ...

Every consumer derives from that registry (:mod:`ffnet_deploy.artifact.formats`): the manifest's accepted formats,
``inspect``'s precision readers, the validate engine (suffixes, runner, the extra targets a folder holds through the
``targets`` hook: TensorRT's engine and TRT-ready ONNX, OpenVINO's ``--keep-onnx`` graph), bench (its runner, the
format it exports for a runner), the pipeline (``--formats``, the demo's formats, ``--plan``'s ``runs_on``) and the
CLI's help. The spec's fields are documented on :class:`~ffnet_deploy.artifact.formats.FormatSpec`; its precisions
are entries of :mod:`ffnet_deploy.artifact.precisions`; its runner declares what it loads and executes
(:class:`~ffnet_deploy.runtimes.base.BaseRunner`: ``formats``, ``executes``, ``precision_unavailable``). The spec
type lives below the exporters (the manifest reader asks the registry, which imports the rooms on its first lookup)
and the hooks live here, in the room. A room imports torch and its backend inside the functions that export, never
at module level, so that reading a manifest or printing help imports neither. :func:`exporter_registered` registers
a format for the length of a ``with`` block (the toy format of ``tests/test_toy_format.py``).

Settings
--------
Settings come in two parts. :class:`ExportConfig` holds what every format understands (output, resolution, batch,
precision, preprocessing, parity). Whatever only one format understands lives in that format's own frozen options
dataclass, a :class:`FormatOptions` subclass declared next to its exporter (``OnnxOptions``, ``CoreMLOptions``, ...)
and named by the exporter's ``options_class``; it travels in ``ExportConfig.options``::

    ExportConfig("coreml", Path("out"), options=CoreMLOptions(class_labels="imagenet"))

The exporter, not generic code, resolves and validates its options (:meth:`Exporter.resolve_options`), so options
of another format are refused instead of silently ignored.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ffnet_deploy.artifact.formats import FORMATS, FormatSpec, load_builtin_formats
from ffnet_deploy.artifact.manifest import TensorSpec
from ffnet_deploy.artifact.precisions import get_precision
from ffnet_deploy.errors import ConfigError, require
from ffnet_deploy.progress import Events
from ffnet_deploy.quantize.config import QuantizationConfig
from ffnet_deploy.registry import Registry

if TYPE_CHECKING:  # torch is imported where a model is exported, not with the format declarations
    from torch import nn

INPUT_RANGES = ("normalized", "0-1", "0-255")
"""What the artifact's input holds: ImageNet-normalized floats (nothing baked in), 0-1 floats, or uint8 pixels."""

INPUT_NAME = "images"
OUTPUT_NAME = "logits"

LICENSE_NOTE = (
    "FFNet architecture: Yun, Lee, Ro, arXiv 2406.02021 (code ysj9909/FFNet). The weights carry the license of "
    "their source checkpoint; exported with ffnet-deploy (Apache-2.0)."
)

Log = Events
"""Where an exporter reports (:mod:`ffnet_deploy.progress`): ``log.stage("trace")`` when a stage that is a fault
point begins (``trace``, ``simplify``, ``convert``), ``log.note(text)`` (or ``log(text)``) for a line, ``log.warn``
for a warning."""


def option(default: Any, flag: str) -> Any:
    """A :class:`FormatOptions` field with its CLI flag, so that messages about the field name the flag."""
    return field(default=default, metadata={"flag": flag})


@dataclass(frozen=True)
class FormatOptions:
    """Base class of the per-format options: a frozen dataclass declared next to its exporter.

    Every field has a default (``OnnxOptions()`` is a complete ONNX configuration) and is declared with
    :func:`option`, which records the CLI flag that sets it. Subclasses set ``format_name`` to the format they
    configure and override :meth:`validate`. An exporter that consumes another stage's options (OpenVINO and
    TensorRT start from the ONNX stage) subclasses that stage's options, so its users set them in one flat object.
    """

    format_name: ClassVar[str] = "base"  # the export format these options configure

    def validate(self) -> None:
        """Check the values on their own (cross-checks with :class:`ExportConfig` are the exporter's).

        Raises:
            ConfigError: One line naming the flag, what it needs and what it got.
        """

    @classmethod
    def flag(cls, name: str) -> str:
        """The CLI flag of field ``name`` (``--opset``), or the field name for a field without one."""
        for f in fields(cls):
            if f.name == name:
                return f.metadata.get("flag", name)
        return name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    def error(self, message: str) -> ConfigError:
        """A :class:`ConfigError` prefixed with this format's component name."""
        return ConfigError(f"{self.format_name} export | {message}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class ExportConfig:
    """Settings of one export that every format shares, plus the format's own ``options``.

    Every field has a default except ``format`` and ``output``, so a Python user writes
    ``ExportConfig("onnx", Path("out/ffnet_1-onnx"))`` and overrides what they need; format-specific settings go in
    ``options``, e.g. ``ExportConfig("tensorrt", out, options=TensorRTOptions(workspace_mb=1024))``. Validation
    happens in :meth:`validate` (shared fields) and in the chosen exporter (:meth:`Exporter.validate`), which also
    resolves and checks ``options``.
    """

    format: str  # a registered format name (ffnet_deploy.artifact.formats): "onnx", "openvino", ...
    output: Path  # artifact directory to create (built next to it, then renamed)
    resolution: int | None = None  # input side in pixels, a multiple of 32; None = the variant's default
    batch: int = 1  # fixed batch size (ignored when dynamic_batch is set)
    dynamic_batch: tuple[int, int, int] | None = None  # (min, opt, max) batch for a dynamic batch axis, or None
    precision: str | None = None  # a precision the format makes ("fp32", "int8"); None = the format's default
    reparameterize: bool = True  # fuse BN, branches and layer scales before export (--no-reparam turns it off)
    include_preprocessing: bool = False  # bake ImageNet mean/std normalization into the ONNX graph
    input_range: str = "0-255"  # with include_preprocessing: "0-255" (uint8 input) or "0-1" (float input)
    options: FormatOptions | None = None  # the format's own options (its exporter's options_class); None = defaults
    quantization: QuantizationConfig | None = None  # calibration / compression settings (int8, Core ML --weights)
    check_parity: bool = True  # run the export-time parity gate (ONNX Runtime / OpenVINO on CPU)
    parity_samples: int = 2  # random inputs the parity gate compares
    force: bool = False  # replace an existing artifact directory
    keep_failed: bool = False  # on a failed parity gate, keep the artifact in <output>.failed/ for inspection

    # -- derived values ---------------------------------------------------------------------------------------------

    def batch_range(self) -> tuple[int, int, int]:
        """``(min, opt, max)`` batch; all three equal ``batch`` for a fixed-batch export."""
        return tuple(self.dynamic_batch) if self.dynamic_batch else (self.batch, self.batch, self.batch)

    def input_dtype(self) -> np.dtype:
        """Element type of the artifact's input: uint8 only when 0-255 preprocessing is baked in."""
        if self.include_preprocessing and self.input_range == "0-255":
            return np.dtype(np.uint8)
        return np.dtype(np.float32)

    def effective_input_range(self) -> str:
        """``input_range`` when preprocessing is baked, else ``"normalized"``."""
        return self.input_range if self.include_preprocessing else "normalized"

    def validate(self) -> None:
        """Check the format-independent options.

        The format's ``options`` are checked by its exporter (:meth:`Exporter.resolve_options`).

        Raises:
            ConfigError: With one message per problem kind (resolution, batch, input range, ...).
        """
        if self.resolution is not None and (self.resolution < 32 or self.resolution % 32):
            raise ConfigError(
                f"export | --resolution must be a positive multiple of 32 (FFNet downsamples by 32), got "
                f"{self.resolution}; try {max(32, round(self.resolution / 32) * 32)}"
            )
        if self.batch < 1:
            raise ConfigError(f"export | --batch must be at least 1, got {self.batch}")
        if self.dynamic_batch is not None:
            if len(self.dynamic_batch) != 3:
                raise ConfigError(f"export | --dynamic-batch needs MIN:OPT:MAX, got {self.dynamic_batch}")
            lo, opt, hi = self.dynamic_batch
            if not 1 <= lo <= opt <= hi:
                raise ConfigError(f"export | --dynamic-batch needs 1 <= MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
        if self.input_range not in INPUT_RANGES[1:]:
            raise ConfigError(
                f"export | --input-range must be '0-255' (uint8) or '0-1' (float), got {self.input_range!r}"
            )
        if self.options is not None and not isinstance(self.options, FormatOptions):
            raise ConfigError(f"export | options must be a format's options object such as OnnxOptions, got "
                              f"{type(self.options).__name__}")
        if self.quantization is not None:
            if not isinstance(self.quantization, QuantizationConfig):
                raise ConfigError(f"export | quantization must be a QuantizationConfig, got "
                                  f"{type(self.quantization).__name__}")
            self.quantization.validate()
        if self.parity_samples < 1:
            raise ConfigError(f"export | parity_samples must be at least 1, got {self.parity_samples}")

    def to_dict(self) -> dict:
        """JSON-ready form (paths as strings); ``options`` is the format options' own dict, or ``None``.

        The export orchestrator resolves ``options`` (the format defaults when ``None``) before it writes this into
        the manifest, so a manifest always records every option the export ran with.
        """
        # Not dataclasses.asdict: it would turn options into a plain dict without FormatOptions.to_dict's care.
        out = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)
               if f.name not in ("options", "quantization")}
        out["options"] = None if self.options is None else self.options.to_dict()
        out["quantization"] = None if self.quantization is None else self.quantization.to_dict()
        return out


@dataclass
class ExportedArtifact:
    """What an exporter produced inside the work directory; the orchestrator turns it into a manifest."""

    path: str  # main model file or package, relative to the work directory (manifest "artifact.path")
    inputs: list[TensorSpec]  # artifact inputs
    outputs: list[TensorSpec]  # artifact outputs
    backend_versions: dict[str, str]  # backend package -> version, merged into manifest "versions"
    block_outputs: dict[str, str] | None = None  # "stages.S.B"/"patch_embed" -> graph tensor name (graph formats)
    details: dict[str, Any] = field(default_factory=dict)  # format-specific facts for the manifest (gelu, ...)
    notices: list[str] = field(default_factory=list)  # things the user must be told (e.g. engine not built)
    input_range: str | None = None  # what the artifact's input takes, when the format decides it (Core ML image)


# --------------------------------------------------------------------------------------------------------------------
# Registry and base class
# --------------------------------------------------------------------------------------------------------------------


class Exporter(ABC):
    """Base class of all exporters.

    Subclasses set the class attributes and implement :meth:`export`; :func:`register_exporter` binds the
    format's :class:`~ffnet_deploy.artifact.formats.FormatSpec` (``spec``) and copies from it what the exporter
    reads itself (``format_name``, ``supported_precisions``, ``default_precision``, ``artifact_suffix``), so those
    are declared once, in the spec. Options are per exporter: ``options_class`` names the format's
    :class:`FormatOptions` subclass, and :meth:`resolve_options` turns ``ExportConfig.options`` into a validated
    instance of it.
    """

    spec: ClassVar[FormatSpec | None] = None  # the format's declaration (set by @register_exporter)
    format_name: ClassVar[str] = "base"  # spec.name (set by @register_exporter)
    options_class: ClassVar[type[FormatOptions]] = FormatOptions  # this format's own options dataclass
    supported_precisions: ClassVar[tuple[str, ...]] = ("fp32",)  # spec.precisions (set by @register_exporter)
    default_precision: ClassVar[str] = "fp32"  # spec.default_precision (set by @register_exporter)
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()  # (module, pip extra) the export needs: spec.extra's
    # (set by @register_exporter; a format declares its extra once, on its FormatSpec)
    artifact_suffix: ClassVar[str] = ""  # spec.suffixes[0] (set by @register_exporter)
    quantization_flags: ClassVar[tuple[str, ...]] = (  # QuantizationConfig flags this format takes
        "--calib", "--calib-size", "--calib-method", "--max-drop", "--eval-data", "--calib-cache")
    precision_free_flags: ClassVar[tuple[str, ...]] = ()  # of those, the ones valid without --precision int8

    def check_available(self) -> None:
        """Import every backend module this format needs.

        Raises:
            MissingDependencyError: Naming the extra to install, e.g. ``pip install 'ffnet-deploy[coreml]'``.
        """
        for module, extra in self.requires:
            require(module, extra, f"{self.format_name} export")

    def resolve_precision(self, config: ExportConfig) -> str:
        """The precision this export produces: ``config.precision`` or the format default.

        Raises:
            ConfigError: If the format cannot produce the requested precision.
        """
        precision = config.precision or self.default_precision
        if precision not in self.supported_precisions:
            raise ConfigError(
                f"{self.format_name} export | precision {precision!r} is not supported; choose one of: "
                f"{', '.join(self.supported_precisions)}"
            )
        return precision

    def resolve_options(self, config: ExportConfig) -> FormatOptions:
        """``config.options`` checked and validated, or this format's default options when it is ``None``.

        Raises:
            ConfigError: If the options are another format's (or not options at all), or fail their validation.
        """
        options = config.options if config.options is not None else self.options_class()
        # An exact type match: OpenVINOOptions subclasses OnnxOptions, and neither belongs to the other format.
        if type(options) is not self.options_class:
            owner = getattr(type(options), "format_name", None)
            whose = f" ({owner} export options)" if owner and owner != self.format_name else ""
            raise ConfigError(
                f"{self.format_name} export | options are {type(options).__name__}{whose}; --format "
                f"{self.format_name} takes {self.options_class.__name__}, or None for its defaults"
            )
        options.validate()
        return options

    def validate(self, config: ExportConfig) -> None:
        """Format-specific checks: precision and options; overrides add cross-checks and call ``super()``.

        Raises:
            ConfigError: For an option this format cannot honour.
        """
        precision = self.resolve_precision(config)
        self.resolve_options(config)
        q = config.quantization
        foreign = [flag for flag in (q.given() if q is not None else []) if flag not in self.quantization_flags]
        if foreign:
            raise ConfigError(f"{self.format_name} export | --format {self.format_name} does not take "
                              f"{', '.join(foreign)}")
        if get_precision(precision).calibrated:
            from ffnet_deploy.quantize.config import check_int8_config

            check_int8_config(config, self.format_name, precision)
        elif q is not None:
            given = [flag for flag in q.given() if flag not in self.precision_free_flags]
            if given:
                calibrated = " or ".join(f"--precision {p}" for p in self.supported_precisions
                                         if get_precision(p).calibrated) or "--precision int8"
                verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
                raise ConfigError(f"{self.format_name} export | {', '.join(given)} {verb} to {calibrated}; add "
                                  f"{calibrated} or drop {them}")

    @abstractmethod
    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log, *,
               source_sha256: str | None = None) -> ExportedArtifact:
        """Write the artifact for ``model`` into ``workdir``.

        Args:
            model: The eval-mode FFNet to export (already reparameterized unless ``--no-reparam``).
            config: Validated settings; ``config.resolution`` is resolved (never ``None``). Read the format's
                options through :meth:`resolve_options`: ``config.options`` may be ``None``.
            workdir: An empty, private directory that becomes the artifact directory on success.
            log: Progress callback for one-line step messages.
            source_sha256: SHA-256 of the source checkpoint, for formats that embed provenance in the model (Core
                ML metadata); ``None`` for random weights. The model object carries no provenance of its own.

        Returns:
            The description of what was written.

        Raises:
            ExportError: If the backend fails; the message says which step and why.
        """


EXPORTERS: Registry[type[Exporter]] = Registry("export format", name_attr="format_name", loader=load_builtin_formats)
"""Exporter classes by format name (the same names as :data:`~ffnet_deploy.artifact.formats.FORMATS`)."""


def _bind(spec: FormatSpec, cls: type[Exporter]) -> FormatSpec:
    """``spec`` with its exporter, and the exporter with what it reads of its spec."""
    if "requires" in vars(cls) and "spec" not in vars(cls):  # its own, not what an earlier _bind set
        raise TypeError(f"{cls.__name__} sets requires: declare the format's extra once, as FormatSpec(extra=...)")
    bound = replace(spec, exporter=cls)
    cls.spec = bound
    cls.requires = spec.extra.requires if spec.extra is not None else ()
    cls.supported_precisions = tuple(spec.precisions)
    cls.default_precision = spec.default_precision
    cls.artifact_suffix = spec.suffixes[0]
    return bound


def register_exporter(spec: FormatSpec) -> Callable[[type[Exporter]], type[Exporter]]:
    """Class decorator: register an :class:`Exporter` subclass and its format's declaration (module docstring).

    Raises:
        ValueError: If the format is already registered (a bug, not a user error).
    """
    if not isinstance(spec, FormatSpec):
        raise TypeError(f"register_exporter takes the format's FormatSpec, got {spec!r}")

    def deco(cls: type[Exporter]) -> type[Exporter]:
        bound = _bind(spec, cls)
        EXPORTERS.register(spec.name)(cls)
        FORMATS.register(spec.name)(bound)
        return cls

    return deco


@contextmanager
def exporter_registered(spec: FormatSpec, cls: type[Exporter]) -> Iterator[type[Exporter]]:
    """Register a format and its exporter inside a ``with`` block only (a test's toy format); afterwards both
    registries hold exactly the formats they held before."""
    bound = _bind(spec, cls)
    with EXPORTERS.temporarily(spec.name, cls), FORMATS.temporarily(spec.name, bound):
        yield cls


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------------


def __getattr__(name: str) -> Any:
    # Preprocess subclasses torch's nn.Module: it is defined on first use, so that importing this module (which the
    # format registry does to read a manifest) does not import torch.
    if name == "Preprocess":
        cls = _define_preprocess()
        globals()["Preprocess"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_preprocess() -> type:
    import torch
    from torch import nn

    class Preprocess(nn.Module):
        """ImageNet normalization in front of a model, so that the artifact takes pixels.

        ``(x / r - mean) / std`` is computed as one multiply-add per channel, ``x * a + b`` with ``a = 1 / (r * std)``
        and ``b = -mean / std`` (``r`` = 255 for uint8 input, 1 for 0-1 input). The wrapped model stays under the name
        ``model`` so that exported node scopes read ``/model/stages.S/...``.

        Args:
            model: The classifier taking normalized input.
            mean: Per-channel mean on the 0-1 scale.
            std: Per-channel std on the 0-1 scale.
            input_range: ``"0-255"`` (uint8 pixels) or ``"0-1"`` (float).
        """

        def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], input_range: str) -> None:
            super().__init__()
            self.model = model
            scale = 255.0 if input_range == "0-255" else 1.0
            mean64 = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
            std64 = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
            self.register_buffer("a", (1.0 / (scale * std64)).float())
            self.register_buffer("b", (-mean64 / std64).float())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x.float() * self.a + self.b)
    Preprocess.__module__, Preprocess.__qualname__ = __name__, "Preprocess"
    return Preprocess


def refuse_app_side_settings(config: ExportConfig, fmt: str, *, holder: str, calibration: str) -> None:
    """Refuse the settings a phone format (ExecuTorch, LiteRT) cannot honour, each in one line: preprocessing (the
    app passes the normalized tensor), a dynamic batch (``holder``, "program" or "model", has a fixed one) and a
    calibration method other than minmax (``calibration`` says what its quantizer uses).

    Raises:
        ConfigError: For the first of those settings that ``config`` asks for.
    """
    if config.include_preprocessing:
        raise ConfigError(f"{fmt} export | --include-preprocessing is not supported: the app passes the normalized "
                          "tensor (the manifest's preprocessing says how)")
    if config.dynamic_batch is not None:
        raise ConfigError(f"{fmt} export | --dynamic-batch is not supported: the {holder} has a fixed batch "
                          "(--batch N)")
    q = config.quantization
    if q is not None and q.method != "minmax":
        raise ConfigError(f"{fmt} export | --calib-method {q.method} is not available: {calibration}; drop "
                          "--calib-method")


def io_specs(config: ExportConfig, num_classes: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The ``images``/``logits`` specs of a graph export (batch ``None`` when dynamic)."""
    n = None if config.dynamic_batch else config.batch
    r = config.resolution
    inputs = [TensorSpec(INPUT_NAME, (n, 3, r, r), config.input_dtype().name, "tensor")]
    outputs = [TensorSpec(OUTPUT_NAME, (n, num_classes), "float32", "logits")]
    return inputs, outputs


_BLOCK_SCOPE = re.compile(r"(?:^|/)stages\.(\d+)/stages\.\1\.(\d+)/")
_STEM_SCOPE = re.compile(r"(?:^|/)patch_embed/")


def block_key(scope: str) -> str | None:
    """The FFNet block (``"stages.S.B"`` or ``"patch_embed"``) a module-scoped node name belongs to, if any.

    The TorchScript ONNX exporter names nodes after the module path, e.g.
    ``/stages.1/stages.1.2/channel_mixer/Add`` (or ``/model/stages.1/...`` behind :class:`Preprocess`).
    """
    m = _BLOCK_SCOPE.search(scope)
    if m:
        return f"stages.{m.group(1)}.{m.group(2)}"
    if _STEM_SCOPE.search(scope):
        return "patch_embed"
    return None


def expected_block_keys(model: nn.Module) -> list[str]:
    """Every block key of an FFNet: ``patch_embed`` then ``stages.S.B`` in execution order."""
    keys = ["patch_embed"]
    for s, stage in enumerate(model.stages):
        keys += [f"stages.{s}.{b}" for b in range(len(stage))]
    return keys


def unwrap(model: nn.Module) -> nn.Module:
    """The FFNet inside a :class:`Preprocess` wrapper (or ``model`` itself)."""
    preprocess = globals().get("Preprocess")  # not defined yet: nothing can be wrapped in it
    return model.model if preprocess is not None and isinstance(model, preprocess) else model

"""What every exporter shares: the export settings, the registry, the base class and the artifact record.

An exporter turns an (already reparameterized) FFNet into one deployable artifact inside a work directory. It knows
nothing about checkpoints, temporary directories, manifests or parity: :func:`ffnet_deploy.export.export` does those
once for every format. Adding a format means one module that subclasses :class:`Exporter`, decorates it with
``@register_exporter("name")``, is listed in :data:`ffnet_deploy.exporters.EXPORTER_MODULES`, and has its test.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ffnet_deploy.artifact.manifest import TensorSpec
from ffnet_deploy.errors import ConfigError, require
from ffnet_deploy.registry import Registry

OPSET_RANGE = (13, 21)
"""ONNX opsets an export may target (inclusive)."""

DEFAULT_OPSET = 17

INPUT_RANGES = ("normalized", "0-1", "0-255")
"""What the artifact's input holds: ImageNet-normalized floats (nothing baked in), 0-1 floats, or uint8 pixels."""

INPUT_NAME = "images"
OUTPUT_NAME = "logits"

LICENSE_NOTE = (
    "FFNet architecture: Yun, Lee, Ro, arXiv 2406.02021 (code ysj9909/FFNet). The weights carry the license of "
    "their source checkpoint; exported with ffnet-deploy (Apache-2.0)."
)

Log = Callable[[str], None]
"""Progress callback: receives one short human-readable line per step."""


@dataclass(frozen=True)
class ExportConfig:
    """Settings of one export. Validation happens in :meth:`validate` and the chosen exporter's checks.

    Every field has a default except ``format`` and ``output``, so a Python user writes
    ``ExportConfig("onnx", Path("out/ffnet_1-onnx"))`` and overrides what they need.
    """

    format: str  # registered exporter name: "onnx", "openvino", "coreml", "tensorrt"
    output: Path  # artifact directory to create (built next to it, then renamed)
    resolution: int | None = None  # input side in pixels, a multiple of 32; None = the variant's default
    batch: int = 1  # fixed batch size (ignored when dynamic_batch is set)
    dynamic_batch: tuple[int, int, int] | None = None  # (min, opt, max) batch for a dynamic batch axis, or None
    precision: str | None = None  # "fp32" | "fp16" | ("int8" later); None = the exporter's default_precision
    opset: int = DEFAULT_OPSET  # ONNX opset for onnx/openvino/tensorrt, within OPSET_RANGE
    reparameterize: bool = True  # fuse BN, branches and layer scales before export (--no-reparam turns it off)
    include_preprocessing: bool = False  # bake ImageNet mean/std normalization into the ONNX graph
    input_range: str = "0-255"  # with include_preprocessing: "0-255" (uint8 input) or "0-1" (float input)
    simplify: bool = True  # run onnxsim on ONNX graphs (a failure keeps the unsimplified graph)
    coreml_input: str = "image"  # Core ML input: "image" (ImageType, the app passes RGB pixels) or "tensor"
    labels: str | None = None  # Core ML classifier labels: None (no classifier), "imagenet", or a labels file path
    trt_workspace_mb: int = 4096  # TensorRT builder workspace pool limit, MiB
    trt_dla_core: int | None = None  # Jetson DLA core (with GPU fallback), or None for GPU only
    trt_timing_cache: Path | None = None  # persistent TensorRT timing cache file (read and updated), or None
    check_parity: bool = True  # run the export-time parity gate (ONNX Runtime / OpenVINO on CPU)
    parity_samples: int = 2  # random inputs the parity gate compares
    force: bool = False  # replace an existing artifact directory

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

        Raises:
            ConfigError: With one message per problem kind (resolution, batch, opset, input range, ...).
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
        if not OPSET_RANGE[0] <= self.opset <= OPSET_RANGE[1]:
            raise ConfigError(f"export | --opset must be within {OPSET_RANGE[0]}..{OPSET_RANGE[1]}, got {self.opset}")
        if self.input_range not in INPUT_RANGES[1:]:
            raise ConfigError(
                f"export | --input-range must be '0-255' (uint8) or '0-1' (float), got {self.input_range!r}"
            )
        if self.coreml_input not in ("image", "tensor"):
            raise ConfigError(f"export | --coreml-input must be 'image' or 'tensor', got {self.coreml_input!r}")
        if self.trt_workspace_mb < 1:
            raise ConfigError(f"export | --trt-workspace must be a positive number of MiB, got {self.trt_workspace_mb}")
        if self.trt_dla_core is not None and self.trt_dla_core < 0:
            raise ConfigError(f"export | --dla-core must be >= 0, got {self.trt_dla_core}")
        if self.parity_samples < 1:
            raise ConfigError(f"export | parity_samples must be at least 1, got {self.parity_samples}")

    def to_dict(self) -> dict:
        """JSON-ready form (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ParityTarget:
    """A file the export-time parity gate runs on CPU, and how strictly it is compared with PyTorch."""

    runtime: str  # runner name for ffnet_deploy.runtimes.create_runner, e.g. "onnxruntime"
    path: str  # file name relative to the artifact directory
    rtol: float  # allowed max |artifact - torch| / max |torch|
    options: dict = field(default_factory=dict)  # runner keyword options
    output: str | None = None  # output to compare; None: the artifact's first output
    probabilities: bool = False  # the output holds class probabilities: compare with softmax(torch logits)


@dataclass
class ExportedArtifact:
    """What an exporter produced inside the work directory; the orchestrator turns it into a manifest."""

    path: str  # main model file or package, relative to the work directory (manifest "artifact.path")
    inputs: list[TensorSpec]  # artifact inputs
    outputs: list[TensorSpec]  # artifact outputs
    backend_versions: dict[str, str]  # backend package -> version, merged into manifest "versions"
    block_outputs: dict[str, str] | None = None  # "stages.S.B"/"patch_embed" -> graph tensor name (graph formats)
    parity_targets: list[ParityTarget] = field(default_factory=list)  # what the parity gate runs
    details: dict[str, Any] = field(default_factory=dict)  # format-specific facts for the manifest (gelu, ...)
    notices: list[str] = field(default_factory=list)  # things the user must be told (e.g. engine not built)
    input_range: str | None = None  # what the artifact's input takes, when the format decides it (Core ML image)


# --------------------------------------------------------------------------------------------------------------------
# Registry and base class
# --------------------------------------------------------------------------------------------------------------------


class Exporter(ABC):
    """Base class of all exporters.

    Subclasses set the class attributes and implement :meth:`export`. Precision handling is per exporter:
    ``supported_precisions`` lists what a format can produce, so a later ``"int8"`` is one more entry plus the code
    that handles it, not a change here.
    """

    format_name: ClassVar[str] = "base"  # set by @register_exporter
    supported_precisions: ClassVar[tuple[str, ...]] = ("fp32",)  # precisions this format can produce
    default_precision: ClassVar[str] = "fp32"  # used when ExportConfig.precision is None
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()  # (module, pip extra) the export needs
    artifact_suffix: ClassVar[str] = ""  # suffix of the main model file, for documentation and tests

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

    def validate(self, config: ExportConfig) -> None:
        """Format-specific option checks; the default checks the precision. Overrides call ``super()``.

        Raises:
            ConfigError: For an option this format cannot honour.
        """
        self.resolve_precision(config)

    @abstractmethod
    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log) -> ExportedArtifact:
        """Write the artifact for ``model`` into ``workdir``.

        Args:
            model: The eval-mode FFNet to export (already reparameterized unless ``--no-reparam``).
            config: Validated settings; ``config.resolution`` is resolved (never ``None``).
            workdir: An empty, private directory that becomes the artifact directory on success.
            log: Progress callback for one-line step messages.

        Returns:
            The description of what was written.

        Raises:
            ExportError: If the backend fails; the message says which step and why.
        """


EXPORTERS: Registry[type[Exporter]] = Registry("export format", name_attr="format_name")
register_exporter = EXPORTERS.register
"""Class decorator registering an :class:`Exporter` subclass under a name (stored as ``format_name``)."""


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------------


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


def normalize_input(x: np.ndarray, config: ExportConfig, mean: tuple[float, ...], std: tuple[float, ...],
                    input_range: str | None = None) -> np.ndarray:
    """Map an artifact input to the normalized float32 input PyTorch expects.

    ``input_range`` is what the artifact takes; by default ``config``'s (a format may decide it: Core ML images).
    """
    input_range = input_range or config.effective_input_range()
    x = x.astype(np.float64)
    if input_range == "normalized":
        return x.astype(np.float32)
    if input_range == "0-255":
        x = x / 255.0
    m = np.asarray(mean, np.float64).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float64).reshape(1, -1, 1, 1)
    return ((x - m) / s).astype(np.float32)


def sample_inputs(config: ExportConfig, batch: int, seed: int, input_range: str | None = None) -> np.ndarray:
    """A reproducible random input batch in the artifact's input domain (pixels, 0-1 floats or normalized)."""
    rng = np.random.default_rng(seed)
    shape = (batch, 3, config.resolution, config.resolution)
    rng_range = input_range or config.effective_input_range()
    if rng_range == "0-255":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if rng_range == "0-1":
        return rng.random(shape, dtype=np.float32)
    return rng.standard_normal(shape, dtype=np.float32)


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
    return model.model if isinstance(model, Preprocess) else model

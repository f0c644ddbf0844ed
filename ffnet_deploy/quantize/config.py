"""The quantization settings of one export: :class:`QuantizationConfig`, carried in ``ExportConfig.quantization``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ffnet_deploy.artifact.formats import quantizer_targets
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.quantize.calibration import DEFAULT_CALIB_SIZE, MAX_CALIB_SIZE, METHODS

WEIGHT_MODES = ("int8", "int4", "palettize4", "palettize6")
"""Core ML weight-only compression: linear int8 / int4, or 4- / 6-bit k-means palettization."""

FLAGS = {"calib": "--calib", "calib_size": "--calib-size", "method": "--calib-method", "target": "--target",
         "max_drop": "--max-drop", "eval_data": "--eval-data", "cache_dir": "--calib-cache", "weights": "--weights",
         "granularity": "--granularity"}


@dataclass(frozen=True)
class QuantizationConfig:
    """How to quantize or compress an export. Every field has a default; ``QuantizationConfig(calib="digits")``
    is a complete INT8 configuration."""

    calib: str | Path | None = None  # calibration data: ImageFolder, folder of images, or "digits"; None = cache only
    calib_size: int = DEFAULT_CALIB_SIZE  # calibration images (the data must hold this many usable ones)
    method: str = "minmax"  # activation range estimator: minmax, entropy or percentile
    target: str | None = None  # ONNX: "cpu" (any CPU), "cpu-vnni" (VNNI/AMX/ARM64 only) or "tensorrt"; None = format's
    # (the values are the formats' quantizer targets: ffnet_deploy.artifact.formats.quantizer_targets)
    max_drop: float | None = None  # accuracy budget in points on eval_data; keeps sensitive layer groups in float
    eval_data: str | Path | None = None  # labelled data for max_drop and the export's parity check
    cache_dir: Path | None = None  # calibration-statistics cache folder; None = the per-model default cache
    weights: str | None = None  # Core ML weight-only compression: int8, int4, palettize4, palettize6
    granularity: str | None = None  # Core ML weights: per_channel or per_block; None = per_block for int4, else
    # per_channel (int4 per channel cost the digits model 1.4 points, per block of 32 input channels 0.2)

    def validate(self) -> None:
        """Check the values on their own (the exporter checks them against the format and precision).

        Raises:
            ConfigError: One line naming the flag.
        """
        if self.method not in METHODS:
            raise ConfigError(f"quantize | --calib-method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 1 <= self.calib_size <= MAX_CALIB_SIZE:
            raise ConfigError(f"quantize | --calib-size must be between 1 and {MAX_CALIB_SIZE}, got "
                              f"{self.calib_size}")
        # The --target values are the formats' quantizers' (ONNX: cpu, cpu-vnni, tensorrt; artifact.formats).
        targets = quantizer_targets()
        if self.target is not None and self.target not in targets:
            raise ConfigError(f"quantize | --target must be one of {', '.join(targets)}, got {self.target!r}")
        if self.max_drop is not None:
            if not 0 <= self.max_drop <= 100:
                raise ConfigError(f"quantize | --max-drop is in accuracy points (0-100), got {self.max_drop}")
            if self.eval_data is None:
                raise ConfigError("quantize | --max-drop needs labelled --eval-data (an ImageFolder or digits) to "
                                  "measure the accuracy drop on")
        if self.weights is not None and self.weights not in WEIGHT_MODES:
            raise ConfigError(f"quantize | --weights must be one of {', '.join(WEIGHT_MODES)}, got "
                              f"{self.weights!r}")
        if self.granularity not in (None, "per_channel", "per_block"):
            raise ConfigError(f"quantize | --granularity must be per_channel or per_block, got {self.granularity!r}")
        for name in ("calib", "eval_data"):
            value = getattr(self, name)
            if value is not None and str(value).split(":", 1)[0] != "digits" and not Path(value).exists():
                raise ConfigError(f"quantize | {FLAGS[name]} {value} does not exist; pass an ImageFolder, a folder "
                                  "of images, or 'digits'")
        if self.cache_dir is not None and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise ConfigError(f"quantize | --calib-cache {self.cache_dir} is a file; pass a folder (the cache is "
                              "<folder>/<backend>.calibration.json)")

    def weight_granularity(self) -> str:
        """``granularity``, or its default for ``weights``: per_block for int4, per_channel otherwise."""
        if self.granularity is not None:
            return self.granularity
        return "per_block" if self.weights == "int4" else "per_channel"

    def given(self) -> list[str]:
        """Flags of the fields that differ from their defaults, for messages that refuse them."""
        default = QuantizationConfig()
        return [FLAGS[f.name] for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v, Path) else v) for f in fields(self)
                for v in [getattr(self, f.name)]}


def check_int8_config(config, fmt: str, precision: str = "int8") -> None:
    """Cross-checks of a calibrated precision (``--precision int8``) with the shared export settings.

    Raises:
        ConfigError: Baked-in preprocessing (calibration feeds normalized images), or more ``--calib-size`` than
            ``--calib`` holds.
    """
    if config.include_preprocessing:
        raise ConfigError(f"{fmt} export | --precision {precision} calibrates on normalized images; drop "
                          "--include-preprocessing")
    q = config.quantization or QuantizationConfig()
    if q.calib is not None:
        check_calib_count(q)


def check_calib_count(q: QuantizationConfig) -> None:
    """Refuse ``--calib-size`` beyond the images ``--calib`` holds before anything is traced or exported (the files
    are counted, not decoded: corrupt ones are still found, and counted, when the calibration set is read).

    Raises:
        ConfigError: The data holds fewer candidate images than ``--calib-size``.
    """
    from ffnet_deploy.data.sources import source_from_spec

    found = len(source_from_spec(q.calib, split="train"))
    if found < q.calib_size:
        raise ConfigError(f"calibration | --calib {q.calib} holds {found} image files, but --calib-size asks for "
                          f"{q.calib_size}; add images or pass --calib-size {found}")

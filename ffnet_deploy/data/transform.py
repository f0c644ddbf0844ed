"""FFNet's evaluation transform and the pixel formats it accepts.

The transform is FFNet's (and timm's) evaluation preprocessing, reproduced with PIL and numpy so that it needs
neither torchvision nor timm at run time:

1. decode and convert to RGB (:func:`to_rgb`: 16-bit grayscale is scaled to 8 bits instead of clipped);
2. resize the *shorter* side to ``floor(resolution / crop_pct)`` with bicubic interpolation, the longer side to
   ``int(new_short * long / short)`` (torchvision's rounding, which timm's ``transforms_imagenet_eval`` uses);
3. center-crop ``resolution x resolution`` (offsets ``round((size - crop) / 2)``, as torchvision does);
4. scale to ``[0, 1]`` and normalize with the ImageNet mean and std, in float32.

Steps 2 and 3 are Pillow's own ``resize`` and ``crop``, the calls timm makes, so the pixels are timm's by
construction (``tests/data/test_transform.py`` checks it against ``timm.data.create_transform(...,
is_training=False)`` on real photos). The resize materializes the whole resized image, about 4 bytes per pixel, so an
image whose resized form would be more than :data:`MAX_ASPECT` times as long as it is wide is refused
(:class:`ImageSkipped` ``extreme_aspect``): a 1x60000 strip would resize to 284 x 17 million pixels, 19 GB and two
minutes, while at the limit a resize of a small image takes about 21 MB and 60 ms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ffnet_deploy.errors import ConfigError, FFNetDeployError, first_line

MAX_ASPECT = 64
"""Longest resized image accepted, in multiples of its short side; longer ones are skipped as ``extreme_aspect``.

Pillow's resize holds the whole resized image, ``scale_size**2 * aspect`` pixels of 4 bytes. Measured with Pillow 13
at 256 px (short side 284), peak RSS above the decoded image: aspect 4, 16, 64 take 2, 5, 21 MB and 3, 15, 60 ms
from a 5 px wide source; from a 600 px wide one, with Pillow's first pass held too, 4, 16, 63 MB and 21, 84,
380 ms. A 1x60000 strip (aspect 60000) took 19 GB and 117 s."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageSkipped(FFNetDeployError):
    """One input image cannot be used; sources skip it and count it under :attr:`reason`.

    Attributes:
        reason: The :class:`~ffnet_deploy.data.sources.SkipCounter` field it is counted under (``unsupported_mode``,
            ``oversized``, ``extreme_aspect``, ``not_regular``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class EvalTransform:
    """FFNet's evaluation transform: bicubic shorter-side resize, center crop, ImageNet normalization.

    Build it with :func:`eval_transform` or :meth:`for_config`.
    """

    resolution: int  # side of the square crop fed to the model, in pixels
    crop_pct: float  # the shorter side is resized to floor(resolution / crop_pct) before cropping
    mean: tuple[float, float, float]  # per-channel mean on the 0-1 scale (RGB)
    std: tuple[float, float, float]  # per-channel std on the 0-1 scale (RGB)

    def __post_init__(self) -> None:
        if self.resolution < 1:
            raise ConfigError(f"eval transform | resolution must be positive, got {self.resolution}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"eval transform | crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"eval transform | mean/std need 3 entries and std > 0, got {self.mean} / {self.std}")

    @classmethod
    def for_config(cls, cfg, resolution: int | None = None) -> EvalTransform:
        """The transform of an :class:`~ffnet_deploy.models.config.FFNetConfig` (crop_pct 0.9 for ffnet_1/2, 0.95 3/4).

        Args:
            cfg: The variant's config.
            resolution: Crop side; defaults to the variant's resolution.
        """
        return cls(int(resolution or cfg.resolution), float(cfg.crop_pct), tuple(cfg.mean), tuple(cfg.std))

    @property
    def scale_size(self) -> int:
        """Length of the shorter side after the resize: ``floor(resolution / crop_pct)``, as timm computes it."""
        return math.floor(self.resolution / self.crop_pct)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """Size ``(w, h)`` of the whole image after the shorter-side resize."""
        short, long = (width, height) if width <= height else (height, width)
        new_short = self.scale_size
        new_long = int(new_short * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def check_size(self, width: int, height: int) -> None:
        """Refuse an image whose resized form would be more than :data:`MAX_ASPECT` times as long as it is wide.

        Sources call it before decoding a file, :meth:`pixels` before resizing.

        Raises:
            ImageSkipped: ``extreme_aspect``, naming the image size, the limit and what to do.
        """
        new_w, new_h = self.resized_size(width, height)
        if max(new_w, new_h) > MAX_ASPECT * min(new_w, new_h):
            raise ImageSkipped("extreme_aspect",
                               f"{width}x{height} pixels would resize to {new_w}x{new_h}, more than {MAX_ASPECT} "
                               f"times as long as wide (the limit that bounds the resize's memory); crop it to a "
                               f"side ratio of at most {MAX_ASPECT}:1")

    def pixels(self, image) -> np.ndarray:
        """Resize and crop a PIL image; return its RGB pixels as uint8 ``(3, resolution, resolution)``.

        Raises:
            ImageSkipped: For pixel formats without a defined 8-bit meaning (see :func:`to_rgb`), and for images
                more than :data:`MAX_ASPECT` times as long as wide once resized (see :meth:`check_size`).
        """
        from PIL import Image

        self.check_size(*image.size)
        image = to_rgb(image)
        w, h = image.size
        new_w, new_h = self.resized_size(w, h)
        top = int(round((new_h - self.resolution) / 2.0))
        left = int(round((new_w - self.resolution) / 2.0))
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels ``(..., 3, H, W)`` to the normalized float32 tensor the model takes."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (pixels.astype(np.float32) / np.float32(255.0) - mean) / std

    def __call__(self, image) -> np.ndarray:
        """A PIL image to the normalized float32 ``(3, resolution, resolution)`` array."""
        return self.normalize(self.pixels(image))

    def to_dict(self) -> dict:
        """Plain-JSON description, for reports (and part of the calibration cache key: keep it stable)."""
        return {"resolution": self.resolution, "crop_pct": self.crop_pct, "resize_shorter_side": self.scale_size,
                "interpolation": "bicubic", "mean": list(self.mean), "std": list(self.std)}


def eval_transform(resolution: int, crop_pct: float, mean: Sequence[float], std: Sequence[float]) -> EvalTransform:
    """FFNet's evaluation transform (see the module docstring for the exact steps).

    Args:
        resolution: Side of the center crop.
        crop_pct: Fraction of the resized shorter side that the crop keeps.
        mean: Per-channel normalization mean on the 0-1 scale.
        std: Per-channel normalization std on the 0-1 scale.
    """
    return EvalTransform(int(resolution), float(crop_pct), tuple(map(float, mean)), tuple(map(float, std)))


def feed_from_pixels(pixels: np.ndarray, normalized: np.ndarray, input_range: str, dtype: np.dtype) -> np.ndarray:
    """The array an artifact input takes, derived exactly from a batch.

    Args:
        pixels: uint8 pixels ``(B, 3, H, W)`` of the batch.
        normalized: The normalized float32 batch.
        input_range: ``"normalized"``, ``"0-1"`` or ``"0-255"`` (the manifest's ``preprocessing.input_range``).
        dtype: dtype of the artifact's input.

    Raises:
        ConfigError: For an unknown ``input_range``.
    """
    dtype = np.dtype(dtype)
    if input_range == "normalized":
        return normalized.astype(dtype, copy=False)
    if input_range == "0-255":
        return pixels.astype(dtype, copy=False)  # uint8 stays exact; float gets integral values
    if input_range == "0-1":
        return (pixels.astype(np.float32) / np.float32(255.0)).astype(dtype, copy=False)
    raise ConfigError(f"artifact input range {input_range!r} unknown; expected normalized, 0-1 or 0-255")


def to_rgb(image):
    """A PIL image as 8-bit RGB, with every pixel format given its real meaning.

    ``convert("RGB")`` clips 16-bit grayscale (``I;16*``, and ``I`` as 16-bit PNGs decode) to 255, which turns an
    ordinary 16-bit photo almost white; here those are scaled ``0..65535 -> 0..255`` (``round(v / 257)``). A palette
    image with transparency goes through RGBA, which gives the same colours without Pillow's warning. Alpha is dropped,
    as timm's loader does. Floating-point (``F``) pixels have no agreed 0-255 scale and are refused.

    Raises:
        ImageSkipped: For ``F`` images, ``I`` images with values outside 0..65535, and modes Pillow cannot convert.
    """
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image)
        if mode == "I" and values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise ImageSkipped("unsupported_mode", f"32-bit integer pixels span {int(values.min())}..."
                                                   f"{int(values.max())}, not 16-bit 0..65535; save it as 8- or 16-bit")
        gray = ((values.astype(np.int64) * 2 + 257) // 514).astype(np.uint8)  # round(v / 257), half up
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        raise ImageSkipped("unsupported_mode", "floating-point pixels (mode F) have no defined 0-255 scale; "
                                               "save the image as 8- or 16-bit")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ImageSkipped("unsupported_mode",
                           f"pixel mode {mode} cannot be converted to RGB ({first_line(err)})") from None

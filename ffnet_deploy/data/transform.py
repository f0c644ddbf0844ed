"""FFNet's evaluation transform and the pixel formats it accepts.

The transform is FFNet's (and timm's) evaluation preprocessing, reproduced with PIL and numpy so that it needs
neither torchvision nor timm at run time:

1. decode and convert to RGB (:func:`to_rgb`: 16-bit grayscale is scaled to 8 bits instead of clipped);
2. resize the *shorter* side to ``floor(resolution / crop_pct)`` with bicubic interpolation, the longer side to
   ``int(new_short * long / short)`` (torchvision's rounding, which timm's ``transforms_imagenet_eval`` uses);
3. center-crop ``resolution x resolution`` (offsets ``round((size - crop) / 2)``, as torchvision does);
4. scale to ``[0, 1]`` and normalize with the ImageNet mean and std, in float32.

``tests/data/test_transform.py`` checks it against ``timm.data.create_transform(..., is_training=False)`` on real
photos. Steps 2 and 3 never build more than the output needs: for extreme aspect ratios (a 1x60000 strip would
resize to 284 x 17 million pixels) the bicubic resize runs only inside the crop window, with Pillow's own integer
taps, so the bytes are the same (``tests/data/test_hostile.py`` checks both paths against each other).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ffnet_deploy.errors import ConfigError, FFNetDeployError

_FULL_RESIZE_MAX_ASPECT = 4
"""Resized images longer than this many times their short side are resampled inside the crop window only."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# Pillow's fixed-point resampling (src/libImaging/Resample.c): coefficients carry 22 fractional bits, and every sum
# starts at one half so that the final shift rounds.
_PRECISION_BITS = 32 - 8 - 2


class ImageSkipped(FFNetDeployError):
    """One input image cannot be used; sources skip it and count it under :attr:`reason`.

    Attributes:
        reason: The :class:`~ffnet_deploy.data.sources.SkipCounter` field it is counted under (``unsupported_mode``,
            ``oversized``, ``not_regular``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type name when the message is empty (never raises)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
        """Size ``(w, h)`` of the whole image after the shorter-side resize (it is never materialized whole)."""
        short, long = (width, height) if width <= height else (height, width)
        new_short = self.scale_size
        new_long = int(new_short * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def pixels(self, image) -> np.ndarray:
        """Resize and crop a PIL image; return its RGB pixels as uint8 ``(3, resolution, resolution)``.

        The work is bounded by the output size: an image whose resized form would be more than
        ``_FULL_RESIZE_MAX_ASPECT`` times as long as it is wide (a 1x60000 strip would become a 284 x 17 million
        picture) is resampled only inside the crop window, with Pillow's own bicubic coefficients, so both paths
        give the same bytes.

        Raises:
            ImageSkipped: For pixel formats without a defined 8-bit meaning (see :func:`to_rgb`).
        """
        from PIL import Image

        image = to_rgb(image)
        w, h = image.size
        new_w, new_h = self.resized_size(w, h)
        top = int(round((new_h - self.resolution) / 2.0))
        left = int(round((new_w - self.resolution) / 2.0))
        if max(new_w, new_h) > _FULL_RESIZE_MAX_ASPECT * min(new_w, new_h):
            out = _resize_crop_bounded(image, (new_w, new_h), (left, top), self.resolution)
            return np.ascontiguousarray(out.transpose(2, 0, 1))
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


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5), with its exact operation order so the doubles match."""
    x = np.abs(x)
    near = ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bicubic_coeffs(in_size: int, out_size: int, first: int, count: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Pillow's coefficients for outputs ``first .. first + count`` of an ``in_size -> out_size`` bicubic resize.

    Mirrors ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of Pillow's ``Resample.c`` step by step (the box edge
    as a C float, truncation toward zero, the weight sum taken in order), so the integer taps are the very ones
    ``Image.resize`` uses for those outputs.

    Returns:
        ``(start, end, taps)``: first input index of each output ``(count,)``, one past the last input any of them
        reads, and the fixed-point weights ``(count, ksize)``, zero past each output's last input.
    """
    scale = float(np.float32(in_size)) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(first, first + count, dtype=np.float64) + 0.5) * scale
    start = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    length = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - start
    offsets = np.arange(ksize, dtype=np.int64)
    weights = _bicubic(((offsets[None, :] + start[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where(offsets[None, :] < length[:, None], weights, 0.0)
    total = np.zeros(count)
    for t in range(ksize):  # in order, as the C loop adds them: numpy's pairwise sum could differ in the last bit
        total += weights[:, t]
    weights = np.divide(weights, total[:, None], out=weights.copy(), where=total[:, None] != 0.0)
    scaled = weights * (1 << _PRECISION_BITS)
    taps = np.trunc(np.where(weights < 0, -0.5 + scaled, 0.5 + scaled)).astype(np.int64)
    return start, int((start + length).max()), taps


def _resample_axis(src: np.ndarray, axis: int, start: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """One pass of Pillow's 8-bit resampling along ``axis`` of a ``(H, W, C)`` uint8 array, outputs given by taps."""
    shape = [1, 1, 1]
    shape[axis] = len(start)
    acc = None
    last = src.shape[axis] - 1
    for t in range(taps.shape[1]):
        # Past an output's last input its weight is 0, so clamping the index there changes nothing.
        term = np.take(src, np.minimum(start + t, last), axis=axis).astype(np.int64) * taps[:, t].reshape(shape)
        acc = term if acc is None else acc + term
    acc += 1 << (_PRECISION_BITS - 1)
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _pillow_orders_passes() -> bool:
    """Whether this Pillow resamples an image that shrinks much more in height than in width vertically first.

    Pillow 13 does (``ysize`` reduced by more than twice the ``xsize`` reduction, python-pillow/Pillow#9549); older
    releases always go horizontally first. The 8-bit intermediate makes the two orders differ in the last bit, so one
    small resize, whose two orders are known to differ, tells which this Pillow does.
    """
    from PIL import Image

    probe = Image.fromarray(np.random.default_rng(0).integers(0, 256, (199, 120, 3), dtype=np.uint8))
    one = np.asarray(probe.resize((71, 56), Image.BICUBIC))
    vertical = np.asarray(probe.resize((120, 56), Image.BICUBIC).resize((71, 56), Image.BICUBIC))
    return bool(np.array_equal(one, vertical))


def _pillow_vertical_first(w: int, h: int, new_w: int, new_h: int) -> bool:
    """Whether Pillow's ``resize`` from ``(w, h)`` to ``(new_w, new_h)`` runs its vertical pass first."""
    return h > new_h and (h - new_h) > 2 * (w - new_w) and _pillow_orders_passes()


def _resize_crop_bounded(image, new_size: tuple[int, int], offset: tuple[int, int], crop: int) -> np.ndarray:
    """``image.resize(new_size, BICUBIC).crop(...)`` computed inside the crop window only: uint8 ``(crop, crop, 3)``.

    Pillow resamples in two passes through an 8-bit intermediate (horizontal first, or vertical first where its
    version does that, see :func:`_pillow_vertical_first`); this runs the same passes in the same order with the same
    integer taps, restricted to the crop's rows and columns and the source region they read, so memory and time
    follow the output size however long the image is. ``Image.resize(..., box=...)`` cannot do this bit-exactly: it
    rounds the box to C floats and recomputes the kernel centres.
    """
    w, h = image.size
    new_w, new_h = new_size
    left, top = offset
    y_start = x_start = y_taps = x_taps = None
    y0, y1, x0, x1 = top, top + crop, left, left + crop
    if new_h != h:
        y_start, y1, y_taps = _bicubic_coeffs(h, new_h, top, crop)
        y0 = int(y_start[0])
    if new_w != w:
        x_start, x1, x_taps = _bicubic_coeffs(w, new_w, left, crop)
        x0 = int(x_start[0])
    region = np.asarray(image.crop((x0, y0, x1, y1)), dtype=np.uint8)
    passes = [(1, x_start, x0, x_taps), (0, y_start, y0, y_taps)]
    if _pillow_vertical_first(w, h, new_w, new_h):
        passes.reverse()
    for axis, start, origin, taps in passes:
        if start is not None:
            region = _resample_axis(region, axis, start - origin, taps)
    return region

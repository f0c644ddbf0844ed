"""Evaluation data for parity validation: FFNet's eval transform and streaming image sources.

The transform is FFNet's (and timm's) evaluation preprocessing, reproduced with PIL and numpy so that it needs
neither torchvision nor timm at run time:

1. decode and convert to RGB;
2. resize the *shorter* side to ``floor(resolution / crop_pct)`` with bicubic interpolation, the longer side to
   ``int(new_short * long / short)`` (torchvision's rounding, which timm's ``transforms_imagenet_eval`` uses);
3. center-crop ``resolution x resolution`` (offsets ``round((size - crop) / 2)``, as torchvision does);
4. scale to ``[0, 1]`` and normalize with the ImageNet mean and std, in float32.

``tests/test_data.py`` checks it against ``timm.data.create_transform(..., is_training=False)`` on real photos.

Sources stream: they hold a sorted list of file paths (not images) and decode one batch at a time, so a 50k-image
folder never sits in memory. Every batch carries both the normalized float32 tensor the PyTorch reference eats and
the uint8 pixels it came from, so artifacts that take raw pixels (baked preprocessing, Core ML ``ImageType``) are fed
the exact pixels instead of an un-normalized round trip.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ffnet_deploy.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
"""File suffixes (case-insensitive) that sources try to decode; anything else is skipped and counted."""

_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError)

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

    def pixels(self, image) -> np.ndarray:
        """Resize and crop a PIL image; return its RGB pixels as uint8 ``(3, resolution, resolution)``."""
        from PIL import Image

        image = image.convert("RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short = self.scale_size
        new_long = int(new_short * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        top = int(round((new_h - self.resolution) / 2.0))
        left = int(round((new_w - self.resolution) / 2.0))
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
# Sources
# --------------------------------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One batch from a source."""

    images: np.ndarray  # normalized float32 (B, 3, H, W), what the PyTorch reference takes
    labels: np.ndarray | None  # int64 (B,) class indices, or None for unlabeled sources
    names: list[str]  # relative file names (or "synthetic/<i>")
    pixels: np.ndarray  # uint8 (B, 3, H, W), the pixels ``images`` was computed from


@dataclass
class SkipCounter:
    """Files a source passed over, by reason, with a few examples each."""

    unsupported: int = 0  # files whose suffix is not an image format
    corrupt: int = 0  # image files that failed to decode
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> up to 5 file names

    def add(self, reason: str, name: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 5:
            shown.append(name)

    @property
    def total(self) -> int:
        return self.unsupported + self.corrupt

    def to_dict(self) -> dict:
        return {"unsupported": self.unsupported, "corrupt": self.corrupt, "examples": self.examples}


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

    def _items(self) -> list:
        raise NotImplementedError

    def _load(self, item, transform: EvalTransform) -> tuple[np.ndarray, int | None, str]:
        """Decode one item into ``(uint8 pixels (3,H,W), label or None, name)``; raise a decode error if corrupt."""
        raise NotImplementedError

    # -- public --

    def items(self) -> list:
        """The inputs this source will read, after ``limit``, in a stable order."""
        items = self._items()
        return items[: self.limit] if self.limit is not None else items

    def batches(self, transform: EvalTransform, batch_size: int = 8) -> Iterator[Batch]:
        """Decode and preprocess the inputs, ``batch_size`` at a time.

        Corrupt files are skipped with a warning and counted in :attr:`skipped`; only the current batch is held in
        memory.
        """
        if batch_size < 1:
            raise ConfigError(f"data | batch size must be at least 1, got {batch_size}")
        items = self.items()
        self.skipped = SkipCounter(self._scan_skipped.unsupported, 0, {k: list(v) for k, v in
                                                                        self._scan_skipped.examples.items()})
        self.num_images = 0
        pixels: list[np.ndarray] = []
        labels: list[int | None] = []
        names: list[str] = []
        for item in items:
            try:
                px, label, name = self._load(item, transform)
            except _DECODE_ERRORS as err:
                name = self._name(item)
                self.skipped.add("corrupt", name)
                log.warning("data | skipped %s: cannot decode it as an image (%s)", name, _first_line(err))
                continue
            pixels.append(px)
            labels.append(label)
            names.append(name)
            if len(pixels) == batch_size:
                yield self._batch(pixels, labels, names, transform)
                pixels, labels, names = [], [], []
        if pixels:
            yield self._batch(pixels, labels, names, transform)
        if self.skipped.corrupt:
            log.warning("data | %d corrupt image file(s) skipped, e.g. %s", self.skipped.corrupt,
                        ", ".join(self.skipped.examples["corrupt"]))

    def fingerprint(self) -> str:
        """sha256 identifying the inputs (files: sorted relative path, size, mtime; synthetic: seed and shape)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Plain-JSON description: kind, root, limit, counts, fingerprint."""
        return {"kind": self.kind, "limit": self.limit, "labeled": self.labeled, "num_images": self.num_images,
                "skipped": self.skipped.to_dict(), "fingerprint": self.fingerprint()}

    def _name(self, item) -> str:
        return str(item)

    def _batch(self, pixels, labels, names, transform: EvalTransform) -> Batch:
        stacked = np.stack(pixels)
        self.num_images += len(names)
        lab = None if labels[0] is None else np.asarray(labels, dtype=np.int64)
        return Batch(transform.normalize(stacked), lab, names, stacked)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _open_image(path: Path, transform: EvalTransform) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # decode now, inside the caller's error handling (PIL is lazy)
        return transform.pixels(img)


def _check_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"data | {what} {root} does not exist; pass an existing folder")
    if not root.is_dir():
        raise ConfigError(f"data | {what} {root} is not a folder")
    return root


def _scan_files(root: Path, counter: SkipCounter) -> list[Path]:
    """Image files under ``root`` (recursively, sorted); other files are counted in ``counter``, dotfiles ignored."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue  # .DS_Store and friends are not data
            path = Path(dirpath) / fname
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
            else:
                counter.add("unsupported", str(path.relative_to(root)))
    return found


def _files_fingerprint(root: Path, paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.relative_to(root).as_posix()):
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _warn_unsupported(counter: SkipCounter, root: Path) -> None:
    if counter.unsupported:
        log.warning("data | %d file(s) in %s are not images (%s) and were skipped, e.g. %s", counter.unsupported,
                    root, "/".join(IMAGE_EXTENSIONS), ", ".join(counter.examples["unsupported"]))


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
                              f"({'/'.join(IMAGE_EXTENSIONS)}); {self._scan_skipped.unsupported} other file(s) found")
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


def read_labels_file(path: str | Path) -> dict[str, int]:
    """Read a folder-name to class-index map: JSON ``{"folder": index}`` or text lines ``folder index``.

    Raises:
        ConfigError: If the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data | labels file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("{"):
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object")
            return {str(k): int(v) for k, v in raw.items()}
        mapping = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"line {n}: expected 'folder index', got {line!r}")
            mapping[parts[0]] = int(parts[1])
        return mapping
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"data | labels file {path} is malformed ({err}); write JSON {{\"folder\": index}} or lines 'folder index'"
        ) from None


class ImageFolderSource(DataSource):
    """An ImageFolder: one subfolder per class, images anywhere below it.

    Labels come from ``labels_file`` (folder name -> ImageNet index) when given; otherwise the sorted folder names
    get indices ``0..K-1``, which equals ImageNet's indices only for a full ImageNet-style folder of all 1000
    synsets (the source logs which mapping it used).

    Args:
        root: The folder of class folders.
        labels_file: Optional mapping file, see :func:`read_labels_file`.
        limit: Use only ``limit`` files, taken round-robin over the classes (the first file of every class, then
            the second, ...), so that a limited run still covers every class.

    Raises:
        ConfigError: If the folder is missing, has no class folders or no images, or a class folder is missing
            from the labels file.
    """

    kind = "imagefolder"
    labeled = True

    def __init__(self, root: str | Path, labels_file: str | Path | None = None, limit: int | None = None) -> None:
        super().__init__(limit)
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
            self.class_to_idx = {c: i for i, c in enumerate(classes)}
            self.label_mapping = "sorted folder names -> 0..K-1"
            log.info("data | no labels file: class folders sorted -> indices 0..%d (ImageNet indices only if the "
                     "folders are all 1000 synsets)", len(classes) - 1)
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
                "label_mapping": self.label_mapping}


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
        self.n, self.seed = int(n), int(seed)
        self._resolution: int | None = None

    def _items(self) -> list[int]:
        return list(range(self.n))

    def batches(self, transform: EvalTransform, batch_size: int = 8) -> Iterator[Batch]:
        """Random batches, generated one at a time."""
        if batch_size < 1:
            raise ConfigError(f"data | batch size must be at least 1, got {batch_size}")
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
        desc = {"kind": "synthetic", "seed": self.seed, "n": len(self.items()), "resolution": self._resolution,
                "dist": "uniform-uint8"}
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "seed": self.seed}


def make_source(data: str | Path | None = None, images: str | Path | None = None, synthetic: int | None = None,
                *, labels_file: str | Path | None = None, limit: int | None = None, seed: int = 0) -> DataSource:
    """Build the one source the CLI options name (``--data``, ``--images`` or ``--synthetic``).

    Raises:
        ConfigError: If none or more than one is given, or the chosen one is invalid.
    """
    given = [name for name, v in (("--data", data), ("--images", images), ("--synthetic", synthetic))
             if v is not None]
    if len(given) != 1:
        raise ConfigError(f"data | pass exactly one of --data, --images, --synthetic (got {given or 'none'})")
    if labels_file is not None and data is None:
        raise ConfigError("data | --label-map applies to --data (an ImageFolder) only")
    if data is not None:
        return ImageFolderSource(data, labels_file, limit)
    if images is not None:
        return ImageDirSource(images, limit)
    return SyntheticSource(int(synthetic), seed, limit)

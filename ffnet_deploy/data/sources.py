"""Streaming data sources: image folders, ImageFolders, synthetic pixels and the digits set, and the specs naming them.

Sources stream: they hold a sorted list of file paths (not images; synthetic data holds only a count) and decode one
batch at a time, so a 50k-image folder never sits in memory. Files that cannot be used are skipped and counted by
reason (:class:`SkipCounter`), never fatal: corrupt files, special files (FIFOs and devices, which would block or
never end), decompression bombs over PIL's ``MAX_IMAGE_PIXELS``, pixel formats without an 8-bit meaning and images
too elongated to resize in bounded memory.

Every batch carries both the normalized float32 tensor the PyTorch reference eats and the uint8 pixels it came from,
so artifacts that take raw pixels (baked preprocessing, Core ML ``ImageType``) are fed the exact pixels instead of an
un-normalized round trip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ffnet_deploy.data.digits import DIGITS_SPLIT_SEED, DIGITS_SPLITS, DIGITS_TEST_SIZE, digits_arrays, digits_split
from ffnet_deploy.data.files import open_regular, regular_file_problem
from ffnet_deploy.data.labels import WNID, imagenet_wnids, read_labels_file
from ffnet_deploy.data.transform import MAX_ASPECT, EvalTransform, ImageSkipped
from ffnet_deploy.errors import ConfigError, first_line

log = logging.getLogger("ffnet_deploy.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "PPM", "TIFF", "WEBP", "GIF")
"""The only Pillow decoders a data set's file is offered to, whatever its name says: an EPS or PDF named photo.jpg
would otherwise reach Ghostscript (a TypeError inside Pillow's EPS plugin, and a temp folder leaked per file)."""

WARN_EACH = 5
"""Skipped files warned about one by one, per reason; the rest go into the summary line (100k corrupt files once
wrote 16 MB of warnings)."""
"""File suffixes (case-insensitive) that sources try to decode; anything else is skipped and counted."""

_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError)

_MAX_BATCH_BYTES = 8 * 2**30
"""Largest batch buffer (uint8 pixels plus the float32 tensor) a source builds; beyond it --batch is refused."""

MAX_SYNTHETIC = 10_000_000
"""Most images ``--synthetic`` may ask for: 200 times ImageNet's validation set, and hours of work at any speed."""


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
    "extreme_aspect": f"more than {MAX_ASPECT} times as long as wide once resized",
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
    extreme_aspect: int = 0  # images whose resized form would exceed MAX_ASPECT (its memory grows with the length)

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
        meaning, images more than :data:`~ffnet_deploy.data.transform.MAX_ASPECT` times as long as wide) are skipped
        with a warning and counted in :attr:`skipped` by reason; only the current batch is held in memory.
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
                self._skip("corrupt", item, f"cannot decode it as an image ({first_line(err)})")
                continue
            pixels.append(px)
            labels.append(label)
            names.append(name)
            if len(pixels) == batch_size:
                yield self._batch(pixels, labels, names, transform)
                pixels, labels, names = [], [], []
        if pixels:
            yield self._batch(pixels, labels, names, transform)
        for reason in ("corrupt", "not_regular", "oversized", "unsupported_mode", "extreme_aspect"):
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
        count = getattr(self.skipped, reason)
        if count <= WARN_EACH:
            log.warning("data | skipped %s: %s", name, detail)
        if count == WARN_EACH:
            log.warning("data | more files skipped as %s are counted, not listed; the total follows at the end",
                        _SKIP_REASONS[reason])

    def _batch(self, pixels, labels, names, transform: EvalTransform) -> Batch:
        stacked = np.stack(pixels)
        self.num_images += len(names)
        lab = None if labels[0] is None else np.asarray(labels, dtype=np.int64)
        return Batch(transform.normalize(stacked), lab, names, stacked)


def _open_image(path: Path, transform: EvalTransform) -> np.ndarray:
    """Decode one file through ``transform``.

    Raises:
        ImageSkipped: For special files, decompression bombs, unsupported pixel formats and extreme aspect ratios.
        OSError: And the other ``_DECODE_ERRORS`` for corrupt files.
    """
    from PIL import Image

    with open_regular(path) as fh:
        try:
            with warnings.catch_warnings():
                # Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; the size check below refuses those too.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fh, formats=IMAGE_FORMATS)
            with img:
                limit = Image.MAX_IMAGE_PIXELS
                if limit is not None and img.width * img.height > limit:
                    raise ImageSkipped("oversized", f"{img.width}x{img.height} pixels exceed PIL's MAX_IMAGE_PIXELS "
                                                    f"({limit}), the decompression-bomb guard; raise it to read this "
                                                    "file")
                transform.check_size(img.width, img.height)  # from the header: a refused strip is never decoded
                img.load()  # decode now, inside the caller's error handling (PIL is lazy)
                return transform.pixels(img)
        except Image.DecompressionBombError as err:
            raise ImageSkipped("oversized", first_line(err)) from None


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
        raise ConfigError(f"data | {what} {root} is not a folder; pass the folder that holds the images")
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
            elif regular_file_problem(path) is not None:
                counter.add("not_regular", str(path.relative_to(root)))
            else:
                found.append(path)
    return found


def _files_fingerprint(root: Path, paths: Sequence[Path]) -> str:
    """sha256 of every file's relative path, size and mtime: part of calibration-cache keys and pipeline input
    hashes, so its bytes must not change."""
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
            # reached from --data, --calib and --eval-data alike: the message names the folder, not an option
            raise ConfigError(f"data | data folder {self.root} has class folders but no image files "
                              f"({'/'.join(IMAGE_EXTENSIONS)}); put the images in one subfolder per class")
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
        if known or any(WNID.fullmatch(c) for c in classes):
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


class DigitsSource(DataSource):
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), labelled, in a fixed train/test split.

    Each image becomes an 8-bit grayscale picture replicated to RGB (values ``round(v * 255 / 16)``) and goes through
    :meth:`EvalTransform.pixels` like any file, so the preprocessing is exactly validation's; for ``ffnet_digits``
    (resolution 32, crop_pct 1.0) that is a bicubic upscale to 32x32. The split is
    :func:`~ffnet_deploy.data.digits.digits_split`'s. Names read ``digits/<split>/<index into load_digits>``, e.g.
    ``digits/test/0042``. It needs scikit-learn, nothing is downloaded (the data ships with it).

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

        images, labels = digits_arrays()
        image = Image.fromarray(np.ascontiguousarray(images[item])).convert("RGB")  # 2-D uint8: mode L
        return transform.pixels(image), int(labels[item]), self._name(item)

    def fingerprint(self) -> str:
        """sha256 of the split name, the indices used, their 8x8 pixels and their labels."""
        images, labels = digits_arrays()
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

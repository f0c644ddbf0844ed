"""Calibration data and the calibration-statistics cache.

**Calibration data.** :func:`load_calibration` reads ``--calib DATA`` with exactly validation's preprocessing (the
same sources and the same :class:`~ffnet_deploy.data.transform.EvalTransform`): an ImageFolder, a flat folder of images,
or ``digits`` (scikit-learn's digits; calibration reads the *training* split, so the held-out test split that
``validate --data digits`` scores stays unseen). Images stream through the decoder one batch at a time; the set keeps
only the cropped uint8 pixels (300 images at 256 px are 59 MB). Corrupt files are skipped and counted; fewer usable
images than ``--calib-size`` is an error that says how many were found and how many are needed.

**Statistics cache.** Collecting activation statistics means running the FP32 model over every calibration image,
the slow part of an INT8 export. :class:`StatisticsCache` keeps the result in one JSON file per backend, keyed by

- the SHA-256 of the FP32 model that was calibrated (the exported graph, so weights, resolution and opset count),
- the calibration data's fingerprint (files: sorted names, sizes and mtimes; digits: split indices and pixels),
- the number of images, the calibration method, and the preprocessing (crop, resize, mean, std, input range).

A rerun with the same key reuses the statistics and says so; a change to any of them recalibrates and replaces the
entry. A cache that belongs to another *model* is refused with a clear error rather than silently replaced, because
pointing ``--calib-cache`` at the wrong folder is a user mistake worth hearing about.

The file format (``<dir>/<backend>.calibration.json``), documented so that a cache can be carried to another machine
(a Jetson) and inspected::

    {
      "schema": "ffnet-deploy/calibration-cache/1",
      "backend": "onnxruntime",              # the quantizer: onnxruntime | openvino | coreml | executorch | litert
      "key": {
        "model_sha256": "...",               # the FP32 model calibrated
        "method": "minmax",                  # minmax | entropy | percentile
        "data_fingerprint": "...",           # sha256 of the calibration inputs
        "num_images": 300,
        "preprocessing": {...}               # EvalTransform.to_dict() plus the input range
      },
      "data": {...},                          # what was read: source kind, root, skipped files by reason
      "seconds": 12.3,                        # how long collecting the statistics took
      "created": "2026-11-27T01:30:00+00:00",
      "statistics": {...}                     # backend-specific, plain JSON; for onnxruntime:
                                              #   {"ranges": {"<tensor name>": [low, high], ...}}
    }

With a cache entry present, ``--calib`` may be omitted: the entry for this model, method and preprocessing is used
as it is (its data fingerprint is then taken on trust, and the output says so).

A cache file is read through its typed model (:class:`CacheFile`, :mod:`ffnet_deploy.schemas`) after a regular-file
check and a size cap: a damaged or edited file (``seconds: "abc"``, no ``ranges``, a range ``[1, 2, 3]`` or
``["a", "b"]``) is one :class:`~ffnet_deploy.errors.CalibrationError` line naming the file and the field, never a
traceback in the middle of an export.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from ffnet_deploy.atomic import write_text
from ffnet_deploy.cache import cache_root
from ffnet_deploy.data.transform import EvalTransform
from ffnet_deploy.errors import CalibrationError, ConfigError
from ffnet_deploy.inputs import read_bounded
from ffnet_deploy.progress import NULL, Progress
from ffnet_deploy.schemas import (
    READING,
    FileModel,
    Finite,
    NonNegative,
    PositiveInt,
    Record,
    check_schema,
    describe,
    dumps,
    parse_json,
    readable_ids,
    schema_id,
    validate,
)

CACHE_SCHEMA = schema_id("calibration-cache", 1)
READABLE_SCHEMAS = readable_ids("calibration-cache")
MAX_CACHE_BYTES = 256 << 20
"""The largest cache file read (NNCF's statistics of a large model are a few MB)."""
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIB_SIZE = 300
MAX_CALIB_SIZE = 100_000  # a calibration set is held in memory as uint8 crops: 100k at 256 px is ~20 GB already

CALIBRATION_IMAGES = "calibration images"
"""The label of the steps of :func:`load_calibration` (images decoded)."""
CALIBRATING = "calibrating"
"""The label of the steps of every quantizer's statistics collection (images run through the float model)."""


# --------------------------------------------------------------------------------------------------------------------
# Calibration data
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CalibrationSet:
    """Calibration images, decoded, resized and cropped exactly as validation does it, kept as uint8."""

    pixels: np.ndarray  # uint8 (N, 3, H, W) crops
    transform: EvalTransform  # what made them; ``normalize`` gives the model input
    fingerprint: str  # sha256 of the source's fingerprint, the image count and the transform
    source: dict = field(default_factory=dict)  # the source's description: kind, root, skipped files by reason
    seconds: float = 0.0  # time spent decoding

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        """Normalized float32 ``(B, 3, H, W)`` batches, the input of an FP32 graph without baked-in preprocessing."""
        if batch_size < 1:
            raise ConfigError(f"calibration | batch size must be at least 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.transform.normalize(self.pixels[start:start + batch_size])

    def describe(self) -> dict:
        """Plain-JSON description for manifests and reports."""
        return {**self.source, "num_images": len(self), "fingerprint": self.fingerprint,
                "preprocessing": self.transform.to_dict(), "decode_seconds": round(self.seconds, 3)}


def calibration_set_from_arrays(pixels: np.ndarray, transform: EvalTransform, name: str = "arrays") -> CalibrationSet:
    """Wrap uint8 ``(N, 3, H, W)`` crops made elsewhere (tests, notebooks) as a calibration set."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ConfigError(f"calibration | pixels must be uint8 (N, 3, H, W), got {pixels.dtype} {pixels.shape}")
    digest = hashlib.sha256(pixels.tobytes()).hexdigest()
    return CalibrationSet(pixels, transform, _fingerprint(digest, len(pixels), transform),
                          {"kind": name, "labeled": False})


def load_calibration(data: str | Path, transform: EvalTransform, size: int = DEFAULT_CALIB_SIZE, *,
                     progress: Progress = NULL) -> CalibrationSet:
    """Read the first ``size`` usable images of ``data`` (an ImageFolder, a folder of images, or ``digits``).

    Args:
        data: What ``--calib`` names; ``digits`` means the training split of scikit-learn's digits.
        transform: Validation's transform for the model being calibrated.
        size: Images wanted (``--calib-size``); the source must hold at least this many usable ones.
        progress: Where the reading is reported: ``step(images read, size, "calibration images")`` after every
            batch.

    Raises:
        ConfigError: ``data`` is not a usable source (missing, empty, not a folder), or ``size`` is out of range.
        CalibrationError: Fewer than ``size`` images could be decoded; the message counts the skipped ones.
    """
    from ffnet_deploy.data.sources import source_from_spec

    if not 1 <= size <= MAX_CALIB_SIZE:
        raise ConfigError(f"calibration | --calib-size must be between 1 and {MAX_CALIB_SIZE}, got {size}")
    source = source_from_spec(data, split="train")
    start = time.perf_counter()
    crops = np.empty((size, 3, transform.resolution, transform.resolution), dtype=np.uint8)
    count = 0
    # Read a few more than wanted at most: corrupt files are skipped, so the limit cannot be applied up front.
    for batch in source.batches(transform, batch_size=min(32, size)):
        take = min(len(batch.pixels), size - count)
        crops[count:count + take] = batch.pixels[:take]
        count += take
        progress.step(count, size, CALIBRATION_IMAGES)
        if count == size:
            break
    described = source.describe()
    skipped = source.skipped
    if count < size:
        found = f"{count} usable image{'s' if count != 1 else ''}"
        why = f" ({skipped.total} skipped: {_skip_summary(skipped.to_dict())})" if skipped.total else ""
        raise CalibrationError(
            f"calibration | --calib {data} has {found}{why}, but --calib-size asks for {size}; add images or pass "
            f"--calib-size {count}" if count else
            f"calibration | --calib {data} has no usable image{why}; calibration needs {size} (--calib-size)"
        )
    digest = described.pop("fingerprint")
    return CalibrationSet(crops, transform, _fingerprint(digest, size, transform), described,
                          time.perf_counter() - start)


def _skip_summary(skipped: dict) -> str:
    return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in skipped.items()
                     if reason != "examples" and n)


def _fingerprint(source_digest: str, count: int, transform: EvalTransform) -> str:
    blob = json.dumps({"source": source_digest, "count": count, "transform": transform.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Statistics cache
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheKey:
    """What calibration statistics depend on; any change invalidates a cache entry."""

    model_sha256: str  # the FP32 model that was calibrated
    method: str  # minmax, entropy or percentile
    data_fingerprint: str | None  # CalibrationSet.fingerprint; None when reusing an entry without the data
    num_images: int | None  # calibration images; None when reusing an entry without the data
    preprocessing: dict  # EvalTransform.to_dict() plus the model's input range

    def to_dict(self) -> dict:
        return {"model_sha256": self.model_sha256, "method": self.method,
                "data_fingerprint": self.data_fingerprint, "num_images": self.num_images,
                "preprocessing": self.preprocessing}


@dataclass(frozen=True)
class CacheEntry:
    """Statistics read from (or just written to) a cache file."""

    path: Path  # the cache file
    statistics: dict  # backend-specific payload
    seconds: float  # how long collecting them took originally
    hit: bool  # True: reused; False: just computed
    key: dict  # the key recorded in the file
    data: dict  # the calibration data's description recorded in the file


class CacheKeyRecord(Record):
    """The key as a cache file records it (:class:`CacheKey`)."""

    model_sha256: str
    method: str
    data_fingerprint: str | None = None
    num_images: PositiveInt | None = None
    preprocessing: dict[str, Any] = {}


class CacheFile(FileModel):
    """A cache file (layout: module docstring)."""

    backend: str
    key: CacheKeyRecord
    data: dict[str, Any] = {}
    seconds: NonNegative
    created: str | None = None
    statistics: dict[str, Any]


class RangeStatistics(Record):
    """The statistics of the ONNX Runtime and Core ML quantizers: ``[low, high]`` per tensor."""

    ranges: dict[str, tuple[Finite, Finite]]


class NNCFStatistics(Record):
    """NNCF's statistics (:func:`ffnet_deploy.quantize.openvino_int8.collect_statistics`); their steps are checked
    against the model where they are loaded."""

    format: str
    settings: dict[str, Any] = {}
    steps: list[dict[str, Any]]


class ObserverState(Record):
    """One PT2E observer's range: per tensor (one value each) or per channel (``shape`` is the observer's); a
    histogram observer's counts too."""

    min: list[Finite]
    max: list[Finite]
    shape: list[int]
    histogram: list[NonNegative] | None = None


class PT2EStatistics(Record):
    """The ranges of the PT2E observers of the ExecuTorch quantizer
    (:func:`ffnet_deploy.quantize.executorch_int8.observer_states`), by observer module name."""

    observers: dict[str, ObserverState]


class TensorRanges(Record):
    """The ranges ``ai-edge-quantizer`` calibrated for the LiteRT quantizer
    (:func:`ffnet_deploy.quantize.litert_int8.to_statistics`), by tensor name (same layout as a PT2E observer's)."""

    tensors: dict[str, ObserverState]


STATISTICS_MODELS: dict[str, type[Record]] = {"onnxruntime": RangeStatistics, "coreml": RangeStatistics,
                                              "openvino": NNCFStatistics, "executorch": PT2EStatistics,
                                              "litert": TensorRanges}
"""What each backend's ``statistics`` must hold."""

_DAMAGED = "delete it to recalibrate"
_FOREIGN = "point --calib-cache at another folder"


def read_cache(path: str | Path, backend: str | None = None) -> CacheFile:
    """A cache file, validated: the file, its key, and the statistics of its backend.

    Raises:
        CalibrationError: One line naming the file and, for a damaged one, the field.
    """
    path = Path(path)
    what = "calibration cache"
    raw = read_bounded(path, what, MAX_CACHE_BYTES, CalibrationError)
    data = parse_json(raw, path, what, _DAMAGED, CalibrationError)
    check_schema(data, path, what, READABLE_SCHEMAS, _FOREIGN, CalibrationError)
    if backend is not None and data.get("backend") != backend:
        raise CalibrationError(f"calibration cache | {path}: field 'backend' is {data.get('backend')!r}, not "
                               f"{backend!r}; {_DAMAGED}")
    stored = validate(raw, data, CacheFile, path, what, _DAMAGED, CalibrationError)
    model = STATISTICS_MODELS.get(stored.backend)
    if model is not None:
        try:
            model.model_validate_json(json.dumps(data["statistics"]), strict=True, context={READING: True})
        except ValidationError as err:
            where, problem = describe(err, data["statistics"])
            field = "statistics" + (f".{where}" if where else "")
            raise CalibrationError(f"calibration cache | {path}: field {field!r} {problem}; {_DAMAGED}") from None
    return stored


def default_cache_dir(model_sha256: str) -> Path:
    """Where statistics of one model go when ``--calib-cache`` is not given: one folder per model."""
    return cache_root() / "calibration" / model_sha256[:16]


class StatisticsCache:
    """One backend's calibration statistics in ``<directory>/<backend>.calibration.json`` (module docstring).

    Args:
        directory: The ``--calib-cache`` folder (created when statistics are stored), or ``None`` for
            :func:`default_cache_dir` of the model.
        backend: ``onnxruntime``, ``openvino`` or ``coreml``.
        log: Receives one line saying whether the cache was hit, missed or invalidated, and why.
    """

    def __init__(self, directory: Path | None, backend: str, log: Callable[[str], None] | None = None) -> None:
        self.directory = None if directory is None else Path(directory)
        self.backend = backend
        self.log = log or (lambda _msg: None)

    def path_for(self, model_sha256: str) -> Path:
        directory = self.directory if self.directory is not None else default_cache_dir(model_sha256)
        return directory / f"{self.backend}.calibration.json"

    def lookup(self, key: CacheKey) -> CacheEntry | None:
        """The entry for ``key``, or ``None`` (a miss, or an entry made with other inputs, which is then stale).

        With ``key.data_fingerprint`` ``None`` (no ``--calib`` given) the data is not compared.

        Raises:
            CalibrationError: The file is not a calibration cache, is unreadable, or belongs to another model.
        """
        path = self.path_for(key.model_sha256)
        if self.directory is not None and self.directory.exists() and not self.directory.is_dir():
            raise CalibrationError(f"calibration cache | --calib-cache {self.directory} is a file; pass a folder "
                                   "(the cache is <folder>/<backend>.calibration.json)")
        if not path.is_file():
            self.log(f"calibration cache: no entry in {path.parent}; collecting statistics")
            return None
        stored = read_cache(path, self.backend)
        old = stored.key
        if old.model_sha256 != key.model_sha256:
            raise CalibrationError(
                f"calibration cache | {path} holds statistics of another model (sha256 "
                f"{old.model_sha256[:16]}..., this one is {key.model_sha256[:16]}...); use one "
                "--calib-cache folder per model, or delete that file"
            )
        changed = [name for name, value in key.to_dict().items()
                   if value is not None and getattr(old, name) != value]
        if changed:
            self.log(f"calibration cache: {path} is stale ({', '.join(changed)} changed); recalibrating")
            return None
        self.log(f"calibration cache: hit {path} (statistics of {old.num_images} images, "
                 f"{stored.seconds:.1f} s saved)")
        return CacheEntry(path, stored.statistics, float(stored.seconds), True, old.to_dict(), stored.data)

    def store(self, key: CacheKey, statistics: dict, seconds: float, data: dict | None = None) -> CacheEntry:
        """Write (or replace) the entry for ``key`` atomically; refuses to replace a file that is not a cache."""
        path = self.path_for(key.model_sha256)
        payload = {"schema": CACHE_SCHEMA, "backend": self.backend, "key": key.to_dict(), "data": data or {},
                   "seconds": round(seconds, 3), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "statistics": statistics}
        write_text(path, dumps(payload, indent=1, sort_keys=True), "calibration cache", CalibrationError,
                   may_replace=_is_cache_file)
        self.log(f"calibration cache: wrote {path}")
        return CacheEntry(path, statistics, seconds, False, key.to_dict(), data or {})

def _is_cache_file(path: Path) -> str | None:
    """Replace-verdict for :func:`ffnet_deploy.atomic.write_text`: only our own cache files may be replaced (a damaged
    one of ours too: that is what recalibrating repairs)."""
    try:
        stored = json.loads(read_bounded(path, "calibration cache", MAX_CACHE_BYTES, CalibrationError))
    except (CalibrationError, ValueError, RecursionError):
        return "it is not an ffnet-deploy calibration cache"
    if not isinstance(stored, dict) or stored.get("schema") not in READABLE_SCHEMAS:
        return "it is not an ffnet-deploy calibration cache"
    return None


def cached_statistics(cache: StatisticsCache, key: CacheKey, compute: Callable[[], dict],
                      calib: CalibrationSet | None) -> CacheEntry:
    """The statistics for ``key``: from the cache when it holds them, else ``compute()`` timed and stored.

    Raises:
        CalibrationError: No calibration data was given and the cache has no entry for this model and method.
    """
    entry = cache.lookup(key)
    if entry is not None:
        return entry
    if calib is None:
        raise CalibrationError(
            f"calibration | --precision int8 needs calibration data: no --calib given, and "
            f"{cache.path_for(key.model_sha256)} holds no statistics for this model with --calib-method {key.method}; "
            "pass --calib DATA (an ImageFolder, a folder of images, or 'digits')"
        )
    start = time.perf_counter()
    statistics = compute()
    return cache.store(key, statistics, time.perf_counter() - start, calib.describe())

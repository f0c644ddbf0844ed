"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes) and their fixed train/test split.

The data ships with scikit-learn, so nothing is downloaded. The split is a hash of each index with
:data:`DIGITS_SPLIT_SEED`, the same on every machine and every numpy; the demo's cache key and every cached demo model
depend on it, so it never moves. :class:`~ffnet_deploy.data.sources.DigitsSource` streams it like any data source.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from ffnet_deploy.data.files import sklearn_datasets_path
from ffnet_deploy.errors import ConfigError

DIGITS_TEST_SIZE = 500
"""Images in the digits test split; the other 1297 of scikit-learn's 1797 form the training split."""

DIGITS_SPLIT_SEED = "ffnet-deploy-digits-v1"
"""Salt of the digits split: image ``i`` is in the test split when ``sha256(f"{salt}:{i}")`` is among the 500
smallest. A hash, not a seeded ``numpy`` permutation, because numpy does not promise the same stream across
releases."""

DIGITS_SPLITS = ("train", "test")
"""The splits of :class:`~ffnet_deploy.data.sources.DigitsSource`."""

DIGITS_SPECS = ("digits", "digits:train", "digits:test")
"""The data specs that name the digits data set (``digits`` alone takes the caller's default split)."""


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(values (1797, 8, 8) on 0-16, labels (1797,))``: its bundled ``digits.csv.gz``
    (64 pixel columns and the label, one row an image) read as ``load_digits`` reads it, or through ``load_digits``
    where that file is not found."""
    found = sklearn_datasets_path("data", "digits.csv.gz")
    if found is not None and found.is_file():
        import gzip

        with gzip.open(found, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        if table.ndim == 2 and table.shape[1] == 65:
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        from ffnet_deploy.errors import MissingDependencyError

        raise MissingDependencyError("data | the digits data set comes with scikit-learn: pip install "
                                     "scikit-learn") from None
    digits = load_digits()
    return digits.images, digits.target


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(uint8 images (1797, 8, 8) on 0-255, int64 labels (1797,))``, read once.

    The 0-16 values become ``round(v * 255 / 16)`` (half up), so 16 is white 255 and 0 is black.

    Raises:
        MissingDependencyError: Without scikit-learn.
    """
    raw_images, raw_labels = _digits_table()
    values = np.asarray(raw_images, dtype=np.int64)
    images = ((values * 255 * 2 + 16) // 32).astype(np.uint8)  # round(v * 255 / 16), half up
    images.setflags(write=False)
    labels = np.asarray(raw_labels, dtype=np.int64)
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
    images, _ = digits_arrays()
    keys = sorted(range(len(images)), key=lambda i: hashlib.sha256(f"{DIGITS_SPLIT_SEED}:{i}".encode()).digest())
    test = set(keys[:DIGITS_TEST_SIZE])
    return tuple(i for i in range(len(images)) if (i in test) == (split == "test"))

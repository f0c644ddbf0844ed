"""Shared test data for the quantizer tests."""

from __future__ import annotations

import numpy as np
import pytest


def photo_crops(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 (n, 3, size, size) crops of scikit-learn's sample photos (real image statistics), 2x subsampled."""
    sklearn = pytest.importorskip("sklearn.datasets")
    rng = np.random.default_rng(seed)
    images = [np.asarray(i) for i in sklearn.load_sample_images().images]
    out = []
    for k in range(n):
        im = images[k % len(images)]
        y, x = rng.integers(0, im.shape[0] - 2 * size), rng.integers(0, im.shape[1] - 2 * size)
        out.append(im[y:y + 2 * size:2, x:x + 2 * size:2].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))

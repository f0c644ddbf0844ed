"""Fixtures shared by the data-source tests: natural photos that scikit-learn ships, and ImageNet's mean/std."""

from __future__ import annotations

import numpy as np
import pytest

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    sklearn = pytest.importorskip("sklearn.datasets")
    return list(sklearn.load_sample_images().images)

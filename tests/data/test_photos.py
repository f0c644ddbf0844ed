"""Photo crops and the photo-BatchNorm checkpoint that ``bench`` uses for models without trained weights."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from ffnet_deploy.data import ImageDirSource, eval_transform, photo_bn_checkpoint, photo_crops
from ffnet_deploy.models.checkpoint import load_ffnet
from tests.data.conftest import MEAN, STD

pytest.importorskip("sklearn.datasets", reason="the sample photos come with scikit-learn")


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("bundled", [True, False], ids=["bundled-jpegs", "load_sample_images"])
def test_sample_photos_are_load_sample_images(bundled, monkeypatch):
    """The photos read from scikit-learn's images folder (without importing scikit-learn) are
    ``load_sample_images``' exactly, in its order; where that folder is not found, its loader gives them."""
    import sklearn.datasets
    import sklearn.utils

    from ffnet_deploy.data import files
    from ffnet_deploy.data.photos import sample_photos

    expected, calls = sklearn.datasets.load_sample_images().images, []
    monkeypatch.setattr(sklearn.datasets, "load_sample_images",
                        lambda: calls.append(1) or sklearn.utils.Bunch(images=expected))
    if not bundled:
        monkeypatch.setattr(files, "sklearn_datasets_path", lambda *parts: None)
    photos = sample_photos()
    assert len(calls) == (0 if bundled else 1)  # the bundled files are read without scikit-learn's loader
    assert [p.shape for p in photos] == [(427, 640, 3), (427, 640, 3)] == [p.shape for p in expected]
    assert all(p.dtype == np.uint8 and np.array_equal(p, q) for p, q in zip(photos, expected, strict=True))


def test_photo_crops_are_seeded_square_jpegs_a_source_reads(tmp_path):
    folder = photo_crops(tmp_path / "a", 5, 48, seed=1)
    assert folder == tmp_path / "a"
    assert sorted(p.name for p in folder.iterdir()) == [f"crop{i:04d}.jpg" for i in range(5)]
    for p in folder.iterdir():
        with Image.open(p) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (48, 48), "RGB")
    assert _digests(folder) == _digests(photo_crops(tmp_path / "b", 5, 48, seed=1))
    assert _digests(folder) != _digests(photo_crops(tmp_path / "c", 5, 48, seed=2))
    src = ImageDirSource(folder)
    assert sum(len(b.names) for b in src.batches(eval_transform(32, 0.9, MEAN, STD), 4)) == 5
    assert src.skipped.total == 0


def test_photo_bn_checkpoint_loads_with_photo_statistics(tmp_path):
    path = photo_bn_checkpoint("ffnet_test", tmp_path / "a.pth.tar", resolution=64, batches=2)
    assert path == tmp_path / "a.pth.tar"
    assert set(torch.load(path, weights_only=True)) == {"model"}  # the official {"model": state_dict} container
    model = load_ffnet(path, "ffnet_test")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) == 2 for m in bns)
    # Statistics of photo crops, not the reset values (zero mean, unit variance).
    assert not any(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns)
    again = photo_bn_checkpoint("ffnet_test", tmp_path / "b.pth.tar", resolution=64, batches=2)
    first, second = torch.load(path, weights_only=True)["model"], torch.load(again, weights_only=True)["model"]
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)

"""The streaming data sources: ImageFolders, flat folders and synthetic pixels; labels, limits, fingerprints."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from ffnet_deploy.data import (
    ImageDirSource,
    ImageFolderSource,
    SyntheticSource,
    eval_transform,
    make_source,
    read_labels_file,
)
from ffnet_deploy.errors import ConfigError
from tests.data.conftest import MEAN, STD


def write_image_folder(root, photos, per_class: int = 3, classes=("cat", "dog")) -> None:
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            a = photos[(ci + i) % len(photos)]
            top, left = int(rng.integers(0, 200)), int(rng.integers(0, 300))
            crop = np.ascontiguousarray(a[top:top + 90 + 7 * i, left:left + 120])
            Image.fromarray(crop).save(root / c / f"{i:02d}.{'png' if i % 2 else 'jpg'}")


def test_imagefolder_streams_batches_with_labels_and_skips(tmp_path, photos, caplog):
    write_image_folder(tmp_path, photos)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (tmp_path / "cat" / "notes.txt").write_text("hello")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0")
    src = ImageFolderSource(tmp_path)
    assert src.class_to_idx == {"cat": 0, "dog": 1}
    t = eval_transform(32, 0.9, MEAN, STD)
    with caplog.at_level(logging.WARNING, logger="ffnet_deploy.data"):
        batches = list(src.batches(t, batch_size=4))
    assert [len(b.names) for b in batches] == [4, 2]
    images = np.concatenate([b.images for b in batches])
    labels = np.concatenate([b.labels for b in batches])
    assert images.shape == (6, 3, 32, 32) and images.dtype == np.float32
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]  # round-robin over classes
    assert batches[0].pixels.dtype == np.uint8
    np.testing.assert_array_equal(batches[0].images, t.normalize(batches[0].pixels))
    assert batches[0].names[0] == "cat/00.jpg"
    assert (src.skipped.corrupt, src.skipped.unsupported) == (1, 1)
    assert src.num_images == 6
    assert "broken.jpg" in caplog.text and "notes.txt" in caplog.text
    d = src.describe()
    assert d["skipped"]["corrupt"] == 1 and d["num_images"] == 6 and d["classes"] == 2


def test_sources_read_lazily(tmp_path, photos):
    """Only the current batch is decoded: a file broken after the first batch was read is seen as corrupt."""
    write_image_folder(tmp_path, photos, per_class=4)
    src = ImageDirSource(tmp_path)
    it = src.batches(eval_transform(16, 0.9, MEAN, STD), batch_size=2)
    first = next(it)
    assert len(first.names) == 2 and first.labels is None
    (tmp_path / "dog" / "03.png").write_bytes(b"garbage")
    rest = list(it)
    assert sum(len(b.names) for b in rest) == 5
    assert src.skipped.corrupt == 1 and src.skipped.examples["corrupt"] == ["dog/03.png"]


def test_labels_file_json_and_text(tmp_path, photos):
    write_image_folder(tmp_path / "data", photos, per_class=1)
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"cat": 281, "dog": 207}))
    txt = tmp_path / "labels.txt"
    txt.write_text("# folder index\ncat 281\ndog 207\n")
    assert read_labels_file(js) == read_labels_file(txt) == {"cat": 281, "dog": 207}
    src = ImageFolderSource(tmp_path / "data", labels_file=txt)
    labels = np.concatenate([b.labels for b in src.batches(eval_transform(16, 0.9, MEAN, STD), 8)])
    assert labels.tolist() == [281, 207]
    (tmp_path / "partial.json").write_text(json.dumps({"cat": 1}))
    with pytest.raises(ConfigError, match="no index for class folder"):
        ImageFolderSource(tmp_path / "data", labels_file=tmp_path / "partial.json")
    (tmp_path / "bad.txt").write_text("cat\n")
    with pytest.raises(ConfigError, match="malformed"):
        read_labels_file(tmp_path / "bad.txt")


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        ImageDirSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class subfolders"):
        ImageFolderSource(tmp_path / "empty")
    with pytest.raises(ConfigError, match="holds no image files"):
        ImageDirSource(tmp_path / "empty")
    (tmp_path / "empty" / "a").mkdir()
    (tmp_path / "empty" / "a" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="no image files") as refused:
        ImageFolderSource(tmp_path / "empty")
    # the same message whichever option named the folder (--data, --calib, --eval-data), and it says what to do
    assert "--data" not in str(refused.value) and "one subfolder per class" in str(refused.value)
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a folder; pass the folder that holds the images"):
        ImageDirSource(f)


def test_limit_on_an_image_folder_covers_every_class(tmp_path, photos):
    write_image_folder(tmp_path, photos, per_class=3, classes=("a", "b", "c"))
    src = ImageFolderSource(tmp_path, limit=4)
    assert [label for _, label in src.items()] == [0, 1, 2, 0]


def test_limit_and_fingerprint(tmp_path, photos):
    write_image_folder(tmp_path, photos, per_class=3)
    full, limited = ImageDirSource(tmp_path), ImageDirSource(tmp_path, limit=4)
    assert len(limited.items()) == 4
    t = eval_transform(16, 0.9, MEAN, STD)
    assert sum(len(b.names) for b in limited.batches(t, 3)) == 4
    assert full.fingerprint() == ImageDirSource(tmp_path).fingerprint()
    assert full.fingerprint() != limited.fingerprint()
    before = full.fingerprint()
    path = tmp_path / "cat" / "00.jpg"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ImageDirSource(tmp_path).fingerprint() != before
    with pytest.raises(ConfigError, match="--limit"):
        ImageDirSource(tmp_path, limit=0)


def test_synthetic_source_is_seeded_pixels():
    t = eval_transform(16, 0.9, MEAN, STD)
    a = list(SyntheticSource(5, seed=3).batches(t, 2))
    b = list(SyntheticSource(5, seed=3).batches(t, 2))
    c = list(SyntheticSource(5, seed=4).batches(t, 2))
    assert [len(x.names) for x in a] == [2, 2, 1]
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].pixels, c[0].pixels)
    assert a[0].pixels.dtype == np.uint8 and a[0].labels is None
    np.testing.assert_array_equal(a[0].images, t.normalize(a[0].pixels))

    def fingerprint(seed: int, resolution: int = 16) -> str:
        s = SyntheticSource(5, seed=seed)
        list(s.batches(eval_transform(resolution, 0.9, MEAN, STD), 2))
        return s.fingerprint()

    assert fingerprint(3) == fingerprint(3)
    assert fingerprint(3) != fingerprint(4)
    assert fingerprint(3) != fingerprint(3, resolution=32)
    assert list(SyntheticSource(5, limit=2).items()) == [0, 1]
    assert len(SyntheticSource(5, limit=2)) == 2


def test_make_source_needs_exactly_one(tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        make_source()
    with pytest.raises(ConfigError, match="exactly one"):
        make_source(images=tmp_path, synthetic=3)
    with pytest.raises(ConfigError, match="--label-map"):
        make_source(synthetic=3, labels_file=tmp_path / "l.json")
    assert isinstance(make_source(synthetic=3), SyntheticSource)

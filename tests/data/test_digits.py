"""The digits data source: a fixed split, validation's own preprocessing and the data specs that name it.

``validate --data digits`` on the trained demo model is tested with the other ``validate`` runs, in
``tests/test_validate_cli.py``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from ffnet_deploy.data import (
    DigitsSource,
    EvalTransform,
    ImageDirSource,
    ImageFolderSource,
    digits_split,
    make_source,
    source_from_spec,
)
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.config import get_config

sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="the digits data set comes with scikit-learn")

# sha256 of repr(digits_split("test")): the split must never move, or cached demo models and reports disagree.
TEST_SPLIT_SHA256 = "9c8a8adf30717b6419b87c6346c799e14d64c0f96a7535e113db205cc5e8529c"
FORMS = "digits, digits:train, digits:test, an ImageFolder"


@pytest.fixture(scope="module")
def transform() -> EvalTransform:
    return EvalTransform.for_config(get_config("ffnet_digits"))


def test_split_is_fixed_disjoint_and_complete():
    import hashlib

    train, test = digits_split("train"), digits_split("test")
    assert (len(train), len(test)) == (1297, 500)
    assert not set(train) & set(test) and sorted(train + test) == list(range(1797))
    assert list(test) == sorted(test) and test[:5] == (2, 3, 5, 6, 8)
    assert hashlib.sha256(repr(test).encode()).hexdigest() == TEST_SPLIT_SHA256
    labels = sklearn_datasets.load_digits().target
    assert set(np.bincount(labels[list(test)])) and min(np.bincount(labels[list(test)], minlength=10)) >= 35
    with pytest.raises(ConfigError, match=r"^data \| digits split 'val' unknown; choose one of: train, test$"):
        digits_split("val")


@pytest.mark.parametrize("bundled", [True, False], ids=["bundled-csv", "load_digits"])
def test_digits_arrays_are_load_digits(bundled, monkeypatch):
    """The digits read from scikit-learn's bundled csv.gz (without importing scikit-learn) are ``load_digits``'
    exactly; where that file is not found, ``load_digits`` itself gives them."""
    from ffnet_deploy.data import digits as room
    from ffnet_deploy.data.files import sklearn_datasets_path

    assert sklearn_datasets_path("data", "digits.csv.gz").is_file()  # this scikit-learn keeps it where it is read
    digits, calls = sklearn_datasets.load_digits(), []
    monkeypatch.setattr(sklearn_datasets, "load_digits", lambda: calls.append(1) or digits)
    if not bundled:
        monkeypatch.setattr(room, "sklearn_datasets_path", lambda *parts: None)
    room.digits_arrays.cache_clear()
    try:
        images, labels = room.digits_arrays()
    finally:
        room.digits_arrays.cache_clear()
    assert len(calls) == (0 if bundled else 1)  # the bundled file is read without scikit-learn's loader
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.array_equal(images, np.floor(digits.images * 255 / 16 + 0.5).astype(np.uint8))
    assert np.array_equal(labels, digits.target) and not images.flags.writeable


def test_pixels_are_eval_transform_of_the_pil_image(transform):
    digits = sklearn_datasets.load_digits()
    source = DigitsSource("test", limit=20)
    batches = list(source.batches(transform, 8))
    names = [n for b in batches for n in b.names]
    assert names[:2] == ["digits/test/0002", "digits/test/0003"] and len(names) == 20 == source.num_images
    for b in batches:
        for name, label, px, img in zip(b.names, b.labels, b.pixels, b.images, strict=True):
            i = int(name.rsplit("/", 1)[1])
            gray = np.round(digits.images[i] * 255 / 16).astype(np.uint8)  # v = 8 ties (127.5): both give 128
            expected = transform.pixels(Image.fromarray(gray).convert("RGB"))
            assert px.shape == (3, 32, 32) and np.array_equal(px, expected)
            assert np.array_equal(img, transform.normalize(expected)) and label == digits.target[i]
    assert b.pixels.max() == 255 and b.labels.dtype == np.int64


def test_fingerprint_and_description(transform):
    a, b = DigitsSource("test"), DigitsSource("test")
    assert a.fingerprint() == b.fingerprint() != DigitsSource("train").fingerprint()
    assert DigitsSource("test", limit=10).fingerprint() != a.fingerprint()
    d = a.describe()
    assert (d["kind"], d["split"], d["classes"], d["labeled"]) == ("digits", "test", 10, True)
    json.dumps(d)


def test_specs(tmp_path, monkeypatch):
    assert source_from_spec("digits").split == "test"
    assert source_from_spec("digits", split="train").split == "train"
    assert source_from_spec("digits:test", split="train").split == "test"
    assert len(source_from_spec("digits:train", limit=7)) == 7
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    Image.new("RGB", (9, 9)).save(folder / "cat" / "a.png")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (9, 9)).save(flat / "b.png")
    assert isinstance(source_from_spec(folder), ImageFolderSource)
    assert isinstance(source_from_spec(str(flat)), ImageDirSource)
    bad = {"nope": "does not exist", "digits:val": "digits:train or digits:test", str(flat / "b.png"): "not a folder",
           "": "is empty"}
    for spec, why in bad.items():
        with pytest.raises(ConfigError) as err:
            source_from_spec(spec)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("data | ") and why in msg, msg
        if spec not in ("digits:val",):
            assert repr(spec) in msg and FORMS in msg
    with pytest.raises(ConfigError, match="--label-map applies to an ImageFolder only"):
        source_from_spec("digits", labels_file=tmp_path / "map.json")
    with pytest.raises(ConfigError, match="--label-map applies to an ImageFolder only"):
        source_from_spec(flat, labels_file=tmp_path / "map.json")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    with pytest.raises(ConfigError, match="names both the built-in digits data set and the folder"):
        source_from_spec("digits")
    assert source_from_spec("digits:test").kind == "digits"


def test_make_source_takes_digits_for_data_without_wordnet_warnings(caplog, tmp_path):
    from pathlib import Path

    with caplog.at_level(logging.WARNING):
        src = make_source(data=Path("digits"))
        assert (src.kind, src.split) == ("digits", "test")
        assert make_source(data="digits:train").split == "train"
    assert not caplog.records
    with pytest.raises(ConfigError, match="has no class subfolders"):  # a flat --data folder is still refused
        (tmp_path / "flat").mkdir()
        make_source(data=tmp_path / "flat")
    with pytest.raises(ConfigError, match="exactly one of"):
        make_source(data="digits", synthetic=3)

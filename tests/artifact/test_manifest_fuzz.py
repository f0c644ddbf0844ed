"""Property tests for parse_manifest: any JSON value, and any one-field mutation of a valid manifest, either parses
(and then survives a write/read round trip) or fails with one ManifestError line."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffnet_deploy.artifact.manifest import ManifestError, parse_manifest
from ffnet_deploy.errors import FFNetDeployError
from tests.artifact.test_manifest import SCHEMA1_COREML, SCHEMA1_ONNX_DYNAMIC, make_manifest

SETTINGS = settings(max_examples=100, deadline=None)
VALID = {"current": make_manifest().to_dict(), "schema1-coreml": SCHEMA1_COREML, "schema1-onnx": SCHEMA1_ONNX_DYNAMIC}

EDGES = st.sampled_from([10**400, -(10**400), 2**63, -1, 0, float("nan"), float("inf"), "", "\n", "fp32"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | EDGES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists (the root is ``()``)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def assert_parses_or_one_line_error(data: object) -> None:
    try:
        manifest = parse_manifest(data, source="fuzz/manifest.json")
    except ManifestError as err:
        msg = str(err)
        assert isinstance(err, FFNetDeployError) and msg.startswith("manifest | ") and "\n" not in msg, repr(msg)
        return
    # what was accepted must be writable, and read back the same
    again = parse_manifest(json.loads(manifest.to_json()), source="round-trip")
    assert again.to_json() == manifest.to_json()


@SETTINGS
@given(JSON)
def test_arbitrary_json(data):
    assert_parses_or_one_line_error(data)


@SETTINGS
@given(st.sampled_from(sorted(VALID)), st.data())
def test_one_field_deleted_or_retyped(name, data):
    doc = copy.deepcopy(VALID[name])
    path = data.draw(st.sampled_from(_paths(doc)[1:]), label="path")
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans(), label="delete"):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON, label="value")
    assert_parses_or_one_line_error(doc)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_manifests_parse(name):
    assert parse_manifest(copy.deepcopy(VALID[name])).variant == "ffnet_test"


@pytest.mark.parametrize("value", [10**400, -(10**400), math.nan, math.inf])
@pytest.mark.parametrize(("where", "key"), [("preprocessing", "crop_pct"), ("preprocessing", "mean"),
                                            (None, "export_seconds")])
def test_numbers_beyond_float_range_or_not_finite(value, where, key):
    doc = copy.deepcopy(SCHEMA1_COREML)
    target = doc[where] if where else doc
    target[key] = [value, 0.5, 0.5] if key == "mean" else value
    with pytest.raises(ManifestError, match=rf"field '{(where + '.') if where else ''}{key}' must be a"):
        parse_manifest(doc)

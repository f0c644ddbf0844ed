"""The state's seals (issue 18 item 6) and validate's content check (item 9), without running a pipeline."""

from __future__ import annotations

import json
import stat

import pytest

from ffnet_deploy.pipeline import state as state_module
from ffnet_deploy.pipeline.state import KEY_NAME, STATE_DIR, PipelineState, state_key


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FFNET_DEPLOY_CACHE", str(folder))
    monkeypatch.setattr(state_module, "_KEYS", {})
    return folder


def _state(tmp_path, log=None) -> PipelineState:
    (tmp_path / "out" / STATE_DIR).mkdir(parents=True, exist_ok=True)
    return PipelineState(tmp_path / "out", log=log)


def test_a_sealed_record_is_reused_and_an_edited_one_is_not(tmp_path, cache):
    state = _state(tmp_path)
    state.record("validate:onnx-int8", "abc", {"verdict": "fail", "failures": ["acc_drop = 4.2"], "metrics": {}})
    state.record("export:onnx-int8", "def", {"path": "x", "sha256": "0" * 64})
    assert PipelineState(tmp_path / "out").reusable("validate:onnx-int8", "abc")["outputs"]["verdict"] == "fail"
    data = json.loads(state.path.read_text())
    data["stages"]["validate:onnx-int8"]["outputs"]["verdict"] = "pass"
    del data["stages"]["export:onnx-int8"]["seal"]
    state.path.write_text(json.dumps(data))
    said = []
    edited = PipelineState(tmp_path / "out", log=said.append)
    assert edited.reusable("validate:onnx-int8", "abc") is None
    assert said and "validate:onnx-int8" in said[0] and "running it again" in said[0]
    # an export record needs no seal: it is checked against the artifact it names (engine.stage_export)
    assert edited.reusable("export:onnx-int8", "def") is not None


def test_a_record_without_a_seal_or_under_another_key_runs_again(tmp_path, cache, monkeypatch):
    state = _state(tmp_path)
    state.record("validate:onnx-fp32", "abc", {"verdict": "pass", "metrics": {"psnr_db": float("inf")}})
    # non-finite values round-trip ("inf" in the file) under the seal
    assert PipelineState(tmp_path / "out").reusable("validate:onnx-fp32", "abc") is not None
    monkeypatch.setenv("FFNET_DEPLOY_CACHE", str(tmp_path / "another-users-cache"))
    assert PipelineState(tmp_path / "out").reusable("validate:onnx-fp32", "abc") is None
    data = json.loads(state.path.read_text())
    del data["stages"]["validate:onnx-fp32"]["seal"]  # a state written before seals existed
    state.path.write_text(json.dumps(data))
    monkeypatch.setenv("FFNET_DEPLOY_CACHE", str(cache))
    assert PipelineState(tmp_path / "out").reusable("validate:onnx-fp32", "abc") is None


def test_the_key_is_private_and_kept(cache, monkeypatch):
    key = state_key()
    path = cache / KEY_NAME
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setattr(state_module, "_KEYS", {})
    assert state_key() == key
    assert [p.name for p in cache.iterdir()] == [KEY_NAME]  # no temporary left


def test_no_usable_cache_folder_means_a_key_for_this_run_only(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("FFNET_DEPLOY_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(state_module, "_KEYS", {})
    assert state_key() == state_module._EPHEMERAL


def test_content_format(tmp_path, base_run):
    from ffnet_deploy.artifact.formats import content_format

    onnx = (base_run / "artifacts" / "onnx-fp32" / "model.onnx").read_bytes()
    (tmp_path / "cut.engine").write_bytes(onnx[: len(onnx) // 2])
    (tmp_path / "noise.engine").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "model.engine").write_bytes(b'<?xml version="1.0"?>\n<net name="model" version="11">\n</net>\n')
    assert content_format(tmp_path / "cut.engine") is None
    assert content_format(tmp_path / "noise.engine") is None
    assert content_format(tmp_path / "model.engine") == "openvino"
    assert content_format(tmp_path) is None

"""The runner base class: availability, the artifact requirement, the typed manifest, and input dtype checks.

Everything runs on real ONNX Runtime sessions (it is a core dependency); nothing is mocked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ffnet_deploy.artifact.manifest import Manifest, ManifestError
from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes import create_runner
from ffnet_deploy.runtimes.base import BaseRunner, dtype_cast_allowed
from tests.runtimes.conftest import RES, make_manifest


class _Needs(BaseRunner):
    requires = (("numpy", "dev"), ("no_such_engine_xyz", "openvino"))

    def _activate(self):  # pragma: no cover - never activated
        raise AssertionError

    def _infer(self, feed):  # pragma: no cover
        raise AssertionError

    def _input_metadata(self):  # pragma: no cover
        raise AssertionError


def test_unavailable_reason_names_the_missing_module_and_extra():
    assert _Needs.unavailable_reason() == "needs no_such_engine_xyz: pip install 'ffnet-deploy[openvino]'"
    assert BaseRunner.unavailable_reason() is None


def test_artifact_is_required_with_one_message():
    with pytest.raises(ConfigError) as err:
        _Needs(None)
    assert str(err.value) == ("base | needs an artifact: a model file, or an artifact directory written by "
                              "'ffnet-deploy export'; got None")


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_invalid_threads_are_refused(onnx_dir, threads):
    with pytest.raises(ConfigError, match="threads must be a positive int or None"):
        create_runner("onnxruntime", onnx_dir, threads=threads)


# -- the typed manifest -----------------------------------------------------------------------------------------------


def test_runner_from_an_artifact_directory_exposes_the_typed_manifest(onnx_dir, images):
    runner = create_runner("onnxruntime", onnx_dir)
    assert isinstance(runner.manifest, Manifest)
    assert runner.manifest.format == "onnx" and runner.manifest.artifact.path == "model.onnx"
    assert runner.manifest.directory == onnx_dir and runner.manifest.input.dtype == "float32"
    with runner:
        assert runner.model_path == onnx_dir / "model.onnx"
        assert runner.infer(images)["logits"].shape == (2, 1000)
    # A bare model file has no manifest.
    assert create_runner("onnxruntime", onnx_dir / "model.onnx").manifest is None


def test_manifest_names_the_model_file(onnx_dir, tmp_path, images):
    """``artifact.path`` from the typed manifest decides which file loads, not the default ``model.onnx`` name."""
    art = tmp_path / "renamed"
    art.mkdir()
    shutil.copy(onnx_dir / "model.onnx", art / "ffnet.onnx")
    from ffnet_deploy.artifact.manifest import write_manifest

    write_manifest(make_manifest("ffnet.onnx", "onnx"), art)
    with create_runner("onnxruntime", art) as runner:
        assert runner.model_path == art / "ffnet.onnx"
        assert runner.infer(images)["logits"].shape == (2, 1000)


def _copy_with_manifest_text(onnx_dir: Path, tmp_path: Path, text: str) -> Path:
    art = tmp_path / "art"
    art.mkdir()
    shutil.copy(onnx_dir / "model.onnx", art / "model.onnx")
    (art / "manifest.json").write_text(text)
    return art


def test_corrupt_manifest_is_one_manifest_error_line(onnx_dir, tmp_path):
    art = _copy_with_manifest_text(onnx_dir, tmp_path, "{not json")
    with pytest.raises(ManifestError) as err:
        create_runner("onnxruntime", art)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"manifest | {art / 'manifest.json'} is not valid JSON")
    assert message.endswith("re-export the artifact")


def test_manifest_with_a_missing_field_names_the_field(onnx_dir, tmp_path):
    art = _copy_with_manifest_text(onnx_dir, tmp_path, '{"format": "onnx", "precision": "fp32"}')
    with pytest.raises(ManifestError, match=r"^manifest \| .*manifest.json: field 'inputs' is missing"):
        create_runner("onnxruntime", art)


def test_a_manifest_the_caller_holds_is_used_as_is(onnx_dir, tmp_path, images):
    """Passing ``manifest=`` means the file is not read again (here it is broken and would fail)."""
    art = _copy_with_manifest_text(onnx_dir, tmp_path, "{not json")
    held = make_manifest("model.onnx", "onnx").with_updates(directory=art)
    with create_runner("onnxruntime", art, manifest=held) as runner:
        assert runner.manifest is held
        assert runner.infer(images)["logits"].shape == (2, 1000)
    # Without an artifact path the manifest's own directory is used.
    with create_runner("onnxruntime", None, manifest=held) as runner:
        assert runner.artifact == art and runner.model_path == art / "model.onnx"


# -- input dtypes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("got", "want", "allowed"), [
    ("float32", "float32", True),
    ("float64", "float32", True),  # same kind: a narrower float keeps the value up to rounding
    ("float16", "float32", True),
    ("uint8", "uint8", True),
    ("uint8", "float32", True),  # pixels into a float pixel input (Core ML image features): exact
    ("uint8", "int32", True),
    ("int64", "int32", True),  # same kind
    ("float32", "uint8", False),  # floats into a pixel input would wrap and truncate
    ("float64", "uint8", False),
    ("float32", "int64", False),
    ("int64", "float32", False),  # not exactly representable
    ("int32", "float32", False),
    ("int64", "uint8", False),
    ("bool", "float32", True),
    ("float32", "bool", False),
    ("complex64", "float32", False),
])
def test_dtype_cast_rules(got, want, allowed):
    assert dtype_cast_allowed(np.dtype(got), np.dtype(want)) is allowed


@pytest.fixture(scope="module")
def uint8_onnx(tmp_path_factory) -> Path:
    """A real ONNX model with a uint8 ``images`` input (as a baked-preprocessing export has): it casts to float."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["logits"], to=TensorProto.FLOAT)], "pixels",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, RES, RES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, RES, RES])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("uint8") / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_float_fed_to_a_uint8_input_is_an_error_not_a_cast(uint8_onnx):
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, RES, RES), dtype=np.uint8)
    with create_runner("onnxruntime", uint8_onnx) as runner:
        assert runner.input_metadata()["images"].dtype == "uint8"
        np.testing.assert_array_equal(runner.infer(pixels)["logits"], pixels.astype(np.float32))
        with pytest.raises(RuntimeBackendError) as err:
            runner.infer(pixels.astype(np.float32) + 0.5)
        assert str(err.value) == ("onnxruntime | input 'images' expects uint8 (0-255 pixels), got float32; "
                                  "pass uint8 pixels or re-export without --include-preprocessing")
        with pytest.raises(RuntimeBackendError, match="expects uint8 .*got int64"):
            runner.infer(pixels.astype(np.int64))


def test_integers_fed_to_a_float_input_only_when_exact(onnx_dir, images):
    pixels = np.random.default_rng(1).integers(0, 256, (1, 3, RES, RES), dtype=np.uint8)
    with create_runner("onnxruntime", onnx_dir) as runner:
        # float64 and uint8 convert without changing a value, so they are accepted.
        np.testing.assert_allclose(runner.infer(images.astype(np.float64))["logits"], runner.infer(images)["logits"],
                                   rtol=1e-6, atol=1e-6)
        runner.infer(pixels)
        with pytest.raises(RuntimeBackendError) as err:
            runner.infer(pixels.astype(np.int64))
        assert str(err.value) == ("onnxruntime | input 'images' expects float32, got int64; pass float32 arrays "
                                  "(convert with .astype(np.float32) where the values fit)")

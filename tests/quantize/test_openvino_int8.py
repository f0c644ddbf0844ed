"""OpenVINO INT8 through NNCF post-training quantization, on the tiny ``ffnet_test`` variant with real libraries."""

from __future__ import annotations

import json

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from ffnet_deploy.data import eval_transform  # noqa: E402
from ffnet_deploy.errors import ConfigError  # noqa: E402
from ffnet_deploy.quantize.calibration import calibration_set_from_arrays  # noqa: E402
from ffnet_deploy.quantize.openvino_int8 import (  # noqa: E402
    NNCFSettings,
    QuantizationError,
    collect_statistics,
    model_groups,
    quantize_openvino,
    quantize_with_accuracy_control,
)
from ffnet_deploy.validate.metrics import sqnr_db  # noqa: E402
from tests.quantize.helpers import photo_crops  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")


@pytest.fixture(scope="module")
def transform():
    return eval_transform(64, 0.875, MEAN, STD)


@pytest.fixture(scope="module")
def fp32_ir(tmp_path_factory):
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters import ExportConfig

    out = tmp_path_factory.mktemp("ov") / "ffnet_test-openvino"
    return export(ExportConfig("openvino", out), None, "ffnet_test").artifact


@pytest.fixture(scope="module")
def fp32_model(fp32_ir):
    return ov.Core().read_model(str(fp32_ir))


@pytest.fixture(scope="module")
def calib(transform):
    return calibration_set_from_arrays(photo_crops(12, 64, seed=0), transform, "photo-crops")


@pytest.fixture(scope="module")
def quantized(fp32_model, calib):
    return quantize_openvino(fp32_model, calib, NNCFSettings())


def _run(model, x: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return np.concatenate([request.infer({0: x[i:i + 1]})[compiled.outputs[0]].copy() for i in range(len(x))])


def test_quantized_model_runs_and_tracks_fp32(fp32_model, quantized, transform):
    ops = [op.get_type_name() for op in quantized.model.get_ops()]
    assert "FakeQuantize" in ops
    assert quantized.counts["fake_quantize"] > 0 and quantized.counts["int8_weights"] > 0
    assert quantized.counts["float_weights"] == 0
    assert quantized.float_groups == []
    assert quantized.quantized_groups == model_groups(fp32_model)
    x = transform.normalize(photo_crops(6, 64, seed=1))  # other crops of the same photos: calibration-like inputs
    ref, out = _run(fp32_model, x), _run(quantized.model, x)
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert sqnr_db(ref, out) > 8.0  # random weights, 8-bit everywhere; measured ~16 dB
    details = quantized.details()
    json.dumps(details)
    assert details["settings"]["preset"] == "performance" and details["seconds"] > 0


def test_input_model_is_not_changed(fp32_model, quantized):
    assert "FakeQuantize" not in {op.get_type_name() for op in fp32_model.get_ops()}


def test_ignored_groups_stay_float(fp32_model, calib):
    groups = ("stages.1.2.token_mixer", "patch_embed", "head")
    r = quantize_openvino(fp32_model, calib, NNCFSettings(ignored_groups=groups))
    assert sorted(r.float_groups) == sorted(groups)
    assert set(r.quantized_groups) == set(model_groups(fp32_model)) - set(groups)
    from ffnet_deploy.quantize.openvino_int8 import _has_int8_weights, _op_group

    weighted = [op for op in r.model.get_ops() if op.get_type_name() in _WEIGHTED]
    for op in weighted:
        assert _has_int8_weights(op) == (_op_group(op) not in groups), op.get_friendly_name()
        if _op_group(op) in groups and op.get_type_name() != "MatMul":
            assert op.input_value(0).get_node().get_type_name() != "FakeQuantize", op.get_friendly_name()


def test_unknown_group_is_a_config_error(fp32_model, calib):
    with pytest.raises(ConfigError, match="not in this model"):
        quantize_openvino(fp32_model, calib, NNCFSettings(ignored_groups=("stages.9.9.token_mixer",)))


@pytest.mark.parametrize("kwargs", [{"preset": "fast"}, {"model_type": "cnn"}, {"subset_size": 0},
                                    {"ignored_groups": "head"}, {"target_device": "TPU"}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="^nncf \\| "):
        NNCFSettings(**kwargs)


def test_statistics_round_trip(fp32_model, calib, quantized, transform):
    stats = json.loads(json.dumps(collect_statistics(fp32_model, calib, NNCFSettings())))
    assert stats == json.loads(json.dumps(quantized.statistics))

    class NoData:  # the cached path must not read a single calibration image
        def batches(self, batch_size=1):
            raise AssertionError("calibration data read despite cached statistics")

        def __len__(self):
            return 0

    again = quantize_openvino(fp32_model, NoData(), NNCFSettings(), statistics=stats)
    assert again.statistics_reused
    x = transform.normalize(photo_crops(4, 64, seed=2))
    np.testing.assert_array_equal(_run(again.model, x), _run(quantized.model, x))


def test_statistics_that_do_not_fit_are_refused(fp32_model, calib):
    partial = quantize_openvino(fp32_model, calib, NNCFSettings(ignored_groups=("patch_embed",))).statistics
    with pytest.raises(QuantizationError, match="do not fit"):
        quantize_openvino(fp32_model, calib, NNCFSettings(), statistics=partial)
    with pytest.raises(QuantizationError, match="do not fit"):
        quantize_openvino(fp32_model, calib, NNCFSettings(), statistics={"format": "other", "steps": []})


def test_accuracy_control_runs_on_a_labelled_folder(fp32_model, calib, transform, tmp_path):
    from PIL import Image

    from ffnet_deploy.data import ImageFolderSource

    for label, seed in (("class_a", 3), ("class_b", 4)):
        (tmp_path / label).mkdir()
        for i, px in enumerate(photo_crops(3, 64, seed=seed)):
            Image.fromarray(px.transpose(1, 2, 0)).save(tmp_path / label / f"{i}.png")
    source = ImageFolderSource(tmp_path)
    r = quantize_with_accuracy_control(fp32_model, calib, source, transform, max_drop=1.0)
    assert "FakeQuantize" in {op.get_type_name() for op in r.model.get_ops()}
    assert r.extra["max_drop"] == 1.0
    assert r.extra["drop"] <= 1.0 + 1e-9
    assert set(r.reverted) <= {op.get_friendly_name() for op in fp32_model.get_ops()}
    json.dumps(r.details())


def test_accuracy_control_needs_labels(fp32_model, calib, transform):
    from ffnet_deploy.data import SyntheticSource

    with pytest.raises(ConfigError, match="labelled"):
        quantize_with_accuracy_control(fp32_model, calib, SyntheticSource(4), transform, max_drop=1.0)


def test_sensitivity_runs_nncf_candidates_through_the_openvino_runner(fp32_ir, calib, transform):
    from ffnet_deploy.quantize.openvino_int8 import inspect_quantized
    from ffnet_deploy.quantize.sensitivity import EvalSet, OpenVINOBackend, RunnerInfer, run
    from ffnet_deploy.runtimes.openvino import OpenVINORunner

    backend = OpenVINOBackend(fp32_ir, calib, threads=1)
    try:
        groups = backend.groups()
        assert groups[0] == "patch_embed" and groups[-1] == "head"
        x = transform.normalize(photo_crops(4, 64, seed=1))
        data = EvalSet(x, None, {"kind": "photo-crops"})
        reference = backend.reference()
        ref = reference(x)
        runner = reference.runner
        assert isinstance(reference, RunnerInfer) and isinstance(runner, OpenVINORunner)
        assert runner.actual_inference_precision() == "f32" and runner.threads == 1
        reference.close()

        head_only = backend.quantized(only_groups=["head"])
        quantized_groups, _, _ = inspect_quantized(ov.Core().read_model(str(head_only.path)))
        assert quantized_groups == ["head"]  # every other group was in NNCF's ignored scope
        out = run(head_only, data)
        assert head_only.runner is None and not head_only.path.exists()
        all_but_stem = backend.quantized(float_groups=["patch_embed"])
        quantized_groups, float_groups, _ = inspect_quantized(ov.Core().read_model(str(all_but_stem.path)))
        assert "patch_embed" in float_groups and "patch_embed" not in quantized_groups and "head" in quantized_groups
        rest = run(all_but_stem, data)
        assert out.shape == rest.shape == ref.shape and np.isfinite(rest).all()
        assert sqnr_db(ref, out) > sqnr_db(ref, rest) > 5.0  # one group alone costs less than nearly all of them
    finally:
        backend.close()

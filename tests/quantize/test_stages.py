"""The min/max INT8 stage that ExecuTorch and LiteRT share (:func:`ffnet_deploy.quantize.stages.minmax_int8_stage`),
run with a recipe of plain functions: what it feeds, what it caches, what it reports and how it refuses statistics
that do not fit."""

from __future__ import annotations

import pytest

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.exporters import ExportConfig
from ffnet_deploy.quantize.config import QuantizationConfig
from ffnet_deploy.quantize.stages import MinMaxRecipe, minmax_int8_stage
from tests.recording import Recording


@pytest.fixture(scope="module")
def model():
    from ffnet_deploy.models.ffnet import create_ffnet

    return create_ffnet("ffnet_test").eval()


def _recipe(fed: list, restored: list, *, misfit: bool = False) -> MinMaxRecipe:
    def calibrate(state, batches, total, progress):
        for done, chunk in enumerate(batches, 1):
            fed.append(chunk.shape)
            progress.step(min(done * chunk.shape[0], total), total, "calibrating")
        assert state == "prepared"
        return {"observers": {"obs0": {"min": [0.0], "max": [float(total)], "shape": [1]}}}  # PT2E's layout

    def restore(state, entry):
        if misfit and entry.hit:
            raise KeyError("observer_3")
        restored.append((state, entry.hit, entry.statistics))
        return "quantized"

    return MinMaxRecipe(fmt="toy", backend="toy/minmax", recipe="min/max per tensor", observers="toy observers",
                        fits="graph", model_sha256=lambda: "0" * 64, method=None, prepare=lambda: "prepared",
                        calibrate=calibrate, restore=restore, finish=lambda result: result + " and converted")


def test_the_shared_stage_pads_caches_records_and_refuses_a_misfit(model, tmp_path):
    config = ExportConfig("executorch", tmp_path / "out", batch=3, precision="int8",
                          quantization=QuantizationConfig(calib="digits", calib_size=10, cache_dir=tmp_path / "cache"))
    fed: list = []
    restored: list = []
    events = Recording()
    result, record = minmax_int8_stage(model, config, events, 3, _recipe(fed, restored))
    assert result == "quantized and converted"
    assert len(fed) == 4 and {shape[0] for shape in fed} == {3}  # 10 images: 3 + 3 + 3 + the last one repeated
    assert restored == [("prepared", False, {"observers": {"obs0": {"min": [0.0], "max": [10.0], "shape": [1]}}})]
    assert record["backend"] == "toy/minmax" and record["recipe"] == "min/max per tensor"
    assert record["statistics_cache"]["hit"] is False and "quantized_groups" not in record
    assert events.steps("calibrating")[-1] == (10, 10) and events.steps("calibration images")[-1] == (10, 10)
    assert "collecting activation ranges (toy observers) over 10 images" in events.notes()

    restored.clear()
    again, record = minmax_int8_stage(model, config, Recording(), 3, _recipe(fed, restored))
    assert again == "quantized and converted" and restored[0][1] is True and record["statistics_cache"]["hit"]

    with pytest.raises(ConfigError) as err:
        minmax_int8_stage(model, config, Recording(), 3, _recipe([], [], misfit=True))
    message = str(err.value)
    assert message.startswith("toy export | the cached statistics in ") and "do not fit this graph" in message
    assert "delete the file to recalibrate" in message and "\n" not in message

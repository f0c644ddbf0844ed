"""``export --precision int8`` end to end on the digits demo model: every backend, the cache, the manifest, bad input.

The demo checkpoint (trained once per session by the ``demo_checkpoint_path`` fixture) has a meaningful accuracy on the
held-out digits, so the int8 tolerance profile's top-1 agreement and accuracy-drop checks mean something here.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ffnet_deploy.artifact.manifest import read_manifest
from ffnet_deploy.cli import main
from ffnet_deploy.errors import ConfigError, QuantizationError
from ffnet_deploy.export import export
from ffnet_deploy.exporters import ExportConfig
from ffnet_deploy.quantize.config import QuantizationConfig
from ffnet_deploy.quantize.sensitivity import EvalSet, fit_accuracy_budget

CALIB = 64


def _int8(fmt: str, out: Path, cache: Path, **changes) -> ExportConfig:
    q = QuantizationConfig(calib="digits", calib_size=CALIB, eval_data="digits", cache_dir=cache,
                           **{k: v for k, v in changes.items() if k in QuantizationConfig.__dataclass_fields__})
    rest = {k: v for k, v in changes.items() if k not in QuantizationConfig.__dataclass_fields__}
    return ExportConfig(fmt, out, precision=rest.pop("precision", "int8"), quantization=q, **rest)


@pytest.fixture(scope="module")
def onnx_int8(demo_checkpoint_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    result = export(_int8("onnx", root / "onnx", root / "cache", target="cpu"), demo_checkpoint_path)
    return root, result


def test_onnx_cpu_int8_records_what_was_done(onnx_int8):
    import onnx

    _, result = onnx_int8
    m = read_manifest(result.output)
    assert m.precision == "int8"
    q = m.details["quantization"]
    assert q["backend"] == "onnxruntime" and q["method"] == "minmax" and q["target"] == "cpu"
    assert q["calibration"]["num_images"] == CALIB and len(q["calibration"]["fingerprint"]) == 64
    assert q["statistics_cache"]["hit"] is False and q["calibration_seconds"] > 0
    assert q["quantized_groups"] and "speedup_vs_fp32" in q
    speed = q["speedup_vs_fp32"]
    assert speed["fp32_ms"] > 0 and speed["int8_ms"] > 0
    if speed["speedup"] < 1.05:  # never a slower "optimized" model without saying so
        assert any("not faster than FP32" in n for n in m.notices)
    ops = {n.op_type for n in onnx.load(str(result.artifact)).graph.node}
    assert ops & {"QuantizeLinear", "QLinearConv", "DequantizeLinear", "ConvInteger"}
    # The export-time gate ran the int8 profile on real digits (labels: accuracy drop checked too).
    assert m.parity["passed"] is True
    gate = m.parity["checks"][0]
    assert gate["precision"] == "int8" and gate["metrics"]["acc_drop"] is not None
    assert m.parity["data"]["kind"] == "digits"


def test_rerun_hits_the_cache_and_says_so(onnx_int8, demo_checkpoint_path, capsys):
    root, _ = onnx_int8
    code = main(["export", "-c", str(demo_checkpoint_path), "--format", "onnx", "--precision", "int8",
                 "--calib", "digits", "--calib-size", str(CALIB), "--calib-cache", str(root / "cache"),
                 "--output", str(root / "again"), "--no-parity"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "calibration cache: hit" in err
    q = read_manifest(root / "again").details["quantization"]
    assert q["statistics_cache"]["hit"] is True


def test_validate_uses_the_int8_profile(onnx_int8, demo_checkpoint_path, capsys):
    _, result = onnx_int8
    code = main(["validate", str(result.output), "-c", str(demo_checkpoint_path), "--data", "digits", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    art = report["artifacts"][0]
    assert art["precision"] == "int8" and art["passed"] is True
    assert art["profile"]["name"] == "int8" and art["metrics"]["acc_drop"] is not None


def test_tensorrt_target_is_symmetric_int8_qdq(demo_checkpoint_path, tmp_path):
    import onnx
    from onnx import numpy_helper

    result = export(_int8("onnx", tmp_path / "qdq", tmp_path / "cache", target="tensorrt"), demo_checkpoint_path)
    graph = onnx.load(str(result.artifact)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    qs = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qs and not [n for n in graph.node if n.op_type.startswith("QLinear")]
    for node in qs:
        if len(node.input) > 2 and node.input[2] in inits:
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), node.name
    assert read_manifest(result.output).details["quantization"]["target"] == "tensorrt"


def test_tensorrt_int8_writes_the_device_build(demo_checkpoint_path, tmp_path):
    result = export(_int8("tensorrt", tmp_path / "trt", tmp_path / "cache"), demo_checkpoint_path)
    m = read_manifest(result.output)
    assert m.precision == "int8"
    script = (result.output / "build_engine.sh").read_text()
    assert "--int8" in script and "--fp16" in script
    assert m.details["quantization"]["target"] == "tensorrt"


def test_openvino_int8_through_nncf(demo_checkpoint_path, tmp_path):
    import openvino as ov

    result = export(_int8("openvino", tmp_path / "ov", tmp_path / "cache"), demo_checkpoint_path)
    m = read_manifest(result.output)
    assert m.precision == "int8" and m.parity["passed"] is True
    assert m.details["quantization"]["backend"] == "openvino/nncf"
    ops = {op.get_type_name() for op in ov.Core().read_model(str(result.artifact)).get_ops()}
    assert "FakeQuantize" in ops
    again = export(_int8("openvino", tmp_path / "ov2", tmp_path / "cache"), demo_checkpoint_path)
    assert read_manifest(again.output).details["quantization"]["statistics_cache"]["hit"] is True


@pytest.fixture
def system_temp(tmp_path, monkeypatch):
    """A private system temp folder, where coremltools keeps the packages of programs not yet saved."""
    folder = tmp_path / "system-temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("weights", ["int8", "palettize6"])
def test_coreml_weight_compression_runs_in_the_reference_runner(demo_checkpoint_path, tmp_path, weights,
                                                                system_temp):
    result = export(_int8("coreml", tmp_path / "cm", tmp_path / "cache", precision="fp16", weights=weights),
                    demo_checkpoint_path)
    m = read_manifest(result.output)
    assert m.parity["passed"] is True, m.parity
    assert m.details["compression"]["weights"] == weights
    # The converted, lifted and compressed programs' temporary packages are gone once the artifact is saved.
    assert list(system_temp.glob("*.mlpackage")) == []


def test_coreml_w8a8(demo_checkpoint_path, tmp_path, system_temp):
    result = export(_int8("coreml", tmp_path / "w8a8", tmp_path / "cache"), demo_checkpoint_path)
    m = read_manifest(result.output)
    assert m.precision == "int8" and m.parity["passed"] is True, m.parity
    assert m.details["compression"]["activations"] == "int8"
    assert m.details["minimum_deployment_target"] in ("iOS17", "iOS18")
    assert list(system_temp.glob("*.mlpackage")) == []


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 1, no artifact
# --------------------------------------------------------------------------------------------------------------------


def _export_cli(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["export", "-c", str(ckpt), "--format", "onnx", "--precision", "int8", "--output", str(out), *extra]


@pytest.mark.parametrize("case", ["empty", "corrupt", "too_few", "missing"])
def test_bad_calibration_data_leaves_nothing(demo_checkpoint_path, tmp_path, capsys, case):
    data = tmp_path / "calib"
    data.mkdir()
    if case == "corrupt":
        for i in range(10):  # as many files as --calib-size: the up-front count passes, decoding finds none usable
            (data / f"x{i}.jpg").write_bytes(b"\xff\xd8 broken")
    if case == "too_few":
        from PIL import Image

        for i in range(3):
            Image.new("RGB", (40, 40), (i * 60, 10, 10)).save(data / f"ok{i}.png")
    if case == "missing":
        data = tmp_path / "nowhere"
    out = tmp_path / "out"
    code = main(_export_cli(demo_checkpoint_path, out, "--calib", str(data), "--calib-size", "10",
                            "--calib-cache", str(tmp_path / "cache")))
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and err.count("error:") == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    expected = {"empty": "no image", "corrupt": "no usable image", "too_few": "--calib-size 3",
                "missing": "does not exist"}[case]
    assert expected in err.replace("\n", " ")


def test_cache_of_another_model_is_refused(onnx_int8, tmp_path, capsys):
    import torch

    from ffnet_deploy.models.ffnet import create_ffnet

    root, _ = onnx_int8
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save({"model": create_ffnet("ffnet_digits", num_classes=10).state_dict()}, other)
    out = tmp_path / "out"
    code = main(_export_cli(other, out, "--variant", "ffnet_digits", "--calib", "digits", "--calib-size",
                            str(CALIB), "--calib-cache", str(root / "cache")))
    err = capsys.readouterr().err
    assert code == 1 and "another model" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx", "--calib", "digits"], "applies to --precision int8"),
    (["--format", "onnx", "--precision", "int8"], "needs calibration data"),
    (["--format", "onnx", "--weights", "int8"], "does not take --weights"),
    (["--format", "openvino", "--precision", "int8", "--calib", "digits", "--target", "cpu"],
     "does not take --target"),
    (["--format", "onnx", "--precision", "int8", "--calib", "digits", "--max-drop", "1"], "needs labelled"),
    (["--format", "onnx", "--precision", "int8", "--calib", "digits", "--calib-method", "mse"], "--calib-method"),
    (["--format", "tensorrt", "--precision", "int8", "--calib", "digits", "--target", "cpu"], "--target cpu"),
])
def test_option_mistakes_are_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = main(["export", "--variant", "ffnet_test", "--output", str(out), *args])
    err = capsys.readouterr().err
    assert code == 1, err
    assert message in err.replace("\n", " ") and "Traceback" not in err
    assert not out.exists()


def test_quantization_config_is_validated():
    with pytest.raises(ConfigError, match="--calib-size"):
        QuantizationConfig(calib="digits", calib_size=0).validate()
    with pytest.raises(ConfigError, match="--weights"):
        QuantizationConfig(weights="int3").validate()


# --------------------------------------------------------------------------------------------------------------------
# Sensitivity and the accuracy budget
# --------------------------------------------------------------------------------------------------------------------


def test_sensitivity_cli_ranks_groups(demo_checkpoint_path, tmp_path, capsys):
    code = main(["sensitivity", "-c", str(demo_checkpoint_path), "--calib", "digits", "--calib-size", str(CALIB),
                 "--eval-data", "digits", "--calib-cache", str(tmp_path / "cache"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    groups = report["groups"]
    assert len(groups) > 5 and {"patch_embed", "head"} <= {g["group"] for g in groups}
    sqnr = [g["sqnr_db"] if g["sqnr_db"] is not None else float("inf") for g in groups]
    assert sqnr == sorted(sqnr)
    assert report["fp32_accuracy"] > 90 and all(g["accuracy"] is not None for g in groups)


class _Toy:
    """A pure-numpy QuantBackend: group "bad" destroys the logits when quantized, "ok" barely moves them."""

    name = "toy"

    def __init__(self, w: np.ndarray) -> None:
        self.w = w

    def groups(self) -> list[str]:
        return ["ok", "bad"]

    def reference(self):
        return lambda x: x.reshape(len(x), -1) @ self.w

    def quantized(self, float_groups=(), only_groups=None):
        active = set(self.groups() if only_groups is None else only_groups) - set(float_groups)
        noise = (0.01 if "ok" in active else 0) + (10.0 if "bad" in active else 0)
        rng = np.random.default_rng(0)
        return lambda x: x.reshape(len(x), -1) @ self.w + noise * rng.standard_normal((len(x), self.w.shape[1]))


class _Broken(_Toy):
    """Adds group "nan", whose quantization makes one logit NaN, and "exact", which changes nothing."""

    def groups(self) -> list[str]:
        return ["exact", "ok", "nan", "bad"]

    def quantized(self, float_groups=(), only_groups=None):
        active = set(self.groups() if only_groups is None else only_groups) - set(float_groups)
        base = super().quantized(float_groups, [g for g in ("ok", "bad") if g in active])

        def infer(x):
            out = base(x)
            if "nan" in active:
                out[0, 0] = np.nan
            return out

        return infer


def test_sensitivity_ranks_a_nonfinite_group_first():
    from ffnet_deploy.quantize.sensitivity import analyze

    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 3, 2, 2)).astype(np.float32)
    w = rng.standard_normal((12, 5))
    report = analyze(_Broken(w), EvalSet(x, np.argmax(x.reshape(50, -1) @ w, 1), {}))
    assert report.ranking() == ["nan", "bad", "ok", "exact"]  # NaN is the worst, identical (inf dB) the least
    nan, _, _, exact = report.effects
    broken = len(range(0, 50, 16))  # one NaN sample per evaluation batch of 16
    assert math.isnan(nan.sqnr_db) and nan.top1_agreement == (50 - broken) / 50 and exact.sqnr_db == math.inf
    assert exact.top1_agreement == 1.0 and exact.accuracy_drop == 0.0
    assert nan.accuracy_drop == pytest.approx(100 * broken / 50)  # every NaN sample is wrong, none else
    assert math.isnan(report.int8_sqnr_db)
    groups = report.to_dict()["groups"]
    assert [g["sqnr_db"] for g in groups][0] is None and groups[-1]["sqnr_db"] is None  # non-finite as null


def test_budget_keeps_the_most_sensitive_group_in_float():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 3, 2, 2)).astype(np.float32)
    w = rng.standard_normal((12, 5))
    labels = np.argmax(x.reshape(200, -1) @ w, 1)
    data = EvalSet(x, labels, {"kind": "toy"})
    fit = fit_accuracy_budget(_Toy(w), None, None, 1.0, data=data)
    assert fit.float_groups == ["bad"] and fit.drop <= 1.0 and fit.int8_accuracy < fit.fp32_accuracy - 1
    with pytest.raises(QuantizationError, match="no INT8 configuration meets"):
        fit_accuracy_budget(_Toy(w * 1e-4), None, None, 0.0, data=EvalSet(x, labels, {}))


def test_max_drop_budget_is_recorded(demo_checkpoint_path, tmp_path):
    result = export(_int8("onnx", tmp_path / "budget", tmp_path / "cache", target="cpu", max_drop=0.5),
                    demo_checkpoint_path)
    q = read_manifest(result.output).details["quantization"]
    fit = q["accuracy_budget"]
    assert fit["max_drop"] == 0.5 and fit["drop"] <= 0.5 and fit["images"] == 500
    assert fit["float_groups"] == q["float_groups"]


def test_openvino_accuracy_control(demo_checkpoint_path, tmp_path):
    result = export(_int8("openvino", tmp_path / "ac", tmp_path / "cache", max_drop=0.5), demo_checkpoint_path)
    q = read_manifest(result.output).details["quantization"]
    assert q["accuracy_control"]["max_drop"] == 0.5 and q["statistics_cache"]["hit"] is False
    assert "reverted_groups" in q["nncf"]


def test_json_output_stays_json_with_nncf(demo_checkpoint_path, tmp_path, capsys):
    code = main(["export", "-c", str(demo_checkpoint_path), "--format", "openvino", "--precision", "int8",
                 "--calib", "digits", "--calib-size", str(CALIB), "--calib-cache", str(tmp_path / "cache"),
                 "--output", str(tmp_path / "ov"), "--no-parity", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out)["manifest"]["details"]["quantization"]["backend"] == "openvino/nncf"


def test_int4_defaults_to_blocks(demo_checkpoint_path, tmp_path):
    assert QuantizationConfig(weights="int4").weight_granularity() == "per_block"
    assert QuantizationConfig(weights="int8").weight_granularity() == "per_channel"
    assert QuantizationConfig(weights="int4", granularity="per_channel").weight_granularity() == "per_channel"
    result = export(_int8("coreml", tmp_path / "int4", tmp_path / "cache", precision=None, weights="int4"),
                    demo_checkpoint_path)
    m = read_manifest(result.output)
    assert m.parity["passed"] is True, m.parity
    assert m.details["compression"]["granularity"] == "per_block"
    assert m.details["minimum_deployment_target"] == "iOS18"


# --------------------------------------------------------------------------------------------------------------------
# The cache-only path and early refusals
# --------------------------------------------------------------------------------------------------------------------


def test_cache_only_int8_finds_the_default_cache_and_gates_on_real_images(demo_checkpoint_path, tmp_path,
                                                                          monkeypatch):
    """README: with a cache entry present, --calib may be left out. The default per-model cache is found, and the
    gate judges the artifact on the real images the statistics came from (the digits), not on 2 synthetic ones."""
    monkeypatch.setenv("FFNET_DEPLOY_CACHE", str(tmp_path / "cache-root"))
    first = export(ExportConfig("onnx", tmp_path / "first", precision="int8",
                                quantization=QuantizationConfig(calib="digits", calib_size=CALIB)),
                   demo_checkpoint_path)
    assert read_manifest(first.output).details["quantization"]["statistics_cache"]["hit"] is False
    again = export(ExportConfig("onnx", tmp_path / "again", precision="int8"), demo_checkpoint_path)
    m = read_manifest(again.output)
    assert m.details["quantization"]["statistics_cache"]["hit"] is True
    gate = m.parity["checks"][0]
    assert gate["metrics"]["num_samples"] >= 100 and m.parity["data"]["kind"] == "digits"
    assert any(c["name"] == "top1_agreement" and c["passed"] for c in gate["checks"])
    # An explicit --calib-cache folder without --calib: the same.
    folder = tmp_path / "carried"
    export(ExportConfig("onnx", tmp_path / "c1", precision="int8",
                        quantization=QuantizationConfig(calib="digits", calib_size=CALIB, cache_dir=folder)),
           demo_checkpoint_path)
    carried = export(ExportConfig("onnx", tmp_path / "c2", precision="int8",
                                  quantization=QuantizationConfig(cache_dir=folder)), demo_checkpoint_path)
    assert read_manifest(carried.output).parity["checks"][0]["metrics"]["num_samples"] >= 100


def test_calib_size_beyond_the_data_and_an_unknown_variant_are_refused_before_tracing(demo_checkpoint_path,
                                                                                       tmp_path):
    lines: list[str] = []
    with pytest.raises(ConfigError, match=r"holds \d+ image files, but --calib-size asks for 100000"):
        export(ExportConfig("onnx", tmp_path / "a", precision="int8",
                            quantization=QuantizationConfig(calib="digits", calib_size=100_000)),
               demo_checkpoint_path, progress=lines.append)
    assert not any(line.startswith(("loading", "tracing", "exporting")) for line in lines), lines
    with pytest.raises(ConfigError, match="unknown FFNet variant 'ffnet_9'"):
        export(ExportConfig("onnx", tmp_path / "b"), demo_checkpoint_path, variant="ffnet_9", progress=lines.append)
    assert not any(line.startswith(("loading", "tracing", "exporting")) for line in lines), lines
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_int8_at_a_fixed_and_a_dynamic_batch_exports_passes_the_gate_and_benches(fmt, demo_checkpoint_path, tmp_path,
                                                                                  capsys):
    """NNCF calibrates one image at a time: the model is quantized at batch 1 and given back the export's batch
    (it used to die feeding 1x3xHxW to the 8x3xHxW model); ONNX graphs of a fixed batch are fed whole batches."""
    fixed = export(_int8(fmt, tmp_path / "b8", tmp_path / "cache-b8", batch=8), demo_checkpoint_path)
    dynamic = export(_int8(fmt, tmp_path / "dyn", tmp_path / "cache-dyn", dynamic_batch=(1, 8, 8)),
                     demo_checkpoint_path)
    for result, batch in ((fixed, 8), (dynamic, None)):
        m = read_manifest(result.output)
        assert m.precision == "int8" and m.parity["passed"] is True and m.inputs[0].shape[0] == batch
        assert m.parity["data"]["kind"] == "digits"
    out = tmp_path / "bench"
    code = main(["bench", str(fixed.output), str(dynamic.output), "--batch", "1,8", "--min-iters", "3",
                 "--min-time", "0", "--warmup", "1", "--warmup-time", "0", "--no-roofline", "--out", str(out),
                 "--json"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["rows"]
    batches = sorted((Path(r["artifact"]).name, r["batch"]) for r in rows if r["status"] == "ok")
    assert batches == [("b8", 8), ("dyn", 1), ("dyn", 8)]
    assert all(r["throughput_ips"] > 0 for r in rows if r["status"] == "ok")

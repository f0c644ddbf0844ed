"""ONNX Runtime INT8 (cpu and tensorrt targets) on the tiny ``ffnet_test`` variant, with the real ONNX Runtime."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from ffnet_deploy.data import eval_transform  # noqa: E402
from ffnet_deploy.environment import isa_class  # noqa: E402
from ffnet_deploy.errors import ConfigError  # noqa: E402
from ffnet_deploy.quantize import onnx_int8 as q  # noqa: E402
from ffnet_deploy.quantize.calibration import calibration_set_from_arrays  # noqa: E402
from ffnet_deploy.quantize.groups import layer_group  # noqa: E402
from ffnet_deploy.runtimes import create_runner  # noqa: E402
from ffnet_deploy.runtimes.onnxruntime import no_spinning  # noqa: E402
from ffnet_deploy.validate.metrics import sqnr_db  # noqa: E402
from tests.quantize.helpers import photo_crops  # noqa: E402
from tests.recording import Recording  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RES = 64


def _crops(n: int, seed: int) -> np.ndarray:
    return photo_crops(n, RES, seed)


@pytest.fixture(scope="module")
def transform():
    return eval_transform(RES, 0.875, MEAN, STD)


@pytest.fixture(scope="module")
def calib(transform):
    return calibration_set_from_arrays(_crops(12, seed=0), transform, "photo-crops")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx_int8")


@pytest.fixture(scope="module")
def fp32(work, calib):
    """ffnet_test with non-trivial layer scales and BatchNorm statistics re-estimated on the photo crops."""
    import torch

    from ffnet_deploy.export import export
    from ffnet_deploy.exporters import ExportConfig
    from ffnet_deploy.models.checkpoint import save_checkpoint
    from ffnet_deploy.models.ffnet import create_ffnet

    torch.manual_seed(0)
    model = create_ffnet("ffnet_test")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape) * 0.9 + 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        model(torch.from_numpy(np.concatenate(list(calib.batches(12)))))
    model.eval()
    save_checkpoint(model, work / "bn.pth")
    return export(ExportConfig("onnx", work / "fp32"), work / "bn.pth", "ffnet_test").artifact


@pytest.fixture(scope="module")
def prepared(fp32, work):
    return q.prepare_onnx(fp32, work / "prep")


@pytest.fixture(scope="module")
def ranges(prepared, calib):
    return q.calibrate_ranges(prepared, calib, "minmax")


@pytest.fixture(scope="module")
def eval_x(transform):
    return transform.normalize(_crops(8, seed=1))


def _run(path: Path, x: np.ndarray, optimization: str = "all") -> np.ndarray:
    """Logits of ``x``, one image per call; ``optimization="disabled"`` runs Q/DQ as the ONNX spec's float math (no
    fused int8 kernel, so the same on every CPU)."""
    with create_runner("onnxruntime", path, threads=1, session_options=no_spinning,
                       graph_optimization_level=optimization) as runner:
        name = runner.output_names()[0]
        return np.concatenate([runner.infer({"images": x[i:i + 1]})[name] for i in range(len(x))])


def _init(model, name: str) -> np.ndarray:
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


@pytest.mark.parametrize("target", q.TARGETS)
def test_targets_run_and_track_fp32(target, prepared, ranges, fp32, eval_x, work):
    result = q.quantize_onnx(prepared, work / f"{target}.onnx", ranges, target=target)
    assert result.path.is_file() and result.target == target
    assert result.quantized_nodes > 0 and "Conv" in result.op_types
    assert result.config["exclude_groups"] == [] and result.config["include_groups"] is None
    json.dumps(result.config)  # plain JSON
    ref, out = _run(fp32, eval_x), _run(result.path, eval_x)
    assert out.shape == ref.shape and np.isfinite(out).all()
    # What the quantization itself costs, on every CPU: the graph in reference math.
    exact = _run(result.path, eval_x, optimization="disabled")
    assert sqnr_db(ref, exact) > 15.0
    # ONNX Runtime's fused kernels compute the same where the recipe is exact on this CPU (cpu everywhere; cpu-vnni
    # and tensorrt's 8-bit weights only where products add in 32 bits), and saturate below it elsewhere.
    safe = q.portability(q.SETTINGS[target], q.max_abs_int8_weight(onnx.load(str(result.path))))
    if isa_class() in safe["safe_isa_classes"]:
        assert sqnr_db(ref, out) > 15.0
    else:
        assert isa_class() in safe["unsafe_isa_classes"] and sqnr_db(ref, out) < sqnr_db(ref, exact), safe


def test_tensorrt_target_is_symmetric_per_channel_qdq(prepared, ranges, work):
    result = q.quantize_onnx(prepared, work / "trt.onnx", ranges, target="tensorrt")
    model = onnx.load(str(result.path))
    ops = {n.op_type for n in model.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert not any(op.startswith("QLinear") or op in ("QGemm", "ConvInteger") for op in ops)  # QDQ only
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = _init(model, node.input[2])
            assert zp.dtype == np.int8 and not zp.any(), node.name  # symmetric signed int8
    producers = {o: n for n in model.graph.node for o in n.output}
    initializers = {t.name for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weight_dqs = [producers[c.input[1]] for c in convs if c.input[1] in producers]
    assert weight_dqs, "no Conv reads a dequantized weight"
    for dq in weight_dqs:
        assert dq.op_type == "DequantizeLinear" and dq.input[0] in initializers
        weights = _init(model, dq.input[0])
        assert weights.dtype == np.int8 and weights.min() >= -127  # TensorRT takes int8 weights in [-127, 127]
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        scale = _init(model, dq.input[1])
        assert axis == 0 and scale.ndim == 1 and scale.size > 1  # one scale per output channel
    for c in convs:  # TensorRT has no int32 DequantizeLinear: biases stay float
        if len(c.input) > 2:
            assert c.input[2] in initializers


def test_cpu_target_keeps_depthwise_and_gelu_float(prepared, ranges, fp32, eval_x, work):
    result = q.quantize_onnx(prepared, work / "cpu2.onnx", ranges, target="cpu")
    model = onnx.load(str(result.path))
    source = onnx.load(str(prepared))
    inits = {t.name: t for t in source.graph.initializer}
    kinds = {n.name: q.conv_kind(n, inits) for n in source.graph.node if n.op_type == "Conv"}
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert (node.input[1] in floats) == (kinds[node.name] == "depthwise"), node.name
    gelus = [n for n in model.graph.node if n.op_type == "Gelu"]
    assert gelus and all(n.domain == "com.microsoft" and layer_group(n.name) for n in gelus)
    assert not any(n.op_type == "Erf" for n in model.graph.node)
    assert result.op_types == ["Conv", "Gemm"]
    assert result.quantized_nodes == sum(k != "depthwise" for k in kinds.values()) + 1


def test_fuse_gelu_is_exact(prepared, eval_x, tmp_path):
    model = onnx.load(str(prepared))
    erfs = sum(n.op_type == "Erf" for n in model.graph.node)
    assert q.fuse_gelu(model) == erfs > 0
    assert not any(n.op_type in ("Erf", "Div") for n in model.graph.node)
    onnx.save(model, str(tmp_path / "fused.onnx"))
    np.testing.assert_allclose(_run(tmp_path / "fused.onnx", eval_x), _run(prepared, eval_x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="exclude_gelu"):
        q.OrtQuantSettings(fuse_gelu=True)


def test_exclude_groups_stay_float(prepared, ranges, work):
    full = q.quantize_onnx(prepared, work / "full.onnx", ranges, target="tensorrt")
    keep = ["patch_embed", full.quantized_groups[-2]]
    result = q.quantize_onnx(prepared, work / "excl.onnx", ranges, target="tensorrt", exclude_groups=keep)
    assert set(keep) <= set(result.float_groups)
    assert not set(keep) & set(result.quantized_groups)
    assert result.quantized_nodes < full.quantized_nodes
    assert result.config["exclude_groups"] == sorted(keep, key=lambda g: full.quantized_groups.index(g))
    # Their convolutions keep float weights (an input may still be a neighbour's dequantized output).
    model = onnx.load(str(result.path))
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    kept = [n for n in model.graph.node if layer_group(n.name) in keep and n.op_type in ("Conv", "Gemm")]
    assert kept and all(n.input[1] in floats for n in kept)


def test_include_groups_quantizes_only_those(prepared, ranges, work):
    only = ["stages.1.0.proj", "head"]
    result = q.quantize_onnx(prepared, work / "incl.onnx", ranges, target="cpu", include_groups=only)
    assert result.quantized_groups and set(result.quantized_groups) <= set(only)
    assert "patch_embed" in result.float_groups
    assert result.config["include_groups"] == only


def test_empty_include_groups_quantizes_nothing(prepared, ranges, work):
    result = q.quantize_onnx(prepared, work / "none.onnx", ranges, target="tensorrt", include_groups=[])
    assert result.quantized_nodes == 0 and result.quantized_groups == []
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "DequantizeLinear" not in ops


def test_group_names_are_checked(prepared, ranges, work):
    with pytest.raises(ConfigError, match="stages.9.9.nope"):
        q.quantize_onnx(prepared, work / "x.onnx", ranges, exclude_groups=["stages.9.9.nope"])
    with pytest.raises(ConfigError, match="string"):
        q.quantize_onnx(prepared, work / "x.onnx", ranges, include_groups="head")
    with pytest.raises(ConfigError, match="target"):
        q.quantize_onnx(prepared, work / "x.onnx", ranges, target="gpu")
    assert not (work / "x.onnx").exists()


def test_ranges_of_another_model_are_refused(prepared, work):
    with pytest.raises(q.OnnxQuantizationError, match="recalibrate"):
        q.quantize_onnx(prepared, work / "y.onnx", {"not_a_tensor": (0.0, 1.0)})


@pytest.mark.parametrize("method", q.METHODS)
def test_calibrate_ranges_methods(method, prepared, calib, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the augmented model goes
    recording = Recording()
    ranges = q.calibrate_ranges(prepared, calib, method, progress=recording)
    seen = recording.steps("calibrating")
    assert seen[-1] == (len(calib), len(calib)) and len(seen) == len(calib)
    model = onnx.load(str(prepared))
    convs = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    assert set(convs) <= set(ranges) and "images" in ranges
    for name, (lo, hi) in ranges.items():
        assert isinstance(lo, float) and isinstance(hi, float)
        assert np.isfinite([lo, hi]).all() and lo <= hi, name
    assert all(ranges[c][0] < ranges[c][1] for c in convs)
    json.dumps(ranges)
    assert list(tmp_path.iterdir()) == []  # the augmented model's folder was removed


def test_calibrate_ranges_rejects_bad_input(prepared, calib, transform):
    with pytest.raises(ConfigError, match="method"):
        q.calibrate_ranges(prepared, calib, "kl")
    empty = calibration_set_from_arrays(np.zeros((0, 3, RES, RES), np.uint8), transform)
    with pytest.raises(ConfigError, match="empty"):
        q.calibrate_ranges(prepared, empty, "minmax")


def test_prepare_is_deterministic(fp32, tmp_path):
    a = q.prepare_onnx(fp32, tmp_path / "a")
    b = q.prepare_onnx(fp32, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()


def test_measure_speedup_returns_medians(fp32, prepared, ranges, work):
    result = q.quantize_onnx(prepared, work / "speed.onnx", ranges, target="cpu")
    speed = q.measure_speedup(fp32, result.path, threads=1, rounds=5, seconds=0.5, warmup=1)
    assert speed.fp32_ms > 0 and speed.int8_ms > 0 and speed.rounds == 5 and speed.threads == 1
    # the speedup is the median of the paired per-block ratios (runtimes/noise.py), inside their range; the medians
    # of the two rows' own times give a ratio of the same order, not the same number
    assert speed.low is not None and speed.low <= speed.speedup <= speed.high
    assert speed.speedup == pytest.approx(speed.fp32_ms / speed.int8_ms, rel=0.5)


def test_portability_follows_the_weight_range_that_vpmaddubsw_can_hold():
    from ffnet_deploy.environment import SATURATING_CLASSES
    from ffnet_deploy.quantize import onnx_int8

    portable = onnx_int8.portability(onnx_int8.CPU_SETTINGS)
    assert portable["unsafe_isa_classes"] == [] and "avx2" in portable["safe_isa_classes"]
    vnni = onnx_int8.portability(onnx_int8.CPU_VNNI_SETTINGS)
    assert set(vnni["unsafe_isa_classes"]) == set(SATURATING_CLASSES)
    assert "avx512-vnni" in vnni["safe_isa_classes"] and "avx2" not in vnni["safe_isa_classes"]
    # The file's weights decide over the settings: 8-bit settings whose weights happen to fit are safe, and
    # uint8 weights never saturate.
    assert onnx_int8.portability(onnx_int8.CPU_VNNI_SETTINGS, max_abs_weight=64)["unsafe_isa_classes"] == []
    assert onnx_int8.portability(onnx_int8.CPU_VNNI_SETTINGS, max_abs_weight=65)["unsafe_isa_classes"]
    u8u8 = dataclasses.replace(onnx_int8.CPU_VNNI_SETTINGS, weight_type="uint8")
    assert onnx_int8.portability(u8u8)["unsafe_isa_classes"] == []


def test_calibration_temporaries_stay_beside_the_prepared_model(prepared, calib, tmp_path, monkeypatch):
    """ORT's augmented model lives next to the prepared graph (inside the export's locked work directory), never in
    the system temp folder, where a ``kill -9`` left ``/tmp/ffnet-ort-calib-*`` that no later run removed."""
    import shutil
    import tempfile

    system = tmp_path / "system-temp"
    system.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system))
    local = tmp_path / "work"
    local.mkdir()
    model = Path(shutil.copy(prepared, local / "prepared.onnx"))
    seen: list[list[str]] = []
    q.calibrate_ranges(model, calib, "minmax",
                       progress=Recording(on_step=lambda *_: seen.append(sorted(p.name for p in local.iterdir()))))
    assert any(any(name.startswith(".calib-") for name in names) for names in seen), seen
    assert sorted(p.name for p in local.iterdir()) == ["prepared.onnx"] and list(system.iterdir()) == []


def test_sensitivity_runs_every_model_through_the_onnxruntime_runner(fp32, prepared, ranges, eval_x, work):
    from ffnet_deploy.quantize.sensitivity import EvalSet, OnnxBackend, RunnerInfer, run
    from ffnet_deploy.runtimes.onnxruntime import OnnxRuntimeRunner

    backend = OnnxBackend(fp32, prepared, ranges, "cpu", work, threads=1)
    try:
        reference = backend.reference()
        assert isinstance(reference, RunnerInfer) and reference.runner is None  # activated on the first call
        ref = reference(eval_x)  # 8 images through the artifact's fixed batch of 1
        runner = reference.runner
        assert isinstance(runner, OnnxRuntimeRunner) and runner.is_active
        assert runner.threads == 1 and runner.session_options is no_spinning
        assert len(runner.inference_times_ms) == len(eval_x)
        np.testing.assert_array_equal(ref, _run(fp32, eval_x))
        reference.close()
        assert not runner.is_active

        data = EvalSet(eval_x, None, {"kind": "photo-crops"})
        head_only = backend.quantized(only_groups=["head"])
        assert head_only.path.is_file() and head_only.runtime == "onnxruntime"
        out = run(head_only, data)  # run() releases the runner and deletes the candidate
        assert head_only.runner is None and not head_only.path.exists()
        full = run(backend.quantized(), data)
        assert out.shape == full.shape == ref.shape
        assert sqnr_db(ref, out) > sqnr_db(ref, full) > 15.0  # one group alone costs less than all of them
    finally:
        backend.close()

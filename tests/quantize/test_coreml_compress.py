"""Core ML weight compression and W8A8, executed on Linux by the coreml-reference interpreter.

Programs come from the real exporter (randomized ``ffnet_test`` checkpoint, so activations stay O(1)) and the real
coremltools compression; logits are compared with the uncompressed program's on photo crops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.runtimes import create_runner
from ffnet_deploy.runtimes._mil_ops import unpack_bits
from ffnet_deploy.runtimes._mil_program import MILProgram

ct = pytest.importorskip("coremltools")

from ffnet_deploy.data import eval_transform  # noqa: E402
from ffnet_deploy.quantize.calibration import calibration_set_from_arrays  # noqa: E402
from ffnet_deploy.quantize.coreml_compress import (  # noqa: E402
    CoreMLCompression,
    activation_ranges,
    compress_mlmodel,
)
from ffnet_deploy.validate.metrics import sqnr_db  # noqa: E402
from tests.recording import Recording  # noqa: E402

# on one xdist worker, so that its module fixtures are made once a run (README, Tests)
pytestmark = pytest.mark.xdist_group("coreml-compress")

TRANSFORM = eval_transform(64, 0.875, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def package_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Twelve 64x64 uint8 crops (N, 3, 64, 64) of scikit-learn's two sample photos, downscaled 4x."""
    from sklearn.datasets import load_sample_images

    crops = []
    for image in load_sample_images().images:
        small = image[::4, ::4]
        for y, x in [(0, 0), (30, 60), (40, 90), (10, 20), (35, 5), (20, 40)]:
            crops.append(small[y : y + 64, x : x + 64].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(crops))


@pytest.fixture(scope="module")
def calib(photos):
    return calibration_set_from_arrays(photos[::2], TRANSFORM)


@pytest.fixture(scope="module")
def programs(tmp_path_factory, test_checkpoint) -> dict[str, Path]:
    """fp32 and fp16 programs of the randomized ffnet_test checkpoint, from the exporter (image input, 0-255)."""
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters import ExportConfig

    root = tmp_path_factory.mktemp("coreml")
    return {p: export(ExportConfig("coreml", root / p, precision=p), test_checkpoint).artifact
            for p in ("fp32", "fp16")}


def logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    with create_runner("coreml-reference", path) as runner:
        return runner.infer({"images": pixels.astype(np.float32)})["logits"].astype(np.float32)


_RESULTS: dict[str, float] = {}

WEIGHT_CASES = {
    # name: (compression, compression op, min SQNR in dB, deployment target)
    "int8": (CoreMLCompression("int8"), "constexpr_affine_dequantize", 28.0, "iOS16"),
    "int8_block": (CoreMLCompression("int8", granularity="per_block", block_size=16),
                   "constexpr_blockwise_shift_scale", 28.0, "iOS18"),
    "int4_block": (CoreMLCompression("int4", granularity="per_block", block_size=16),
                   "constexpr_blockwise_shift_scale", 8.0, "iOS18"),
    "palettize4": (CoreMLCompression("palettize4"), "constexpr_lut_to_dense", 8.0, "iOS16"),
    "palettize6": (CoreMLCompression("palettize6"), "constexpr_lut_to_dense", 18.0, "iOS16"),
    "palettize4_block": (CoreMLCompression("palettize4", granularity="per_block", block_size=32),
                         "constexpr_lut_to_dense", 8.0, "iOS18"),
}


@pytest.mark.parametrize("name", list(WEIGHT_CASES))
def test_weight_compression_runs_in_the_interpreter(name, programs, photos, tmp_path):
    compression, op_type, min_sqnr, target = WEIGHT_CASES[name]
    source = programs["fp32"]
    model, details = compress_mlmodel(ct.models.MLModel(str(source)), compression)
    path = tmp_path / "model.mlpackage"
    model.save(str(path))

    spec_ops = MILProgram.load(path).op_types()
    assert op_type in spec_ops
    assert details["weights_compressed"] == spec_ops.count(op_type) > 0
    assert details["minimum_deployment_target"] == target
    assert details["nbits"] == {"int8": 8, "int4": 4, "palettize4": 4, "palettize6": 6}[compression.weights]
    assert package_bytes(path) < package_bytes(source)

    sqnr = sqnr_db(logits(source, photos), logits(path, photos))
    _RESULTS[name] = sqnr
    assert sqnr > min_sqnr, f"{name}: SQNR {sqnr:.1f} dB"


def test_more_bits_means_closer_logits():
    needed = {"int8", "int4_block", "palettize4", "palettize6"}
    if not needed <= _RESULTS.keys():
        pytest.skip("runs after the parametrized compression tests")
    assert _RESULTS["palettize6"] > _RESULTS["palettize4"] + 3
    assert _RESULTS["int8"] > _RESULTS["int4_block"] + 6


def test_w8a8_calibrates_with_the_interpreter(programs, photos, calib, tmp_path):
    source = programs["fp16"]
    done = Recording()
    model, details = compress_mlmodel(ct.models.MLModel(str(source)), CoreMLCompression("int8", activations=True),
                                      calib, progress=done)
    assert done.steps("calibrating")[-1] == (len(calib), len(calib))
    path = tmp_path / "w8a8.mlpackage"
    model.save(str(path))
    ops = MILProgram.load(path).op_types()
    assert {"quantize", "dequantize", "constexpr_affine_dequantize"} <= set(ops)
    assert details["compression"] == "W8A8" and details["minimum_deployment_target"] == "iOS17"
    assert details["calibration"]["count"] == len(calib) and details["activation_quantize_ops"] > 10

    eval_pixels = photos[1::2]
    sqnr = sqnr_db(logits(source, eval_pixels), logits(path, eval_pixels))
    assert sqnr > 15.0, f"W8A8: SQNR {sqnr:.1f} dB"

    # Precomputed ranges (a statistics-cache hit) give the same program without calibration data.
    ranges = activation_ranges(ct.models.MLModel(str(source)), calib)
    again, _ = compress_mlmodel(ct.models.MLModel(str(source)), CoreMLCompression("int8", activations=True),
                                ranges=ranges)
    assert again.get_spec().mlProgram == model.get_spec().mlProgram


def test_activation_ranges_cover_every_image(programs, photos):
    source = ct.models.MLModel(str(programs["fp16"]))
    each = [activation_ranges(source, calibration_set_from_arrays(photos[i : i + 1], TRANSFORM))["ranges"]
            for i in (0, 7)]
    both = activation_ranges(source, calibration_set_from_arrays(photos[[0, 7]], TRANSFORM))["ranges"]
    assert both["images"] == [float(photos[[0, 7]].min()), float(photos[[0, 7]].max())]
    for name, (lo, hi) in both.items():
        assert lo == min(r[name][0] for r in each) and hi == max(r[name][1] for r in each)


def test_activation_quantization_refuses_an_fp32_program(programs, calib):
    with pytest.raises(ConfigError, match="fp16 program"):
        compress_mlmodel(ct.models.MLModel(str(programs["fp32"])), CoreMLCompression("int8", activations=True),
                         calib)
    with pytest.raises(ConfigError, match="need calibration images"):
        compress_mlmodel(ct.models.MLModel(str(programs["fp16"])), CoreMLCompression("int8", activations=True))


@pytest.mark.parametrize("compression, message", [
    (CoreMLCompression("int4", min_deployment_target="iOS17"), "needs the iOS18 ops"),
    (CoreMLCompression("int8", activations=True, min_deployment_target="iOS16"), "needs the iOS17 ops"),
    (CoreMLCompression(None), "nothing to do"),
    (CoreMLCompression("int2"), "weights must be one of"),
    (CoreMLCompression("int8", granularity="per_tensor"), "granularity"),
    (CoreMLCompression("int8", block_size=0), "block_size"),
    (CoreMLCompression("int8", min_deployment_target="iOS15"), "min_deployment_target"),
])
def test_invalid_combinations_are_config_errors(compression, message):
    with pytest.raises(ConfigError, match=message):
        compression.validate()


def test_targets_and_labels():
    assert CoreMLCompression("int8").target() == "iOS16"
    assert CoreMLCompression("palettize6").target() == "iOS16"
    assert CoreMLCompression("int8", activations=True).target() == "iOS17"
    assert CoreMLCompression("int4").target() == "iOS18"
    assert CoreMLCompression("int8", granularity="per_block").target() == "iOS18"
    assert CoreMLCompression("int8", min_deployment_target="iOS18").target() == "iOS18"
    assert CoreMLCompression("int8", activations=True).describe() == "W8A8"


def test_interpreter_decodes_like_coremltools(programs, tmp_path):
    """The interpreter's decoded weights equal coremltools' own decompression, bit for bit."""
    import coremltools.optimize.coreml as cto

    source = ct.models.MLModel(str(programs["fp32"]))
    for compression in (CoreMLCompression("int4", granularity="per_block", block_size=16, weight_threshold=0),
                        CoreMLCompression("palettize6", weight_threshold=0)):
        model, _ = compress_mlmodel(source, compression)
        model.save(str(tmp_path / "c.mlpackage"))
        cto.decompress_weights(model).save(str(tmp_path / "d.mlpackage"))
        compressed = MILProgram.load(tmp_path / "c.mlpackage")
        decoded = compressed.constants()
        reference = MILProgram.load(tmp_path / "d.mlpackage").constants()
        names = [op.outputs[0] for op in compressed.operations if op.type.startswith("constexpr_")]
        assert names
        for name in names:
            np.testing.assert_array_equal(decoded[name], reference[name], err_msg=name)


def test_sub_byte_bit_order_by_hand():
    # The MIL spec's own example (iOS16 constexpr_lut_to_dense): 2-bit indices, LSB first, i4 in byte 1's LSBs.
    np.testing.assert_array_equal(unpack_bits(bytes([0b01101100, 0b00000011]), 2, 5, signed=False), [0, 3, 2, 1, 3])
    np.testing.assert_array_equal(unpack_bits(bytes([0x21, 0xF3]), 4, 4, signed=True), [1, 2, 3, -1])
    # 6 bits straddle bytes: 5 = 000101, 42 = 101010 -> byte0 = 10|000101, byte1 = 0000|1010
    np.testing.assert_array_equal(unpack_bits(bytes([0b10000101, 0b00001010]), 6, 2, signed=False), [5, 42])


def _save_program(build, target, path: Path) -> MILProgram:
    from coremltools.converters.mil import Builder as mb

    prog = mb.program(input_specs=[mb.TensorSpec(shape=(4, 16))], opset_version=target)(build)
    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True,
                       compute_precision=ct.precision.FLOAT32)
    model.save(str(path))
    return MILProgram.load(path)


def test_constexpr_ops_decode_hand_computed_values(tmp_path):
    from coremltools.converters.mil import Builder as mb

    values = np.arange(64) % 16  # 4-bit indices / int4 magnitudes, 64 of them so that they go to the weight blob
    lut = np.linspace(-1.0, 1.0, 16).astype(np.float32)

    def build16(x):
        packed = np.packbits(((values[:, None] >> np.arange(4)) & 1).astype(np.uint8).reshape(-1), bitorder="little")
        w = mb.constexpr_lut_to_dense(indices=packed, lut=lut, shape=np.array([4, 16], np.uint32), name="lut16")
        q = mb.constexpr_affine_dequantize(quantized_data=(values.astype(np.int8) - 8).reshape(4, 16),
                                           zero_point=np.int8(-2), scale=np.float32(0.5), axis=0, name="affine")
        return mb.add(x=mb.add(x=x, y=w), y=q)

    consts = _save_program(build16, ct.target.iOS16, tmp_path / "ios16.mlpackage").constants()
    np.testing.assert_array_equal(consts["lut16"], lut[values].reshape(4, 16))
    np.testing.assert_array_equal(consts["affine"], ((values - 8 + 2) * 0.5).reshape(4, 16))

    from coremltools.converters.mil.mil import types

    int4 = (values - 8).astype(np.int8).reshape(4, 16)
    scale = np.array([[1.0, 2.0], [0.5, 0.25], [1.0, 1.0], [3.0, 0.125]], np.float32)  # blocks of 8 columns

    def build18(x):
        # numpy dtypes carrying coremltools' sub-byte tag: stored as packed int4 / uint4 in the weight blob
        w = mb.constexpr_blockwise_shift_scale(data=int4.astype(types.np_int4_dtype), scale=scale, name="block")
        indices = values.reshape(4, 16).astype(types.np_uint4_dtype)
        luts = np.stack([lut, -lut]).reshape(2, 1, 16, 1)  # one LUT per pair of rows
        d = mb.constexpr_lut_to_dense(indices=indices, lut=luts, name="lut18")
        return mb.add(x=mb.add(x=x, y=w), y=d)

    consts = _save_program(build18, ct.target.iOS18, tmp_path / "ios18.mlpackage").constants()
    np.testing.assert_array_equal(consts["block"], int4 * np.repeat(scale, 8, axis=1))
    expected_lut = np.concatenate([lut[values[:32]], -lut[values[32:]]]).reshape(4, 16)
    np.testing.assert_array_equal(consts["lut18"], expected_lut)

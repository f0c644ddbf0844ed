"""Error localization: SQNR, torch block hooks, per-block (ONNX Runtime, OpenVINO) and per-MIL-op (Core ML)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from ffnet_deploy.data import EvalTransform, SyntheticSource
from ffnet_deploy.errors import RuntimeBackendError
from ffnet_deploy.models.checkpoint import load_ffnet
from ffnet_deploy.validate.engine import resolve_artifact
from ffnet_deploy.validate.localize import (
    LayerSQNR,
    Localization,
    block_names,
    localize_artifact,
    localize_blocks,
    torch_block_outputs,
)
from ffnet_deploy.validate.metrics import sqnr_db
from tests.test_validate_cli import break_onnx_block, exported_artifact


def test_localization_first_below_and_largest_drop():
    layers = [LayerSQNR("a", math.inf), LayerSQNR("b", 120.0), LayerSQNR("c", 110.0), LayerSQNR("d", 12.0),
              LayerSQNR("e", float("nan")), LayerSQNR("f", 5.0)]
    loc = Localization("blocks", 30.0, layers)
    assert loc.first_below.name == "d"
    drop = loc.largest_drop
    assert drop[0].name == "d" and drop[1] == pytest.approx(98.0)
    assert "first block below 30 dB: d at 12.0 dB" == loc.summary
    d = loc.to_dict()
    assert d["first_below"] == "d" and d["layers"][0]["sqnr_db"] == "inf" and d["layers"][4]["sqnr_db"] == "nan"
    json.dumps(d, allow_nan=False)
    healthy = Localization("blocks", 30.0, layers[:3])
    assert healthy.first_below is None and "no block below" in healthy.summary
    assert Localization("blocks", 30.0, [LayerSQNR("x", float("nan"))]).first_below.name == "x"


def test_torch_block_outputs_cover_every_block_in_order(test_checkpoint):
    model = load_ffnet(test_checkpoint)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    acts = torch_block_outputs(model, x)
    names = block_names(model)
    assert list(acts) == names
    assert names[:3] == ["patch_embed", "stages.0.0", "stages.1.0"] and names[-1] == "stages.3.1"
    assert acts["patch_embed"].shape == (2, 16, 16, 16) and acts["stages.3.1"].shape == (2, 128, 2, 2)
    assert not any(m._forward_hooks for m in model.modules())  # hooks are removed
    fused = model.reparameterize()
    fused_acts = torch_block_outputs(fused, x)
    for name in names:  # a block is the same function fused or not
        assert sqnr_db(acts[name], fused_acts[name]) > 60, name


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory, test_checkpoint):
    return exported_artifact(tmp_path_factory, test_checkpoint, "onnx", "fp32")


@pytest.fixture(scope="module")
def batch(test_checkpoint):
    model = load_ffnet(test_checkpoint)
    return next(SyntheticSource(3, seed=1).batches(EvalTransform.for_config(model.cfg), 3))


@pytest.mark.parametrize("block", ["stages.1.1", "stages.3.0"])
def test_blocks_localize_a_corrupted_weight(tmp_path, test_checkpoint, onnx_artifact, batch, block):
    model = load_ffnet(test_checkpoint)
    healthy = localize_artifact(resolve_artifact(onnx_artifact), model, batch, 30.0)
    assert healthy.method == "blocks" and healthy.first_below is None
    assert [layer.name for layer in healthy.layers] == block_names(model)
    assert min(layer.sqnr_db for layer in healthy.layers) > 60
    assert healthy.samples == 3  # a batch-1 artifact is run image by image

    broken = tmp_path / "broken"
    break_onnx_block(onnx_artifact, broken, block, factor=50.0)
    loc = localize_artifact(resolve_artifact(broken), model, batch, 30.0)
    assert loc.first_below.name == block
    assert loc.largest_drop[0].name == block


def test_openvino_blocks(tmp_path_factory, test_checkpoint, batch):
    art = exported_artifact(tmp_path_factory, test_checkpoint, "openvino", "fp32")
    loc = localize_artifact(resolve_artifact(art), load_ffnet(test_checkpoint), batch, 30.0)
    assert loc.method == "blocks" and loc.first_below is None and len(loc.layers) == 9


def test_blocks_need_the_manifest_map(tmp_path, test_checkpoint, onnx_artifact, batch):
    bare = tmp_path / "model.onnx"
    shutil.copy(onnx_artifact / "model.onnx", bare)
    with pytest.raises(RuntimeBackendError, match="no block_outputs"):
        localize_artifact(resolve_artifact(bare), load_ffnet(test_checkpoint), batch, 30.0)
    with pytest.raises(RuntimeBackendError, match="not tensors"):
        localize_blocks("onnxruntime", bare, {"patch_embed": "no/such/tensor"}, load_ffnet(test_checkpoint), batch,
                        "normalized", 30.0)


def test_mil_ops_compare_the_program_with_itself_in_fp32(tmp_path_factory, test_checkpoint, batch):
    fp16 = exported_artifact(tmp_path_factory, test_checkpoint, "coreml", "fp16")
    spec = resolve_artifact(fp16)
    assert spec.runtime == "coreml-reference" and spec.input_range == "0-255"
    loc = localize_artifact(spec, load_ffnet(test_checkpoint), batch, 200.0)
    assert loc.method == "mil-ops" and "not wrong weights" in loc.note
    types = {layer.op_type for layer in loc.layers}
    assert {"conv", "gelu", "add"} <= types
    finite = [layer.sqnr_db for layer in loc.layers if math.isfinite(layer.sqnr_db)]
    assert finite and 30 < min(finite) < 120  # fp16 rounding: measurable, not catastrophic
    assert loc.first_below is not None  # every fp16 op is below an impossible 200 dB
    fp32 = exported_artifact(tmp_path_factory, test_checkpoint, "coreml", "fp32")
    same = localize_artifact(resolve_artifact(fp32), load_ffnet(test_checkpoint), batch, 30.0)
    assert same.first_below is None  # an fp32 program equals its fp32 twin

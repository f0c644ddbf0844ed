"""Structural reparameterization: exact per block (randomized BN statistics and layer scales) and per variant."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ffnet_deploy import create_ffnet, reparameterize_model
from ffnet_deploy.models.ffnet import (
    PUBLISHED,
    BNConv,
    ChannelMixer,
    ConvBN,
    RepDWConv,
    ResidualBlock,
    SkipBNConv,
    TokenMixer,
    get_config,
)
from ffnet_deploy.models.reparam import graph_stats, reparam_report
from tests.conftest import randomize_

RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def assert_fuses_exactly(module: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    randomize_(module, seed).eval()
    snapshot = copy.deepcopy(module.state_dict())
    with torch.no_grad():
        ref = module(x)
        fused = module.reparameterize().eval()
        out = fused(x)
    assert rel_err(out, ref) < RTOL
    # reparameterize() must not touch self
    assert all(torch.equal(snapshot[k], v) for k, v in module.state_dict().items())
    return fused


def test_conv_bn():
    fused = assert_fuses_exactly(ConvBN(8, 16, 3, 2), torch.randn(2, 8, 13, 13))
    assert isinstance(fused, nn.Conv2d) and fused.bias is not None


def test_conv_bn_depthwise():
    assert_fuses_exactly(ConvBN(8, 8, 3, 1, groups=8), torch.randn(2, 8, 9, 9))


def test_bn_conv_1x1_with_bias():
    fused = assert_fuses_exactly(BNConv(12, 20), torch.randn(2, 12, 7, 7))
    assert isinstance(fused, nn.Conv2d) and fused.kernel_size == (1, 1)


def test_skip_bn_conv_folds_identity():
    fused = assert_fuses_exactly(SkipBNConv(10), torch.randn(2, 10, 6, 6))
    assert isinstance(fused, nn.Conv2d)


@settings(max_examples=25, deadline=None)
@given(
    kernels=st.sampled_from([(7, 3), (5, 3), (9, 5), (7, 1), (3, 1), (11, 7)]),
    stride=st.sampled_from([1, 2]),
    multiplier=st.sampled_from([1, 2]),
    size=st.integers(5, 17),
    seed=st.integers(0, 1000),
)
def test_rep_dw_any_odd_kernel_pair(kernels, stride, multiplier, size, seed):
    big, small = kernels
    block = RepDWConv(4, 4 * multiplier, big, small, stride)
    fused = assert_fuses_exactly(block, torch.randn(2, 4, size, size), seed)
    assert fused.kernel_size == (big, big) and fused.stride == (stride, stride)


@pytest.mark.parametrize("k1,k2", [(3, 3), (7, 7), (7, 3), (3, 7)])
def test_token_mixer_residual_with_layer_scale(k1, k2):
    cfg = get_config("ffnet_test")
    block = ResidualBlock(TokenMixer(cfg, 16, k1, k2), 16, layer_scale=True)
    fused = assert_fuses_exactly(block, torch.randn(2, 16, 10, 10))
    assert fused.layer_scale is None


@pytest.mark.parametrize("kernel", [3, 7])
def test_channel_mixer_residual_with_layer_scale(kernel):
    cfg = get_config("ffnet_test")
    block = ResidualBlock(ChannelMixer(cfg, 16, kernel, 3), 16, layer_scale=True)
    fused = assert_fuses_exactly(block, torch.randn(2, 16, 10, 10))
    assert fused.layer_scale is None


@pytest.mark.parametrize("variant", [*PUBLISHED, "ffnet_test"])
def test_every_variant_fuses_exactly(variant):
    model = randomize_(create_ffnet(variant), seed=7).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
    assert rel_err(out, ref) < RTOL
    # the input model is untouched, in structure and in values
    assert model.state_dict().keys() == snapshot.keys()
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # nothing left to fuse
    kinds = {type(m) for m in fused.modules()}
    assert not kinds & {nn.BatchNorm2d, ConvBN, BNConv, RepDWConv, SkipBNConv}
    assert all(m.layer_scale is None for m in fused.modules() if isinstance(m, ResidualBlock))


def test_rep_branch_kernel_override_fuses():
    model = randomize_(create_ffnet("ffnet_test", rep_branch_kernel=5)).eval()
    assert model.stages[1][1].token_mixer[0].main.conv1.conv1.c.kernel_size == (5, 5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(reparameterize_model(model)(x), model(x)) < RTOL


def test_fused_state_dict_loads_strictly_into_deploy_model():
    model = randomize_(create_ffnet("ffnet_test")).eval()
    fused = reparameterize_model(model)
    deploy = create_ffnet("ffnet_test", deploy=True).eval()
    deploy.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(deploy(x), fused(x))


def test_headless_model_keeps_final_bn():
    model = randomize_(create_ffnet("ffnet_test", num_classes=0)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(reparameterize_model(model)(x), model(x)) < RTOL


def test_report_counts_what_changed():
    model = create_ffnet("ffnet_1").eval()
    report = reparam_report(model, reparameterize_model(model))
    before, after = report.before, report.after
    assert before.ops["BatchNorm2d"] == 80 and "BatchNorm2d" not in after.ops
    assert after.modules < before.modules and after.params < before.params and after.total_ops < before.total_ops
    # a 2-branch RepVGG pair becomes one conv, and its add disappears
    assert after.ops["add"] < before.ops["add"]
    assert graph_stats(model).to_dict()["total_ops"] == before.total_ops

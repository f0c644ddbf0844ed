"""Building blocks: the float64 fold arithmetic of every block, exact with randomized BN statistics and scales."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ffnet_deploy.models.config import get_config
from ffnet_deploy.models.layers import (
    BNConv,
    ConvBN,
    RepDWConv,
    ResidualBlock,
    SkipBNConv,
    bn_scale_shift,
    deploy_conv,
    depthwise,
    new_conv,
)
from tests.conftest import randomize_
from tests.models.helpers import assert_fuses_exactly, rel_err


def test_bn_scale_shift_is_the_eval_batchnorm():
    bn = randomize_(nn.BatchNorm2d(6)).eval()
    x = torch.randn(2, 6, 4, 4)
    scale, shift = bn_scale_shift(bn)
    assert scale.dtype == torch.float64
    with torch.no_grad():
        assert rel_err((x.double() * scale[:, None, None] + shift[:, None, None]).float(), bn(x)) < 1e-6


def test_new_conv_keeps_geometry_and_dtype():
    like = nn.Conv2d(8, 16, 5, stride=2, padding=2, groups=4, bias=False)
    w, b = torch.randn(16, 2, 5, 5, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    conv = new_conv(like, w, b)
    assert (conv.in_channels, conv.out_channels, conv.groups) == (8, 16, 4)
    assert conv.stride == (2, 2) and conv.padding == (2, 2) and conv.weight.dtype == torch.float32
    assert torch.equal(conv.weight, w.float()) and torch.equal(conv.bias, b.float())


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


def test_depthwise_follows_the_official_rule():
    cfg = get_config("ffnet_test")
    assert isinstance(depthwise(cfg, 8, 8, 7, bn=False), RepDWConv)
    assert isinstance(depthwise(cfg, 8, 8, 3, bn=True), ConvBN)
    plain = depthwise(cfg, 8, 8, 3, bn=False)
    assert type(plain) is nn.Conv2d and plain.bias is not None and plain.groups == 8


@pytest.mark.parametrize("layer_scale", [True, False])
def test_residual_block_folds_layer_scale_into_output_conv(layer_scale):
    class Branch(nn.Sequential):
        output_conv = "1"

    block = ResidualBlock(Branch(ConvBN(8, 8, 3), nn.Conv2d(8, 8, 1)), 8, layer_scale=layer_scale)
    assert block.is_fused is not layer_scale
    fused = assert_fuses_exactly(block, torch.randn(2, 8, 6, 6))
    assert fused.layer_scale is None and fused.is_fused and isinstance(fused.main[0], nn.Conv2d)


def test_residual_block_needs_an_output_conv_to_fold_a_layer_scale():
    block = ResidualBlock(nn.Sequential(nn.Conv2d(4, 4, 1)), 4, layer_scale=True)
    with pytest.raises(TypeError, match="names no output conv"):
        block.reparameterize()


def test_deploy_conv_is_same_padded_and_biased():
    conv = deploy_conv(4, 8, 7, 2, groups=4)
    assert conv.padding == (3, 3) and conv.bias is not None
    assert conv(torch.randn(1, 4, 16, 16)).shape == (1, 8, 8, 8)

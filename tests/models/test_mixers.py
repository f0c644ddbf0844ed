"""Token mixers: the registry, and for every mixer the forward pass, exact fusion, the deploy structure and its MACs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ffnet_deploy.errors import ConfigError, ReparameterizationError
from ffnet_deploy.models.config import VARIANTS, get_config
from ffnet_deploy.models.ffnet import count_macs, create_ffnet
from ffnet_deploy.models.layers import ResidualBlock
from ffnet_deploy.models.mixers import (
    TOKEN_MIXERS,
    AttentionMixer,
    ConvNeXtMixer,
    DotProductAttention,
    TokenMixer,
    attention_heads,
    register_mixer,
)
from ffnet_deploy.models.reparam import reparameterize_model
from ffnet_deploy.models.stats import count_params
from tests.conftest import randomize_
from tests.models.helpers import RTOL, assert_fuses_exactly, hook_macs, rel_err

MIXERS = ("ffnified", "attention", "convnext")


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test disappear after it."""
    monkeypatch.setattr(TOKEN_MIXERS, "_entries", dict(TOKEN_MIXERS._entries))
    return TOKEN_MIXERS


def test_every_mixer_is_tested():
    assert TOKEN_MIXERS.names() == sorted(MIXERS)


def test_registry_names_and_classes():
    assert TOKEN_MIXERS.get("ffnified") is TokenMixer and TokenMixer.mixer_name == "ffnified"
    assert TOKEN_MIXERS.get("attention") is AttentionMixer and TOKEN_MIXERS.get("convnext") is ConvNeXtMixer


def test_unknown_mixer_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown token mixer 'mlp'; choose one of: attention, convnext, ffnified"):
        TOKEN_MIXERS.get("mlp")
    with pytest.raises(ConfigError, match="attention, convnext, ffnified"):
        create_ffnet("ffnet_test", token_mixer="mlp")


def test_registering_a_name_twice_fails(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_mixer("ffnified")(ConvNeXtMixer)


def test_a_registered_mixer_is_built_by_name(scratch_registry):
    @register_mixer("pointwise")
    class Pointwise(nn.Module):
        output_conv = "conv"

        def __init__(self, cfg, dim: int, stage: int, deploy: bool = False) -> None:
            super().__init__()
            self.conv = nn.Conv2d(dim, dim, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    model = create_ffnet("ffnet_test", token_mixer="pointwise")
    assert isinstance(model.stages[0][0].token_mixer[0].main, Pointwise)


def test_a_mixer_with_a_bare_batchnorm_fails_fusion_by_name(scratch_registry):
    @register_mixer("unfusable")
    class Unfusable(nn.Sequential):
        output_conv = "0"

        def __init__(self, cfg, dim: int, stage: int, deploy: bool = False) -> None:
            super().__init__(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim))

    model = create_ffnet("ffnet_test", token_mixer="unfusable", layer_scale=False).eval()
    with pytest.raises(ReparameterizationError) as err:
        reparameterize_model(model)
    message = str(err.value)
    assert "\n" not in message and "stages.0.0.token_mixer.0.main.1 (BatchNorm2d)" in message


@pytest.mark.parametrize("mixer", MIXERS)
def test_forward_shape_on_the_tiny_variant(mixer):
    model = create_ffnet("ffnet_test", num_classes=10, token_mixer=mixer).eval()
    assert type(model.stages[1][1].token_mixer[0].main).mixer_name == mixer
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
        assert model.forward_features(torch.randn(1, 3, 96, 64)).shape == (1, 128, 3, 2)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_residual_mixer_with_layer_scale_fuses_exactly(mixer, stage):
    cfg = get_config("ffnet_test")
    dim = cfg.embed_dims[stage]
    block = ResidualBlock(TOKEN_MIXERS.get(mixer)(cfg, dim, stage), dim, layer_scale=True)
    fused = assert_fuses_exactly(block, torch.randn(2, dim, 6, 5))
    assert fused.layer_scale is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


@pytest.mark.parametrize("mixer", MIXERS)
def test_whole_model_fuses_exactly_and_loads_into_the_deploy_structure(mixer):
    model = randomize_(create_ffnet("ffnet_test", token_mixer=mixer), seed=11).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fused = reparameterize_model(model)
    deploy = create_ffnet("ffnet_test", token_mixer=mixer, deploy=True).eval()
    deploy.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        ref = model(x)
        assert rel_err(fused(x), ref) < RTOL
        assert torch.equal(deploy(x), fused(x))
    assert count_params(fused) < count_params(model)


def test_ffnified_keeps_the_official_structure():
    cfg = get_config("ffnet_test")
    mixer = TokenMixer(cfg, 32, 1)
    assert [name for name, _ in mixer.named_children()] == ["fc", "conv1", "conv2", "act"]
    assert mixer.conv1.conv.c.kernel_size == (7, 7) and mixer.conv2.kernel_size == (3, 3)  # token_kernels of stage 1


@pytest.mark.parametrize("dim,heads", [(16, 1), (32, 1), (64, 2), (80, 2), (128, 4), (768, 24)])
def test_attention_heads_are_32_channels_where_the_width_allows(dim, heads):
    assert attention_heads(dim) == heads and dim % heads == 0


def test_attention_is_softmax_attention_over_tokens():
    """The mixer equals a direct evaluation of the multi-head attention formula."""
    cfg = get_config("ffnet_test")
    mixer = randomize_(AttentionMixer(cfg, 64, 2), seed=4).eval()
    x = torch.randn(2, 64, 3, 5)
    with torch.no_grad():
        tokens = mixer.qkv(x).flatten(2).transpose(1, 2)  # (b, N, 3C)
        q, k, v = (t.reshape(2, 15, 2, 32).transpose(1, 2) for t in tokens.chunk(3, dim=-1))  # (b, heads, N, d)
        y = torch.softmax(q @ k.transpose(-2, -1) / 32**0.5, dim=-1) @ v
        ref = mixer.proj(y.transpose(1, 2).reshape(2, 15, 64).transpose(1, 2).reshape(2, 64, 3, 5))
        assert rel_err(mixer(x), ref) < 1e-6


def _token_mixer_macs(mixer: str, cfg, n: int, c: int, stage: int, deploy: bool) -> int:
    """Hand count of one token mixer's MACs at ``n`` tokens and ``c`` channels."""
    if mixer == "attention":
        return 3 * n * c * c + n * c * c + 2 * n * n * c  # qkv, proj, q k^T and attn v
    taps = 0
    for k in (cfg.token_kernels1[stage], cfg.token_kernels2[stage]):
        taps += k * k + (cfg.rep_branch_kernel**2 if cfg.uses_rep(k) and not deploy else 0)  # + unfused RepVGG branch
    return n * c * c + taps * n * c


@pytest.mark.parametrize("deploy", [False, True])
def test_attention_macs_include_the_matmuls(deploy):
    cfg, resolution = VARIANTS["ffnet_test"], 64
    ffnet = count_macs(create_ffnet("ffnet_test", deploy=deploy), resolution)
    attention = count_macs(create_ffnet("ffnet_test", token_mixer="attention", deploy=deploy), resolution)
    expected = 0
    for stage, (depth, c) in enumerate(zip(cfg.depths, cfg.embed_dims, strict=True)):
        n = (resolution // 2 ** (stage + 2)) ** 2  # stride-4 stem, then one stride-2 merge per stage
        attention_block = _token_mixer_macs("attention", cfg, n, c, stage, deploy)
        expected += depth * (attention_block - _token_mixer_macs("ffnified", cfg, n, c, stage, deploy))
    assert attention > ffnet
    assert attention - ffnet == expected
    assert DotProductAttention.forward_macs((torch.empty(2, 3, 32, 10, device="meta"),), None) == 2 * 2 * 3 * 100 * 32
    assert attention == hook_macs(create_ffnet("ffnet_test", token_mixer="attention", deploy=deploy), resolution)


def test_flop_counter_counts_attention_as_declared():
    from torch.utils.flop_counter import FlopCounterMode

    q = k = v = torch.empty(2, 3, 32, 10, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = DotProductAttention(32)(q, k, v)
    assert counter.get_total_flops() // 2 == DotProductAttention.forward_macs((q, k, v), out) == 2 * 2 * 3 * 100 * 32

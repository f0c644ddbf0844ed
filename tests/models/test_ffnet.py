"""The network: official key layout, numerical equality with an independent reference, parameter and MAC counts."""

from __future__ import annotations

import hashlib

import pytest
import torch

from ffnet_deploy.models.config import PUBLISHED, VARIANTS
from ffnet_deploy.models.ffnet import ChannelMixer, count_macs, create_ffnet
from ffnet_deploy.models.layers import ResidualBlock
from ffnet_deploy.models.stats import count_params
from tests.conftest import randomize_, reference_keys, tiered
from tests.models.helpers import assert_fuses_exactly, hook_macs
from tests.official_reference import official_forward

# Layout of ffnet_test's state_dict ("key (shape)" lines) as built before the token mixer became a config field.
TINY_KEYS = 251
TINY_LAYOUT_SHA256 = "90165b71dcf4303a5acd754d231fe9964ef90d14d08ac0e9d589d302c0122324"


@pytest.mark.parametrize("variant", PUBLISHED)
def test_state_dict_keys_and_shapes_equal_official(variant):
    ref = reference_keys(variant)
    with torch.device("meta"):
        model = create_ffnet(variant)
    ours = {k: [list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()}
    assert list(ours) == list(ref)  # same keys, same order
    assert ours == ref
    with torch.device("meta"):
        explicit = create_ffnet(variant, token_mixer="ffnified")
    assert list(explicit.state_dict()) == list(ref)


def test_tiny_variant_layout_is_unchanged():
    """ffnet_test has no official key list; its keys, order and shapes are pinned as they were before the mixers
    became pluggable, since checkpoints of it are written by the tests of every other stage."""
    with torch.device("meta"):
        sd = create_ffnet("ffnet_test").state_dict()
    layout = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sd.items())
    assert len(sd) == TINY_KEYS and hashlib.sha256(layout.encode()).hexdigest() == TINY_LAYOUT_SHA256


@pytest.mark.parametrize("variant", tiered([*PUBLISHED, "ffnet_test"], fast=("ffnet_1",)))  # the larger ones: slow tier
def test_outputs_equal_official_semantics(variant):
    model = randomize_(create_ffnet(variant), seed=3).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(x)
    ref = official_forward(model.state_dict(), x)
    rel = (ours - ref).abs().max() / ref.abs().max()
    assert rel < 1e-5, f"{variant}: max relative error {rel:.2e}"


def test_layer_scale_is_used():
    """A model whose layer scales differ must compute something else: the path is live, not a no-op."""
    model = randomize_(create_ffnet("ffnet_test"), seed=1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.stages[1][1].channel_mixer.layer_scale.mul_(3.0)
        after = model(x)
    assert not torch.allclose(before, after)


def test_param_counts_and_macs_match_published_scale():
    # Published (FFNet README): 13.7M/2.9G, 26.9M/6.0G, 48.3M/10.1G, 79.2M/43.1G at 384. Our counts include the
    # classifier and conv biases; they must agree to within 2 %.
    published = {"ffnet_1": (13.7e6, 2.9e9), "ffnet_2": (26.9e6, 6.0e9), "ffnet_3": (48.3e6, 10.1e9),
                 "ffnet_4": (79.2e6, 43.1e9)}
    for name, (params, macs) in published.items():
        with torch.device("meta"):
            model = create_ffnet(name)
        assert abs(count_params(model) / params - 1) < 0.02, name
        counted = count_macs(model, VARIANTS[name].resolution)
        assert abs(counted / macs - 1) < 0.05, name
        assert counted == hook_macs(model, VARIANTS[name].resolution), name  # the flop counter = module hooks


@pytest.mark.parametrize("kernel", [3, 7])
def test_channel_mixer_residual_with_layer_scale_fuses_exactly(kernel):
    cfg = VARIANTS["ffnet_test"]
    block = ResidualBlock(ChannelMixer(cfg, 16, kernel, 3), 16, layer_scale=True)
    fused = assert_fuses_exactly(block, torch.randn(2, 16, 10, 10))
    assert fused.layer_scale is None


def test_num_classes_and_headless():
    model = create_ffnet("ffnet_test", num_classes=10).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    headless = create_ffnet("ffnet_test", num_classes=0).eval()
    assert headless(torch.randn(1, 3, 64, 64)).shape == (1, 128)

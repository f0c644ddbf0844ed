"""The model zoo: official key layout, numerical equality with an independent reference, the variant table."""

from __future__ import annotations

import pytest
import torch

from ffnet_deploy import VARIANTS, create_ffnet, get_config
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.ffnet import PUBLISHED, count_macs, count_params
from tests.conftest import randomize_, reference_keys
from tests.official_reference import official_forward


@pytest.mark.parametrize("variant", PUBLISHED)
def test_state_dict_keys_and_shapes_equal_official(variant):
    ref = reference_keys(variant)
    with torch.device("meta"):
        model = create_ffnet(variant)
    ours = {k: [list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()}
    assert list(ours) == list(ref)  # same keys, same order
    assert ours == ref


@pytest.mark.parametrize("variant", [*PUBLISHED, "ffnet_test"])
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
        assert abs(count_macs(model, VARIANTS[name].resolution) / macs - 1) < 0.05, name


def test_unknown_variant_lists_known_ones():
    with pytest.raises(ConfigError, match="ffnet_1.*ffnet_4"):
        create_ffnet("ffnet_9")


def test_overrides_and_their_validation():
    cfg = get_config("ffnet_1", rep_branch_kernel=5, resolution=320)
    assert cfg.rep_branch_kernel == 5 and cfg.resolution == 320
    with pytest.raises(ConfigError, match="unknown FFNetConfig field"):
        get_config("ffnet_1", widht=3)
    with pytest.raises(ConfigError, match="odd"):
        get_config("ffnet_1", rep_branch_kernel=4)
    with pytest.raises(ConfigError, match="multiple of the previous"):
        get_config("ffnet_test", embed_dims=(16, 24, 48, 96))
    with pytest.raises(ConfigError, match="embed_dims needs 3 entries"):
        get_config("ffnet_1", depths=(1, 1, 1))


def test_num_classes_and_headless():
    model = create_ffnet("ffnet_test", num_classes=10).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    headless = create_ffnet("ffnet_test", num_classes=0).eval()
    assert headless(torch.randn(1, 3, 64, 64)).shape == (1, 128)

"""The variant table: lookups, overrides and their validation, the token-mixer field."""

from __future__ import annotations

import json

import pytest

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.config import PUBLISHED, VARIANTS, get_config
from ffnet_deploy.models.mixers import TOKEN_MIXERS


def test_unknown_variant_lists_known_ones():
    with pytest.raises(ConfigError, match="ffnet_1.*ffnet_4"):
        get_config("ffnet_9")


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


def test_every_variant_uses_the_published_mixer():
    assert all(cfg.token_mixer == "ffnified" for cfg in VARIANTS.values())
    assert set(PUBLISHED) < set(VARIANTS)


def test_token_mixer_is_validated_when_the_config_is_made():
    assert get_config("ffnet_1", token_mixer="attention").token_mixer == "attention"
    known = "choose one of: attention, convnext, ffnified"
    with pytest.raises(ConfigError, match=f"'ffnet_1': unknown token mixer 'atention'; {known}"):
        get_config("ffnet_1", token_mixer="atention")
    assert set(TOKEN_MIXERS.names()) >= {"attention", "convnext", "ffnified"}


def test_to_dict_is_plain_json():
    d = get_config("ffnet_test").to_dict()
    assert d["token_mixer"] == "ffnified" and "extra" not in d
    assert json.loads(json.dumps(d))["depths"] == [1, 2, 1, 1]

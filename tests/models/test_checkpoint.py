"""Checkpoints: every container style, variant detection, strict mismatch messages, and the pickle allow-list."""

from __future__ import annotations

import datetime
import os
import pickle

import pytest
import torch

from ffnet_deploy import create_ffnet, inspect_checkpoint, load_ffnet, reparameterize_model, save_checkpoint
from ffnet_deploy.errors import CheckpointError, ConfigError
from ffnet_deploy.models.checkpoint import detect_variant, load_checkpoint
from ffnet_deploy.models.config import PUBLISHED
from tests.conftest import official_state_dict, tiered, write_checkpoint
from tests.official_reference import official_forward

CONTAINERS = [("state_dict", False), ("model", False), ("state_dict_ema", False), ("bare", False),
              ("state_dict", True), ("bare", True)]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# six containers of each full-size variant take half a minute or more each on 2 cores: the slow tier
@pytest.mark.parametrize("variant", tiered([*PUBLISHED, "ffnet_test"]))
def test_every_variant_every_container_reproduces_official_logits(variant, tmp_path):
    sd = official_state_dict(variant, seed=11)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ref = official_forward(sd, x)
    for container, prefixed in CONTAINERS:
        path = write_checkpoint(tmp_path / f"{container}{prefixed}.pth.tar", sd, container, prefixed)
        model = load_ffnet(path)  # variant auto-detected
        assert model.cfg.name == variant
        assert not model.training
        with torch.no_grad():
            assert rel_err(model(x), ref) < 1e-4, (container, prefixed)
            assert rel_err(reparameterize_model(model)(x), ref) < 1e-4, (container, prefixed)
        path.unlink()


def test_inspect_reports_container_prefix_and_namespace(tmp_path):
    path = write_checkpoint(tmp_path / "c.pth", official_state_dict("ffnet_test"), "state_dict", module_prefix=True)
    info = inspect_checkpoint(path)
    assert (info.container, info.stripped_prefix, info.variant, info.fused) == ("state_dict", "module.", "ffnet_test",
                                                                                  False)


def test_prefer_ema(tmp_path):
    a, b = official_state_dict("ffnet_test", seed=1), official_state_dict("ffnet_test", seed=2)
    path = tmp_path / "both.pth"
    torch.save({"state_dict": a, "state_dict_ema": b}, path)
    assert torch.equal(load_ffnet(path).state_dict()["head.weight"], a["head.weight"])
    assert torch.equal(load_ffnet(path, prefer_ema=True).state_dict()["head.weight"], b["head.weight"])


def test_fused_checkpoint_round_trip(tmp_path):
    model = load_ffnet(write_checkpoint(tmp_path / "a.pth", official_state_dict("ffnet_test")))
    fused = reparameterize_model(model)
    path = save_checkpoint(fused, tmp_path / "fused.pth", source="abc")
    info = inspect_checkpoint(path)
    assert info.fused and info.variant == "ffnet_test" and info.metadata["source_sha256"] == "abc"
    loaded = load_ffnet(path)
    assert loaded.deploy
    deploy = create_ffnet("ffnet_test", deploy=True)
    load_checkpoint(deploy, path)  # strict
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), fused(x))
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_other_num_classes(tmp_path):
    path = write_checkpoint(tmp_path / "c10.pth", official_state_dict("ffnet_test", num_classes=10))
    assert load_ffnet(path).head.out_features == 10


@pytest.mark.parametrize("variant", PUBLISHED)
def test_detect_variant_from_shapes(variant):
    with torch.device("meta"):
        sd = create_ffnet(variant).state_dict()
        fused = create_ffnet(variant, deploy=True).state_dict()
    assert detect_variant(sd) == variant
    assert detect_variant(fused) == variant


def test_wrong_variant_gives_readable_summary(tmp_path):
    path = write_checkpoint(tmp_path / "t.pth", official_state_dict("ffnet_test"))
    with pytest.raises(CheckpointError) as err:
        load_ffnet(path, variant="ffnet_1")
    msg = str(err.value)
    assert "does not fit ffnet_1" in msg and "missing" in msg and "with another shape" in msg
    assert "patch_embed.0.c.weight: checkpoint (8, 3, 3, 3) vs model (64, 3, 3, 3)" in msg
    assert msg.endswith("It is a ffnet_test checkpoint: pass --variant ffnet_test or drop --variant")


def test_truncated_state_dict_is_refused_with_closest_variant(tmp_path):
    sd = official_state_dict("ffnet_test")
    sd.pop("head.bias")
    with pytest.raises(CheckpointError, match=r"matches no FFNet variant \(closest: ffnet_test"):
        load_ffnet(write_checkpoint(tmp_path / "t.pth", sd))
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. head\.bias\)"):
        load_ffnet(tmp_path / "t.pth", variant="ffnet_test")


def test_qualcomm_ffnet_is_named(tmp_path):
    sd = {
        "backbone.conv1.weight": torch.zeros(32, 3, 3, 3),
        "backbone.layer1.0.conv1.weight": torch.zeros(32, 32, 3, 3),
        "head.layers.0.adapter_conv.0.layers.0.weight": torch.zeros(64, 64, 1, 1),
        "head.layers.1.fam_32_sm.layers.0.weight": torch.zeros(96, 256, 3, 3),
    }
    path = tmp_path / "ffnet_54s.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="Qualcomm's FFNet"):
        load_ffnet(path)


def test_unknown_variant_name(tmp_path):
    path = write_checkpoint(tmp_path / "t.pth", official_state_dict("ffnet_test"))
    with pytest.raises(ConfigError, match="unknown FFNet variant 'ffnet_7'"):
        load_ffnet(path, variant="ffnet_7")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_ffnet(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_ffnet(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_ffnet(tmp_path)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_ffnet(tmp_path / "list.pth")


class _Exploit:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path, marker, protocol=2):
    torch.save({"state_dict": official_state_dict("ffnet_test"), "payload": _Exploit(marker)}, path,
               pickle_protocol=protocol)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "evil.pth", marker, protocol)
    with pytest.raises(CheckpointError) as err:
        load_ffnet(path)
    assert "refused" in str(err.value) and "--trust-checkpoint" in str(err.value)
    assert "system" in str(err.value)  # names the offending global
    assert not marker.exists()


def test_trust_escape_hatch_loads_non_allow_listed_objects(tmp_path):
    path = tmp_path / "dated.pth"
    torch.save({"state_dict": official_state_dict("ffnet_test"), "saved": datetime.datetime(2024, 6, 1)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_ffnet(path)
    assert load_ffnet(path, trust=True).cfg.name == "ffnet_test"


def test_save_to_unwritable_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write"):
        save_checkpoint(create_ffnet("ffnet_test"), blocker / "sub" / "out.pth")

"""The demo model: deterministic training on the digits, its accuracy, the content-keyed cache, the CLI command.

The full training runs once per session (the ``demo_result`` fixture of ``tests/conftest.py``, about a minute);
determinism is checked on one-epoch trainings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import pytest
import torch

from ffnet_deploy.cli import main
from ffnet_deploy.demo import (
    DEFAULT_RECIPE,
    DemoRecipe,
    cache_dir,
    demo_checkpoint,
    evaluate_digits,
    train_demo_model,
)
from ffnet_deploy.errors import CheckpointError, ConfigError
from ffnet_deploy.models.checkpoint import FORMAT_KEY, load_ffnet, open_checkpoint, read_checkpoint, save_checkpoint

pytest.importorskip("sklearn.datasets", reason="the digits data set comes with scikit-learn")

SHORT = DemoRecipe(epochs=2, batch_size=32, steps_per_epoch=3)  # 6 steps: enough to show two runs agree bit for bit


@pytest.fixture
def demo_cache(demo_result, monkeypatch) -> Path:
    """Point the cache at the session's trained demo model."""
    root = demo_result.cache_path.parent.parent
    monkeypatch.setenv("FFNET_DEPLOY_CACHE", str(root))
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_key_is_stable_and_covers_every_input(monkeypatch):
    key = DEFAULT_RECIPE.cache_key()
    assert key == DemoRecipe().cache_key() and len(key) == 64
    changed = {"epochs": 13, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0, "warmup_pct": 0.3,
               "label_smoothing": 0.0, "max_shift": 0, "seed": 1, "threads": 2, "steps_per_epoch": 5}
    keys = {dataclasses.replace(DEFAULT_RECIPE, **{k: v}).cache_key() for k, v in changed.items()}
    assert len(keys) == len(changed) and key not in keys
    monkeypatch.setattr("ffnet_deploy.demo.torch_version", lambda: "9.9")
    assert DEFAULT_RECIPE.cache_key() != key
    monkeypatch.undo()
    monkeypatch.setattr("ffnet_deploy.demo.MODEL_CODE_VERSION", "ffnet-digits-999")
    assert DEFAULT_RECIPE.cache_key() != key
    monkeypatch.undo()
    monkeypatch.setattr("ffnet_deploy.demo.DIGITS_SPLIT_SEED", "another split")
    assert DEFAULT_RECIPE.cache_key() != key


def test_recipe_is_validated():
    with pytest.raises(ConfigError, match=r"^demo \| recipe threads must be 1 or 2, got 4$"):
        DemoRecipe(threads=4)
    with pytest.raises(ConfigError, match="epochs"):
        DemoRecipe(epochs=0)


def test_short_trainings_give_identical_weights_and_bytes(tmp_path):
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    a = train_demo_model(SHORT)
    b = train_demo_model(SHORT)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the caller's settings are left alone
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), rng)
    pa, pb = save_checkpoint(a, tmp_path / "a.pth"), save_checkpoint(b, tmp_path / "b.pth")
    assert sha(pa) == sha(pb)
    c = train_demo_model(dataclasses.replace(SHORT, seed=1))
    assert not torch.equal(c.state_dict()["head.weight"], sa["head.weight"])


def test_demo_model_is_accurate_unfused_and_self_describing(demo_result, demo_checkpoint_path):
    assert demo_result.test_accuracy >= 0.97
    assert not demo_result.cached and demo_result.train_seconds > 0
    assert type(demo_result).from_dict(demo_result.to_dict()) == demo_result  # how the workers share it
    loaded = open_checkpoint(demo_checkpoint_path)  # variant and classes detected from the file
    assert (loaded.variant, loaded.model.num_classes, loaded.fused) == ("ffnet_digits", 10, False)
    meta = read_checkpoint(demo_checkpoint_path)[FORMAT_KEY]
    assert meta["demo"]["cache_key"] == DEFAULT_RECIPE.cache_key()
    assert meta["demo"]["recipe"] == DEFAULT_RECIPE.to_dict() == demo_result.recipe
    assert meta["demo"]["test_accuracy"] == demo_result.test_accuracy
    assert evaluate_digits(loaded.model) == demo_result.test_accuracy  # re-measured, not copied


def test_variant_is_detected_without_metadata(demo_checkpoint_path, tmp_path):
    sd = read_checkpoint(demo_checkpoint_path)["state_dict"]
    torch.save(sd, tmp_path / "bare.pth")
    model = load_ffnet(tmp_path / "bare.pth")
    assert model.cfg.name == "ffnet_digits" and model.num_classes == 10


def test_cache_hit_is_instant_and_copies_to_output(demo_result, demo_cache, tmp_path):
    assert cache_dir() == demo_cache
    start = time.perf_counter()
    again = demo_checkpoint()
    assert time.perf_counter() - start < 2.0
    assert again.cached and again.path == demo_result.path and again.test_accuracy == demo_result.test_accuracy
    assert again.train_seconds == pytest.approx(demo_result.train_seconds)
    out = tmp_path / "sub" / "demo.pth"
    copied = demo_checkpoint(out)
    assert copied.cached and copied.path == out and sha(out) == sha(demo_result.path)
    with pytest.raises(CheckpointError, match=r"^demo \| .*demo.pth already exists; pass --force to overwrite it$"):
        demo_checkpoint(out)
    assert demo_checkpoint(out, force=True).path == out  # our own checkpoint may be replaced
    stranger = tmp_path / "notes.pth"
    stranger.write_text("mine")
    with pytest.raises(CheckpointError, match="not a checkpoint written by ffnet-deploy") as err:
        demo_checkpoint(stranger, force=True)
    assert "\n" not in str(err.value) and stranger.read_text() == "mine"
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo.pth"]  # no temporaries or locks left


def test_interrupt_leaves_no_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FFNET_DEPLOY_CACHE", str(tmp_path / "cache"))

    from ffnet_deploy.progress import Events

    class Interrupt(Events):
        def step(self, done, total, label=""):
            if done == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo_checkpoint(tmp_path / "out.pth", progress=Interrupt(), recipe=SHORT)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_cli_reports_the_cached_checkpoint(demo_result, demo_cache, tmp_path, capsys):
    out = tmp_path / "d.pth"
    assert main(["demo-checkpoint", "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cached"] is True and info["path"] == str(out) and info["test_accuracy"] >= 0.97
    assert main(["demo-checkpoint", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert main(["demo-checkpoint", "-o", str(out), "--force"]) == 0
    shown = capsys.readouterr().out
    assert f"{100 * demo_result.test_accuracy:.1f}%" in shown and "from cache" in shown and "yes" in shown


def test_damaged_cache_entry_is_retrained_and_replaced(tmp_path, monkeypatch):
    from ffnet_deploy.demo import cached_path

    monkeypatch.setenv("FFNET_DEPLOY_CACHE", str(tmp_path))
    path = cached_path(SHORT)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    first = demo_checkpoint(recipe=SHORT)
    assert not first.cached and first.path == path and open_checkpoint(path).variant == "ffnet_digits"
    second = demo_checkpoint(recipe=SHORT)
    assert second.cached and second.test_accuracy == first.test_accuracy

"""Bench model specs (FFNet, token-mixer skeletons, timm peers), and the mixer and peer tables from real timings."""

from __future__ import annotations

import re
import statistics
import time

import pytest
import torch

from ffnet_deploy.benchmarks.mixers import TIE, fmt_gmacs, mixer_table, peer_table
from ffnet_deploy.benchmarks.results import BenchRow
from ffnet_deploy.benchmarks.specs import (
    PEERS,
    ModelSpec,
    ffnet_spec,
    mixer_names,
    mixer_specs,
    peer_info,
    peer_specs,
)
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.config import get_config
from ffnet_deploy.models.ffnet import count_macs
from ffnet_deploy.models.mixers import TOKEN_MIXERS
from tests.models.helpers import hook_macs

BASE = "ffnet_test"
RES = 64


def _params_outside_token_mixers(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if ".token_mixer." not in k}


def test_mixer_specs_share_one_skeleton():
    specs = mixer_specs((RES,), base=BASE)
    assert [s.mixer for s in specs] == mixer_names() and sorted(mixer_names()) == TOKEN_MIXERS.names()
    assert specs[0].mixer == "ffnified"
    assert [s.name for s in specs] == [f"{BASE}/{m}" for m in mixer_names()]
    assert all(s.family == "mixer" and s.is_ffnet and s.resolution == RES and s.published_top1 is None for s in specs)
    models = [s.build() for s in specs]
    skeleton = _params_outside_token_mixers(models[0])
    x = torch.randn(1, 3, RES, RES)
    token_mixer_keys = []
    for spec, model in zip(specs, models, strict=True):
        assert model.is_fused and not model.training and model.cfg.token_mixer == spec.mixer
        assert model.cfg.depths == models[0].cfg.depths and model.cfg.embed_dims == models[0].cfg.embed_dims
        assert _params_outside_token_mixers(model) == skeleton, spec.name
        token_mixer_keys.append({k for k in model.state_dict() if ".token_mixer." in k})
        with torch.no_grad():
            assert model(x).shape == (1, 1000)
    assert len({frozenset(k) for k in token_mixer_keys}) == len(specs)  # the token mixers really differ
    # Seeded: the same spec builds the same weights.
    again = specs[0].build().state_dict()
    assert all(torch.equal(v, again[k]) for k, v in models[0].state_dict().items())


def test_mixer_specs_order_and_unknown_base():
    specs = mixer_specs((32, 48), base=BASE)
    assert [(s.resolution, s.mixer) for s in specs] == [(r, m) for r in (32, 48) for m in mixer_names()]
    with pytest.raises(ConfigError, match="unknown FFNet variant"):
        mixer_specs((32,), base="ffnet_nope")


def _attention_quartic_macs(variant: str, resolution: int) -> int:
    """``q^T k`` and ``attn v`` of every block: ``2 * N^2 * dim`` with N tokens at the stage's stride (4, 8, ...)."""
    cfg = get_config(variant)
    return sum(depth * 2 * dim * ((resolution // (4 * 2**s)) ** 2) ** 2
               for s, (depth, dim) in enumerate(zip(cfg.depths, cfg.embed_dims, strict=True)))


@pytest.mark.parametrize("mixer", mixer_names())
def test_macs_follow_the_token_count(mixer):
    """Convolutional mixers cost a*r^2 + c (linear in tokens); attention adds b*r^4, all of it its two matmuls.

    At r, 2r, 4r the second difference d2 - 4*d1 cancels the r^2 and constant terms and leaves 180 * b * r^4.
    """
    r = 32
    spec = next(s for s in mixer_specs((r,), base=BASE) if s.mixer == mixer)
    model = spec.build()
    m1, m2, m4 = (ModelSpec(spec.name, "mixer", res, spec.build, mixer, is_ffnet=True).macs(model)
                  for res in (r, 2 * r, 4 * r))
    quartic = (m4 - m2) - 4 * (m2 - m1)
    if mixer == "attention":
        assert quartic == 180 * _attention_quartic_macs(BASE, r) > 0
        assert (m4 - m2) / (m2 - m1) > 4  # superlinear in the token count
    else:
        assert quartic == 0 and m2 > m1


def test_mac_counter_agrees_with_module_hooks():
    # The one counter (the flop counter, for FFNets and peers alike) against module hooks on every token mixer.
    for spec in mixer_specs((RES,), base=BASE):
        model = spec.build()
        assert hook_macs(model, RES) == spec.macs(model) == count_macs(model, RES), spec.name


class _SDPA(torch.nn.Module):
    """Patch tokens through ``scaled_dot_product_attention``: the fused kernel that module hooks cannot see."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Conv2d(3, 3 * dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).flatten(2).unflatten(1, (3, self.heads, -1)).transpose(-2, -1).unbind(1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_mac_counter_sees_fused_attention():
    res, dim = 8, 8
    tokens = res * res
    assert count_macs(_SDPA(dim), res) == tokens * 3 * dim * 3 + 2 * tokens * tokens * dim


def test_ffnet_spec_carries_the_published_top1_at_its_resolution():
    spec = ffnet_spec("ffnet_1")
    assert (spec.name, spec.family, spec.resolution, spec.mixer, spec.is_ffnet) == ("ffnet_1", "ffnet", 256,
                                                                                     "ffnified", True)
    assert spec.published_top1 == get_config("ffnet_1").top1 == 81.3 and "FFNet" in spec.top1_source
    other = ffnet_spec("ffnet_1", 224)
    assert other.resolution == 224 and other.published_top1 is None and other.top1_source is None
    with pytest.raises(ConfigError, match="family"):
        ModelSpec("x", "nope", 224, spec.build)


# -- peers ---------------------------------------------------------------------------------------------------------

def test_peer_registry_integrity():
    timm = pytest.importorskip("timm")
    for attr in ("name", "display", "timm_id"):
        values = [getattr(p, attr) for p in PEERS]
        assert len(set(values)) == len(values), attr
    architectures = set(timm.list_models())
    tagged = set(timm.list_models(pretrained=True))
    for peer in PEERS:
        assert peer.name in architectures and peer.timm_id in tagged and peer.timm_id.startswith(peer.name + ".")
        cfg = timm.models.get_pretrained_cfg(peer.timm_id)
        assert cfg.input_size == (3, peer.resolution, peer.resolution), peer.name
        assert 70 < peer.top1 < 90 and peer.source
        assert peer.timm_top1 is None or abs(peer.top1 - peer.timm_top1) < 0.5, peer.name
    assert {p.display for p in PEERS} >= {"ConvNeXt-T", "FastViT-SA24", "EfficientFormerV2-L", "DeiT-S", "Swin-T",
                                          "ResNet-50"}
    specs = peer_specs(["ResNet-50", "convnext_tiny"])
    assert [s.name for s in specs] == ["resnet50", "convnext_tiny"]
    assert all(s.family == "peer" and not s.is_ffnet and s.mixer is None for s in specs)
    assert [s.name for s in peer_specs()] == [p.name for p in PEERS]
    assert peer_info("RESNET50.TV_IN1K").name == "resnet50"
    with pytest.raises(ConfigError, match="unknown peer model 'vgg16'.*convnext_tiny"):
        peer_specs(["vgg16"])


# -- tables from real measurements ---------------------------------------------------------------------------------

def _measure(spec: ModelSpec, model: torch.nn.Module, runtime: str = "torch", iters: int = 3) -> BenchRow:
    """A row timed here: one warm-up call, then ``iters`` timed forward passes."""
    x = torch.randn(1, 3, spec.resolution, spec.resolution)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(iters):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return BenchRow(model=spec.name, runtime=runtime, precision="fp32", resolution=spec.resolution,
                    family=spec.family, mixer=spec.mixer, gmacs=spec.macs(model) / 1e9,
                    params_m=sum(p.numel() for p in model.parameters()) / 1e6, published_top1=spec.published_top1,
                    latency_ms={"p50": statistics.median(times), "min": min(times)}, iterations=iters)


@pytest.fixture(scope="module")
def mixer_rows() -> list[BenchRow]:
    specs = mixer_specs((32, RES), base=BASE)
    models = {s.mixer: s.build() for s in specs[: len(mixer_names())]}
    return [_measure(s, models[s.mixer]) for s in specs]


def test_mixer_table_from_measured_rows(mixer_rows):
    text = mixer_table(mixer_rows)
    assert f"### {BASE}, torch fp32" in text and "| ratio |" in text and "### Verdict" in text
    by = {(r.resolution, r.mixer): r for r in mixer_rows}
    for res in (32, RES):
        base = by[(res, "ffnified")]
        assert re.search(rf"\| {res} \| ffnified \| [0-9.]+ \| 1\.00x \| {re.escape(fmt_gmacs(base.gmacs))} \|", text)
        for mixer in ("attention", "convnext"):
            row = by[(res, mixer)]
            assert f"| {res} | {mixer} | " in text
            assert f"{row.p50 / base.p50:.2f}x | {fmt_gmacs(row.gmacs)} | {row.gmacs / base.gmacs:.2f}x" in text
    verdict = text.split("### Verdict", 1)[1]
    for mixer in ("attention", "convnext"):
        ratios = [by[(res, mixer)].p50 / by[(res, "ffnified")].p50 for res in (32, RES)]
        line = next(s for s in verdict.splitlines() if s.startswith(f"- {BASE}") and f" {mixer}" in s)
        if all(r > 1 + TIE for r in ratios):
            assert "faster than " + mixer + " at every measured resolution" in line
        elif all(r < 1 - TIE for r in ratios):
            assert f"slower than {mixer} at every measured resolution" in line
            assert f"against {mixer} at 32, {RES} (ffnified slower)" in verdict
        if all(r > 1 + TIE for r in ratios) or all(r < 1 - TIE for r in ratios):
            assert f"{mixer} takes {ratios[0]:.2f}x the time of ffnified at 32, " in line
            assert f"{ratios[1]:.2f}x at {RES}" in line
        else:
            assert f"against {mixer}, ffnified is " in line and "32 (" in line and f"{RES} (" in line
    assert "The claim does not hold for" in verdict or "Nowhere in these rows" in verdict


def test_mixer_table_reports_rows_that_did_not_run(mixer_rows):
    skipped = BenchRow(model=f"{BASE}/attention", runtime="torch", precision="fp32", resolution=128,
                       family="mixer", mixer="attention", status="failed", reason="out of memory")
    base = next(r for r in mixer_rows if r.mixer == "ffnified" and r.resolution == RES)
    from dataclasses import replace

    text = mixer_table([*mixer_rows, replace(base, resolution=128), skipped])
    assert "| 128 | attention | failed | - |" in text and "attention failed at 128 (out of memory)" in text
    with pytest.raises(ConfigError, match="no rows of family 'mixer'"):
        mixer_table([])
    with pytest.raises(ConfigError, match="no 'ffnified' rows"):
        mixer_table([r for r in mixer_rows if r.mixer != "ffnified"])


@pytest.mark.slow  # full-size ffnet_1 and ResNet-50
def test_peer_table_from_measured_rows():
    pytest.importorskip("timm")
    ffnet = ffnet_spec("ffnet_1")
    (peer,) = peer_specs(["resnet50"])
    rows = [_measure(s, s.build(), iters=2) for s in (ffnet, peer)]
    assert 4.0 < rows[1].gmacs < 4.2  # ResNet-50: 4.1 GMACs at 224 (its published "FLOPs")
    text = peer_table(rows)
    ratio = rows[0].p50 / rows[1].p50
    assert "| ffnet_1 | 81.3 | 256 |" in text and "| resnet50 | 76.1 | 224 |" in text
    assert "ffnet_1/model" in text and f"| {ratio:.2f}x |" in text and "| 1.00x |" in text
    summary = text.split("### Summary", 1)[1]
    assert ("is faster than 1 of 1 peers" if ratio < 1 else "is faster than 0 of 1 peers") in summary
    assert "no peer is both faster and more accurate" in summary  # ResNet-50's 76.1 % is below FFNet-1's 81.3 %
    with pytest.raises(ConfigError, match="no 'ffnet_1' row"):
        peer_table(rows[1:])

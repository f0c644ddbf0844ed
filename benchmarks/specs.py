"""What ``ffnet-deploy bench`` measures: one :class:`ModelSpec` per model and resolution.

A spec names a model the way its result rows do (:class:`~ffnet_deploy.benchmarks.results.BenchRow` ``model``), says
which family it belongs to, and knows how to build the deploy-ready network (eval mode, random weights, FFNets
reparameterized) and how many multiply-accumulates one image costs. Three families:

``"ffnet"``
    A published FFNet variant at its evaluation resolution (:func:`ffnet_spec`).
``"mixer"``
    One FFNet skeleton with each registered token mixer in turn (:func:`mixer_specs`): the same stages, widths and
    channel mixers, only the token mixer differs. This is the efficient-mixer comparison of the paper (Sec. 3.2):
    FFNified attention against multi-head self-attention and a ConvNeXt-style mixer.
``"peer"``
    Published backbones of the same size class, built by timm (:data:`PEERS`, :func:`peer_specs`), each at the
    resolution its published top-1 was measured at.

Weights are random and seeded (the same bytes on every build): latency does not depend on them, and the published
top-1 is a reference number only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ffnet_deploy.errors import ConfigError, require
from ffnet_deploy.models.config import get_config
from ffnet_deploy.models.ffnet import count_macs, create_ffnet
from ffnet_deploy.models.mixers import TOKEN_MIXERS

FAMILIES = ("ffnet", "mixer", "peer")

BASELINE_MIXER = "ffnified"
"""The published FFNet token mixer; every mixer comparison is a ratio to it."""

MIXER_RESOLUTIONS = (224, 256, 384, 512)
"""Default resolutions of the mixer comparison: attention's cost grows with the square of the token count."""

SEED = 0
"""Seed of the random weights, so that a build is the same model every time."""


@dataclass(frozen=True)
class ModelSpec:
    """One model at one resolution, as the bench suite times it."""

    name: str  # row model name: "ffnet_1", "ffnet_1/attention", "convnext_tiny"
    family: str  # one of FAMILIES
    resolution: int  # input side in pixels; the input is (N, 3, resolution, resolution) float32
    build: Callable[[], nn.Module]  # eval-mode, deploy-ready model with seeded random weights, images -> logits
    mixer: str | None = None  # registered token mixer of an FFNet skeleton; None for peers
    published_top1: float | None = None  # ImageNet-1k top-1 (%) as published at this resolution; reference only
    top1_source: str | None = None  # where published_top1 comes from
    is_ffnet: bool = False  # exported through the project's FFNet ONNX exporter (else plain torch.onnx.export)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"model spec {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")

    def macs(self, model: nn.Module | None = None) -> int:
        """Multiply-accumulates of one image at :attr:`resolution`, by the project's one counter
        (:func:`~ffnet_deploy.models.ffnet.count_macs`), for FFNets and peers alike.

        Args:
            model: The built model, to avoid building it again; ``None`` builds one.
        """
        model = self.build() if model is None else model
        return count_macs(model, self.resolution)


# -- FFNet and its token mixers ------------------------------------------------------------------------------------

def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build()


def _build_ffnet(variant: str, token_mixer: str | None = None) -> nn.Module:
    overrides = {} if token_mixer is None else {"token_mixer": token_mixer}
    return _seeded(lambda: create_ffnet(variant, **overrides).eval()).reparameterize()


def ffnet_spec(variant: str, resolution: int | None = None) -> ModelSpec:
    """A published FFNet variant, reparameterized, as the export pipeline deploys it.

    Args:
        variant: Variant name (:data:`~ffnet_deploy.models.config.VARIANTS`).
        resolution: Input side; the variant's evaluation resolution when omitted. The published top-1 is attached
            only at that resolution, since it was not measured at any other.
    """
    cfg = get_config(variant)
    resolution = resolution or cfg.resolution
    top1 = cfg.top1 if resolution == cfg.resolution else None
    source = f"FFNet README (ysj9909/FFNet), ImageNet-1k at {cfg.resolution} px" if top1 is not None else None
    return ModelSpec(name=variant, family="ffnet", resolution=resolution, build=partial(_build_ffnet, variant),
                     mixer=cfg.token_mixer, published_top1=top1, top1_source=source, is_ffnet=True)


def mixer_names() -> list[str]:
    """Registered token mixers, the baseline (FFNified attention) first."""
    names = TOKEN_MIXERS.names()
    return [BASELINE_MIXER, *(n for n in names if n != BASELINE_MIXER)]


def mixer_specs(resolutions: Sequence[int] = MIXER_RESOLUTIONS, base: str = "ffnet_1") -> list[ModelSpec]:
    """The ``base`` skeleton with every registered token mixer, at every resolution.

    Only ``token_mixer`` is overridden, so stages, widths, patch merging and channel mixers are identical and the
    parameters differ only inside the token mixers. Rows are named ``"<base>/<mixer>"``, the baseline included
    (``"ffnet_1/ffnified"`` is FFNet-1 itself). No published top-1: these are latency comparisons.

    Returns:
        For each resolution in order, one spec per mixer, FFNified first.
    """
    get_config(base)  # an unknown base fails here, with the known names
    return [ModelSpec(name=f"{base}/{mixer}", family="mixer", resolution=res,
                      build=partial(_build_ffnet, base, mixer), mixer=mixer, is_ffnet=True)
            for res in resolutions for mixer in mixer_names()]


# -- peers ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerInfo:
    """A published backbone the FFNet is compared with."""

    name: str  # row model name: the timm architecture name
    display: str  # the name its paper uses
    timm_id: str  # timm model name and pretrained tag whose published top-1 this is (weights are never loaded)
    resolution: int  # the resolution of the published top-1
    top1: float  # published ImageNet-1k top-1 (%), from source
    source: str  # citation of top1
    timm_top1: float | None = None  # timm's own evaluation of timm_id (results/results-imagenet.csv), a cross-check


PEERS: tuple[PeerInfo, ...] = (
    PeerInfo("convnext_tiny", "ConvNeXt-T", "convnext_tiny.fb_in1k", 224, 82.1,
             'Liu et al., "A ConvNet for the 2020s", CVPR 2022 (arXiv 2201.03545), Table 1, ImageNet-1k only',
             timm_top1=82.066),
    PeerInfo("fastvit_sa24", "FastViT-SA24", "fastvit_sa24.apple_in1k", 256, 82.6,
             'Vasu et al., "FastViT", ICCV 2023 (arXiv 2303.14189), ImageNet-1k comparison, without distillation',
             timm_top1=82.706),
    PeerInfo("efficientformerv2_l", "EfficientFormerV2-L", "efficientformerv2_l.snap_dist_in1k", 224, 83.5,
             'Li et al., "Rethinking Vision Transformers for MobileNet Size and Speed" (EfficientFormerV2), ICCV 2023 '
             "(arXiv 2212.08059), trained with distillation", timm_top1=83.642),
    PeerInfo("deit_small_patch16_224", "DeiT-S", "deit_small_patch16_224.fb_in1k", 224, 79.8,
             'Touvron et al., "Training data-efficient image transformers", ICML 2021 (arXiv 2012.12877), '
             "without distillation", timm_top1=79.856),
    PeerInfo("swin_tiny_patch4_window7_224", "Swin-T", "swin_tiny_patch4_window7_224.ms_in1k", 224, 81.3,
             'Liu et al., "Swin Transformer", ICCV 2021 (arXiv 2103.14030), Table 1a, ImageNet-1k only',
             timm_top1=81.388),
    PeerInfo("resnet50", "ResNet-50", "resnet50.tv_in1k", 224, 76.1,
             "He et al., CVPR 2016, architecture; top-1 of the torchvision weights (ResNet50_Weights.IMAGENET1K_V1, "
             "76.13) that timm's resnet50.tv_in1k are; the ResNet-strikes-back A1 recipe (resnet50.a1_in1k, arXiv "
             "2110.00476) reaches 80.4", timm_top1=76.156),
)
"""The peer table of the issue: each at the resolution of its published top-1. FFNet-1 at 256 px (:func:`ffnet_spec`)
is the project's own row."""


def _build_peer(timm_id: str) -> nn.Module:
    timm = require("timm", "peers", "peer benchmark")
    from timm.utils import reparameterize_model

    # timm's defaults, so that PyTorch rows run the fused attention kernel as a timm user would; every peer exports
    # with them (torch.onnx.export, opset 17: SDPA becomes two MatMuls). The structural reparameterization is how
    # FastViT deploys, and leaves models without such blocks as they are.
    model = _seeded(lambda: timm.create_model(timm_id, pretrained=False).eval())
    return reparameterize_model(model)


def peer_info(name: str) -> PeerInfo:
    """The peer called ``name`` (row name, paper name or timm id, any case)."""
    key = name.lower()
    for peer in PEERS:
        if key in (peer.name.lower(), peer.display.lower(), peer.timm_id.lower()):
            return peer
    raise ConfigError(f"unknown peer model {name!r}; choose one of: {', '.join(p.name for p in PEERS)}")


def peer_specs(names: Sequence[str] | None = None) -> list[ModelSpec]:
    """Specs of the peers in :data:`PEERS` (all of them, or those ``names`` lists, in that order).

    Raises:
        MissingDependencyError: Without timm (``pip install 'ffnet-deploy[peers]'``).
        ConfigError: For an unknown name.
    """
    require("timm", "peers", "peer benchmark")
    peers = PEERS if names is None else tuple(peer_info(n) for n in names)
    return [ModelSpec(name=p.name, family="peer", resolution=p.resolution, build=partial(_build_peer, p.timm_id),
                      published_top1=p.top1, top1_source=p.source) for p in peers]

"""FFNet, the MetaMixer convolutional backbone (Yun, Lee, Ro, arXiv 2406.02021).

The module tree and parameter names follow the official implementation (ysj9909/FFNet, ``models/ffnet.py``) so that
its released checkpoints load with ``strict=True``; the code itself is written from the paper and the key lists.

Variants are data (:mod:`ffnet_deploy.models.config`), built by :func:`create_ffnet`. The blocks live in
:mod:`ffnet_deploy.models.layers`, the token mixers in :mod:`ffnet_deploy.models.mixers`.

Every block that structural reparameterization can simplify has one method, ``reparameterize()``, which returns its
fused replacement and leaves ``self`` untouched. :func:`ffnet_deploy.models.reparam.reparameterize_model` walks a copy
of a whole model. ``create_ffnet(..., deploy=True)`` builds the fused structure directly, so fused checkpoints load
strictly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ffnet_deploy.models.config import FFNetConfig, get_config
from ffnet_deploy.models.layers import (
    ChannelMixer,
    ConvBN,
    RepDWConv,
    ResidualBlock,
    SkipBNConv,
    bn_scale_shift,
    deploy_conv,
)
from ffnet_deploy.models.mixers import TOKEN_MIXERS
from ffnet_deploy.models.reparam import reparameterize_children


class FFBlock(nn.Module):
    """One MetaMixer block: token mixer then channel mixer, each residual (paper Fig. 3).

    The token mixer is the one ``cfg.token_mixer`` names in :data:`~ffnet_deploy.models.mixers.TOKEN_MIXERS`.
    """

    def __init__(self, cfg: FFNetConfig, stage: int, drop_path: float, deploy: bool = False) -> None:
        super().__init__()
        dim = cfg.embed_dims[stage]
        ls = cfg.layer_scale and not deploy
        tm = TOKEN_MIXERS.get(cfg.token_mixer)(cfg, dim, stage, deploy)
        cm = ChannelMixer(cfg, dim, cfg.channel_kernels[stage], cfg.expansion_ratios[stage], deploy)
        # The official token mixer is Sequential(residual, SqueezeExcite-or-Identity); no published variant enables
        # SE, so the second slot is always Identity. It is kept so that state_dict keys read "token_mixer.0.*".
        self.token_mixer = nn.Sequential(ResidualBlock(tm, dim, drop_path, ls, cfg.layer_scale_init), nn.Identity())
        self.channel_mixer = ResidualBlock(cm, dim, drop_path, ls, cfg.layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class PatchMerging(nn.Module):
    """Stride-2 downsampling between stages: RepVGG depthwise ``k x k`` (channel multiplier 2), then SkipBNConv."""

    def __init__(self, cfg: FFNetConfig, in_dim: int, out_dim: int, deploy: bool = False) -> None:
        super().__init__()
        k = cfg.downsample_kernel
        if deploy:
            self.proj = nn.Sequential(
                deploy_conv(in_dim, out_dim, k, 2, groups=in_dim), deploy_conv(out_dim, out_dim, 1)
            )
        else:
            self.proj = nn.Sequential(RepDWConv(in_dim, out_dim, k, cfg.rep_branch_kernel, 2), SkipBNConv(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class FFNet(nn.Module):
    """FFNet image classifier.

    Args:
        cfg: Architecture.
        num_classes: Classifier outputs; 0 gives pooled features.
        deploy: Build the reparameterized structure (no BatchNorm, no parallel branches, no layer scale, final BN
            folded into the head). Fused checkpoints written by this tool load into it with ``strict=True``. A
            classifier-less model keeps its final BN: nothing linear follows the pooling to absorb it.
    """

    def __init__(self, cfg: FFNetConfig, num_classes: int = 1000, deploy: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.deploy = deploy
        conv = deploy_conv if deploy else ConvBN
        self.patch_embed = nn.Sequential(
            conv(3, cfg.stem_dim, 3, 2), nn.GELU(), conv(cfg.stem_dim, cfg.embed_dims[0], 3, 2)
        )
        n = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear stochastic-depth schedule
        self.stages = nn.ModuleList()
        i = 0
        for s, depth in enumerate(cfg.depths):
            blocks: list[nn.Module] = []
            if s > 0:
                blocks.append(PatchMerging(cfg, cfg.embed_dims[s - 1], cfg.embed_dims[s], deploy))
            for _ in range(depth):
                blocks.append(FFBlock(cfg, s, rates[i], deploy))
                i += 1
            self.stages.append(nn.Sequential(*blocks))
        width = cfg.embed_dims[-1]
        self.norm = nn.Identity() if deploy and num_classes > 0 else nn.BatchNorm2d(width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    @property
    def num_features(self) -> int:
        return self.cfg.embed_dims[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def is_fused(self) -> bool:
        """Whether this is the deploy structure (built with ``deploy=True`` or returned by :meth:`reparameterize`)."""
        return self.deploy

    @property
    def kept_unfused(self) -> tuple[str, ...]:
        """Without a classifier the final BatchNorm stays: nothing linear follows the pooling to absorb it."""
        return ("norm",) if self.num_classes == 0 else ()

    @torch.no_grad()
    def reparameterize(self) -> FFNet:
        """A fused copy: every block reparameterized, and the final BatchNorm folded into the classifier.

        The BN is per-channel affine and global average pooling is linear, so ``head(pool(bn(x)))`` equals
        ``head'(pool(x))`` with ``W' = W * s`` and ``b' = b + W @ t``.
        """
        model = copy.deepcopy(self).eval()
        reparameterize_children(model)
        if isinstance(model.norm, nn.BatchNorm2d) and isinstance(model.head, nn.Linear):
            scale, shift = bn_scale_shift(model.norm)
            w = model.head.weight.detach().double()
            b = model.head.bias.detach().double()
            head = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=model.head.weight.dtype)
            head.weight.data.copy_(w * scale[None, :])
            head.bias.data.copy_(b + w @ shift)
            model.head = head
            model.norm = nn.Identity()
        model.deploy = True
        return model


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def create_ffnet(name: str, num_classes: int = 1000, deploy: bool = False, **overrides) -> FFNet:
    """Build an FFNet variant with random weights.

    Args:
        name: Variant name, one of :data:`~ffnet_deploy.models.config.VARIANTS`.
        num_classes: Classifier outputs (1000 for ImageNet-1k).
        deploy: Build the fused structure that :func:`ffnet_deploy.reparameterize_model` produces.
        **overrides: Any :class:`~ffnet_deploy.models.config.FFNetConfig` field, e.g. ``rep_branch_kernel=5`` or
            ``token_mixer="attention"``.

    Returns:
        The model, in training mode as ``nn.Module`` constructors leave it.
    """
    return FFNet(get_config(name, **overrides), num_classes=num_classes, deploy=deploy)


@torch.no_grad()
def count_macs(model: nn.Module, resolution: int, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass of ``model`` at ``resolution``: the project's one MAC counter.

    :class:`torch.utils.flop_counter.FlopCounterMode` counts at the ATen level, so it sees every convolution and
    every matrix product (``mm``, ``addmm``, ``bmm``, ``baddbmm``) whatever module or function issues it: an FFNet's
    convolutions and classifier, the ``q^T k`` and ``attn v`` products of attention (whether written as ``@`` or inside
    ``scaled_dot_product_attention``, whose reference path of two ``bmm`` runs on the meta device) and any peer
    model's layers. It reports FLOPs, two per multiply-accumulate; normalization, activations and additions are not
    counted (the usual "MACs" of a vision model). A copy of the model runs on the meta device, so counting is free
    even for the largest variant, and ``model`` is not changed.
    """
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    with FlopCounterMode(display=False) as counter:
        meta(torch.empty(batch, 3, resolution, resolution, device="meta"))
    return counter.get_total_flops() // 2

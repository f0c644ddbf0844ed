"""Token mixers: the part of an FFBlock that mixes information across positions, chosen by name.

FFNet's thesis (Yun, Lee, Ro, arXiv 2406.02021, Sec. 3) is that self-attention and the FFN share one "MetaMixer"
structure, and that FFNified attention (Sec. 3.2) keeps that structure while replacing attention's sub-operations by
convolutions. To compare the two on equal terms, the mixer is a config field (:attr:`FFNetConfig.token_mixer
<ffnet_deploy.models.config.FFNetConfig.token_mixer>`) naming an entry of :data:`TOKEN_MIXERS`:

``"ffnified"``
    :class:`TokenMixer`, the published FFNet (the default).
``"attention"``
    :class:`AttentionMixer`, multi-head self-attention over the ``H*W`` tokens at the same width.
``"convnext"``
    :class:`ConvNeXtMixer`, a 7x7 depthwise conv and a pointwise MLP, as in a ConvNeXt block.

Every mixer is built as ``mixer(cfg, dim, stage, deploy)`` (:class:`MixerFactory`), names its last conv in a class
attribute ``output_conv`` (the layer scale of the residual is folded into it), builds its fused structure when
``deploy=True``, and reparameterizes exactly through the blocks of :mod:`ffnet_deploy.models.layers`. A new mixer is a
class decorated with ``@register_mixer("name")``.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ffnet_deploy.models.layers import ChannelMixer, ConvBN, DepthwiseRule, deploy_conv, depthwise
from ffnet_deploy.registry import Registry


class MixerConfig(DepthwiseRule, Protocol):
    """What a token mixer reads from the architecture config; :class:`~ffnet_deploy.models.config.FFNetConfig`
    satisfies it. A protocol, not an import, because the config validates its ``token_mixer`` against this module.
    """

    @property
    def token_kernels1(self) -> tuple[int, ...]:
        """First depthwise kernel of the FFNified mixer, per stage."""
        ...

    @property
    def token_kernels2(self) -> tuple[int, ...]:
        """Second depthwise kernel of the FFNified mixer, per stage."""
        ...


class MixerFactory(Protocol):
    """The constructor every registered token mixer has."""

    def __call__(self, cfg: MixerConfig, dim: int, stage: int, deploy: bool = False) -> nn.Module:
        """Build the mixer for a block of ``stage`` (0-based) with ``dim`` channels; ``deploy`` builds it fused."""
        ...


TOKEN_MIXERS: Registry[MixerFactory] = Registry("token mixer", name_attr="mixer_name")
"""Token mixers by name; each registered class also gets its name as ``mixer_name``."""

register_mixer = TOKEN_MIXERS.register


@register_mixer("ffnified")
class TokenMixer(nn.Module):
    """FFNified attention (paper Sec. 3.2, Fig. 2c): ``dw2(GELU(dw1(fc(x))))``.

    The 1x1 ``fc`` plays the role of the query projection, the two depthwise convs of keys and values; GELU replaces
    the softmax. Kernels come from ``cfg.token_kernels1`` and ``cfg.token_kernels2`` of the stage.
    """

    output_conv = "conv2"

    def __init__(self, cfg: MixerConfig, dim: int, stage: int, deploy: bool = False) -> None:
        super().__init__()
        k1, k2 = cfg.token_kernels1[stage], cfg.token_kernels2[stage]
        if deploy:
            self.fc = deploy_conv(dim, dim, 1)
            self.conv1 = deploy_conv(dim, dim, k1, groups=dim)
            self.conv2 = deploy_conv(dim, dim, k2, groups=dim)
        else:
            self.fc = ConvBN(dim, dim)
            self.conv1 = depthwise(cfg, dim, dim, k1, bn=False)
            self.conv2 = depthwise(cfg, dim, dim, k2, bn=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(self.fc(x))))


FFNifiedAttention = TokenMixer
"""The name the paper uses for :class:`TokenMixer`."""

HEAD_DIM = 32
"""Channels per attention head, where the width allows it."""


def attention_heads(dim: int, head_dim: int = HEAD_DIM) -> int:
    """Number of heads for ``dim`` channels: ``dim // head_dim`` when that divides, else the divisor of ``dim`` whose
    head width is nearest ``head_dim`` (80 channels: 2 heads of 40; 16 channels: 1 head of 16).
    """
    return min((h for h in range(1, dim + 1) if dim % h == 0), key=lambda h: (abs(dim / h - head_dim), h))


class DotProductAttention(nn.Module):
    """``softmax(q^T k / sqrt(d)) v`` per head over the tokens (Vaswani et al. 2017, Eq. 1).

    Tensors are channel-first, ``(batch, heads, head_dim, tokens)``, as 1x1 convs produce them. :meth:`forward_macs`
    states the cost of its two matmuls by hand; :func:`~ffnet_deploy.models.ffnet.count_macs` counts the same from the
    ATen calls, and the tests hold the two equal.
    """

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.scale = head_dim**-0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)  # (query token, key token)
        return v @ attn.transpose(-2, -1)

    @staticmethod
    def forward_macs(inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """Multiply-accumulates of ``q^T k`` and ``attn v``: ``N * N * d`` each, per batch element and head."""
        b, heads, d, n = inputs[0].shape
        return 2 * b * heads * n * n * d


@register_mixer("attention")
class AttentionMixer(nn.Module):
    """Multi-head self-attention over the ``H*W`` tokens, at the block's width (Vaswani et al. 2017).

    The MetaMixer operations that FFNified attention replaces (paper Sec. 3.2, Fig. 2b): 1x1 conv projections to
    queries, keys and values (one conv with BatchNorm, folded at fusion), ``softmax(q^T k / sqrt(d)) v`` with heads of
    :data:`HEAD_DIM` channels (:func:`attention_heads`), and a 1x1 output projection. Cost grows with ``(H*W)^2``.
    """

    output_conv = "proj"

    def __init__(self, cfg: MixerConfig, dim: int, stage: int, deploy: bool = False) -> None:
        super().__init__()
        self.num_heads = attention_heads(dim)
        self.qkv = deploy_conv(dim, 3 * dim, 1) if deploy else ConvBN(dim, 3 * dim)
        self.attn = DotProductAttention(dim // self.num_heads)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Indexing instead of unpacking keeps the forward traceable by torch.fx (graph_stats).
        qkv = self.qkv(x).flatten(2).unflatten(1, (3, self.num_heads, -1))
        y = self.attn(qkv[:, 0], qkv[:, 1], qkv[:, 2])
        return self.proj(y.flatten(1, 2).reshape_as(x))


@register_mixer("convnext")
class ConvNeXtMixer(ChannelMixer):
    """A ConvNeXt block's mixing as a token mixer (Liu et al., "A ConvNet for the 2020s", CVPR 2022).

    A 7x7 depthwise conv with BatchNorm (RepVGG pair under FFNet's rule, so it fuses to one conv) instead of
    ConvNeXt's LayerNorm, then a pointwise MLP: 1x1 expand x4, GELU, 1x1. That is FFNet's channel mixer at a fixed
    kernel and ratio, so it is one.
    """

    kernel = 7
    expansion = 4

    def __init__(self, cfg: MixerConfig, dim: int, stage: int, deploy: bool = False) -> None:
        super().__init__(cfg, dim, self.kernel, self.expansion, deploy)

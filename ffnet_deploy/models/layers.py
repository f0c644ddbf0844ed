"""Building blocks of FFNet and their structural reparameterization.

Every block that fusion can simplify has one method, ``reparameterize()``, which returns its fused replacement and
leaves ``self`` untouched (the :class:`~ffnet_deploy.models.reparam.Reparameterizable` protocol). The fold arithmetic
runs in float64 so that fused weights are exact to float32 rounding.

Module trees and parameter names follow the official implementation (ysj9909/FFNet, ``models/ffnet.py``) so that its
released checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.reparam import reparameterized_copy

# --------------------------------------------------------------------------------------------------------------------
# Fold arithmetic
# --------------------------------------------------------------------------------------------------------------------


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) == x * scale + shift`` in eval mode, in float64."""
    std = (bn.running_var.double() + bn.eps).sqrt()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    scale = weight / std
    return scale, bias - bn.running_mean.double() * scale


def conv_params64(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of ``conv`` in float64; a conv without bias gets zeros."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return w, b


def new_conv(like: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased ``nn.Conv2d`` with ``like``'s geometry holding ``weight`` and ``bias`` (cast to ``like``'s dtype)."""
    out_ch, in_per_group = weight.shape[:2]
    conv = nn.Conv2d(
        in_per_group * like.groups,
        out_ch,
        weight.shape[2:],
        stride=like.stride,
        padding=like.padding,
        dilation=like.dilation,
        groups=like.groups,
        bias=True,
        device=like.weight.device,
        dtype=like.weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight.to(like.weight.dtype))
        conv.bias.copy_(bias.to(like.weight.dtype))
    return conv


def deploy_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """The biased, "same"-padded conv that a fused block becomes; ``deploy=True`` constructors build it directly."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=True)


# --------------------------------------------------------------------------------------------------------------------
# Conv blocks
# --------------------------------------------------------------------------------------------------------------------


class ConvBN(nn.Sequential):
    """Conv2d (no bias) followed by BatchNorm2d; children ``c`` and ``bn`` as in the official ``Conv2d_BN``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch))

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """Fold the BatchNorm into the conv: ``W' = W * s``, ``b' = t`` for ``bn(y) = y * s + t``."""
        scale, shift = bn_scale_shift(self.bn)
        w, _ = conv_params64(self.c)
        return new_conv(self.c, w * scale[:, None, None, None], shift)


class BNConv(nn.Sequential):
    """BatchNorm2d followed by a bias-free 1x1 conv; children ``bn`` and ``c`` as in the official ``BN_Conv2d``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.add_module("bn", nn.BatchNorm2d(in_ch))
        self.add_module("c", nn.Conv2d(in_ch, out_ch, 1, bias=False))

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """Fold a leading BatchNorm into a 1x1 conv: ``W' = W * s`` per input channel, ``b' = W @ t``.

        This is exact only for 1x1 kernels without padding, where every output pixel sees the normalized input
        at exactly one position (with padding, the zero border would not be shifted by ``t``).
        """
        scale, shift = bn_scale_shift(self.bn)
        w, _ = conv_params64(self.c)
        bias = w.flatten(1) @ shift
        return new_conv(self.c, w * scale[None, :, None, None], bias)


class RepDWConv(nn.Module):
    """RepVGG-style depthwise conv: a ``k x k`` and a parallel ``k_small x k_small`` ConvBN, summed.

    Ding et al., "RepVGG" (CVPR 2021) and Vasu et al., "MobileOne" (CVPR 2023) motivate the training-time branch;
    FFNet uses 7x7 + 3x3 (the official ``RepVGGDW``). Both branches are centred ("same" padding), so the small
    kernel zero-padded to ``k x k`` adds exactly, at any stride. ``out_ch`` may be a multiple of ``in_ch``
    (channel-multiplier depthwise, as in patch merging).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 7, small_kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        if kernel % 2 == 0 or small_kernel % 2 == 0 or small_kernel >= kernel:
            raise ConfigError(f"RepDWConv needs odd kernels with small < large, got {kernel} and {small_kernel}")
        self.conv = ConvBN(in_ch, out_ch, kernel, stride, groups=in_ch)
        self.conv1 = ConvBN(in_ch, out_ch, small_kernel, stride, groups=in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x)

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """Fuse both ConvBN branches and add the zero-padded small kernel to the large one."""
        big, small = self.conv.reparameterize(), self.conv1.reparameterize()
        wb, bb = conv_params64(big)
        ws, bs = conv_params64(small)
        p = (wb.shape[-1] - ws.shape[-1]) // 2
        return new_conv(big, wb + F.pad(ws, [p, p, p, p]), bb + bs)


class SkipBNConv(nn.Module):
    """``x + conv1x1(bn(x))``, the second half of patch merging (official ``Conv2d_BN_skip``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = BNConv(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """Fold the BN, then the identity skip as ``+I`` on the 1x1 kernel's diagonal (RepVGG, Sec. 3.3)."""
        fused = self.conv.reparameterize()
        w, b = conv_params64(fused)
        eye = torch.eye(w.shape[0], dtype=torch.float64)[:, :, None, None]
        return new_conv(fused, w + eye, b)


class DepthwiseRule(Protocol):
    """What :func:`depthwise` reads from an architecture config; :class:`~ffnet_deploy.models.config.FFNetConfig`
    satisfies it. A protocol, not an import, because the config imports the token mixers built from these layers.
    """

    @property
    def rep_branch_kernel(self) -> int:
        """Kernel of the parallel RepVGG branch."""
        ...

    def uses_rep(self, kernel: int) -> bool:
        """Whether a depthwise conv of ``kernel`` gets the parallel branch."""
        ...


def depthwise(cfg: DepthwiseRule, in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, bn: bool) -> nn.Module:
    """The official rule for a depthwise conv: RepVGG pair when the kernel is large, else ConvBN or a biased conv."""
    if cfg.uses_rep(kernel):
        return RepDWConv(in_ch, out_ch, kernel, cfg.rep_branch_kernel, stride)
    if bn:
        return ConvBN(in_ch, out_ch, kernel, stride, groups=in_ch)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=in_ch)


# --------------------------------------------------------------------------------------------------------------------
# Residual wrapper
# --------------------------------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) per sample; identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class ResidualBlock(nn.Module):
    """``x + layer_scale * main(x)``. With ``layer_scale=False`` (or after fusion) the scale is absent.

    ``main`` names its last conv in an ``output_conv`` class attribute; fusion folds the layer scale into it.
    """

    def __init__(self, main: nn.Module, dim: int, drop_path: float = 0.0, layer_scale: bool = False,
                 layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.main = main
        if layer_scale:
            self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale_init)))
        else:
            self.layer_scale = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        if self.layer_scale is not None:
            y = y * self.layer_scale
        return x + self.drop_path(y)

    @property
    def is_fused(self) -> bool:
        """Nothing of the wrapper itself is left to fold once the layer scale is gone (``main`` is checked apart)."""
        return self.layer_scale is None

    @property
    def kept_unfused(self) -> tuple[str, ...]:
        """The wrapper keeps nothing unfused on purpose."""
        return ()

    @torch.no_grad()
    def reparameterize(self) -> ResidualBlock:
        """Fuse the branch and fold the layer scale into its last conv (``W' = W * g``, ``b' = b * g``)."""
        main = reparameterized_copy(self.main)
        if self.layer_scale is not None:
            name = getattr(main, "output_conv", None)
            last = getattr(main, name, None) if name else None
            if not isinstance(last, nn.Conv2d):
                raise TypeError(f"cannot fold layer_scale: {type(main).__name__} names no output conv")
            g = self.layer_scale.detach().double().flatten()
            w, b = conv_params64(last)
            setattr(main, name, new_conv(last, w * g[:, None, None, None], b * g))
        return ResidualBlock(main, self.layer_scale.shape[0] if self.layer_scale is not None else 0)


class ChannelMixer(nn.Module):
    """ConvNeXt-style FFN with a depthwise conv in front (paper Sec. 3.3): ``fc2(GELU(fc1(dw(x))))``."""

    output_conv = "fc2"

    def __init__(self, cfg: DepthwiseRule, dim: int, kernel: int, ratio: float, deploy: bool = False) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.conv = deploy_conv(dim, dim, kernel, groups=dim) if deploy else depthwise(cfg, dim, dim, kernel, bn=True)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))

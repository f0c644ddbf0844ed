"""FFNet, the MetaMixer convolutional backbone (Yun, Lee, Ro, arXiv 2406.02021).

The module tree and parameter names follow the official implementation (ysj9909/FFNet, ``models/ffnet.py``) so that
its released checkpoints load with ``strict=True``; the code itself is written from the paper and the key lists.

Variants are data: one :class:`FFNetConfig` per variant in :data:`VARIANTS`, built by :func:`create_ffnet`.

Every block that structural reparameterization can simplify has one method, ``reparameterize()``, which returns its
fused replacement and leaves ``self`` untouched. :func:`ffnet_deploy.models.reparam.reparameterize_model` walks a copy
of a whole model. ``create_ffnet(..., deploy=True)`` builds the fused structure directly, so fused checkpoints load
strictly.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ffnet_deploy.errors import ConfigError

# --------------------------------------------------------------------------------------------------------------------
# Variant table
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FFNetConfig:
    """Architecture of one FFNet variant, plus the published reference numbers.

    Field names describe what each value controls; the official factory argument is given in brackets.
    """

    name: str  # registry name, e.g. "ffnet_1"
    depths: tuple[int, ...]  # FFBlocks per stage [depth]
    embed_dims: tuple[int, ...]  # channels per stage [embed_dim]
    stem_dim: int = 64  # width of the first stem conv [in_dim]
    channel_kernels: tuple[int, ...] = (7, 7, 7, 7)  # depthwise kernel of the channel mixer [kernel_sizes]
    token_kernels1: tuple[int, ...] = (3, 3, 7, 7)  # first depthwise kernel of the token mixer [kernel_sizes1]
    token_kernels2: tuple[int, ...] = (3, 3, 7, 7)  # second depthwise kernel of the token mixer [kernel_sizes2]
    expansion_ratios: tuple[float, ...] = (3, 3, 3, 3)  # hidden width / width of the channel mixer
    downsample_kernel: int = 7  # depthwise kernel of the stride-2 patch merging
    rep_branch_kernel: int = 3  # parallel small kernel of every RepVGG-style depthwise conv larger than it
    layer_scale: bool = False  # learnable per-channel scale on each residual branch [use_layer_scale]
    layer_scale_init: float = 1e-6  # initial layer-scale value [layer_scale_init_value]
    drop_path_rate: float = 0.0  # stochastic depth at training time; no effect in eval
    resolution: int = 256  # default input side in pixels
    crop_pct: float = 0.9  # evaluation crop: resize shorter side to resolution / crop_pct, center-crop
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet normalization mean (RGB, 0-1 scale)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # ImageNet normalization std
    top1: float | None = None  # published ImageNet-1k top-1 (%), FFNet README; reference only
    iphone12_ms: float | None = None  # published iPhone 12 latency (ms), FFNet README; reference only
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # free-form notes

    def __post_init__(self) -> None:
        n = len(self.depths)
        per_stage = ("embed_dims", "channel_kernels", "token_kernels1", "token_kernels2", "expansion_ratios")
        for name in per_stage:
            if len(getattr(self, name)) != n:
                raise ConfigError(f"FFNetConfig {self.name!r}: {name} needs {n} entries, got {getattr(self, name)}")
        kernels = [*self.channel_kernels, *self.token_kernels1, *self.token_kernels2, self.downsample_kernel]
        for k in (*kernels, self.rep_branch_kernel):
            if k % 2 == 0 or k < 1:
                raise ConfigError(f"FFNetConfig {self.name!r}: kernel sizes must be odd and positive, got {k}")
        for prev, cur in zip(self.embed_dims[:-1], self.embed_dims[1:], strict=True):
            if cur % prev:
                raise ConfigError(
                    f"FFNetConfig {self.name!r}: patch merging is depthwise, so each stage width must be a multiple "
                    f"of the previous one, got {prev} -> {cur}"
                )
        if self.downsample_kernel <= self.rep_branch_kernel:
            raise ConfigError(
                f"FFNetConfig {self.name!r}: downsample_kernel ({self.downsample_kernel}) must exceed "
                f"rep_branch_kernel ({self.rep_branch_kernel})"
            )

    def uses_rep(self, kernel: int) -> bool:
        """Whether a depthwise conv of this kernel gets a parallel RepVGG branch (the official code: ``ks == 7``)."""
        return kernel > self.rep_branch_kernel

    def to_dict(self) -> dict:
        """Plain-JSON form (tuples become lists)."""
        d = asdict(self)
        d.pop("extra")
        return d


VARIANTS: dict[str, FFNetConfig] = {
    cfg.name: cfg
    for cfg in (
        FFNetConfig(
            name="ffnet_1",
            depths=(2, 2, 8, 2),
            embed_dims=(80, 160, 320, 640),
            channel_kernels=(3, 3, 3, 3),
            drop_path_rate=0.1,
            crop_pct=0.9,
            top1=81.3,
            iphone12_ms=1.8,
        ),
        FFNetConfig(
            name="ffnet_2",
            depths=(3, 3, 15, 3),
            embed_dims=(88, 176, 352, 704),
            drop_path_rate=0.15,
            crop_pct=0.9,
            top1=82.9,
            iphone12_ms=3.1,
        ),
        FFNetConfig(
            name="ffnet_3",
            depths=(4, 4, 22, 5),
            embed_dims=(96, 192, 384, 768),
            layer_scale=True,
            drop_path_rate=0.35,
            crop_pct=0.95,
            top1=83.9,
            iphone12_ms=4.5,
        ),
        FFNetConfig(
            name="ffnet_4",
            depths=(4, 4, 27, 3),
            embed_dims=(128, 256, 512, 1024),
            layer_scale=True,
            drop_path_rate=0.4,
            resolution=384,
            crop_pct=0.95,
            top1=85.3,
            iphone12_ms=15.2,
        ),
        # Tiny variant for tests: every block type of the published variants appears at least once (plain and
        # RepVGG depthwise convs in both mixers, Conv-BN channel-mixer conv, layer scale), in ~0.1 M parameters.
        FFNetConfig(
            name="ffnet_test",
            depths=(1, 2, 1, 1),
            embed_dims=(16, 32, 64, 128),
            stem_dim=8,
            channel_kernels=(3, 7, 3, 7),
            token_kernels1=(3, 7, 7, 3),
            token_kernels2=(7, 3, 7, 3),
            expansion_ratios=(2, 3, 2, 2),
            layer_scale=True,
            resolution=64,
            crop_pct=0.9,
        ),
    )
}
"""All known variants by name. ``ffnet_test`` is a tiny variant for fast tests, not a published model."""

PUBLISHED = ("ffnet_1", "ffnet_2", "ffnet_3", "ffnet_4")


def get_config(name: str, **overrides) -> FFNetConfig:
    """Return the config of variant ``name`` with ``overrides`` applied.

    Raises:
        ConfigError: For an unknown name (the message lists the known ones) or an unknown override field.
    """
    try:
        cfg = VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown FFNet variant {name!r}; choose one of: {', '.join(VARIANTS)}") from None
    if overrides:
        known = set(FFNetConfig.__dataclass_fields__)
        bad = sorted(set(overrides) - known)
        if bad:
            raise ConfigError(f"unknown FFNetConfig field(s) {bad}; known fields: {', '.join(sorted(known))}")
        cfg = replace(cfg, **overrides)
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Fusion arithmetic. Done in float64 so that fused weights are exact to float32 rounding.
# --------------------------------------------------------------------------------------------------------------------


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) == x * scale + shift`` in eval mode, in float64."""
    std = (bn.running_var.double() + bn.eps).sqrt()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    scale = weight / std
    return scale, bias - bn.running_mean.double() * scale


def _new_conv(like: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
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


def _conv_params64(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return w, b


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
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
        scale, shift = _bn_scale_shift(self.bn)
        w, _ = _conv_params64(self.c)
        return _new_conv(self.c, w * scale[:, None, None, None], shift)


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
        scale, shift = _bn_scale_shift(self.bn)
        w, _ = _conv_params64(self.c)
        bias = w.flatten(1) @ shift
        return _new_conv(self.c, w * scale[None, :, None, None], bias)


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
        wb, bb = _conv_params64(big)
        ws, bs = _conv_params64(small)
        p = (wb.shape[-1] - ws.shape[-1]) // 2
        return _new_conv(big, wb + F.pad(ws, [p, p, p, p]), bb + bs)


def depthwise(cfg: FFNetConfig, in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, bn: bool) -> nn.Module:
    """The official rule for a depthwise conv: RepVGG pair when the kernel is large, else ConvBN or a biased conv."""
    if cfg.uses_rep(kernel):
        return RepDWConv(in_ch, out_ch, kernel, cfg.rep_branch_kernel, stride)
    if bn:
        return ConvBN(in_ch, out_ch, kernel, stride, groups=in_ch)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=in_ch)


def _deploy_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=True)


class TokenMixer(nn.Module):
    """FFNified attention (paper Sec. 3.2, Fig. 2c): ``dw2(GELU(dw1(fc(x))))``.

    The 1x1 ``fc`` plays the role of the query projection, the two depthwise convs of keys and values; GELU replaces
    the softmax.
    """

    output_conv = "conv2"  # the last conv of the branch; layer scale folds into it

    def __init__(self, cfg: FFNetConfig, dim: int, k1: int, k2: int, deploy: bool = False) -> None:
        super().__init__()
        if deploy:
            self.fc = _deploy_conv(dim, dim, 1)
            self.conv1 = _deploy_conv(dim, dim, k1, groups=dim)
            self.conv2 = _deploy_conv(dim, dim, k2, groups=dim)
        else:
            self.fc = ConvBN(dim, dim)
            self.conv1 = depthwise(cfg, dim, dim, k1, bn=False)
            self.conv2 = depthwise(cfg, dim, dim, k2, bn=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(self.fc(x))))


class ChannelMixer(nn.Module):
    """ConvNeXt-style FFN with a depthwise conv in front (paper Sec. 3.3): ``fc2(GELU(fc1(dw(x))))``."""

    output_conv = "fc2"

    def __init__(self, cfg: FFNetConfig, dim: int, kernel: int, ratio: float, deploy: bool = False) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.conv = _deploy_conv(dim, dim, kernel, groups=dim) if deploy else depthwise(cfg, dim, dim, kernel, bn=True)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


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
    """``x + layer_scale * main(x)``. With ``layer_scale=False`` (or after fusion) the scale is absent."""

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

    @torch.no_grad()
    def reparameterize(self) -> ResidualBlock:
        """Fuse the branch and fold the layer scale into its last conv (``W' = W * g``, ``b' = b * g``)."""
        from ffnet_deploy.models.reparam import reparameterize_children

        main = reparameterize_children(copy.deepcopy(self.main))
        if self.layer_scale is not None:
            name = getattr(main, "output_conv", None)
            last = getattr(main, name, None) if name else None
            if not isinstance(last, nn.Conv2d):
                raise TypeError(f"cannot fold layer_scale: {type(main).__name__} names no output conv")
            g = self.layer_scale.detach().double().flatten()
            w, b = _conv_params64(last)
            setattr(main, name, _new_conv(last, w * g[:, None, None, None], b * g))
        return ResidualBlock(main, self.layer_scale.shape[0] if self.layer_scale is not None else 0)


class FFBlock(nn.Module):
    """One MetaMixer block: token mixer then channel mixer, each residual (paper Fig. 3)."""

    def __init__(self, cfg: FFNetConfig, stage: int, drop_path: float, deploy: bool = False) -> None:
        super().__init__()
        dim = cfg.embed_dims[stage]
        ls = cfg.layer_scale and not deploy
        tm = TokenMixer(cfg, dim, cfg.token_kernels1[stage], cfg.token_kernels2[stage], deploy)
        cm = ChannelMixer(cfg, dim, cfg.channel_kernels[stage], cfg.expansion_ratios[stage], deploy)
        # The official token mixer is Sequential(residual, SqueezeExcite-or-Identity); no published variant enables
        # SE, so the second slot is always Identity. It is kept so that state_dict keys read "token_mixer.0.*".
        self.token_mixer = nn.Sequential(ResidualBlock(tm, dim, drop_path, ls, cfg.layer_scale_init), nn.Identity())
        self.channel_mixer = ResidualBlock(cm, dim, drop_path, ls, cfg.layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


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
        w, b = _conv_params64(fused)
        eye = torch.eye(w.shape[0], dtype=torch.float64)[:, :, None, None]
        return _new_conv(fused, w + eye, b)


class PatchMerging(nn.Module):
    """Stride-2 downsampling between stages: RepVGG depthwise ``k x k`` (channel multiplier 2), then SkipBNConv."""

    def __init__(self, cfg: FFNetConfig, in_dim: int, out_dim: int, deploy: bool = False) -> None:
        super().__init__()
        k = cfg.downsample_kernel
        if deploy:
            self.proj = nn.Sequential(
                _deploy_conv(in_dim, out_dim, k, 2, groups=in_dim), _deploy_conv(out_dim, out_dim, 1)
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
            folded into the head). Fused checkpoints written by this tool load into it with ``strict=True``.
    """

    def __init__(self, cfg: FFNetConfig, num_classes: int = 1000, deploy: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.deploy = deploy
        conv = _deploy_conv if deploy else ConvBN
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
        self.norm = nn.Identity() if deploy else nn.BatchNorm2d(width)
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

    @torch.no_grad()
    def reparameterize(self) -> FFNet:
        """A fused copy: every block reparameterized, and the final BatchNorm folded into the classifier.

        The BN is per-channel affine and global average pooling is linear, so ``head(pool(bn(x)))`` equals
        ``head'(pool(x))`` with ``W' = W * s`` and ``b' = b + W @ t``.
        """
        from ffnet_deploy.models.reparam import reparameterize_children

        model = copy.deepcopy(self).eval()
        reparameterize_children(model)
        if isinstance(model.norm, nn.BatchNorm2d):
            scale, shift = _bn_scale_shift(model.norm)
            if isinstance(model.head, nn.Linear):
                w = model.head.weight.detach().double()
                b = model.head.bias.detach().double()
                head = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=model.head.weight.dtype)
                head.weight.data.copy_(w * scale[None, :])
                head.bias.data.copy_(b + w @ shift)
                model.head = head
                model.norm = nn.Identity()
            # With no classifier, the BN stays: there is nothing linear after the pooling to absorb it.
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
        name: Variant name, one of :data:`VARIANTS`.
        num_classes: Classifier outputs (1000 for ImageNet-1k).
        deploy: Build the fused structure that :func:`ffnet_deploy.reparameterize_model` produces.
        **overrides: Any :class:`FFNetConfig` field, e.g. ``rep_branch_kernel=5``.

    Returns:
        The model, in training mode as ``nn.Module`` constructors leave it.
    """
    return FFNet(get_config(name, **overrides), num_classes=num_classes, deploy=deploy)


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, resolution: int, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass at ``resolution``, counting convolutions and linear layers.

    Runs on the meta device, so it is free even for the largest variant.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    meta = copy.deepcopy(model).to("meta").eval()
    handles = []
    for m in meta.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    meta(torch.empty(batch, 3, resolution, resolution, device="meta"))
    for h in handles:
        h.remove()
    return total

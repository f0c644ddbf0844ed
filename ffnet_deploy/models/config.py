"""FFNet variants as data: one :class:`FFNetConfig` per variant in :data:`VARIANTS`, looked up by :func:`get_config`.

The token mixer is a name from :data:`ffnet_deploy.models.mixers.TOKEN_MIXERS`. It is validated here, so a typo fails
when the config is made rather than halfway through building a model; that is why this module imports the mixers and
the layers below it take the config through a protocol instead of importing it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.mixers import TOKEN_MIXERS


@dataclass(frozen=True)
class FFNetConfig:
    """Architecture of one FFNet variant, plus the published reference numbers.

    Field names describe what each value controls; the official factory argument (ysj9909/FFNet,
    ``models/ffnet.py``) is given in brackets.
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
    token_mixer: str = "ffnified"  # registered token mixer name (FFNified attention is the published FFNet)
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
        if self.token_mixer not in TOKEN_MIXERS:
            raise ConfigError(
                f"FFNetConfig {self.name!r}: unknown token mixer {self.token_mixer!r}; choose one of: "
                f"{', '.join(TOKEN_MIXERS.names())}"
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
        # RepVGG depthwise convs in both mixers, Conv-BN channel-mixer conv, layer scale), in ~0.3 M parameters.
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
        # Demo variant for scikit-learn's 8x8 digits upscaled to 32 px (ffnet_deploy.demo trains it in about a minute
        # on a CPU): the published block structure (FFNified token mixer, RepVGG 7x7 depthwise convs with their 3x3
        # branches, plain 3x3 ones, Conv-BN channel mixers) in three stages of 8x8, 4x4 and 2x2 maps, ~0.27 M
        # parameters. crop_pct 1.0 keeps the whole digit; the ImageNet mean/std keep preprocessing the same as for
        # every other variant. Layer scale is off: its 1e-6 start would slow a training run this short.
        FFNetConfig(
            name="ffnet_digits",
            depths=(1, 2, 1),
            embed_dims=(32, 64, 128),
            stem_dim=16,
            channel_kernels=(7, 7, 7),
            token_kernels1=(3, 7, 7),
            token_kernels2=(7, 7, 7),
            expansion_ratios=(3, 3, 3),
            layer_scale=False,
            resolution=32,
            crop_pct=1.0,
        ),
    )
}
"""All known variants by name. ``ffnet_test`` (tiny, for fast tests) and ``ffnet_digits`` (the 10-class demo model of
:mod:`ffnet_deploy.demo`) are not published models."""

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

"""An independent, functional FFNet forward pass over an *official-layout* state_dict.

It shares no code with ``ffnet_deploy.models``: the structure is read from the state_dict keys alone, following the
semantics of the official implementation (ysj9909/FFNet ``models/ffnet.py``), so that a test comparing the two
catches a wrong module order, a wrong padding, a missed branch or a misread key. Eval mode only.

Official semantics, key by key:
- ``X.c.weight`` + ``X.bn.*``: Conv2d (no bias, "same" padding, groups from the weight shape) then BatchNorm.
- ``X.bn.*`` + ``X.c.weight`` under ``proj.1.conv``: BatchNorm then 1x1 conv, plus the identity skip.
- ``X.conv.*`` + ``X.conv1.*``: RepVGG depthwise pair, summed.
- ``X.weight`` + ``X.bias`` (4-D): plain biased conv.
- A block is ``x + ls * tm(x)`` then ``x + ls * cm(x)``; ``tm = dw2(gelu(dw1(fc(x))))``, ``cm = fc2(gelu(fc1(dw(x))))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


def _bn(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=EPS)


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int, in_ch: int) -> torch.Tensor:
    groups = in_ch // w.shape[1]
    return F.conv2d(x, w, b, stride=stride, padding=w.shape[-1] // 2, groups=groups)


def _any_conv(sd: dict, p: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Dispatch on the keys present under prefix ``p``."""
    c = x.shape[1]
    if f"{p}.conv.c.weight" in sd:  # RepVGG pair
        return _any_conv(sd, f"{p}.conv", x, stride) + _any_conv(sd, f"{p}.conv1", x, stride)
    if f"{p}.c.weight" in sd:  # Conv -> BN
        return _bn(sd, f"{p}.bn", _conv(x, sd[f"{p}.c.weight"], None, stride, c))
    return _conv(x, sd[f"{p}.weight"], sd[f"{p}.bias"], stride, c)  # plain biased conv


def _residual(sd: dict, p: str, x: torch.Tensor, branch) -> torch.Tensor:
    y = branch(f"{p}.main", x)
    if f"{p}.layer_scale" in sd:
        y = y * sd[f"{p}.layer_scale"]
    return x + y


def _token_mixer(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    y = _any_conv(sd, f"{p}.fc", x)
    y = F.gelu(_any_conv(sd, f"{p}.conv1", y))
    return _any_conv(sd, f"{p}.conv2", y)


def _channel_mixer(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    y = _any_conv(sd, f"{p}.conv", x)
    y = F.gelu(F.conv2d(y, sd[f"{p}.fc1.weight"], sd[f"{p}.fc1.bias"]))
    return F.conv2d(y, sd[f"{p}.fc2.weight"], sd[f"{p}.fc2.bias"])


@torch.no_grad()
def official_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of the official FFNet for the weights ``sd`` (official, unfused key layout)."""
    sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    x = x.double()
    x = F.gelu(_any_conv(sd, "patch_embed.0", x, stride=2))
    x = _any_conv(sd, "patch_embed.2", x, stride=2)
    stage = 0
    while any(k.startswith(f"stages.{stage}.") for k in sd):
        block = 0
        while any(k.startswith(f"stages.{stage}.{block}.") for k in sd):
            p = f"stages.{stage}.{block}"
            if f"{p}.proj.0.conv.c.weight" in sd:  # patch merging
                x = _any_conv(sd, f"{p}.proj.0", x, stride=2)
                q = f"{p}.proj.1.conv"
                x = x + F.conv2d(_bn(sd, f"{q}.bn", x), sd[f"{q}.c.weight"])
            else:
                x = _residual(sd, f"{p}.token_mixer.0", x, lambda pp, t: _token_mixer(sd, pp, t))
                x = _residual(sd, f"{p}.channel_mixer", x, lambda pp, t: _channel_mixer(sd, pp, t))
            block += 1
        stage += 1
    x = _bn(sd, "norm", x).mean((2, 3))
    return F.linear(x, sd["head.weight"], sd["head.bias"]).float()

"""Shared helpers of the model tests: relative error, the exact-fusion check every block goes through, and an
independent MAC count by module hooks to hold the project's counter against."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tests.conftest import randomize_

RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|``."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def assert_fuses_exactly(module: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Randomize ``module`` (BN statistics, layer scales), fuse it, and check outputs and that ``self`` is untouched.

    Returns:
        The fused replacement.
    """
    randomize_(module, seed).eval()
    snapshot = copy.deepcopy(module.state_dict())
    with torch.no_grad():
        ref = module(x)
        fused = module.reparameterize().eval()
        out = fused(x)
    assert rel_err(out, ref) < RTOL
    # reparameterize() must not touch self
    assert all(torch.equal(snapshot[k], v) for k, v in module.state_dict().items())
    return fused


@torch.no_grad()
def hook_macs(model: nn.Module, resolution: int, batch: int = 1) -> int:
    """Multiply-accumulates counted by forward hooks: ``Conv2d`` (``out.numel() * in/groups * kh * kw``), ``Linear``
    (``out.numel() * in_features``) and what a module declares through ``forward_macs(inputs, output)``
    (:class:`~ffnet_deploy.models.mixers.DotProductAttention`).

    A count written another way than :func:`ffnet_deploy.models.ffnet.count_macs` (the flop counter at the ATen
    level), for the tests that hold the two equal on FFNets; it cannot see a matmul outside such modules.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    def declared_hook(m: nn.Module, inp, out) -> None:
        nonlocal total
        total += int(m.forward_macs(inp, out))

    meta = copy.deepcopy(model).to("meta").eval()
    for m in meta.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
        elif callable(getattr(m, "forward_macs", None)):
            m.register_forward_hook(declared_hook)
    meta(torch.empty(batch, 3, resolution, resolution, device="meta"))
    return total

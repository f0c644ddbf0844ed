"""Shared helpers of the model tests: relative error and the exact-fusion check every block goes through."""

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

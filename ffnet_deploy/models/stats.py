"""Model size counters shared by the zoo table and the reparameterization report."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())

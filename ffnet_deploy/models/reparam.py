"""Structural reparameterization: one protocol, one walker.

A module is *reparameterizable* when it has a ``reparameterize()`` method that returns its fused replacement
without changing ``self`` (MobileOne's and FastViT's idea, under one name). :func:`reparameterize_model` applies it to
a deep copy of a whole model, checks that nothing fusible is left, and never touches its input.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from ffnet_deploy.models.ffnet import ConvBN, RepDWConv, count_params


def is_reparameterizable(module: nn.Module) -> bool:
    """Whether ``module`` implements the ``reparameterize()`` protocol."""
    return callable(getattr(module, "reparameterize", None))


def reparameterize_children(module: nn.Module) -> nn.Module:
    """Replace, in place, every reparameterizable descendant of ``module`` by its fused replacement.

    The walk is top-down: a reparameterizable child is replaced as a whole (its ``reparameterize()`` handles its own
    children), others are descended into. Callers own ``module``; pass a copy to keep the original.

    Returns:
        ``module`` itself, for chaining.
    """
    for name, child in list(module.named_children()):
        if is_reparameterizable(child):
            setattr(module, name, child.reparameterize())
        else:
            reparameterize_children(child)
    return module


@torch.no_grad()
def reparameterize_model(model: nn.Module) -> nn.Module:
    """Return a fused copy of ``model`` in eval mode; ``model`` itself is not modified.

    For an FFNet this folds every BatchNorm (Conv→BN, BN→1x1 Conv, final BN→classifier), merges the RepVGG
    depthwise branches, folds the patch-merging identity skip and every layer scale.

    Raises:
        AssertionError: If a BatchNorm or a multi-branch block survives (a bug in a block's ``reparameterize``).
    """
    if is_reparameterizable(model):
        fused = model.reparameterize()
    else:
        fused = reparameterize_children(copy.deepcopy(model))
    fused.eval()
    leftovers = [
        name for name, m in fused.named_modules()
        if isinstance(m, (nn.BatchNorm2d, ConvBN, RepDWConv)) or is_reparameterizable(m) and not _is_fused_block(m)
    ]
    # A classifier-less model keeps its final BN by design (nothing linear follows the pooling to absorb it).
    if getattr(fused, "num_classes", 1) == 0:
        leftovers = [n for n in leftovers if n != "norm"]
    assert not leftovers, f"reparameterization left unfused modules: {leftovers[:5]}"
    return fused


def _is_fused_block(m: nn.Module) -> bool:
    """Blocks that keep a ``reparameterize`` method after fusion but have nothing left to fold."""
    from ffnet_deploy.models.ffnet import FFNet, ResidualBlock

    if isinstance(m, ResidualBlock):
        return m.layer_scale is None
    if isinstance(m, FFNet):
        return m.deploy
    return False


# --------------------------------------------------------------------------------------------------------------------
# What changed
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class GraphStats:
    """Size of a model: modules, parameters, and the ops its forward executes."""

    modules: int  # leaf modules
    params: int  # parameters
    ops: Counter = field(default_factory=Counter)  # op name -> count in one forward pass

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    def to_dict(self) -> dict:
        return {"modules": self.modules, "params": self.params, "ops": dict(sorted(self.ops.items())),
                "total_ops": self.total_ops}


def graph_stats(model: nn.Module) -> GraphStats:
    """Count leaf modules, parameters, and executed ops (traced with ``torch.fx``)."""
    import torch.fx

    leaves = [m for m in model.modules() if not list(m.children())]
    ops: Counter = Counter()
    graph = torch.fx.symbolic_trace(model).graph
    named = dict(model.named_modules())
    for node in graph.nodes:
        if node.op == "call_module":
            if not isinstance(named[node.target], nn.Identity):
                ops[type(named[node.target]).__name__] += 1
        elif node.op in ("call_function", "call_method"):
            target = node.target
            ops[getattr(target, "__name__", str(target))] += 1
    return GraphStats(modules=len(leaves), params=count_params(model), ops=ops)


@dataclass
class ReparamReport:
    """Before/after comparison of a reparameterization."""

    before: GraphStats
    after: GraphStats

    def to_dict(self) -> dict:
        return {"before": self.before.to_dict(), "after": self.after.to_dict()}


def reparam_report(before: nn.Module, after: nn.Module) -> ReparamReport:
    """Compare an unfused model with its fused copy."""
    return ReparamReport(graph_stats(before), graph_stats(after))

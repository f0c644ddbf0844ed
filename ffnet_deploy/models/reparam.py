"""Structural reparameterization: one protocol, one walker.

A module is *reparameterizable* (:class:`Reparameterizable`) when it has a ``reparameterize()`` method that returns
its fused replacement without changing ``self`` (MobileOne's and FastViT's idea, under one name).
:func:`reparameterize_model` applies it to a copy of a whole model, checks that nothing fusible is left, and never
touches its input.

The walker knows no model classes: blocks tell it what it needs through the protocols here, so that the model modules
import the walker and never the other way round.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ffnet_deploy.errors import ReparameterizationError
from ffnet_deploy.models.stats import count_params

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@runtime_checkable
class Reparameterizable(Protocol):
    """A block with a structural-reparameterization rule."""

    def reparameterize(self) -> nn.Module:
        """Return the fused replacement of this module, equal in eval mode.

        Never modifies ``self``, and the replacement shares no module or tensor with it, so callers may change it.
        """
        ...


@runtime_checkable
class FusionState(Protocol):
    """Declared by a reparameterizable module that keeps its own class after fusion (a residual wrapper whose layer
    scale is folded, a whole model), so that the leftover check can tell a fused one from an unfused one.
    """

    @property
    def is_fused(self) -> bool:
        """Nothing of this module itself is left to fold (its descendants are checked on their own)."""
        ...

    @property
    def kept_unfused(self) -> tuple[str, ...]:
        """Descendants, by name relative to this module, that fusion leaves in place on purpose (a classifier-less
        model's final BatchNorm: nothing linear follows the pooling to absorb it).
        """
        ...


def is_reparameterizable(module: nn.Module) -> bool:
    """Whether ``module`` implements the :class:`Reparameterizable` protocol."""
    return isinstance(module, Reparameterizable)


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


def reparameterized_copy(module: nn.Module) -> nn.Module:
    """The fused replacement of ``module``: its own ``reparameterize()``, or a copy with its descendants fused."""
    if is_reparameterizable(module):
        return module.reparameterize()
    return reparameterize_children(copy.deepcopy(module))


def unfused_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that fusion should have removed, as ``"name (Class)"``.

    A module is left over when it is a BatchNorm, or reparameterizable and not declaring itself fused through
    :class:`FusionState`. Descendants that a :class:`FusionState` module keeps on purpose are exempt.
    """
    kept: set[str] = set()
    for name, m in model.named_modules():
        if isinstance(m, FusionState):
            kept |= {f"{name}.{k}" if name else k for k in m.kept_unfused}
    leftovers = []
    for name, m in model.named_modules():
        if any(name == k or name.startswith(k + ".") for k in kept):
            continue
        fused = isinstance(m, FusionState) and m.is_fused
        if isinstance(m, _BATCHNORMS) or (is_reparameterizable(m) and not fused):
            leftovers.append(f"{name or '<model>'} ({type(m).__name__})")
    return leftovers


@torch.no_grad()
def reparameterize_model(model: nn.Module) -> nn.Module:
    """Return a fused copy of ``model`` in eval mode; ``model`` itself is not modified.

    For an FFNet this folds every BatchNorm (Conv→BN, BN→1x1 Conv, final BN→classifier), merges the RepVGG
    depthwise branches, folds the patch-merging identity skip and every layer scale.

    Raises:
        ReparameterizationError: If a BatchNorm or an unfused block survives: some block lacks a
            ``reparameterize()`` that folds it.
    """
    fused = reparameterized_copy(model).eval()
    leftovers = unfused_modules(fused)
    if leftovers:
        more = f" and {len(leftovers) - 5} more" if len(leftovers) > 5 else ""
        raise ReparameterizationError(
            f"reparameterization | {type(model).__name__} still has {len(leftovers)} unfused module(s) after fusion: "
            f"{', '.join(leftovers[:5])}{more}; the block holding them needs a reparameterize() that folds them"
        )
    return fused


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

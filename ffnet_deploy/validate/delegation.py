"""The ``delegation`` check: which operators of a mobile program run outside its delegate, read from the file.

A graph that is only partly delegated runs its remaining operators on the runtime's reference CPU kernels (ExecuTorch's
portable kernels, LiteRT's builtin ones), often many times slower, and still computes the right numbers, so no
numeric check can see it. Each phone format reads its own file (``ffnet_deploy.artifact.pte`` for ExecuTorch,
``ffnet_deploy.artifact.tflite`` for LiteRT) into a :class:`Delegation`, and its ``FormatSpec.checks`` hook turns that
into this one check (:func:`delegation_check`), so both formats fail the gate the same way and in the same words:
any convolution or GELU outside the delegate fails it, in one line naming the operators; other operators outside it
are listed in the detail without failing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ffnet_deploy.validate.tolerances import Check

GATED_OPS = ("conv", "gelu")
"""Operators that fail the check when they run outside the delegate (a case-insensitive substring of the operator
name: ``aten::convolution``, ``aten::gelu``, ``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``GELU``): FFNet's compute is its
convolutions and GELUs."""


@dataclass(frozen=True)
class Delegation:
    """What one program runs where, as its format's reader found it in the file."""

    delegate_calls: Mapping[str, int]  # delegate (backend) name -> calls of it in the program
    outside: Mapping[str, int]  # operator -> nodes that run outside every delegate
    delegated_nodes: Mapping[str, int] = field(default_factory=dict)  # node type inside the delegates -> count
    delegate_label: str = "XNNPACK"  # how the detail names the nodes inside (``12 XNNPACK nodes``)


def outside_summary(outside: Mapping[str, int]) -> str:
    """``aten::convolution x2, aten::gelu x1``."""
    return ", ".join(f"{op} x{n}" for op, n in sorted(outside.items()))


def gated(outside: Mapping[str, int]) -> dict[str, int]:
    """The operators of ``outside`` that fail the check (:data:`GATED_OPS`)."""
    return {op: n for op, n in outside.items() if any(g in op.lower() for g in GATED_OPS)}


def delegation_check(found: Delegation) -> Check:
    """The ``delegation`` check of one program: its value is the number of convolution and GELU nodes outside the
    delegate, which must be 0; the detail names the delegate calls and every operator left outside."""
    failing = gated(found.outside)
    calls = ", ".join(f"{n} {backend} call{'s' if n != 1 else ''}" for backend, n in found.delegate_calls.items())
    inside = sum(found.delegated_nodes.values())
    detail = f"delegate: {calls or 'none'}" + (f" ({inside} {found.delegate_label} nodes)" if inside else "")
    if found.outside:
        detail += f"; outside the delegate: {outside_summary(found.outside)}"
    if failing:
        detail += f"; convolution/GELU outside the delegate: {outside_summary(failing)}"
    count = sum(failing.values())
    return Check("delegation", float(count), 0.0, "<=", count == 0, detail)

"""Layer groups: the units that sensitivity analysis quantizes one at a time and mixed precision keeps in float.

A group is one residual branch of one FFNet block, named after the PyTorch module path:

- ``patch_embed``: the stem;
- ``stages.S.B.token_mixer`` and ``stages.S.B.channel_mixer``: the two mixers of block ``B`` of stage ``S``;
- ``stages.S.0.proj``: the patch merging (stride-2 depthwise + pointwise) that opens stages 1-3;
- ``head``: the final norm, pooling and classifier.

The torch ONNX exporter names every node after its module scope (``/stages.1/stages.1.2/token_mixer/.../Conv``),
and OpenVINO keeps those names as friendly names, so one function maps a node of either to its group.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_BLOCK = re.compile(r"(?:^|/)stages\.(\d+)/stages\.\1\.(\d+)/([A-Za-z_]+)")
_HEAD_OPS = ("GlobalAveragePool", "ReduceMean", "Flatten", "Gemm", "MatMul", "Reshape")


def layer_group(node_name: str) -> str | None:
    """The layer group of an ONNX node or OpenVINO operation, from its name; ``None`` when it belongs to none.

    Examples:
        ``/stages.1/stages.1.2/token_mixer/token_mixer.0/main/fc/Conv`` -> ``stages.1.2.token_mixer``;
        ``/patch_embed/patch_embed.0/Conv`` -> ``patch_embed``; ``/head/Gemm`` -> ``head``.
    """
    match = _BLOCK.search(node_name)
    if match:
        stage, block, branch = match.groups()
        return f"stages.{stage}.{block}.{branch}"
    top = node_name.lstrip("/").split("/", 1)[0]
    if top.startswith("patch_embed"):
        return "patch_embed"
    if top.startswith(("head", "norm", "avgpool")) or top == "logits":  # OpenVINO names the classifier "logits"
        return "head"
    # Nodes the exporter left unscoped at the end of the graph (the pooling and the classifier).
    if any(node_name.lstrip("/").startswith(op) for op in _HEAD_OPS):
        return "head"
    return None


def group_sort_key(group: str) -> tuple:
    """Order groups as the network runs: stem, then stage by stage and block by block, then the head."""
    if group == "patch_embed":
        return (0,)
    if group == "head":
        return (2,)
    parts = group.split(".")
    order = {"proj": 0, "token_mixer": 1, "channel_mixer": 2}
    return (1, int(parts[1]), int(parts[2]), order.get(parts[3], 3), parts[3])


def sorted_groups(groups: Iterable[str]) -> list[str]:
    """Unique groups in network order."""
    return sorted(set(groups), key=group_sort_key)

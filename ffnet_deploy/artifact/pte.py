"""Reading an ExecuTorch program (``.pte``) without running it: what runs on a delegate, what does not, and the data
types of its weights.

Shared by the ``executorch`` format (its precision reader and its delegation check, ``exporters/executorch.py``) and
the ``executorch`` runner. Everything comes from the file: ExecuTorch's own program deserializer reads the flatbuffer,
and each XNNPACK delegate blob (a small header, then an ``XNNGraph`` flatbuffer, then the weights) is decoded with the
``flatc`` binary and XNNPACK's schema, both shipped in the executorch wheel. So an edited manifest cannot claim a
delegation or a precision that the program does not have.

- **Outside the delegates**: the method's ``KernelCall`` instructions, by operator (``aten::convolution``): these run
  on ExecuTorch's portable CPU kernels, which are many times slower than XNNPACK's.
- **Inside**: each delegate call's backend (``XnnpackBackend``) and, for XNNPACK, its nodes by type (``XNNConv2d``,
  ``XNNGelu``) and the element count of its constant tensors by XNNPACK data type (``xnn_datatype_qcint8``: per-channel
  int8 weights).
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ffnet_deploy.errors import RuntimeBackendError, require

MAGIC = b"ET"
"""Bytes 4-5 of every ExecuTorch program (``ET12`` in executorch 1.x): checked before the deserializer sees a file."""

XNNPACK = "XnnpackBackend"


@dataclass(frozen=True)
class PteSummary:
    """What one method of a ``.pte`` runs where (module docstring)."""

    method: str  # "forward"
    delegate_calls: dict[str, int]  # backend id -> DelegateCall instructions
    outside: dict[str, int]  # operator -> KernelCall instructions (ExecuTorch's portable CPU kernels)
    delegated_nodes: dict[str, int] = field(default_factory=dict)  # XNNPACK node type -> count, over every blob
    constant_elements: dict[str, int] = field(default_factory=dict)  # XNNPACK data type -> constant tensor elements

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "delegate_calls": dict(self.delegate_calls), "outside": dict(self.outside),
                "delegated_nodes": dict(self.delegated_nodes), "constant_elements": dict(self.constant_elements)}


def looks_like_pte(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts like an ExecuTorch program (a cheap check before parsing)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return path.is_file() and len(head) == 8 and head[4:6] == MAGIC


def read_pte(path: str | Path, component: str = "executorch", method: str = "forward") -> PteSummary:
    """The delegation and weight types of ``method`` in the program at ``path``.

    Raises:
        MissingDependencyError: Without executorch (naming the extra).
        RuntimeBackendError: One line when the file is not a readable ExecuTorch program.
    """
    path = Path(path)
    require("executorch", "executorch", component)
    if not looks_like_pte(path):
        raise RuntimeBackendError(f"{component} | {path} is not an ExecuTorch program (.pte); re-export it with "
                                  "'ffnet-deploy export --format executorch'")
    from executorch.exir._serialize._program import deserialize_pte_binary

    try:
        program = deserialize_pte_binary(path.read_bytes()).program
        plan = next(p for p in program.execution_plan if p.name == method)
    except StopIteration:
        raise RuntimeBackendError(f"{component} | {path} has no method {method!r}") from None
    except Exception as err:  # the deserializer raises struct.error, ValueError, flatc failures...
        raise RuntimeBackendError(f"{component} | {path} is not a readable ExecuTorch program "
                                  f"({type(err).__name__}); re-export it") from err
    outside: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    elements: Counter[str] = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            kind = type(args).__name__
            if kind == "KernelCall":
                op = plan.operators[args.op_index]
                outside[op.name] += 1
            elif kind == "DelegateCall":
                delegate = plan.delegates[args.delegate_index]
                calls[delegate.id] += 1
                if delegate.id == XNNPACK:
                    graph = _xnnpack_graph(program, delegate, path, component)
                    nodes.update(n["xnode_union_type"] for n in graph.get("xnodes", []))
                    elements.update(_constant_elements(graph))
    return PteSummary(method, dict(sorted(calls.items())), dict(sorted(outside.items())), dict(sorted(nodes.items())),
                      dict(sorted(elements.items())))


def _xnnpack_graph(program: Any, delegate: Any, path: Path, component: str) -> dict:
    """The ``XNNGraph`` of one inline XNNPACK delegate, as the JSON ``flatc`` decodes it to."""
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _get_flatc_path

    try:
        blob = bytes(program.backend_delegate_data[delegate.processed.index].data)
        header = XNNHeader.from_bytes(blob[:XNNHeader.EXPECTED_LENGTH])
        flatbuffer = blob[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size]
        schema = resources.files("executorch.backends.xnnpack.serialization").joinpath("schema.fbs")
        with tempfile.TemporaryDirectory() as tmp, resources.as_file(schema) as schema_path:
            binary = Path(tmp) / "graph.bin"
            binary.write_bytes(flatbuffer)
            subprocess.run([_get_flatc_path(), "--json", "--strict-json", "--raw-binary", "-o", tmp,
                            str(schema_path), "--", str(binary)], check=True, capture_output=True, timeout=120)
            return json.loads((Path(tmp) / "graph.json").read_text())
    except Exception as err:  # a damaged blob: flatc fails, the header is wrong, or the JSON is cut short
        raise RuntimeBackendError(f"{component} | the XNNPACK delegate of {path} cannot be read "
                                  f"({type(err).__name__}); re-export it") from err


def _constant_elements(graph: dict) -> Counter[str]:
    """Elements of the graph's constant tensors (weights, biases) by XNNPACK data type."""
    out: Counter[str] = Counter()
    for value in graph.get("xvalues", []):
        union = value.get("xvalue_union", {})
        tensor = union.get("tensor_value", union)  # quantized values wrap the tensor
        if tensor.get("constant_buffer_idx", 0) or tensor.get("named_key"):
            out[tensor.get("datatype", "unknown")] += math.prod(tensor.get("dims") or [1])
    return out

"""Reading a LiteRT model (``.tflite``): is it one, what runs on the XNNPACK delegate, what does not, and the data
types of its weights.

Shared by the ``litert`` format (its content recognizer, precision reader and delegation check,
``exporters/litert.py``) and the ``litert`` runner. Everything comes from the file, so an edited manifest cannot claim
a delegation or a precision the model does not have:

- **Is it a LiteRT model**: a FlatBuffer whose file identifier (bytes 4-8) is ``TFL3``. The bytes are checked here
  before anything hands the file to LiteRT, and the interpreter's own FlatBuffer verifier refuses the rest (a cut or
  damaged file): both are one line (:func:`open_interpreter`).
- **The delegation**: ``ai_edge_litert``'s interpreter applies the XNNPACK delegate when it is built (as on a phone's
  CPU). It keeps the model's original nodes and appends one ``DELEGATE`` node per partition XNNPACK took; a
  partition's nodes are those between the delegate node's input and output tensors. Every original node in no
  partition runs on LiteRT's builtin CPU kernels (:func:`summarize`).
- **The weights**: the element count of the constant tensors (read from the model, not produced by any node) by data
  type: ``int8`` weights make a full-integer model.
"""

from __future__ import annotations

from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffnet_deploy.errors import RuntimeBackendError, require
from ffnet_deploy.native_stderr import captured_stderr

MAGIC = b"TFL3"
"""The FlatBuffer file identifier of every LiteRT (TensorFlow Lite) model, at bytes 4-8."""

DELEGATE = "XNNPACK"
"""The delegate ``ai_edge_litert``'s interpreter applies by default on a CPU (the only one applied here)."""

REEXPORT = "re-export it with 'ffnet-deploy export --format litert'"

_NOISE = ("Created TensorFlow Lite XNNPACK delegate", "absl::InitializeLog")


@dataclass(frozen=True)
class TfliteSummary:
    """What the main subgraph of a ``.tflite`` runs where, with the XNNPACK delegate applied (module docstring)."""

    delegate_calls: dict[str, int]  # delegate -> DELEGATE nodes (partitions) it took
    outside: dict[str, int]  # operator -> nodes in no partition (LiteRT's builtin CPU kernels)
    delegated_nodes: dict[str, int] = field(default_factory=dict)  # operator -> nodes inside the partitions
    constant_elements: dict[str, int] = field(default_factory=dict)  # data type -> constant tensor elements

    def to_dict(self) -> dict[str, Any]:
        return {"delegate_calls": dict(self.delegate_calls), "outside": dict(self.outside),
                "delegated_nodes": dict(self.delegated_nodes), "constant_elements": dict(self.constant_elements)}


def looks_like_tflite(path: Path) -> bool:
    """Whether ``path`` is a regular file whose FlatBuffer file identifier says LiteRT (``TFL3`` at bytes 4-8)."""
    path = Path(path)
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == MAGIC


def quiet_stderr() -> AbstractContextManager[list[str]]:
    """Collect what LiteRT's C++ code writes to file descriptor 2 inside the block (its "Created TensorFlow Lite
    XNNPACK delegate" line on every interpreter); the other lines are yielded back for an error message."""
    return captured_stderr(_NOISE)


def open_interpreter(path: str | Path, component: str = "litert", threads: int | None = None) -> Any:
    """An allocated ``ai_edge_litert`` interpreter of the model at ``path``, with XNNPACK applied.

    Raises:
        MissingDependencyError: Without ai-edge-litert (naming the ``litert`` extra).
        RuntimeBackendError: One line when the file is not a LiteRT model, or LiteRT cannot load it.
    """
    path = Path(path)
    require("ai_edge_litert.interpreter", "litert", component)
    if not looks_like_tflite(path):
        raise RuntimeBackendError(f"{component} | {path} is not a LiteRT model (.tflite: no TFL3 file identifier); "
                                  f"{REEXPORT}")
    from ai_edge_litert.interpreter import Interpreter

    with quiet_stderr() as said:
        try:
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
            error = None
        except Exception as err:  # ValueError from the FlatBuffer verifier, RuntimeError from allocation
            error = err
    if error is not None:
        why = str(error).splitlines()[0] if str(error) else type(error).__name__
        why = "; ".join([why, *said[-1:]])
        raise RuntimeBackendError(f"{component} | cannot load {path}: {why}; {REEXPORT}") from error
    return interpreter


def read_tflite(path: str | Path, component: str = "litert") -> TfliteSummary:
    """The delegation and weight types of the model at ``path`` (its interpreter built once, nothing run).

    Raises:
        MissingDependencyError: Without ai-edge-litert.
        RuntimeBackendError: One line when the file is not a readable LiteRT model.
    """
    return summarize(open_interpreter(path, component, threads=1))


def summarize(interpreter: Any) -> TfliteSummary:
    """What an allocated interpreter runs where (module docstring)."""
    ops = interpreter._get_ops_details()  # every node: the model's, then one DELEGATE node per partition
    producer: dict[int, int] = {}
    for op in ops:
        if op["op_name"] != "DELEGATE":
            for t in op["outputs"]:
                producer[int(t)] = op["index"]
    by_index = {op["index"]: op for op in ops}
    covered: set[int] = set()
    partitions = 0
    for op in ops:
        if op["op_name"] != "DELEGATE":
            continue
        partitions += 1
        boundary = {int(t) for t in op["inputs"]}
        stack = [int(t) for t in op["outputs"]]
        while stack:  # back from the partition's outputs to its inputs: every producer on the way is inside
            tensor = stack.pop()
            node = producer.get(tensor)
            if tensor in boundary or node is None or node in covered:
                continue
            covered.add(node)
            stack += [int(t) for t in by_index[node]["inputs"] if int(t) >= 0]
    inside = Counter(by_index[n]["op_name"] for n in covered)
    outside = Counter(op["op_name"] for op in ops if op["op_name"] != "DELEGATE" and op["index"] not in covered)
    inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    elements: Counter[str] = Counter()
    for tensor in interpreter.get_tensor_details():
        index = int(tensor["index"])
        if index in producer or index in inputs:
            continue
        n = 1
        for d in tensor["shape"]:
            n *= int(d)
        if n:
            elements[tensor["dtype"].__name__ if hasattr(tensor["dtype"], "__name__") else str(tensor["dtype"])] += n
    return TfliteSummary({DELEGATE: partitions} if partitions else {}, dict(sorted(outside.items())),
                         dict(sorted(inside.items())), dict(sorted(elements.items())))

"""Load a Core ML program (``.mlpackage``) on any OS and execute it op by op in numpy.

The program is read with coremltools' own readers only: the spec protobuf (``ct.utils.load_spec``) and the weight
blob (``coremltools.libmilstoragepython._BlobStorageReader``, addressed by each const's ``blobFileValue`` offset).
Execution walks the main function's block in order, keeps every value in a dict by name, and dispatches each
operation to a numpy kernel from :data:`~ffnet_deploy.runtimes._mil_ops.KERNELS`. An operation without a kernel
stops the run with an error naming it; nothing is ever skipped.

Precision: every op's result is cast to the dtype its spec output declares, so a program converted with fp16
compute precision stores its activations in float16 between ops, as Core ML does. Inside an op, accumulation
(conv, linear, reductions) is done in float32, the way a careful kernel would; the interpreter therefore checks the
conversion and its weights, not Apple's kernels or their rounding. ``compute_fp32=True`` ignores the fp16 types and
runs the same program entirely in float32, which gives an fp16 program's own fp32 twin for op-by-op comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.errors import RuntimeBackendError, require
from ffnet_deploy.runtimes._mil_ops import KERNELS, STACKING, NotStackable, OpContext, unpack_bits

# MIL DataType enum (MIL.proto) -> numpy dtype, and bit width for sub-byte integer types.
_DTYPES: dict[int, Any] = {
    1: np.bool_, 10: np.float16, 11: np.float32, 12: np.float64, 13: None,  # bf16 has no numpy dtype
    21: np.int8, 22: np.int16, 23: np.int32, 24: np.int64, 25: np.int8,
    31: np.uint8, 32: np.uint16, 33: np.uint32, 34: np.uint64, 35: np.uint8, 36: np.uint8, 37: np.uint8,
    38: np.uint8, 39: np.uint8,
}
_STRING = 2
# (bit width, signed) of the sub-byte types: int4, uint4, uint2, uint1, uint6, uint3.
_SUB_BYTE = {25: (4, True), 35: (4, False), 36: (2, False), 37: (1, False), 38: (6, False), 39: (3, False)}
# Blob reader method per MIL DataType.
_BLOB_READERS = {
    10: "read_fp16_data", 11: "read_float_data", 21: "read_int8_data", 22: "read_int16_data",
    23: "read_int32_data", 25: "read_int4_data", 31: "read_uint8_data", 32: "read_uint16_data",
    33: "read_uint32_data", 35: "read_uint4_data", 36: "read_uint2_data", 37: "read_uint1_data",
    38: "read_uint6_data", 39: "read_uint3_data",
}

Observer = Callable[[str, str, np.ndarray], None]


def _numpy_dtype(data_type: int, where: str) -> Any:
    dtype = _DTYPES.get(data_type)
    if dtype is None:
        raise RuntimeBackendError(f"coreml-reference | {where} has MIL data type {data_type}, which has no numpy dtype")
    return np.dtype(dtype)


def _shape_of(tensor_type: Any) -> tuple[int | None, ...]:
    return tuple(
        int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None for d in tensor_type.dimensions
    )


@dataclass
class MILOperation:
    """One operation of the main block, with its inputs resolved to names or inline values."""

    type: str
    name: str  # the name attribute, else the first output's name
    inputs: dict[str, list[tuple[str | None, Any]]]  # input -> [(value name, None) | (None, inline value)]
    outputs: list[str]
    output_dtypes: list[np.dtype | None]  # None for non-tensor outputs (strings, dicts)
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class MILProgram:
    """The main function of an ML program, ready to execute.

    Use :meth:`load` to build one from a ``.mlpackage`` and :meth:`run` to execute it.
    """

    path: Path
    inputs: dict[str, tuple[np.dtype, tuple[int | None, ...]]]  # name -> (dtype, shape) of the function inputs
    outputs: list[str]
    operations: list[MILOperation]
    opset: str
    _const_cache: dict[tuple[str, bool], np.ndarray] = field(default_factory=dict, repr=False)

    # -- loading --------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, spec: Any = None, function: str = "main") -> MILProgram:
        """Parse an ``.mlpackage`` (or a spec already read from it) into a :class:`MILProgram`.

        Raises:
            RuntimeBackendError: If the model is not an ML program, or a value cannot be decoded.
        """
        path = Path(path)
        if spec is None:
            ct = require("coremltools", "coreml", "coreml-reference")
            spec = ct.utils.load_spec(str(path))
        if spec.WhichOneof("Type") != "mlProgram":
            raise RuntimeBackendError(
                f"coreml-reference | {path} is a {spec.WhichOneof('Type')} model; only ML programs "
                "(convert_to='mlprogram') can be interpreted"
            )
        program = spec.mlProgram
        if function not in program.functions:
            raise RuntimeBackendError(
                f"coreml-reference | {path} has functions {list(program.functions)}, not {function!r}"
            )
        func = program.functions[function]
        block = func.block_specializations[func.opset]
        weights = _WeightReader(path / "Data" / "com.apple.CoreML" / "weights")
        inputs = {}
        for named in func.inputs:
            tt = named.type.tensorType
            inputs[named.name] = (_numpy_dtype(tt.dataType, f"input {named.name!r}"), _shape_of(tt))
        operations = [_parse_operation(op, weights) for op in block.operations]
        for op in operations:
            if op.type not in KERNELS:
                raise RuntimeBackendError(
                    f"coreml-reference | op {op.type!r} (producing {op.outputs[0]!r}) is not supported by the "
                    f"reference interpreter; supported ops: {', '.join(sorted(KERNELS))}"
                )
        return cls(path, inputs, list(block.outputs), operations, func.opset)

    # -- execution ------------------------------------------------------------------------------------------------

    def run(self, feed: dict[str, np.ndarray], *, observer: Observer | None = None,
            compute_fp32: bool = False, stacked: int | None = None) -> dict[str, Any]:
        """Execute the program.

        Args:
            feed: One array per function input, by name.
            observer: Called as ``observer(name, op_type, value)`` for every output of every non-const op, in
                execution order; ``validate --localize`` uses it to compute per-op errors.
            compute_fp32: Run every float16 value and op in float32 instead (fp16 casts become fp32 casts).
            stacked: The feed holds this many samples stacked on axis 0 of a program converted for one: they run
                together, each computed on its own (see ``_mil_ops.STACKING``).

        Returns:
            The block outputs by name.

        Raises:
            NotStackable: With ``stacked``, when an op of the program would mix the samples; run them one by one.
        """
        env: dict[str, Any] = {}
        for name, (dtype, _shape) in self.inputs.items():
            if name not in feed:
                raise RuntimeBackendError(f"coreml-reference | input {name!r} is missing; the program takes "
                                          f"{list(self.inputs)}")
            env[name] = np.asarray(feed[name]).astype(_float(dtype, compute_fp32), copy=False)
            if stacked is not None and (env[name].ndim == 0 or env[name].shape[0] != stacked):
                raise NotStackable(f"input {name!r} does not lead with the {stacked} samples")
        self._execute(self.operations, env, observer, compute_fp32,
                      None if stacked is None else (set(self.inputs), stacked))
        return {name: env[name] for name in self.outputs}

    def constants(self, *, compute_fp32: bool = False) -> dict[str, np.ndarray]:
        """Every ``const`` and ``constexpr_*`` value of the program, decompressed, by name.

        This is what the compression ops decode to (e.g. the dequantized or palettized weights), for checking them
        against an independent decoder.
        """
        constant_ops = [op for op in self.operations if _is_constant(op)]
        self._execute(constant_ops, {}, None, compute_fp32)  # constants depend on constants only
        return {op.outputs[0]: self._const_cache[(op.outputs[0], compute_fp32)] for op in constant_ops}

    def _execute(self, operations: list[MILOperation], env: dict[str, Any], observer: Observer | None,
                 compute_fp32: bool, stacking: tuple[set[str], int] | None = None) -> None:
        for op in operations:
            constant = _is_constant(op)
            key = (op.outputs[0], compute_fp32)
            if constant and key in self._const_cache:
                env[op.outputs[0]] = self._const_cache[key]
                continue
            ctx = OpContext(op.type, op.name, {k: self._resolve(v, env) for k, v in op.inputs.items()},
                            [None if d is None else _float(d, compute_fp32) for d in op.output_dtypes],
                            op.attributes)
            flags: dict[str, list[bool]] = {}
            if stacking is not None:
                flags = {k: [name in stacking[0] for name, _ in v] for k, v in op.inputs.items()}
                flags = {k: f for k, f in flags.items() if any(f)}
            reads_stacked = bool(flags)
            if reads_stacked and op.type not in STACKING:
                raise NotStackable(f"op {op.type!r} has no stacking rule")
            try:
                if reads_stacked:
                    ctx = STACKING[op.type](ctx, flags, stacking[1])
                result = KERNELS[op.type](ctx)
            except Exception as err:
                if reads_stacked:  # whatever the cause, the one-by-one run reports it (or does not meet it)
                    raise NotStackable(f"op {op.type!r} failed on the stacked samples: {err}") from err
                if isinstance(err, RuntimeBackendError):
                    raise
                # a kernel failure is reported with the op that caused it
                raise RuntimeBackendError(
                    f"coreml-reference | op {op.type!r} producing {op.outputs[0]!r} failed: {err}"
                ) from err
            results = result if isinstance(result, tuple) else (result,)
            if len(results) != len(op.outputs):
                raise RuntimeBackendError(
                    f"coreml-reference | op {op.type!r} gave {len(results)} outputs, the program declares "
                    f"{len(op.outputs)}"
                )
            for name, value, dtype in zip(op.outputs, results, ctx.output_dtypes, strict=True):
                if dtype is not None and isinstance(value, np.ndarray | np.generic):
                    value = np.asarray(value).astype(dtype, copy=False)
                if reads_stacked:
                    if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != stacking[1]:
                        raise NotStackable(f"op {op.type!r} output {name!r} does not lead with the samples")
                    stacking[0].add(name)
                env[name] = value
                if observer is not None and not constant:
                    observer(name, op.type, value)
            if constant:
                self._const_cache[key] = env[op.outputs[0]]

    @staticmethod
    def _resolve(bindings: list[tuple[str | None, Any]], env: dict[str, Any]) -> list[Any]:
        return [env[name] if name is not None else value for name, value in bindings]

    def op_types(self) -> list[str]:
        """The op types of the program, in order (consts included)."""
        return [op.type for op in self.operations]


def _is_constant(op: MILOperation) -> bool:
    return op.type == "const" or op.type.startswith("constexpr_")


def _float(dtype: np.dtype, compute_fp32: bool) -> np.dtype:
    return np.dtype(np.float32) if compute_fp32 and dtype == np.float16 else dtype


class _WeightReader:
    """Reads blob-stored tensors from ``weights/*.bin`` through coremltools' blob storage reader."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._readers: dict[str, Any] = {}

    def read(self, file_name: str, offset: int, data_type: int, shape: tuple[int, ...]) -> np.ndarray:
        storage = require("coremltools.libmilstoragepython", "coreml", "coreml-reference")
        path = self.directory / file_name.split("/")[-1]
        if str(path) not in self._readers:
            if not path.is_file():
                raise RuntimeBackendError(f"coreml-reference | weight file {path} is missing from the package")
            self._readers[str(path)] = storage._BlobStorageReader(str(path))
        method = _BLOB_READERS.get(data_type)
        if method is None:
            raise RuntimeBackendError(f"coreml-reference | blob values of MIL data type {data_type} are not supported")
        raw = np.asarray(getattr(self._readers[str(path)], method)(offset))
        if data_type == 10:  # the reader hands fp16 back as its uint16 bit pattern
            raw = raw.view(np.float16)
        count = int(np.prod(shape, dtype=np.int64))
        if raw.size != count and data_type in _SUB_BYTE:
            bits, signed = _SUB_BYTE[data_type]
            raw = unpack_bits(raw.astype(np.uint8).tobytes(), bits, count, signed)
        return raw.astype(_DTYPES[data_type], copy=False).reshape(shape)


def _decode_value(value: Any, weights: _WeightReader, where: str) -> Any:
    """A MIL ``Value`` (immediate or blob) as a numpy array, or a Python str for string scalars."""
    kind = value.type.WhichOneof("type")
    if kind == "listType" and value.WhichOneof("value") == "immediateValue":
        # e.g. the class labels of a classifier's classify op
        items = [_decode_value(v, weights, where) for v in value.immediateValue.list.values]
        return np.array(items)
    if kind != "tensorType":
        raise RuntimeBackendError(f"coreml-reference | {where}: values of type {kind} are not supported")
    tt = value.type.tensorType
    shape = _shape_of(tt)
    if None in shape:
        raise RuntimeBackendError(f"coreml-reference | {where}: a constant has an unknown dimension")
    if value.WhichOneof("value") == "blobFileValue":
        blob = value.blobFileValue
        return weights.read(blob.fileName, int(blob.offset), tt.dataType, shape)
    tensor = value.immediateValue.tensor
    which = tensor.WhichOneof("value")
    if tt.dataType == _STRING:
        strings = list(tensor.strings.values)
        return strings[0] if not shape else np.array(strings).reshape(shape)
    dtype = _numpy_dtype(tt.dataType, where)
    count = int(np.prod(shape, dtype=np.int64))
    if which == "bytes":
        raw = tensor.bytes.values
        if tt.dataType in _SUB_BYTE:
            bits, signed = _SUB_BYTE[tt.dataType]
            array = unpack_bits(raw, bits, count, signed)
        else:
            array = np.frombuffer(raw, dtype=dtype)
    elif which is None:
        array = np.zeros(0, dtype)
    else:
        array = np.asarray(list(getattr(tensor, which).values))
    return array.astype(dtype, copy=False).reshape(shape)


def _parse_operation(op: Any, weights: _WeightReader) -> MILOperation:
    outputs = [o.name for o in op.outputs]
    name = outputs[0] if outputs else op.type
    if "name" in op.attributes:
        name = _decode_value(op.attributes["name"], weights, f"{op.type} name")
    if len(op.blocks):
        raise RuntimeBackendError(
            f"coreml-reference | op {op.type!r} ({name}) has nested blocks (control flow), which are not supported"
        )
    attributes = {k: _decode_value(v, weights, f"{op.type} {name!r} attribute {k!r}")
                  for k, v in op.attributes.items() if k != "name"}
    inputs: dict[str, list[tuple[str | None, Any]]] = {}
    for key, arg in op.inputs.items():
        bindings = []
        for binding in arg.arguments:
            if binding.WhichOneof("binding") == "name":
                bindings.append((binding.name, None))
            else:
                bindings.append((None, _decode_value(binding.value, weights, f"{op.type} {name!r} input {key!r}")))
        inputs[key] = bindings
    dtypes: list[np.dtype | None] = []
    for out in op.outputs:
        is_tensor = out.type.WhichOneof("type") == "tensorType"
        numpy_type = _DTYPES.get(out.type.tensorType.dataType) if is_tensor else None
        dtypes.append(np.dtype(numpy_type) if numpy_type is not None else None)
    return MILOperation(op.type, str(name), inputs, outputs, dtypes, attributes)

"""What an artifact's own files say about it: the precision they compute in, and whether they are the files that the
manifest recorded.

The manifest is written by the exporter, but it is a text file: anyone can edit it. Two of its claims decide how an
artifact is judged, so both are checked against the files themselves before validation trusts them:

- **Precision** picks the tolerance profile (:mod:`ffnet_deploy.validate.tolerances`), and the int8 profile is far
  looser than the fp32 one. :func:`inspect_precision` reads the precision from the model file, cheaply and without
  running it, and says what in the file shows it:

  - ONNX: ``QuantizeLinear``/``DequantizeLinear``/``QLinear*``/``ConvInteger``/``MatMulInteger`` ops make it int8;
    float16 weights, or ``Cast`` ops to float16 (mixed-precision compute), fp16; anything else fp32.
  - OpenVINO IR (``.xml``, parsed with the standard library): ``FakeQuantize`` ops or 8/4-bit weight constants make
    it int8; ``f16`` weight constants (``compress_to_fp16``, decompressed by a ``Convert`` at load) fp16; else fp32.
  - Core ML (``.mlpackage``, read from its spec with :mod:`ffnet_deploy.artifact.coreml_spec`, no prediction): weight
    compression ops (``constexpr_*``, ``quantize``, ``dequantize``) make it int8; a program whose ops mostly produce
    float16 fp16; else fp32.
  - TensorRT: the precision of the *engine*, which is what the manifest describes. The TensorRT-ready ONNX of an
    fp16 engine is an fp32 graph (weak typing: ``trtexec --fp16`` picks the layer precisions), so the engine's
    precision is read from the ONNX *and* the build: a quantized graph builds an int8 engine, a float16 graph or
    ``--fp16`` in ``build_engine.sh`` an fp16 one, anything else an fp32 one. A serialized engine on its own is not
    inspected.

  :func:`precision_mismatch` turns a disagreement with the manifest into one line naming both.
- **Hashes**: the manifest records the sha256 of every file it describes (``files``, ``artifact.sha256``).
  :func:`verify_files` recomputes them before anything reads the files, so a replaced or edited model is refused
  instead of validated under the claims of another.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ffnet_deploy.artifact.manifest import Manifest, ManifestError
from ffnet_deploy.errors import FFNetDeployError
from ffnet_deploy.hashing import sha256_file, tree_sha256

UNKNOWN = "unknown"
"""What :func:`detect_precision` returns when the file cannot be inspected here."""

# ONNX ops that only a quantized graph holds (QLinear* ops are matched by prefix).
ONNX_QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                            "MatMulInteger"})
# OpenVINO element types of quantized / compressed integer weights.
OV_LOWBIT_TYPES = frozenset({"u8", "i8", "u4", "i4", "nf4", "f8e4m3", "f8e5m2"})
OV_FLOAT_TYPES = frozenset({"f32", "f16", "bf16"})
# Core ML ops that decode compressed (quantized, palettized, sparse) weights, or quantize activations.
COREML_QUANT_OPS = frozenset({"quantize", "dequantize"})
# MIL DataType enum values (MIL.proto).
_MIL_FLOAT16, _MIL_FLOAT32 = 10, 11


class ArtifactIntegrityError(ManifestError):
    """A file of an artifact is missing or is not the file its manifest recorded (sha256 mismatch)."""


# --------------------------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionEvidence:
    """The precision a model file computes in, and what in the file shows it."""

    precision: str | None  # "fp32", "fp16", "int8"; None when the file could not be inspected here
    evidence: str  # e.g. "float16 weights (99% of weight values)", or why it could not be inspected
    path: Path  # the file (or artifact directory) inspected

    @property
    def known(self) -> bool:
        return self.precision is not None

    def describe(self) -> str:
        """``fp16 (float16 weights (...))`` or ``not inspected (why)``."""
        return f"{self.precision} ({self.evidence})" if self.known else f"not inspected ({self.evidence})"


def detect_precision(path: str | Path, fmt: str) -> str:
    """The precision of a model file, ``"fp32"``, ``"fp16"`` or ``"int8"``, or :data:`UNKNOWN`.

    See :func:`inspect_precision` for the rules and for the evidence behind the answer.
    """
    return inspect_precision(path, fmt).precision or UNKNOWN


def inspect_precision(path: str | Path, fmt: str) -> PrecisionEvidence:
    """Read the precision of a model file from the file itself (rules: module docstring).

    Never raises for a file it cannot read: the evidence then says why, and the runner that loads the file reports
    the error properly.

    Args:
        path: An ``.onnx`` file, an OpenVINO ``.xml``, a ``.mlpackage``; for ``tensorrt`` the artifact directory, its
            ``model.onnx`` or its engine (the ONNX and ``build_engine.sh`` next to it are read).
        fmt: ``"onnx"``, ``"openvino"``, ``"coreml"`` or ``"tensorrt"``.
    """
    path = Path(path)
    readers = {"onnx": _onnx_precision, "openvino": _openvino_precision, "coreml": _coreml_precision,
               "tensorrt": _tensorrt_precision}
    if fmt not in readers:
        return PrecisionEvidence(None, f"no precision reader for format {fmt!r}", path)
    if fmt != "tensorrt" and not path.exists():
        return PrecisionEvidence(None, f"{path.name} does not exist", path)
    return readers[fmt](path)


def precision_mismatch(declared: str, found: PrecisionEvidence) -> str | None:
    """One line when the manifest's precision contradicts the file's, else ``None`` (also when not inspected)."""
    if not found.known or found.precision == declared:
        return None
    return (f"manifest precision {declared} does not match the model: {found.path.name} is {found.precision} "
            f"({found.evidence}); re-export the artifact")


def _share(part: int, total: int) -> str:
    return f"{100.0 * part / total:.0f}% of weight values" if total else "no weights"


def _onnx_precision(path: Path) -> PrecisionEvidence:
    import onnx

    try:
        # Only the graph's structure and each tensor's data type are needed: external weight files stay unread.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf/onnx raise many types for a file that is not ONNX; the runner reports it
        return PrecisionEvidence(None, f"cannot be read as ONNX ({type(err).__name__})", path)
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    quant = sorted({n.op_type for n in nodes if n.op_type in ONNX_QUANT_OPS or n.op_type.startswith("QLinear")})
    if quant:
        return PrecisionEvidence("int8", f"quantized ops: {', '.join(quant)}", path)
    tensors = [*model.graph.initializer,
               *(a.t for n in nodes if n.op_type == "Constant" for a in n.attribute if a.name == "value")]
    sizes = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0, onnx.TensorProto.BFLOAT16: 0}
    for t in tensors:
        if t.data_type in sizes:
            sizes[t.data_type] += math.prod(t.dims)
    half = sizes[onnx.TensorProto.FLOAT16] + sizes[onnx.TensorProto.BFLOAT16]
    total = half + sizes[onnx.TensorProto.FLOAT]
    if half > total - half:
        return PrecisionEvidence("fp16", f"float16 weights ({_share(half, total)})", path)
    half_casts = sum(1 for n in nodes if n.op_type == "Cast"
                     for a in n.attribute if a.name == "to" and a.i in (onnx.TensorProto.FLOAT16,
                                                                        onnx.TensorProto.BFLOAT16))
    if half_casts:
        return PrecisionEvidence("fp16", f"{half_casts} Cast op(s) to float16 (mixed-precision compute)", path)
    return PrecisionEvidence("fp32", f"float32 weights ({_share(total - half, total)}), no quantized or float16 ops",
                             path)


def _openvino_precision(path: Path) -> PrecisionEvidence:
    import xml.etree.ElementTree as ET

    elements: dict[str, int] = {}
    fake_quantize = 0
    try:
        # iterparse and clear: the IR's XML can be large, and only each layer's type and constant type are needed.
        for _event, elem in ET.iterparse(str(path), events=("end",)):
            if elem.tag != "layer":
                continue
            kind = elem.get("type")
            if kind == "FakeQuantize":
                fake_quantize += 1
            elif kind == "Const":
                data = elem.find("data")
                if data is not None:
                    shape = [int(d) for d in (data.get("shape") or "").split(",") if d.strip()]
                    et = data.get("element_type", "")
                    elements[et] = elements.get(et, 0) + math.prod(shape)
            elem.clear()
    except (ET.ParseError, OSError, ValueError) as err:
        return PrecisionEvidence(None, f"cannot be read as OpenVINO IR XML ({err})", path)
    if fake_quantize:
        return PrecisionEvidence("int8", f"{fake_quantize} FakeQuantize op(s)", path)
    lowbit = sum(v for k, v in elements.items() if k in OV_LOWBIT_TYPES)
    floats = sum(v for k, v in elements.items() if k in OV_FLOAT_TYPES)
    total = lowbit + floats
    if lowbit > floats:
        kinds = ", ".join(sorted(k for k in elements if k in OV_LOWBIT_TYPES))
        return PrecisionEvidence("int8", f"{kinds} weight constants ({_share(lowbit, total)})", path)
    half = elements.get("f16", 0) + elements.get("bf16", 0)
    if half > floats - half:
        return PrecisionEvidence("fp16", f"f16 weight constants, compressed ({_share(half, total)})", path)
    return PrecisionEvidence("fp32", f"f32 weight constants ({_share(floats - half, total)}), no FakeQuantize", path)


def _coreml_precision(path: Path) -> PrecisionEvidence:
    from ffnet_deploy.artifact.coreml_spec import load_spec

    try:
        spec = load_spec(path, "inspect")
    except FFNetDeployError as err:  # coremltools missing or an unreadable package: the runner reports it
        return PrecisionEvidence(None, str(err), path)
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        return PrecisionEvidence(None, f"a {kind} model (only ML programs are inspected)", path)
    function = spec.mlProgram.functions.get("main")
    if function is None:
        return PrecisionEvidence(None, "the ML program has no main function", path)
    ops = list(function.block_specializations[function.opset].operations)
    compression = sorted({op.type for op in ops if op.type.startswith("constexpr_") or op.type in COREML_QUANT_OPS})
    if compression:
        return PrecisionEvidence("int8", f"compressed weights: {', '.join(compression)}", path)
    counts = {_MIL_FLOAT16: 0, _MIL_FLOAT32: 0}
    for op in ops:
        if op.type == "const":
            continue
        for out in op.outputs:
            if out.type.WhichOneof("type") == "tensorType" and out.type.tensorType.dataType in counts:
                counts[out.type.tensorType.dataType] += 1
    n16, n32 = counts[_MIL_FLOAT16], counts[_MIL_FLOAT32]
    if n16 > n32:
        return PrecisionEvidence("fp16", f"float16 compute ({n16} of {n16 + n32} float op outputs)", path)
    return PrecisionEvidence("fp32", f"float32 compute ({n32} of {n16 + n32} float op outputs)", path)


# trtexec precision flags, strongest first.
_TRT_FLAGS = (("int8", re.compile(r"(?<![\w-])--(int8|best)\b")), ("fp16", re.compile(r"(?<![\w-])--fp16\b")))


def _tensorrt_precision(path: Path) -> PrecisionEvidence:
    folder = path if path.is_dir() else path.parent
    onnx_file = path if path.suffix.lower() == ".onnx" else folder / "model.onnx"
    script = folder / "build_engine.sh"
    graph = _onnx_precision(onnx_file) if onnx_file.is_file() else None
    if graph is not None and graph.precision in ("int8", "fp16"):
        # A quantized graph builds an int8 engine and a float16 graph an fp16 one, whatever the builder flags say.
        return PrecisionEvidence(graph.precision, f"the engine is built from {onnx_file.name}: {graph.evidence}",
                                 folder)
    if not script.is_file():
        why = "its build_engine.sh is not next to it" if graph is not None else "its ONNX and build script are not"
        return PrecisionEvidence(None, f"a serialized TensorRT engine is not inspected, and {why}", folder)
    text = script.read_text(errors="replace")
    command = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for precision, flag in _TRT_FLAGS:
        match = flag.search(command)
        if match:
            graph_note = f" from an {graph.precision} graph" if graph is not None else ""
            return PrecisionEvidence(precision, f"build_engine.sh builds with {match.group(0)}{graph_note}", folder)
    graph_note = f", {onnx_file.name}: {graph.evidence}" if graph is not None else ""
    return PrecisionEvidence("fp32", f"build_engine.sh has no reduced-precision flag{graph_note}", folder)


# --------------------------------------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------------------------------------


def mutable_files(manifest: Manifest) -> set[str]:
    """Files a manifest lists that legitimately change after export (not checked by :func:`verify_files`).

    A TensorRT artifact's timing cache is read *and updated* by every engine build (``build_engine.sh`` on the
    device); it is a build cache, not part of the model.
    """
    if manifest.format != "tensorrt":
        return set()
    plan = (manifest.details or {}).get("build_plan") or {}
    cache = plan.get("timing_cache")
    return {cache} if isinstance(cache, str) and not Path(cache).is_absolute() else set()


def verify_files(manifest: Manifest, directory: str | Path | None = None, component: str = "validate") -> int:
    """Check that every file the manifest lists is there with the sha256 it recorded.

    ``files`` (every file of the directory) and ``artifact.sha256`` (the model file, or a package's tree hash) are
    both checked; a manifest that records no hashes passes (there is nothing to compare).

    Args:
        manifest: The artifact's manifest.
        directory: The artifact directory; default ``manifest.directory``.
        component: Prefix of the error line (``validate``, a runner's name).

    Returns:
        The number of files (and packages) checked.

    Raises:
        ArtifactIntegrityError: One line naming the first file that is missing or differs, both hashes, and what to
            do: ``validate | out/m/model.onnx does not match its manifest (sha256 ab12... != cd34...); re-export it
            or pass --no-verify``.
    """
    if directory is None:
        if manifest.directory is None:
            raise ManifestError(f"{component} | the manifest was not read from a directory; pass the directory")
        directory = manifest.directory
    directory = Path(directory)
    skip = mutable_files(manifest)
    checked: dict[str, str] = {}
    for rel, recorded in sorted(manifest.files.items()):
        if rel in skip:
            continue
        _compare(directory / rel, recorded, component, tree=False)
        checked[rel] = recorded
    art = manifest.artifact
    if art.sha256 and checked.get(art.path) != art.sha256:
        _compare(directory / art.path, art.sha256, component, tree=True)
        checked[art.path] = art.sha256
    return len(checked)


def _compare(path: Path, recorded: str, component: str, tree: bool) -> None:
    fix = "re-export it or pass --no-verify"
    if not path.exists():
        raise ArtifactIntegrityError(f"{component} | {path} is listed in its manifest but missing; {fix}")
    actual = tree_sha256(path) if tree else (sha256_file(path) if path.is_file() else "")
    if actual != recorded:
        got = f"{actual[:12]}..." if actual else "a folder"
        raise ArtifactIntegrityError(f"{component} | {path} does not match its manifest (sha256 {got} != "
                                     f"{recorded[:12]}... recorded); {fix}")

"""Reading and writing FFNet checkpoints safely.

Checkpoints are untrusted input: they are unpickled with ``torch.load(weights_only=True)`` and an explicit
allow-list of extra globals (:data:`SAFE_GLOBALS`), so a pickle that would run code is refused before any of it
runs. ``trust=True`` (the CLI's ``--trust-checkpoint``) is the deliberate escape hatch.

Accepted containers: ``{"state_dict": ...}`` (the official releases, written by timm's ``train.py``),
``{"model": ...}``, ``{"state_dict_ema": ...}``, a bare state_dict, and any of these with a ``module.`` key prefix.
The variant is detected from the tensor shapes, so naming it is optional.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import functools
import io
import math
import os
import pickle
import re
import stat
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import torch
from torch import nn

from ffnet_deploy.atomic import atomic_path
from ffnet_deploy.errors import CheckpointError, first_line
from ffnet_deploy.hashing import sha256_file
from ffnet_deploy.inputs import require_regular_file
from ffnet_deploy.models.config import VARIANTS, get_config
from ffnet_deploy.models.ffnet import FFNet, create_ffnet

# Globals a checkpoint may reference beyond torch's own weights-only set. timm-style training scripts store their
# argparse Namespace under "args"; numpy scalars appear in saved metrics.
SAFE_GLOBALS: list = [argparse.Namespace]
try:  # numpy scalar reconstruction, by its numpy-2 and numpy-1 paths
    import numpy as _np

    SAFE_GLOBALS += [_np.dtype, _np.dtypes.Float64DType, _np.dtypes.Float32DType, _np.dtypes.Int64DType]
    try:
        from numpy._core.multiarray import scalar as _np_scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]
    SAFE_GLOBALS.append(_np_scalar)
except (ImportError, AttributeError):  # pragma: no cover - numpy is a hard dependency
    pass

CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema")
"""Keys under which a training checkpoint may hold the weights, in order of preference."""

FORMAT_KEY = "ffnet_deploy"
"""Key of the metadata block that checkpoints written by this tool carry."""


MAX_CHECKPOINT_BYTES = 2 * 2**30
"""Most tensor and pickle data a checkpoint may expand to. The largest variant (ffnet_4) holds about 0.3 GiB of fp32
weights, so 2 GiB leaves room for a training checkpoint's state_dict, EMA copy and two optimizer moments, and refuses
a decompression bomb or a forged size before anything is allocated."""

MAX_PICKLE_BYTES = 64 * 2**20
"""Most bytes a checkpoint's pickle (its structure, not its tensor data) may take; real ones take kilobytes."""

_UNREADABLE_FIX = "re-download it or re-save it with torch.save"


def _first_line(err: BaseException) -> str:
    return first_line(err)


def _describe(err: BaseException) -> str:
    """``Type: first line of the message`` (just ``Type`` when the message is empty)."""
    line = first_line(err, "")
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _weights_only_reason(err: BaseException) -> str:
    """The line of torch's weights-only refusal that says what it met, without its generic preamble."""
    lines = [line.strip() for line in str(err).splitlines()]
    return next((line for line in lines if line and not line.startswith(_TORCH_BOILERPLATE)), _first_line(err))


def _show(value: object, limit: int = 40) -> str:
    """``repr`` cut to ``limit`` characters, so a message naming user data stays one short line."""
    try:
        text = repr(value).replace("\n", "\\n")
    except Exception:  # noqa: BLE001 - an int past the digit limit, a tuple nested past the recursion limit
        return f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Opaque(dict):
    """Stand-in for every global a scanned pickle names: it takes any arguments and state, and runs nothing.

    A dict subclass, because pickles fill ``OrderedDict`` state_dicts with SETITEMS; hashable by identity, because
    a reconstructed object may be a dict key.
    """

    qualname = ""
    __hash__ = object.__hash__

    def __init__(self, *args: object, **kwargs: object) -> None:  # the arguments would build the real object
        pass

    def __setstate__(self, state: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass


class _BoundedReader:
    """A file view that never reads past ``end``, so a forged length field cannot make a read allocate more."""

    def __init__(self, f: BinaryIO, end: int) -> None:
        self.f, self.end = f, end

    def remaining(self) -> int:
        return max(self.end - self.f.tell(), 0)

    def read(self, n: int = -1) -> bytes:
        left = self.remaining()
        return self.f.read(left if n is None or n < 0 or n > left else n)

    def readline(self) -> bytes:
        return self.f.readline(self.remaining())


_MAX_GLOBALS = 1000
"""Most distinct globals a scanned pickle may name; a training checkpoint names a few dozen."""


class _ScanUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcode table can be patched
    """Walks a pickle with every global replaced by :class:`_Opaque`: nothing from the file is imported or run.

    It records the globals the pickle names and the tensor storages it declares (key -> bytes), which is what the
    safety and size checks need before torch's loader allocates anything.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, reader: _BoundedReader, globals_: dict[str, type], storages: dict[str, int]) -> None:
        super().__init__(reader)
        self.reader, self.globals, self.storages = reader, globals_, storages

    def find_class(self, module: str, name: str) -> type:
        # protocol-2 pickles (torch.save's default) spell Python 3 modules the Python 2 way; name them as torch does
        if self.proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.proto < 3:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname not in self.globals:
            # one stand-in type per name, and few names: a pickle repeating GLOBAL opcodes must not grow memory
            if len(self.globals) >= _MAX_GLOBALS:
                raise pickle.UnpicklingError(f"it names more than {_MAX_GLOBALS} distinct globals")
            self.globals[qualname] = type("_Global", (_Opaque,), {"qualname": qualname})
        return self.globals[qualname]

    def persistent_load(self, pid: object) -> object:
        # torch's storage ids: ("storage", storage type, key, location, numel[, view metadata])
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[4], int):
            self.storages[str(pid[2])] = pid[4] * _element_size(getattr(pid[1], "qualname", ""))
        return None

    def _load_bytearray8(self) -> None:
        # the stock opcode allocates the declared length before reading; refuse a length the file cannot hold
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self.reader.remaining():
            raise pickle.UnpicklingError(f"BYTEARRAY8 declares {size} bytes past the end of the data")
        self.append(bytearray(self.read(size)))

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


_ELEMENT_SIZES = {"Byte": 1, "Char": 1, "Short": 2, "Int": 4, "Long": 8, "Half": 2, "Float": 4, "Double": 8,
                  "BFloat16": 2, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16, "QInt8": 1, "QUInt8": 1,
                  "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1, "Untyped": 1}


def _element_size(storage_type: str) -> int:
    """Bytes per element of a storage type named in a pickle (``torch.FloatStorage`` -> 4); 1 when unknown.

    A table, not ``getattr(torch, ...).dtype``: the typed-storage classes warn on every attribute access.
    """
    return _ELEMENT_SIZES.get(storage_type.removeprefix("torch.").removesuffix("Storage"), 1)


@dataclass
class _Scan:
    """What a checkpoint's pickle names and declares, read without running any of it."""

    fmt: str  # "zip" (torch >= 1.6) or "legacy" (_use_new_zipfile_serialization=False)
    globals: dict[str, type] = field(default_factory=dict)  # every global the pickle imports -> its stand-in
    storages: dict[str, int] = field(default_factory=dict)  # storage key -> declared bytes


def _scan_checkpoint(f: BinaryIO, path: Path, size: int) -> _Scan:
    """Check that ``f`` is a well-formed torch checkpoint whose declared sizes are sane; nothing is executed.

    Raises:
        CheckpointError: Empty, neither a torch zip archive nor a legacy torch pickle, truncated or corrupt, or
            declaring more data than any FFNet checkpoint needs.
    """
    def unreadable(reason: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint: {reason}; {_UNREADABLE_FIX}")

    if size == 0:
        raise unreadable("the file is empty (0 bytes)")
    head = f.read(4)
    f.seek(0)
    if head == b"PK\x03\x04":  # the test torch.load itself uses
        return _scan_zip(f, path, unreadable)
    if not head.startswith(b"\x80"):  # every torch.save pickle starts with a PROTO opcode
        raise unreadable("it is neither a torch.save zip archive nor a legacy torch pickle")
    return _scan_legacy(f, path, size, unreadable)


def _scan_zip(f: BinaryIO, path: Path, unreadable: Callable[[str], CheckpointError]) -> _Scan:
    scan = _Scan("zip")
    try:
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            pkls = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if not pkls:
                raise unreadable("it is a zip archive without the data.pkl that torch.save writes")
            # the central directory declares every entry's expanded size: bound memory before inflating anything
            total = sum(i.file_size for i in infos)
            if total > MAX_CHECKPOINT_BYTES or pkls[0].file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(
                    f"checkpoint {path} refused: its zip entries expand to {total / 2**30:.2f} GiB (pickle "
                    f"{pkls[0].file_size / 2**20:.1f} MiB), more than any FFNet checkpoint needs "
                    f"({MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB, pickle {MAX_PICKLE_BYTES / 2**20:.0f} MiB); it is "
                    "damaged or a decompression bomb. Nothing was expanded"
                )
            with zf.open(pkls[0]) as member:
                data = member.read(MAX_PICKLE_BYTES + 1)  # a lying size field cannot make this read more
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile raises many types (BadZipFile, struct.error, zlib.error...)
        raise unreadable(f"its zip archive is truncated or corrupt ({_describe(err)})") from None
    _scan_pickles(_BoundedReader(io.BytesIO(data), len(data)), scan, 1, unreadable)
    return scan


def _scan_legacy(f: BinaryIO, path: Path, size: int, unreadable: Callable[[str], CheckpointError]) -> _Scan:
    scan = _Scan("legacy")
    reader = _BoundedReader(f, size)
    # torch's legacy layout: magic number, protocol version, sys info, the object, the storage keys, then raw data
    (magic,) = _scan_pickles(reader, scan, 1, unreadable)
    if magic != torch.serialization.MAGIC_NUMBER:
        raise unreadable("it is a pickle, but not one written by torch.save (no torch magic number)")
    protocol, _info, _obj, _keys = _scan_pickles(reader, scan, 4, unreadable)
    if protocol != torch.serialization.PROTOCOL_VERSION:
        raise unreadable(f"it is a legacy torch pickle of unknown protocol version {_show(protocol)}")
    # torch allocates every storage the object names at its declared size before reading it (listed in the keys or
    # not), so a forged size must not get there
    declared = sum(scan.storages.values())
    if declared > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"checkpoint {path} refused: its tensors declare {declared / 2**30:.2f} GiB, more than any FFNet "
            f"checkpoint needs ({MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB); it is damaged or forged. Nothing was allocated"
        )
    if declared > reader.remaining():
        raise CheckpointError(
            f"checkpoint {path} refused: its tensors declare {declared / 2**20:.1f} MiB but the file holds only "
            f"{reader.remaining() / 2**20:.1f} MiB of tensor data; it is truncated or forged. Nothing was allocated"
        )
    return scan


def _scan_pickles(reader: _BoundedReader, scan: _Scan, count: int,
                  unreadable: Callable[[str], CheckpointError]) -> list[object]:
    """Load ``count`` consecutive pickles from ``reader`` with :class:`_ScanUnpickler`."""
    out = []
    try:
        for _ in range(count):
            out.append(_ScanUnpickler(reader, scan.globals, scan.storages).load())
    except Exception as err:  # noqa: BLE001 - any malformed pickle (truncated, bad opcode, bad stack) is the file's
        raise unreadable(f"its pickle is truncated or corrupt ({_describe(err)})") from None
    return out


def _allowed_globals() -> set[str] | None:
    """Names of the globals the weights-only loader accepts here, or ``None`` if torch no longer exposes them."""
    try:
        from torch import _weights_only_unpickler as wou

        names = set(wou._get_allowed_globals())
    except (ImportError, AttributeError):  # private API: fall back to a module-prefix heuristic
        return None
    return names | {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}


_HARMLESS_MODULES = ("torch.", "collections.", "argparse.", "numpy.", "_codecs.", "copyreg.")


def _offenders(scan: _Scan, err: BaseException) -> list[str]:
    """The globals that made the weights-only loader refuse, for the message: torch's own finding first."""
    named = re.findall(r"GLOBAL ([\w.]+)", str(err))
    allowed = _allowed_globals()
    if allowed is None:
        rest = [g for g in scan.globals if not g.startswith(_HARMLESS_MODULES)]
    else:
        rest = [g for g in scan.globals if g not in allowed]
    return list(dict.fromkeys(named + rest))


def _referenced_globals(path: str | Path) -> list[str]:
    """Globals a checkpoint's pickle would import that the weights-only loader does not allow (nothing is run).

    Raises:
        CheckpointError: If the file is not a readable checkpoint.
    """
    path = require_regular_file(path, "checkpoint", CheckpointError)
    with path.open("rb") as f:
        scan = _scan_checkpoint(f, path, os.fstat(f.fileno()).st_size)
    return _offenders(scan, Exception())


def _open_regular(path: Path) -> BinaryIO:
    """Open a checked path without blocking, and re-check the opened file (it may have been swapped meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be opened: {err.strerror or err}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"checkpoint {path} is not a regular file; pass the checkpoint file itself")
    return os.fdopen(fd, "rb")


def file_metadata(path: str | Path) -> dict | None:
    """The ffnet-deploy metadata of a checkpoint written by :func:`save_checkpoint`; ``None`` for any other file,
    unreadable ones included. Read with the weights-only loader, so nothing in a stranger's file runs."""
    try:
        obj = read_checkpoint(path)
    except CheckpointError:
        return None
    meta = obj.get(FORMAT_KEY) if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else None


def read_checkpoint(path: str | Path, trust: bool = False) -> object:
    """Unpickle a checkpoint file without running code from it.

    The file is first checked without executing anything: it must be a regular file, a torch zip archive or legacy
    torch pickle that is complete, and declare no more data than :data:`MAX_CHECKPOINT_BYTES`. So "not a
    checkpoint" (empty, random bytes, truncated) and "unsafe checkpoint" (a valid pickle naming a global outside the
    allow-list) get different messages, with or without ``trust``.

    Args:
        path: Checkpoint file (``.pth``, ``.pth.tar``, ``.pt``).
        trust: Use full pickle instead of the weights-only loader. Only for files you trust.

    Raises:
        CheckpointError: If the file is missing, not a regular file, unreadable, not a torch checkpoint, too large,
            or would run code.
    """
    path = require_regular_file(path, "checkpoint", CheckpointError)
    with _open_regular(path) as f:
        scan = _scan_checkpoint(f, path, os.fstat(f.fileno()).st_size)
        f.seek(0)
        try:
            if trust:
                return torch.load(f, map_location="cpu", weights_only=False)
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if trust:
                raise CheckpointError(f"checkpoint {path} could not be unpickled even with --trust-checkpoint "
                                      f"({_first_line(err)}); it is corrupt") from None
            offenders = _offenders(scan, err)
            if not offenders:  # a safe-looking pickle the weights-only reader cannot parse (e.g. protocol 4 frames)
                raise CheckpointError(
                    f"checkpoint {path} refused: the weights-only loader cannot read its pickle "
                    f"({_weights_only_reason(err)}). Nothing from it was executed. If you trust its source, pass "
                    "--trust-checkpoint"
                ) from None
            raise CheckpointError(
                f"checkpoint {path} refused: its pickle would run code that is not on the weights-only allow-list, "
                f"it references {', '.join(offenders[:3])}. Nothing from it was executed. If you trust its source, "
                "pass --trust-checkpoint"
            ) from None
        except Exception as err:  # noqa: BLE001 - any failure to parse a user's file is a user error, not a bug
            detail = _describe(err)
            if trust:  # full pickle ran the file's own code; what it needs may simply be missing here
                raise CheckpointError(f"checkpoint {path} could not be unpickled with --trust-checkpoint ({detail});"
                                      " it needs the code that wrote it installed, or it is corrupt") from None
            raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint: {detail}; "
                                  f"{_UNREADABLE_FIX}") from None


@dataclass
class CheckpointInfo:
    """What was found in a checkpoint file."""

    path: Path  # the file
    container: str  # "state_dict", "model", "state_dict_ema" or "bare"
    state_dict: dict[str, torch.Tensor]  # weights, with any "module." prefix stripped
    variant: str | None  # detected or recorded variant
    fused: bool  # whether the weights are reparameterized (deploy structure)
    num_classes: int  # classifier outputs (0 for a headless backbone)
    stripped_prefix: str | None = None  # prefix removed from every key, if any
    metadata: dict = field(default_factory=dict)  # the ffnet_deploy block of checkpoints written by this tool

    @property
    def num_params(self) -> int:
        return sum(t.numel() for k, t in self.state_dict.items() if not _is_buffer_key(k))


def _is_buffer_key(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def extract_state_dict(obj: object, prefer_ema: bool = False) -> tuple[str, dict[str, torch.Tensor], str | None]:
    """Find the weights inside a loaded checkpoint object.

    Under a container key (``state_dict``, ...) every value must be a tensor. In a bare checkpoint, top-level values
    whose key has no ``.`` (``epoch``, ``arch``) are metadata and skipped; a dotted key names a weight and must hold a
    tensor. Every key must be a printable string.

    Args:
        obj: What :func:`read_checkpoint` returned.
        prefer_ema: Take ``state_dict_ema`` over ``state_dict`` when both are present.

    Returns:
        ``(container, state_dict, stripped_prefix)``.

    Raises:
        CheckpointError: If no tensor dictionary is found, a key is not a string, or a weight is not a tensor.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, expected a dict of tensors or a container")
    order = ("state_dict_ema", "state_dict", "model") if prefer_ema else CONTAINER_KEYS
    container, sd = "bare", obj
    for key in order:
        if isinstance(obj.get(key), Mapping):
            container, sd = key, obj[key]
            break
    where = "top level" if container == "bare" else f"'{container}'"
    for k in sd:
        # later code slices, sorts and prints keys as parameter names; anything else is not a state_dict
        if not isinstance(k, str):
            raise CheckpointError(
                f"checkpoint's {where} has a key {_show(k)} of type {type(k).__name__}; state_dict keys are parameter "
                "names such as 'head.weight': the file is not a model state_dict or was altered, re-save it"
            )
        if not k.isprintable():
            raise CheckpointError(
                f"checkpoint's {where} has a key with control characters ({_show(k)}); state_dict keys are parameter "
                "names such as 'head.weight': the file is not a model state_dict or was altered, re-save it"
            )
    tensors = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            tensors[k] = v
        elif container != "bare" or "." in k:
            raise CheckpointError(
                f"checkpoint's {where} entry '{_show(k, 80)[1:-1]}' is a {type(v).__name__}, expected a tensor; the "
                "weights were not saved with model.state_dict() or were altered, re-save them"
            )
    if not tensors:
        keys = ", ".join(_show(k) for k in list(obj)[:6])
        raise CheckpointError(
            f"checkpoint has no tensors under {'/'.join(CONTAINER_KEYS)} or at top level (keys: {keys})"
        )
    prefix = None
    for candidate in ("module.", "model.", "_orig_mod."):
        if all(k.startswith(candidate) for k in tensors):
            prefix = candidate
            tensors = {k[len(candidate):]: v for k, v in tensors.items()}
            break
    return container, tensors, prefix


_FLOAT_DTYPES = "a floating-point dtype (float32, float16, bfloat16, float64)"


def check_tensors(sd: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights that would load but compute garbage, or fail later with a traceback.

    Every tensor must be dense (strided), unquantized, hold data (not ``meta``), and have the dtype kind of its
    slot: floating point for parameters and BN statistics, integer for ``num_batches_tracked``. Every floating
    tensor must be finite, so a broken checkpoint is named here instead of being blamed on an exported artifact.

    Raises:
        CheckpointError: Naming the first offending tensor (and how many others are affected, for non-finite ones).
    """
    for k, t in sd.items():
        kind = None
        if t.layout != torch.strided or t.is_nested:
            kind = f"a {str(t.layout).removeprefix('torch.')} tensor; FFNet weights are dense: save a dense state_dict"
        elif t.is_quantized:
            kind = f"quantized ({t.dtype}); load the float checkpoint and quantize at export instead"
        elif t.device.type != "cpu":
            kind = f"a {t.device.type} tensor without data; save the real weights"
        elif k.endswith("num_batches_tracked"):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                kind = f"of dtype {t.dtype}, expected an integer counter; the checkpoint was altered"
        elif not t.is_floating_point():
            kind = f"of dtype {t.dtype}, expected {_FLOAT_DTYPES}; the checkpoint was altered"
        if kind:
            raise CheckpointError(f"checkpoint {path}: tensor {k} is {kind}")
    nonfinite = _nonfinite_keys(sd)
    if nonfinite:
        t = sd[nonfinite[0]]
        counts = [f"{n} {label}" for n, label in ((int(torch.isnan(t).sum()), "NaN"),
                                                  (int(torch.isposinf(t).sum()), "+Inf"),
                                                  (int(torch.isneginf(t).sum()), "-Inf")) if n]
        more = f", and {len(nonfinite) - 1} more tensors" if len(nonfinite) > 1 else ""
        raise CheckpointError(
            f"checkpoint {path} has non-finite values in {nonfinite[0]} ({', '.join(counts)}){more}; the checkpoint "
            "is broken (training diverged or the file was damaged): use an earlier or re-exported checkpoint"
        )


def _nonfinite_keys(sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of the floating tensors that hold a NaN or an infinity, in order.

    One fused norm per dtype screens every tensor (a NaN or Inf makes the norm non-finite); only the tensors it flags
    get the exact check, since a large finite tensor can overflow its norm. Per-tensor ``isfinite`` over a whole
    checkpoint is many times slower on a busy machine.
    """
    keys = [k for k, t in sd.items() if t.is_floating_point() and t.numel()]
    try:
        norms = torch._foreach_norm([sd[k] for k in keys]) if keys else []
        flagged = [k for k, n in zip(keys, norms, strict=True) if not bool(torch.isfinite(n))]
    except (AttributeError, RuntimeError, TypeError):  # no fused kernel for this dtype or torch version
        flagged = keys
    return [k for k in flagged if not bool(torch.isfinite(sd[k]).all())]


_META_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "variant": (lambda v: isinstance(v, str), "a variant name"),
    "fused": (lambda v: isinstance(v, bool), "true or false"),
    "num_classes": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "version": (lambda v: isinstance(v, str), "a version string"),
    "source_sha256": (lambda v: isinstance(v, str), "a hex digest"),
}


def read_metadata(obj: object, path: str | Path) -> dict:
    """The ``ffnet_deploy`` block of a checkpoint written by this tool, type-checked (``{}`` when absent).

    Raises:
        CheckpointError: If the block is not a dict, or a field this tool reads has the wrong type.
    """
    raw = obj.get(FORMAT_KEY) if isinstance(obj, Mapping) else None
    if raw is None:
        return {}
    fix = "it was not written by ffnet-deploy or was altered: remove the block or re-save the checkpoint"
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"checkpoint {path} has a '{FORMAT_KEY}' metadata block that is a {type(raw).__name__},"
                              f" expected a dict; {fix}")
    meta = dict(raw)
    for key, (ok, want) in _META_FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise CheckpointError(f"checkpoint {path} metadata '{FORMAT_KEY}.{key}' must be {want}, got "
                                  f"{_show(meta[key])}; {fix}")
    return meta


def _check_metadata(meta: Mapping, sd: Mapping[str, torch.Tensor], path: Path, check_variant: bool) -> None:
    """Refuse metadata whose claims (variant, fused, num_classes) the weights contradict."""
    fix = "the metadata is wrong or the weights were replaced: re-save the checkpoint"
    fused, classes = _is_fused(sd), _num_classes(sd)
    if "fused" in meta and meta["fused"] != fused:
        raise CheckpointError(f"checkpoint {path} metadata says fused={meta['fused']} but its weights are "
                              f"{'fused' if fused else 'not fused'}; {fix}")
    if "num_classes" in meta and meta["num_classes"] != classes:
        raise CheckpointError(f"checkpoint {path} metadata says num_classes={meta['num_classes']} but its head has "
                              f"{classes}; {fix}")
    claimed = meta.get("variant")
    if not check_variant or claimed is None:
        return
    if claimed not in VARIANTS:
        raise CheckpointError(f"checkpoint {path} metadata names variant {_show(claimed)}, which is not an FFNet "
                              f"variant ({', '.join(VARIANTS)}); {fix}, or pass --variant")
    problem = mismatch_summary(_expected_shapes(claimed, fused, classes), sd, limit=3)
    if problem:
        try:
            hint = f"; the weights are {detect_variant(sd)}: pass --variant {detect_variant(sd)} to go by the weights"
        except CheckpointError:
            hint = f"; {fix}"
        raise CheckpointError(f"checkpoint {path} metadata says variant {claimed} but its weights do not fit it "
                              f"({problem}){hint}")


# --------------------------------------------------------------------------------------------------------------------
# Variant detection
# --------------------------------------------------------------------------------------------------------------------

_QUALCOMM_MARKERS = ("fam_32_sm", "adapter_conv", "up_head", "fam_4.")


@functools.lru_cache(maxsize=64)
def _expected_shapes(variant: str, deploy: bool, num_classes: int) -> Mapping[str, tuple[int, ...]]:
    """The state_dict keys and shapes of ``variant``, read off a model built on the meta device, once per process."""
    with torch.device("meta"):
        model = create_ffnet(variant, num_classes=num_classes, deploy=deploy)
    return MappingProxyType({k: tuple(v.shape) for k, v in model.state_dict().items()})


def _num_classes(sd: Mapping[str, torch.Tensor]) -> int:
    head = sd.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else 0


def _is_fused(sd: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embed.0.weight" in sd and "patch_embed.0.c.weight" not in sd


def _match_counts(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
    """``(keys present in both with equal shapes, size of the union of keys)``."""
    keys = set(sd) | set(expected)
    same = sum(1 for k in keys if k in sd and k in expected and tuple(sd[k].shape) == expected[k])
    return same, len(keys)


def match_score(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> float:
    """Fraction of the union of keys that are present in both with equal shapes (1.0 is an exact match)."""
    same, total = _match_counts(sd, expected)
    return same / max(total, 1)


def _agreement(same: int, total: int) -> str:
    """``"1736 of 1737 (99.9%)"``: the share is floored, so a mismatch never reads as 100 %."""
    return f"{same} of {total} ({math.floor(1000 * same / max(total, 1)) / 10:.1f}%)"


def detect_variant(sd: Mapping[str, torch.Tensor]) -> str:
    """Name the FFNet variant whose state_dict matches ``sd`` exactly in keys and shapes.

    Raises:
        CheckpointError: If nothing matches. The message names Qualcomm's unrelated FFNet segmentation network when
            the keys look like it, and otherwise the closest variant.
    """
    if any(marker in k for k in sd for marker in _QUALCOMM_MARKERS):
        raise CheckpointError(
            "checkpoint is Qualcomm's FFNet ('Fuss-Free Network' segmentation, ffnet_40s/54s/78s/122ns: a ResNet "
            "backbone with an up-sampling head), a different network that shares the name; ffnet-deploy handles "
            "the MetaMixer FFNet (ysj9909/FFNet, variants ffnet_1..ffnet_4)"
        )
    fused, classes = _is_fused(sd), _num_classes(sd)
    head = sd.get("head.weight")
    width = int(head.shape[1]) if head is not None and head.ndim == 2 else None
    # Variants whose last stage is as wide as the head's input first: an exact match ends the search, and only a
    # checkpoint that matches nothing pays for building every variant's key list.
    counts = {}
    for name in sorted(VARIANTS, key=lambda name: VARIANTS[name].embed_dims[-1] != width):
        counts[name] = _match_counts(sd, _expected_shapes(name, fused, classes))
        if counts[name][0] == counts[name][1]:
            return name
    best = max(counts, key=lambda name: counts[name][0] / max(counts[name][1], 1))
    same, total = counts[best]
    if same == total:
        return best
    raise CheckpointError(
        f"checkpoint matches no FFNet variant (closest: {best}, {_agreement(same, total)} keys and shapes agree); "
        f"it is not an FFNet checkpoint or was changed. Pass --variant to see the exact mismatch"
    )


def mismatch_summary(model: nn.Module | Mapping[str, tuple[int, ...]], sd: Mapping[str, torch.Tensor],
                     limit: int = 5) -> str | None:
    """One readable paragraph of what differs between ``model``'s state_dict (or a mapping of the keys and shapes it
    expects) and ``sd``, or ``None`` if nothing."""
    want = ({k: tuple(v.shape) for k, v in model.state_dict().items()} if isinstance(model, nn.Module)
            else model)
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [(k, tuple(sd[k].shape), want[k]) for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:limit])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:limit])})")
    if shapes:
        shown = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in shapes[:limit])
        parts.append(f"{len(shapes)} with another shape ({shown})")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------------


def inspect_checkpoint(path: str | Path, variant: str | None = None, *, trust: bool = False,
                       prefer_ema: bool = False) -> CheckpointInfo:
    """Read a checkpoint and describe it: container, variant (detected unless given), fused or not.

    Nothing is taken on trust from the file: the tensors are checked (:func:`check_tensors`), and the variant, fused
    flag and class count its ``ffnet_deploy`` metadata claims must agree with the weights. An explicit ``variant``
    takes precedence over the metadata's, but must fit the weights exactly.

    Raises:
        CheckpointError: Unreadable, unsafe, broken weights, metadata that contradicts the weights, or not an FFNet
            of a known variant.
    """
    path = Path(path)
    obj = read_checkpoint(path, trust=trust)
    container, sd, prefix = extract_state_dict(obj, prefer_ema=prefer_ema)
    meta = read_metadata(obj, path)
    check_tensors(sd, path)
    _check_metadata(meta, sd, path, check_variant=variant is None)
    if variant is None:
        variant = meta.get("variant") or detect_variant(sd)
    else:
        get_config(variant)  # validates the name
        with torch.device("meta"):
            expected = create_ffnet(variant, num_classes=_num_classes(sd), deploy=_is_fused(sd))
        _raise_on_mismatch(expected, sd, path)
    return CheckpointInfo(
        path=Path(path), container=container, state_dict=sd, variant=variant, fused=_is_fused(sd),
        num_classes=_num_classes(sd), stripped_prefix=prefix, metadata=meta,
    )


def load_checkpoint(model: FFNet, path: str | Path, *, trust: bool = False, prefer_ema: bool = False) -> CheckpointInfo:
    """Load a checkpoint file into ``model`` strictly.

    Raises:
        CheckpointError: If the file is unreadable or unsafe, a tensor is broken (:func:`check_tensors`), or the
            weights do not fit ``model``; the message summarises missing, unexpected and differently shaped keys.
    """
    path = Path(path)
    obj = read_checkpoint(path, trust=trust)
    container, sd, prefix = extract_state_dict(obj, prefer_ema=prefer_ema)
    meta = read_metadata(obj, path)
    check_tensors(sd, path)
    _load_strict(model, sd, path)
    return CheckpointInfo(Path(path), container, sd, model.cfg.name, _is_fused(sd), _num_classes(sd), prefix, meta)


def _raise_on_mismatch(model: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    problem = mismatch_summary(model, sd, limit=3)
    if problem:
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        fused = " (fused)" if getattr(model, "deploy", False) else ""
        try:
            hint = f". It is a {detect_variant(sd)} checkpoint: pass --variant {detect_variant(sd)} or drop --variant"
        except CheckpointError:
            hint = ""
        raise CheckpointError(f"checkpoint {path} does not fit {name}{fused}: {problem}{hint}")


def _load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    _raise_on_mismatch(model, sd, path)
    model.load_state_dict(sd, strict=True)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read once: the model built for it, what the file held, and the file's hash.

    Stages that need the same checkpoint (export, then validate; the pipeline) share one of these instead of
    reloading and re-hashing the file. Nothing is attached to the model itself.
    """

    model: FFNet  # the FFNet in eval mode, weights loaded strictly
    info: CheckpointInfo  # container, variant, fused, classes, metadata

    @functools.cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the file, computed on first use and then kept."""
        return sha256_file(self.info.path)

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def variant(self) -> str:
        return self.model.cfg.name

    @property
    def fused(self) -> bool:
        return self.info.fused

    def describe(self) -> dict:
        """What reports record about the reference checkpoint."""
        return {"checkpoint": str(self.path), "sha256": self.sha256, "variant": self.variant, "fused": self.fused,
                "num_classes": self.model.num_classes, "container": self.info.container}


def open_checkpoint(path: str | Path, variant: str | None = None, *, trust: bool = False, prefer_ema: bool = False,
                    **overrides) -> LoadedCheckpoint:
    """Read a checkpoint once, build the right FFNet for it, load it strictly, and hash the file.

    The variant, the number of classes and whether the weights are fused are read from the checkpoint; a fused
    checkpoint gives a ``deploy=True`` model.

    Args:
        path: Checkpoint file.
        variant: Variant name; detected from the tensor shapes when omitted.
        trust: Allow arbitrary pickles (``--trust-checkpoint``).
        prefer_ema: Load ``state_dict_ema`` when the checkpoint has both it and ``state_dict``.
        **overrides: :class:`~ffnet_deploy.models.config.FFNetConfig` fields to override (e.g. ``resolution=384``).

    Raises:
        CheckpointError: Unreadable, unsafe, or not matching the variant.
    """
    info = inspect_checkpoint(path, variant, trust=trust, prefer_ema=prefer_ema)
    model = create_ffnet(info.variant, num_classes=info.num_classes, deploy=info.fused, **overrides)
    _load_strict(model, info.state_dict, info.path)
    return LoadedCheckpoint(model.eval(), info)


def load_ffnet(path: str | Path, variant: str | None = None, *, trust: bool = False, prefer_ema: bool = False,
               **overrides) -> FFNet:
    """Build the right FFNet for a checkpoint and load it, in eval mode (:func:`open_checkpoint`'s model).

    Raises:
        CheckpointError: Unreadable, unsafe, or not matching the variant.
    """
    return open_checkpoint(path, variant, trust=trust, prefer_ema=prefer_ema, **overrides).model


def save_checkpoint(model: FFNet, path: str | Path, *, source: str | None = None, extra: dict | None = None,
                    may_replace: Callable[[Path], str | None] | None = None, overwrite: bool = True) -> Path:
    """Write ``{"state_dict": ..., "ffnet_deploy": {...}}`` atomically (temporary file, then rename).

    The metadata records the variant, whether the weights are fused, and the source checkpoint's hash, so that
    :func:`load_ffnet` rebuilds the right structure. The same model gives the same bytes, and the file gets the
    permissions the umask allows.

    Args:
        model: The model to save.
        path: The checkpoint file.
        source: SHA-256 of the checkpoint it was made from.
        extra: More metadata.
        may_replace: Decides, at the moment of the rename, whether an existing ``path`` may be replaced (it returns
            why not); ``None`` replaces any file. See :func:`ffnet_deploy.atomic.atomic_path`.
        overwrite: ``False`` refuses any existing ``path``.

    Raises:
        CheckpointError: If the folder is not writable, a write fails (e.g. a full disk) or ``path`` is refused.
    """
    from ffnet_deploy._version import __version__

    path = Path(path)
    meta = {"variant": model.cfg.name, "fused": bool(getattr(model, "deploy", False)),
            "num_classes": model.num_classes, "version": __version__, **({"source_sha256": source} if source else {}),
            **(extra or {})}
    payload = {"state_dict": model.state_dict(), FORMAT_KEY: meta}
    # Through a buffer, not a path: torch.save names the zip archive's records after the file it is given, which
    # would be the random temporary name and make two identical saves differ.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path, "checkpoint", CheckpointError, may_replace=may_replace, overwrite=overwrite) as tmp:
        with tmp.open("wb") as f:
            f.write(buffer.getbuffer())
    return path

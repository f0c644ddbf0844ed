"""The artifact contract: ``manifest.json``, typed, versioned, and read and written only here.

Every artifact directory that ``ffnet-deploy export`` writes holds the model file(s) and one ``manifest.json``. Each
later stage (runners, ``validate``, localization, benchmarks, the pipeline) learns what an artifact is from the
:class:`Manifest` that :func:`read_manifest` returns, never from the JSON itself.

Schema history
--------------
- ``ffnet-deploy/manifest/1``: the first stage's exporters.
- ``ffnet-deploy/manifest/2``: every tensor spec carries a ``role`` (``image``/``tensor`` for inputs,
  ``logits``/``probabilities``/``label`` for outputs), so no reader guesses what an output holds. Version-1 files
  still load: the role is derived from the recorded dtype (a ``dict`` output of a Core ML classifier holds
  probabilities, a ``string`` output the label, anything else logits).

Reading validates: invalid JSON, a missing field, a wrong type, an unknown format or precision (the registered ones:
:mod:`ffnet_deploy.artifact.formats`, :mod:`ffnet_deploy.artifact.precisions`) is one
:class:`ManifestError` line that names the file and the field, e.g.
``manifest | out/m/manifest.json: field 'inputs[0].shape' must be a list of ints or nulls, got 'abc'``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.formats import format_names
from ffnet_deploy.artifact.precisions import precision_names
from ffnet_deploy.errors import ConfigError

SCHEMA = "ffnet-deploy/manifest/2"
"""The schema this version writes."""

READABLE_SCHEMAS = ("ffnet-deploy/manifest/1", SCHEMA)
"""Schemas :func:`read_manifest` accepts."""

MANIFEST_NAME = "manifest.json"

INPUT_RANGES = ("normalized", "0-1", "0-255")
"""What an artifact's input holds: ImageNet-normalized floats, 0-1 floats, or uint8 pixels."""

INPUT_ROLES = ("tensor", "image")
OUTPUT_ROLES = ("logits", "probabilities", "label")


class ManifestError(ConfigError):
    """A ``manifest.json`` that cannot be used: unreadable, not JSON, or a field that is missing or wrong."""


# --------------------------------------------------------------------------------------------------------------------
# Tensor specs
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact: what exporters record and what runners report.

    ``dtype`` is a numpy dtype name (``"float32"``, ``"uint8"``) or, for Core ML features that are not arrays,
    ``"image-rgb"``, ``"string"`` or ``"dict[string,float64]"``. A numpy dtype object is accepted and stored by name.
    """

    name: str  # tensor name in the artifact, e.g. "images"
    shape: tuple[int | None, ...]  # dims; None marks a dynamic dimension
    dtype: str  # numpy dtype name, or a Core ML feature type (see above)
    role: str = ""  # inputs: "tensor" | "image"; outputs: "logits" | "probabilities" | "label"; "" = not stated

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))

    @property
    def np_dtype(self) -> np.dtype | None:
        """The numpy dtype, or ``None`` for a feature that is not an array (image, string, dict)."""
        try:
            return np.dtype(self.dtype)
        except TypeError:
            return None

    def accepts(self, array: np.ndarray) -> bool:
        """Whether ``array`` has this rank and matches every fixed dimension."""
        if array.ndim != len(self.shape):
            return False
        return all(want is None or want == got for want, got in zip(self.shape, array.shape, strict=True))

    def describe(self) -> str:
        """``(1, 3, 256, 256) float32``, with ``?`` for dynamic dimensions."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"({dims}) {self.dtype}"

    def to_dict(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.role:
            out["role"] = self.role
        return out


# --------------------------------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSpec:
    """The batch dimension: fixed (``min == opt == max``) or a dynamic range with an optimum (TensorRT profiles)."""

    min: int  # smallest batch the artifact takes
    opt: int  # batch the engine is tuned for
    max: int  # largest batch
    dynamic: bool = False  # the artifact's batch axis is dynamic

    @classmethod
    def fixed(cls, n: int) -> BatchSpec:
        return cls(n, n, n, False)

    def to_json(self) -> int | dict:
        return {"min": self.min, "opt": self.opt, "max": self.max} if self.dynamic else self.min


@dataclass(frozen=True)
class Preprocessing:
    """What the artifact expects as input and how images must be prepared for it."""

    input_range: str  # one of INPUT_RANGES
    mean: tuple[float, ...]  # ImageNet mean on the 0-1 scale
    std: tuple[float, ...]  # ImageNet std on the 0-1 scale
    crop_pct: float  # evaluation crop: resize the shorter side to resolution / crop_pct, center-crop
    interpolation: str = "bicubic"  # resize filter

    @property
    def baked(self) -> bool:
        """Normalization is inside the artifact (it takes pixels)."""
        return self.input_range != "normalized"

    def to_dict(self) -> dict:
        return {"baked": self.baked, "input_range": self.input_range, "mean": list(self.mean), "std": list(self.std),
                "crop_pct": self.crop_pct, "interpolation": self.interpolation}


@dataclass(frozen=True)
class FileRef:
    """A file and its SHA-256 (a directory package's hash covers its sorted paths and contents)."""

    path: str  # relative to the artifact directory, or as the user gave it (source checkpoint)
    sha256: str  # hex digest
    derived_from: str | None = None  # source checkpoint only: sha256 of the checkpoint this one was fused from

    def to_dict(self) -> dict:
        out = {"path": self.path, "sha256": self.sha256}
        if self.derived_from:
            out["derived_from"] = self.derived_from
        return out

    def names(self, sha256: str) -> bool:
        """Whether ``sha256`` is this file's hash or that of the file it was derived from."""
        return bool(sha256) and sha256 in (self.sha256, self.derived_from)


@dataclass(frozen=True)
class Manifest:
    """Everything a later stage needs to know about an artifact.

    Required fields come first; the rest record provenance and details. ``directory`` is where the manifest was read
    from (``None`` for one built in memory); it is not written.
    """

    format: str  # a registered format (ffnet_deploy.artifact.formats)
    precision: str  # a stored precision (ffnet_deploy.artifact.precisions)
    variant: str  # FFNet variant name
    resolution: int  # input side in pixels
    num_classes: int  # classifier outputs
    batch: BatchSpec  # fixed batch or dynamic range
    inputs: tuple[TensorSpec, ...]  # artifact inputs (FFNet artifacts have one)
    outputs: tuple[TensorSpec, ...]  # artifact outputs
    preprocessing: Preprocessing  # input convention
    artifact: FileRef  # main model file or package
    reparameterized: bool = True  # BN/branches/layer scales folded before export
    random_weights: bool = False  # exported without a checkpoint
    source_checkpoint: FileRef | None = None  # the checkpoint it came from
    files: Mapping[str, str] = field(default_factory=dict)  # every file of the directory -> sha256
    versions: Mapping[str, str] = field(default_factory=dict)  # package -> version at export time
    block_outputs: Mapping[str, str] | None = None  # "stages.S.B" -> graph tensor (graph formats)
    parity: Mapping[str, Any] = field(default_factory=dict)  # the export gate's report
    options: Mapping[str, Any] = field(default_factory=dict)  # export options as given
    details: Mapping[str, Any] = field(default_factory=dict)  # format-specific facts (gelu fusion, engine, ...)
    notices: tuple[str, ...] = ()  # warnings the user was shown at export
    export_seconds: float | None = None  # wall time of the export
    created: str | None = None  # ISO time of the export
    license: str | None = None  # license note
    command: str | None = None  # the command line that produced it
    schema: str = field(default=SCHEMA, compare=False)  # schema the file was written with
    directory: Path | None = field(default=None, compare=False)  # where it was read from (not serialized)

    # -- derived views ------------------------------------------------------------------------------------------------

    @property
    def input(self) -> TensorSpec:
        """The (single) input of an FFNet artifact."""
        return self.inputs[0]

    @property
    def result_output(self) -> TensorSpec:
        """The output parity compares: the logits, or a classifier's class probabilities."""
        for role in ("logits", "probabilities"):
            for spec in self.outputs:
                if spec.role == role:
                    return spec
        return self.outputs[0]

    @property
    def model_path(self) -> Path:
        """The main model file or package (absolute when the manifest was read from disk)."""
        return (self.directory / self.artifact.path) if self.directory is not None else Path(self.artifact.path)

    def with_updates(self, **changes: Any) -> Manifest:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The JSON form, in a stable key order."""
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "format": self.format,
            "precision": self.precision,
            "variant": self.variant,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "batch": self.batch.to_json(),
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "preprocessing": self.preprocessing.to_dict(),
            "reparameterized": self.reparameterized,
            "random_weights": self.random_weights,
            "source_checkpoint": self.source_checkpoint.to_dict() if self.source_checkpoint else None,
            "artifact": self.artifact.to_dict(),
            "files": dict(self.files),
            "versions": dict(self.versions),
            "export_seconds": self.export_seconds,
            "created": self.created,
            "parity": dict(self.parity),
            "options": dict(self.options),
            "details": dict(self.details),
            "notices": list(self.notices),
            "license": self.license,
            "command": self.command,
        }
        if self.block_outputs is not None:
            out["block_outputs"] = dict(self.block_outputs)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n"

    def summary(self) -> dict:
        """The fields a report repeats about an artifact."""
        d = self.to_dict()
        keys = ("schema", "format", "precision", "variant", "resolution", "num_classes", "batch", "preprocessing",
                "reparameterized", "source_checkpoint", "artifact", "versions", "created")
        return {k: d[k] for k in keys}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------------------------------
# Reading (validating) and writing
# --------------------------------------------------------------------------------------------------------------------


def manifest_path(path: str | Path) -> Path:
    """``path`` itself when it names a ``manifest.json``, else ``path/manifest.json``."""
    path = Path(path)
    return path if path.name == MANIFEST_NAME and not path.is_dir() else path / MANIFEST_NAME


def has_manifest(directory: str | Path) -> bool:
    """Whether ``directory`` holds a ``manifest.json`` file."""
    return manifest_path(directory).is_file()


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate the manifest of an artifact directory (or a ``manifest.json`` path).

    Raises:
        ManifestError: One line naming the file and what is wrong with it.
    """
    file = manifest_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"manifest | {file} does not exist; pass an artifact directory written by "
                            "'ffnet-deploy export'") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"manifest | cannot read {file}: {getattr(err, 'strerror', None) or err}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ManifestError(f"manifest | {file} is not valid JSON ({err}); re-export the artifact") from None
    return parse_manifest(data, source=str(file), directory=file.parent)


def parse_manifest(data: Any, source: str = "manifest", directory: Path | None = None) -> Manifest:
    """Validate decoded JSON and build the :class:`Manifest`.

    Raises:
        ManifestError: Naming ``source`` and the offending field.
    """
    r = _Reader(source)
    if not isinstance(data, dict):
        r.fail("", f"must be a JSON object, got {_kind(data)}")
    schema = data.get("schema", READABLE_SCHEMAS[0])
    if schema not in READABLE_SCHEMAS:
        r.fail("schema", f"is {schema!r}; this version reads {', '.join(READABLE_SCHEMAS)} (upgrade ffnet-deploy "
                         "or re-export)")
    # The formats and precisions a manifest may declare are the registered ones (a new format's room registers its
    # own), so an artifact of any format reads back.
    fmt = r.choice(data, "format", format_names())
    precision = r.choice(data, "precision", precision_names(stored=True))
    inputs = tuple(_tensor(r, t, f"inputs[{i}]", True) for i, t in enumerate(r.list(data, "inputs", nonempty=True)))
    outputs = tuple(_tensor(r, t, f"outputs[{i}]", False)
                    for i, t in enumerate(r.list(data, "outputs", nonempty=True)))
    pre = r.obj(data, "preprocessing")
    art = r.obj(data, "artifact")
    src = data.get("source_checkpoint")
    if src is not None:
        src = r.obj(data, "source_checkpoint")
    block_outputs = data.get("block_outputs")
    if block_outputs is not None:
        block_outputs = r.str_map(data, "block_outputs")
    return Manifest(
        format=fmt,
        precision=precision,
        variant=r.str(data, "variant"),
        resolution=r.int(data, "resolution", minimum=1),
        num_classes=r.int(data, "num_classes", minimum=1),
        batch=_batch(r, data),
        inputs=inputs,
        outputs=outputs,
        preprocessing=Preprocessing(
            input_range=r.choice(pre, "input_range", INPUT_RANGES, "preprocessing."),
            mean=r.floats(pre, "mean", "preprocessing."),
            std=r.floats(pre, "std", "preprocessing."),
            crop_pct=r.float(pre, "crop_pct", "preprocessing."),
            interpolation=r.str(pre, "interpolation", "preprocessing.", default="bicubic"),
        ),
        artifact=FileRef(r.str(art, "path", "artifact."), r.str(art, "sha256", "artifact.", default="")),
        reparameterized=r.bool(data, "reparameterized", default=True),
        random_weights=r.bool(data, "random_weights", default=False),
        source_checkpoint=None if src is None else FileRef(
            r.str(src, "path", "source_checkpoint."), r.str(src, "sha256", "source_checkpoint.", default=""),
            r.str(src, "derived_from", "source_checkpoint.", default=None)),
        files=r.str_map(data, "files", default={}),
        versions=r.str_map(data, "versions", default={}),
        block_outputs=block_outputs,
        parity=r.obj(data, "parity", default={}),
        options=r.obj(data, "options", default={}),
        details=r.obj(data, "details", default={}),
        notices=tuple(r.strs(data, "notices", default=[])),
        export_seconds=r.float(data, "export_seconds", default=None),
        created=r.str(data, "created", default=None),
        license=r.str(data, "license", default=None),
        command=r.str(data, "command", default=None),
        schema=schema,
        directory=directory,
    )


def write_manifest(manifest: Manifest, directory: str | Path) -> Path:
    """Write ``directory/manifest.json`` (the directory is a private work directory, so a plain write is atomic
    with respect to publishing: the whole directory is renamed into place afterwards)."""
    path = Path(directory) / MANIFEST_NAME
    path.write_text(manifest.to_json(), encoding="utf-8")
    return path


def _tensor(r: _Reader, data: Any, where: str, is_input: bool) -> TensorSpec:
    if not isinstance(data, dict):
        r.fail(where, f"must be an object with name, shape and dtype, got {_kind(data)}")
    name = r.str(data, "name", where + ".")
    shape = data.get("shape")
    if shape is None and "shape" not in data:
        r.fail(where + ".shape", "is missing")
    if not isinstance(shape, list) or not all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                                              for d in shape):
        r.fail(where + ".shape", f"must be a list of ints or nulls, got {_show(shape)}")
    dtype = r.str(data, "dtype", where + ".")
    roles = INPUT_ROLES if is_input else OUTPUT_ROLES
    if "role" in data:
        role = r.choice(data, "role", roles, where + ".")
    elif is_input:  # schema 1: derived from the dtype, the one fact it recorded
        role = "image" if dtype.startswith("image") else "tensor"
    else:
        role = "probabilities" if dtype.startswith("dict") else "label" if dtype == "string" else "logits"
    return TensorSpec(name, tuple(shape), dtype, role)


def _batch(r: _Reader, data: dict) -> BatchSpec:
    b = r.get(data, "batch")
    if isinstance(b, int) and not isinstance(b, bool):
        if b < 1:
            r.fail("batch", f"must be at least 1, got {b}")
        return BatchSpec.fixed(b)
    if isinstance(b, dict):
        lo, opt, hi = (r.int(b, k, "batch.", minimum=1) for k in ("min", "opt", "max"))
        if not lo <= opt <= hi:
            r.fail("batch", f"needs min <= opt <= max, got {lo}:{opt}:{hi}")
        return BatchSpec(lo, opt, hi, True)
    r.fail("batch", f"must be an int or an object with min, opt, max, got {_show(b)}")
    raise AssertionError  # unreachable: fail raises


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an int", float: "a number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


_MISSING = object()


def _is_finite_number(v: Any) -> bool:
    """A JSON number that is a finite float: NaN, infinities and integers beyond float range are refused here, so
    they never reach ``float()`` (which raises OverflowError) or the preprocessing arithmetic."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


class _Reader:
    """Typed field access that fails with one line naming the source and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> None:
        target = f"field {where!r} " if where else ""
        raise ManifestError(f"manifest | {self.source}: {target}{what}; re-export the artifact or fix the file")

    def get(self, data: dict, key: str, prefix: str = "", default: Any = _MISSING) -> Any:
        if key not in data or (data[key] is None and default is not _MISSING):
            if default is _MISSING:
                self.fail(prefix + key, "is missing")
            return default
        return data[key]

    def _typed(self, data: dict, key: str, prefix: str, default: Any, ok: Callable[[Any], bool], want: str) -> Any:
        v = self.get(data, key, prefix, default)
        if v is default and default is not _MISSING:
            return v
        if not ok(v):
            self.fail(prefix + key, f"must be {want}, got {_show(v)}")
        return v

    def str(self, data: dict, key: str, prefix: str = "", default: Any = _MISSING) -> Any:
        return self._typed(data, key, prefix, default, lambda v: isinstance(v, str), "a string")

    def bool(self, data: dict, key: str, prefix: str = "", default: Any = _MISSING) -> Any:
        return self._typed(data, key, prefix, default, lambda v: isinstance(v, bool), "true or false")

    def int(self, data: dict, key: str, prefix: str = "", default: Any = _MISSING, minimum: int | None = None) -> Any:
        v = self._typed(data, key, prefix, default, lambda v: isinstance(v, int) and not isinstance(v, bool),
                        "an integer")
        if minimum is not None and isinstance(v, int) and v < minimum:
            self.fail(prefix + key, f"must be at least {minimum}, got {v}")
        return v

    def float(self, data: dict, key: str, prefix: str = "", default: Any = _MISSING) -> Any:
        v = self._typed(data, key, prefix, default, _is_finite_number, "a finite number")
        return v if v is None else float(v)

    def choice(self, data: dict, key: str, choices: Sequence[str], prefix: str = "") -> str:
        v = self.str(data, key, prefix)
        if v not in choices:
            self.fail(prefix + key, f"is {v!r}; expected one of {', '.join(choices)}")
        return v

    def obj(self, data: dict, key: str, prefix: str = "", default: Any = _MISSING) -> Any:
        return self._typed(data, key, prefix, default, lambda v: isinstance(v, dict), "an object")

    def list(self, data: dict, key: str, prefix: str = "", nonempty: bool = False) -> list:
        v = self._typed(data, key, prefix, _MISSING, lambda v: isinstance(v, list), "a list")
        if nonempty and not v:
            self.fail(prefix + key, "must not be empty")
        return v

    def floats(self, data: dict, key: str, prefix: str = "") -> tuple[float, ...]:
        v = self._typed(data, key, prefix, _MISSING, lambda v: isinstance(v, list) and all(
            _is_finite_number(x) for x in v), "a list of finite numbers")
        return tuple(float(x) for x in v)

    def strs(self, data: dict, key: str, prefix: str = "", default: Any = _MISSING) -> Any:
        return self._typed(data, key, prefix, default,
                           lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")

    def str_map(self, data: dict, key: str, prefix: str = "", default: Any = _MISSING) -> Any:
        return self._typed(data, key, prefix, default, lambda v: isinstance(v, dict) and all(
            isinstance(x, str) for x in v.values()), "an object of strings")

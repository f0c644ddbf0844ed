"""The files the tool writes and reads back: one schema-ID convention, one NaN convention, one typed reader.

Schema IDs
----------
Every JSON file ffnet-deploy writes names its layout in a ``schema`` key, spelled ``ffnet-deploy/<kind>/<version>``
(:func:`schema_id`): ``ffnet-deploy/manifest/2``, ``ffnet-deploy/validate-report/1``, ``ffnet-deploy/bench/1``,
``ffnet-deploy/pipeline/1`` (a pipeline's ``results.json``), ``ffnet-deploy/pipeline-job/1``,
``ffnet-deploy/pipeline-state/1``, ``ffnet-deploy/pipeline-plan/1``, ``ffnet-deploy/calibration-cache/1``. Earlier
versions spelled some of them with a dot (``ffnet-deploy.bench/1``); :func:`readable_ids` lists both spellings of a
version, and every reader accepts both, so the outputs of an older version still resume, merge and are recognised as
the tool's own. The trailing number changes when a key is removed or changes meaning; adding a key does not.

Numbers that are not finite
---------------------------
Every JSON file is strict JSON (RFC 8259 has no NaN or Infinity): :func:`jsonable` writes a float that is not finite
as the string ``"nan"``, ``"inf"`` or ``"-inf"`` (what ``str(float)`` gives), and ``null`` means a value that was
not measured or does not apply. Readers take those strings back as floats where a field may hold one (:data:`Real`:
a PSNR of identical outputs is ``"inf"``) and refuse them, with negative numbers, where it may not (:data:`Positive`
latencies, :data:`NonNegative` durations). CSV files leave such a cell empty; tables show a dash.

Reading
-------
:func:`read_json` is how a file the tool wrote comes back: a regular-file check and a size cap before anything is
read (:func:`ffnet_deploy.inputs.read_bounded`), strict UTF-8 JSON, the schema ID, then the file's pydantic model in
strict mode (a string is not a number, ``1.0`` is not an integer, ``"false"`` is not a boolean). Whatever is wrong
is one line that names the file and the field, the way the manifest reader does it
(:mod:`ffnet_deploy.artifact.manifest`)::

    bench result | out/results.json: field 'rows[0].latency_ms.p50' must be a finite number above 0, got -5;
    regenerate it with 'ffnet-deploy bench'

Range checks (finite, positive) run only when a file is read (the ``reading`` validation context), so that a value
computed in a run that is out of range never throws away the measurements around it; it is refused when read back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_serializer,
)

from ffnet_deploy.errors import ConfigError, FFNetDeployError, first_line
from ffnet_deploy.inputs import read_bounded

PREFIX = "ffnet-deploy"

MAX_JSON_BYTES = 64 << 20
"""The default cap on a JSON file read back: far above any result, job record or state the tool writes."""

READING = "ffnet_deploy_reading"
"""The validation-context key under which range checks apply (see the module docstring)."""


def schema_id(kind: str, version: int) -> str:
    """``ffnet-deploy/<kind>/<version>``: the spelling every file is written with."""
    return f"{PREFIX}/{kind}/{version}"


def readable_ids(kind: str, versions: Sequence[int] = (1,)) -> tuple[str, ...]:
    """Every spelling a reader accepts for ``versions`` of ``kind``: the slash form, then the dot form of older
    versions (``ffnet-deploy.<kind>/<version>``)."""
    return tuple(s for v in versions for s in (schema_id(kind, v), f"{PREFIX}.{kind}/{v}"))


# --------------------------------------------------------------------------------------------------------------------
# Non-finite numbers
# --------------------------------------------------------------------------------------------------------------------

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: non-finite floats as ``"nan"``/``"inf"``/``"-inf"``, tuples as lists, paths as
    strings, numpy scalars as Python numbers, mapping keys as strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:  # numpy scalars, without numpy here
        return jsonable(obj.item())
    return obj


def dumps(data: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text of ``data`` (through :func:`jsonable`) with a final newline: how every file is written.

    ``json.dumps`` and not pydantic's serializer: its spacing (``"key": value``) and its escaping of non-ASCII text are
    what files of earlier versions hold, and what the recognition of the tool's own files reads
    (``ffnet_deploy.benchmarks.results.owned_by_bench``).
    """
    return json.dumps(jsonable(data), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"


def _from_string(value: Any) -> Any:
    return _NONFINITE.get(value, value) if isinstance(value, str) else value


def _reading(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(READING))


def constraint(test, what: str) -> AfterValidator:
    """A check of a value, applied when a file is read (module docstring): ``test(value)`` false fails with
    ``what`` (``"must be at least 1"``)."""
    def check(value: Any, info: ValidationInfo) -> Any:
        if value is not None and _reading(info) and not test(value):
            raise ValueError(what)
        return value

    return AfterValidator(check)


Real = Annotated[float, BeforeValidator(_from_string)]
"""A number, or one of the strings ``"nan"``, ``"inf"``, ``"-inf"`` (read as that float)."""

Finite = Annotated[Real, constraint(math.isfinite, "must be a finite number")]
NonNegative = Annotated[Real, constraint(lambda v: math.isfinite(v) and v >= 0, "must be a finite number, at least 0")]
Positive = Annotated[Real, constraint(lambda v: math.isfinite(v) and v > 0, "must be a finite number above 0")]
Count = Annotated[int, constraint(lambda v: v >= 0, "must be at least 0")]
PositiveInt = Annotated[int, constraint(lambda v: v >= 1, "must be at least 1")]
NonEmpty = Annotated[str, constraint(lambda v: bool(v.strip()), "must not be empty")]


def one_of(choices: Sequence[str] | Callable[[], Sequence[str]]):
    """A string check: the value must be one of ``choices``, read when checked (a callable is called then, so a
    registry that grows, like the formats', is followed)."""
    return AfterValidator(lambda value, info: _one_of(value, info, choices))


def _one_of(value: Any, info: ValidationInfo, choices: Sequence[str]) -> Any:
    if callable(choices):
        choices = choices()
    if value is not None and _reading(info) and value not in choices:
        raise ValueError(f"is {show(value)}; expected one of {', '.join(choices)}")
    return value


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


class Record(BaseModel):
    """Base of a typed part of a file: a key a newer version added is kept (and written back), not refused."""

    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (before :func:`jsonable`): fields in declaration order, then any extra keys."""
        return self.model_dump(mode="python", by_alias=True)


class FileModel(Record):
    """Base of a whole file: its ``schema`` key (a field named ``schema_`` in Python, where pydantic's models own
    the name ``schema``)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)

    schema_: str = Field(alias="schema")

    @field_serializer("schema_")
    def _current_schema(self, value: str) -> str:
        """A file is written with the schema this version writes (the field's default), whatever spelling of it it
        was read with; a model without a default keeps what it read."""
        default = type(self).model_fields["schema_"].default
        return default if isinstance(default, str) else value

    def to_json(self) -> str:
        """The file's text: strict JSON with the project's NaN convention (:func:`dumps`)."""
        return dumps(self.to_dict())


# --------------------------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------------------------

_KIND_OF = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}

_WANT = {"int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
         "float_type": "must be a number", "float_parsing": "must be a number", "string_type": "must be a string",
         "bool_type": "must be true or false", "bool_parsing": "must be true or false",
         "dict_type": "must be an object", "model_type": "must be an object", "dataclass_type": "must be an object",
         "model_attributes_type": "must be an object", "list_type": "must be a list", "tuple_type": "must be a list",
         "missing": "is missing", "missing_keyword_only_argument": "is missing",
         "missing_positional_argument": "is missing", "extra_forbidden": "is not a field of this file",
         "unexpected_keyword_argument": "is not a field of this file", "finite_number": "must be a finite number",
         "none_required": "must be null"}


def kind_of(value: Any) -> str:
    """``"an object"``, ``"a list"``, ... : what a JSON value is, for a message."""
    return _KIND_OF.get(type(value), type(value).__name__)


def show(value: Any) -> str:
    """A JSON value for a message, cut to 40 characters."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def field_path(loc: Sequence[Any], data: Any) -> str:
    """``rows[0].latency_ms.p50``: the place of an error in ``data``.

    Pydantic's location also names union members (``float``, ``function-after[...]``); only the parts that are keys
    and indices of ``data`` itself are kept, so the path names what the user sees in the file.
    """
    parts: list[str] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            parts.append(f"[{part}]")
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            parts.append(("." if parts else "") + part)
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and i == len(loc) - 1:
            parts.append(("." if parts else "") + part)  # a missing key
            node = None
    return "".join(parts)


def describe(err: ValidationError, data: Any) -> tuple[str, str]:
    """``(field path, what is wrong)`` of the first error of ``err`` (a validation of ``data``)."""
    first = err.errors(include_url=False)[0]
    kind, message = first["type"], first["msg"]
    if kind == "value_error":
        what = message.removeprefix("Value error, ")
    elif kind == "literal_error":
        what = "is " + show(first.get("input")) + "; expected " + message.removeprefix("Input should be ")
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        what = "must be " + message.removeprefix("Input should be ")
    else:
        what = _WANT.get(kind, message[:1].lower() + message[1:])
    if kind not in ("missing", "missing_keyword_only_argument", "missing_positional_argument", "literal_error",
                    "extra_forbidden", "unexpected_keyword_argument") and not what.startswith("is ") and first["loc"]:
        what += f", got {show(first.get('input'))}"
    return field_path(first["loc"], data), what


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


def read_json(path: str | Path, model: Any, *, what: str, schemas: Sequence[str], hint: str,
              error: type[FFNetDeployError] = ConfigError, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file the tool wrote and validate it into ``model`` (module docstring).

    Args:
        path: The file.
        model: A pydantic model or dataclass type (or a :class:`~pydantic.TypeAdapter`).
        what: What the file is, for the message and its prefix (``"bench result"``).
        schemas: The schema IDs accepted (:func:`readable_ids`).
        hint: What to do, appended to every message (``"regenerate it with 'ffnet-deploy bench'"``).
        error: The error type raised.
        max_bytes: The size cap.

    Returns:
        The validated object.

    Raises:
        FFNetDeployError: ``error``, one line naming the file and, for a wrong value, the field.
    """
    path = Path(path)
    raw = read_bounded(path, what, max_bytes, error)
    data = parse_json(raw, path, what, hint, error)
    check_schema(data, path, what, schemas, hint, error)
    return validate(raw, data, model, path, what, hint, error)


def parse_json(raw: bytes, path: Path, what: str, hint: str, error: type[FFNetDeployError] = ConfigError) -> Any:
    """``raw`` decoded as strict UTF-8 JSON, or ``error`` in one line."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} | {path} is not UTF-8 text, so not a {what} file; {hint}") from None
    except RecursionError:
        raise error(f"{what} | {path} is not valid JSON (nested too deeply); {hint}") from None
    except ValueError as err:
        raise error(f"{what} | {path} is not valid JSON ({first_line(err, repr(err))}); "
                    f"{hint}") from None


def check_schema(data: Any, path: Path, what: str, schemas: Sequence[str], hint: str,
                 error: type[FFNetDeployError] = ConfigError) -> None:
    """Refuse decoded JSON that is not an object whose ``schema`` is one of ``schemas``."""
    if not isinstance(data, dict):
        raise error(f"{what} | {path} must hold a JSON object, got {kind_of(data)}; {hint}")
    found = data.get("schema")
    if found not in schemas:
        got = "no schema key" if "schema" not in data else f"schema {show(found)}"
        raise error(f"{what} | {path} is not an ffnet-deploy {what} ({got}; this version reads "
                    f"{', '.join(schemas)}); {hint}")


def validate(raw: bytes | str, data: Any, model: Any, path: Path | str, what: str, hint: str,
             error: type[FFNetDeployError] = ConfigError) -> Any:
    """Validate the JSON text ``raw`` (decoded as ``data``, for the field path of a message) into ``model``."""
    adapter = model if isinstance(model, TypeAdapter) else _adapter(model)
    try:
        return adapter.validate_json(raw, strict=True, context={READING: True})
    except ValidationError as err:
        raise error(field_error(err, data, path, what, hint)) from None


def validate_python(data: Any, model: Any, path: Path | str, what: str, hint: str,
                    error: type[FFNetDeployError] = ConfigError) -> Any:
    """Like :func:`validate`, for values that are already Python objects (a TOML table, a CSV row)."""
    adapter = model if isinstance(model, TypeAdapter) else _adapter(model)
    try:
        return adapter.validate_python(data, strict=True, context={READING: True})
    except ValidationError as err:
        raise error(field_error(err, data, path, what, hint)) from None


def field_error(err: ValidationError, data: Any, path: Path | str, what: str, hint: str) -> str:
    """The one line of a failed validation: ``<what> | <path>: field '<field>' <problem>; <hint>``."""
    where, problem = describe(err, data)
    target = f"field {where!r} " if where else ""
    return f"{what} | {path}: {target}{problem}; {hint}"


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _adapter(model: Any) -> TypeAdapter:
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    return adapter

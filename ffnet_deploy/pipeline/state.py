"""What a pipeline has done, so that ``--resume`` reruns only the stages whose inputs changed.

Each finished stage is recorded in ``<output>/.pipeline/state.json`` under its key (``inspect``, ``reparameterize``,
``export:onnx-int8``, ``validate:onnx-int8``, ``bench``) with the sha256 of its inputs and what it produced. The file
is rewritten atomically after every stage, so a crash or Ctrl-C loses at most the stage that was running; that stage
itself publishes nothing half-written (exports are built in a temporary folder and renamed into place).

A stage is reused when its recorded input hash equals the new one *and* its outputs are still there; anything else
runs it again. The file is read through its typed model (:func:`ffnet_deploy.pipeline.results.read_state`): a state
that is not one, or a stage record whose outputs a later stage could not use, is one line before any work is done.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ffnet_deploy.atomic import write_text
from ffnet_deploy.pipeline.results import SCHEMA, STATE_SCHEMA, read_state
from ffnet_deploy.schemas import dumps

__all__ = ["SCHEMA", "STATE_DIR", "STATE_SCHEMA", "PipelineState", "data_fingerprint", "input_hash"]

STATE_DIR = ".pipeline"


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


class PipelineState:
    """The stage records of one output folder."""

    def __init__(self, output: Path) -> None:
        self.path = output / STATE_DIR / "state.json"
        self.stages: dict[str, dict] = {}
        if self.path.exists() or self.path.is_symlink():
            self.stages = {key: record.to_dict() for key, record in read_state(self.path).stages.items()}

    def reusable(self, key: str, inputs: str) -> dict | None:
        """The record of ``key`` when it ran with the same ``inputs``; ``None`` when it must run."""
        record = self.stages.get(key)
        return record if record is not None and record.get("inputs") == inputs else None

    def record(self, key: str, inputs: str, outputs: dict | None = None) -> None:
        """Mark ``key`` done with ``inputs`` and save the state file at once."""
        self.stages[key] = {"inputs": inputs, "outputs": outputs or {},
                            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.save()

    def forget(self, key: str) -> None:
        if self.stages.pop(key, None) is not None:
            self.save()

    def save(self) -> None:
        write_text(self.path, dumps({"schema": STATE_SCHEMA, "stages": self.stages}), "pipeline state")

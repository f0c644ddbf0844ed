"""What a pipeline wrote into its output folder, so that ``--force`` removes exactly that (issue 18, case 2).

``<output>/.pipeline/written.json`` records every file the pipeline (or ``report merge``) wrote, by its path relative
to the output and its sha256, and every artifact directory it published, by its path and the sha256 of its
``manifest.json``. ``--force`` removes a recorded file only while it still holds the recorded bytes, and a recorded
artifact directory only while its manifest is the recorded one and it holds nothing its manifest does not list (the
rule export's ``--force`` applies, :func:`~ffnet_deploy.artifact.workdir.artifact_refusal`). Whatever else is in the
folder is kept: a user's own files, a file changed since it was written, an input of the run (a checkpoint kept in
the output folder), and everything an earlier version wrote before it kept this record. A symbolic link anywhere on
a recorded path is refused before anything is removed.

The record is only written by a process that holds the output's lock (:func:`ffnet_deploy.pipeline.engine.
output_lock`), so its read-modify-write cannot race another writer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from ffnet_deploy.atomic import write_text
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.pipeline.results import Inside
from ffnet_deploy.pipeline.state import STATE_DIR
from ffnet_deploy.schemas import FileModel, read_json, readable_ids, schema_id

__all__ = ["LEDGER_NAME", "WRITTEN_SCHEMA", "Ledger", "WrittenFiles", "remove_recorded"]

WRITTEN_SCHEMA = schema_id("pipeline-written", 1)
LEDGER_NAME = "written.json"
_HINT = "delete it to keep every file (--force then removes nothing it cannot show it wrote)"


class WrittenFiles(FileModel):
    """``.pipeline/written.json``: relative path -> sha256 of each file, and of each artifact's manifest."""

    schema_: str = Field(WRITTEN_SCHEMA, alias="schema")
    files: dict[Inside, str] = {}
    artifacts: dict[Inside, str] = {}


def _sha256(path: Path) -> str:
    from ffnet_deploy.hashing import sha256_file

    return sha256_file(path)


class Ledger:
    """The written-files record of one output folder; each change is saved at once (atomically)."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path = self.output / STATE_DIR / LEDGER_NAME
        self.data = WrittenFiles()
        if self.path.exists() or self.path.is_symlink():
            self.data = read_json(self.path, WrittenFiles, what="pipeline written files",
                                  schemas=readable_ids("pipeline-written"), hint=_HINT)

    def _rel(self, path: Path) -> str:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.output)).as_posix()

    def file(self, path: Path, sha256: str | None = None, text: str | None = None) -> None:
        """Record the file ``path`` (its hash: given, of ``text`` as written, or read from the file)."""
        if text is not None:
            sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.data.files[self._rel(path)] = sha256 or _sha256(path)
        self.save()

    def artifact(self, directory: Path) -> None:
        """Record the artifact directory ``directory`` (by the hash of its manifest)."""
        from ffnet_deploy.artifact.manifest import MANIFEST_NAME

        self.data.artifacts[self._rel(directory)] = _sha256(Path(directory) / MANIFEST_NAME)
        self.save()

    def published(self) -> list[str]:
        """The recorded artifact directories that are there now."""
        return [rel for rel in self.data.artifacts if (self.output / rel).is_dir()]

    def save(self) -> None:
        write_text(self.path, self.data.to_json(), "pipeline")

    def reset(self) -> None:
        """Forget every record (after ``--force`` removed what it could)."""
        self.data = WrittenFiles()
        self.save()


def _link_on_the_way(output: Path, rel: str) -> Path | None:
    """The first symbolic link on ``output/rel`` below ``output`` (the path itself included), if any."""
    node = output
    for part in Path(rel).parts:
        node = node / part
        if node.is_symlink():
            return node
    return None


def _holds_input(path: Path, inputs: Iterable[Path]) -> bool:
    target = path.resolve()
    return any(src == target or src.is_relative_to(target) for src in inputs)


def remove_recorded(output: Path, inputs: Iterable[Path], names: Iterable[str]) -> list[str]:
    """``--force``: remove what the pipeline recorded in ``output`` and still holds what it wrote; see the module
    docstring. Checks everything first, so that a refusal removes nothing.

    Args:
        output: The pipeline's output folder.
        inputs: Files the run reads (the checkpoint, data folders): never removed, nor a folder holding one.
        names: The top-level names a pipeline writes (:data:`ffnet_deploy.pipeline.engine.WRITTEN`).

    Returns:
        The files left in those names that were not removed (relative paths), for a note.

    Raises:
        ConfigError: A symbolic link on a recorded path or at one of ``names``, or an unreadable record.
    """
    from ffnet_deploy.artifact.workdir import artifact_refusal

    output = Path(os.path.abspath(output))
    ledger = Ledger(output)
    inputs = [Path(os.path.abspath(p)).resolve() for p in inputs]
    for rel in (*names, *ledger.data.files, *ledger.data.artifacts):
        link = _link_on_the_way(output, rel)
        if link is not None:
            raise ConfigError(f"pipeline | {link} is a symbolic link; --force removes only what the pipeline wrote "
                              f"into {output} and follows no link out of it: replace the link with a folder, or "
                              "choose a new --output")
    files = [output / rel for rel, sha in ledger.data.files.items()
             if (output / rel).is_file() and not _holds_input(output / rel, inputs) and _sha256(output / rel) == sha]
    folders = [output / rel for rel, sha in ledger.data.artifacts.items()
               if (output / rel / "manifest.json").is_file() and not _holds_input(output / rel, inputs)
               and _sha256(output / rel / "manifest.json") == sha and artifact_refusal(output / rel) is None]
    for path in files:
        path.unlink(missing_ok=True)
    for folder in folders:
        shutil.rmtree(folder)
    # the folders a pipeline makes go too when nothing is left in them; the lock and the state stay in .pipeline
    for name in names:
        top = output / name
        if top.is_dir() and not top.is_symlink():
            for sub in sorted((p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
                _rmdir_if_empty(sub)
            if name != STATE_DIR:
                _rmdir_if_empty(top)
    ledger.reset()
    kept = []
    for name in names:
        top = output / name
        found = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        kept += [p.relative_to(output).as_posix() for p in found if p.parent != output / STATE_DIR]
    return kept


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # not empty: something the pipeline did not record is in it

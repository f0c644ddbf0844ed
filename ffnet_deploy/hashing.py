"""Content hashes of files and directory packages (checkpoints, artifacts, manifests)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a directory (``.mlpackage``) as its sorted relative paths and file contents."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + b"\0" + bytes.fromhex(sha256_file(p)))
    return h.hexdigest()

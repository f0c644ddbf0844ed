"""Every install hint names an extra that exists: ``pip install 'ffnet-deploy[X]'`` must work for each X we print.

The extras are read from ``pyproject.toml``. Hints are found three ways, so that neither a literal string nor a
message built at run time escapes: ``ffnet-deploy[X]`` text anywhere in the tree (sources, tests, docs), the
``require(module, extra)`` calls, the ``requires = ((module, extra), ...)`` declarations of runners and the
``Extra(name, modules)`` declarations of formats (read from the source with ``ast``), and the registered classes'
``requires`` (an exporter's is its format's extra).
"""

from __future__ import annotations

import ast
import functools
import os
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
SCANNED_SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".rst"}
SKIPPED_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", "shared", "results"}
HINT = re.compile(r"ffnet-deploy\[([^\]]*)\]")


def extras() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["project"]["optional-dependencies"])


@functools.lru_cache(maxsize=1)
def source_files() -> tuple[Path, ...]:
    """The scanned files, in sorted order; the skipped folders are not entered (a fresh clone's ``.venv`` alone holds
    some 100 000 files)."""
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder, name)
            # This file spells the pattern itself in its docs.
            if path.suffix in SCANNED_SUFFIXES and path != Path(__file__).resolve() and path.is_file():
                files.append(path)
    return tuple(sorted(files))


@functools.lru_cache(maxsize=1)
def literal_hints() -> tuple[tuple[str, str], ...]:
    """(``file:line``, extra) for every ``ffnet-deploy[...]`` in the tree; templates like ``{extra}`` are skipped."""
    found = []
    for path in source_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in HINT.finditer(line):
                for extra in match.group(1).split(","):
                    if "{" not in extra:
                        found.append((f"{path.relative_to(ROOT)}:{lineno}", extra.strip()))
    return tuple(found)


@functools.lru_cache(maxsize=1)
def declared_extras() -> tuple[tuple[str, str], ...]:
    """(``file:line``, extra) from ``require(module, "extra", ...)`` calls, ``Extra("extra", ...)`` declarations
    and ``requires = (...)`` tuples."""
    found = []
    for path in source_files():
        if path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require":
                if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(
                        node.args[1].value, str):
                    found.append((where, node.args[1].value))
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Extra":
                name = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    found.append((where, name.value))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if not any(isinstance(t, ast.Name) and t.id == "requires" for t in targets):
                    continue
                if isinstance(node.value, ast.Tuple):
                    for pair in node.value.elts:
                        if isinstance(pair, ast.Tuple) and len(pair.elts) == 2:
                            extra = pair.elts[1]
                            if isinstance(extra, ast.Constant) and isinstance(extra.value, str):
                                found.append((where, extra.value))
    return tuple(found)


def test_the_scan_finds_hints():
    """Guard against a scan that silently finds nothing (a moved tree, a changed pattern)."""
    literal = {extra for _, extra in literal_hints()}
    declared = {extra for _, extra in declared_extras()}
    assert {"coreml", "tensorrt"} <= literal
    assert {"openvino", "coreml", "tensorrt", "executorch", "litert"} <= declared
    assert {"openvino", "coreml", "tensorrt", "peers", "dev", "all"} <= extras()


def test_every_literal_hint_names_a_real_extra():
    known = extras()
    wrong = [f"{where}: ffnet-deploy[{extra}]" for where, extra in literal_hints() if extra not in known]
    assert not wrong, f"install hints naming extras that pyproject.toml does not define ({sorted(known)}): {wrong}"


def test_every_declared_requirement_names_a_real_extra():
    known = extras()
    wrong = [f"{where}: {extra!r}" for where, extra in declared_extras() if extra not in known]
    assert not wrong, f"require()/requires name extras that pyproject.toml does not define ({sorted(known)}): {wrong}"


def test_registered_runners_and_exporters_name_real_extras():
    """The same check on the live classes, which also covers ``requires`` built in ways the ast scan cannot read."""
    from ffnet_deploy.exporters import EXPORTERS
    from ffnet_deploy.exporters import load_all as load_exporters
    from ffnet_deploy.runtimes import RUNTIMES
    from ffnet_deploy.runtimes import load_all as load_runtimes

    load_exporters()
    load_runtimes()
    known = extras()
    classes = [RUNTIMES.get(n) for n in RUNTIMES.names()] + [EXPORTERS.get(n) for n in EXPORTERS.names()]
    wrong = [f"{cls.__name__}: {extra!r}" for cls in classes for _module, extra in cls.requires if extra not in known]
    assert not wrong, f"requires name extras that pyproject.toml does not define: {wrong}"

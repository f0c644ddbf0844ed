"""No module of the package imports another that imports it back, at module level or inside a function.

The graph is read from the source with ``ast`` (nothing is imported). An edge ``a -> b`` is an import statement in
``a`` naming module ``b`` (``from pkg import name`` names ``pkg.name`` when that is a module, else ``pkg``). Parent
packages that Python initialises on the way are not edges: a package ``__init__`` that re-exports its modules is the
one place allowed to import downwards, and modules must import each other by their full module path.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source folder of each installed package (package-dir in pyproject.toml).
PACKAGE_DIRS = {"ffnet_deploy": ROOT / "ffnet_deploy", "ffnet_deploy.exporters": ROOT / "exporters",
                "ffnet_deploy.runtimes": ROOT / "runtimes", "ffnet_deploy.benchmarks": ROOT / "benchmarks"}


def package_modules() -> dict[str, Path]:
    """Every module of the installed package tree, by dotted name."""
    modules: dict[str, Path] = {}
    for prefix, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            modules[name] = path
    return modules


def import_edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.append(sub if sub in modules else module)
        edges |= {t for t in targets if t in modules and t != name}
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first repeated at the end), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_walker_sees_the_whole_tree():
    modules = package_modules()
    for expected in ("ffnet_deploy.models.ffnet", "ffnet_deploy.models.reparam", "ffnet_deploy.artifact.manifest",
                     "ffnet_deploy.validate.engine", "ffnet_deploy.exporters.onnx", "ffnet_deploy.runtimes.base",
                     "ffnet_deploy.cli", "ffnet_deploy.cli._main", "ffnet_deploy.cli.export"):
        assert expected in modules
    edges = import_edges("ffnet_deploy.cli._main", modules["ffnet_deploy.cli._main"], modules)
    assert "ffnet_deploy.errors" in edges
    # the package __init__ re-exports from its modules (the one downward import allowed)
    assert {"ffnet_deploy.cli._main", "ffnet_deploy.cli.registry"} <= import_edges(
        "ffnet_deploy.cli", modules["ffnet_deploy.cli"], modules)


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_has_no_import_cycle():
    modules = package_modules()
    graph = {name: import_edges(name, path, modules) for name, path in modules.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The house, bottom to top. A module may import its own floor and those below it, never one above: the base knows no
# model, a model no artifact, an artifact no runner, and so on up to the CLI. A package __init__ belongs to the floor
# of its modules.
LAYERS = (
    ("base", ("errors", "registry", "atomic", "hashing", "cache", "environment", "inputs", "interrupts", "progress",
              "native_stderr", "_version", "schemas")),
    ("reporting", ("reporting",)),
    ("models and data", ("models", "data")),
    ("artifact", ("artifact",)),
    ("runtimes", ("runtimes",)),
    ("validate and quantize", ("validate", "quantize")),
    ("exporters", ("exporters",)),
    ("export", ("export", "demo", "checkpoints", "sensitivity")),
    ("bench", ("benchmarks",)),
    ("pipeline", ("pipeline",)),
    ("cli", ("cli", "__main__", "")),  # the cli package (one module per command) is the top floor
)


def layer_of(module: str) -> int:
    """The floor of ``ffnet_deploy.<room>...`` (``""`` is the package ``__init__``, which re-exports from above)."""
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else ""
    for index, (_, rooms) in enumerate(LAYERS):
        if room in rooms:
            return index
    raise AssertionError(f"{module} is on no floor of LAYERS; add its room to the house plan")


def test_no_import_runs_up_the_layers():
    modules = package_modules()
    upward = []
    for name, path in modules.items():
        for target in import_edges(name, path, modules):
            if layer_of(target) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports running up the layers:\n" + "\n".join(sorted(upward))


def test_no_product_module_imports_a_study():
    """The studies (``studies/``) are not installed: product code that imported one would break in every wheel."""
    offenders = []
    for name, path in package_modules().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{name} imports {n}" for n in names if n == "studies" or n.startswith("studies.")]
    assert not offenders, "\n".join(offenders)


def test_layer_rule_catches_an_upward_import():
    assert layer_of("ffnet_deploy.models.ffnet") < layer_of("ffnet_deploy.validate.metrics")
    assert layer_of("ffnet_deploy.errors") == 0 and layer_of("ffnet_deploy.cli") == len(LAYERS) - 1
    assert layer_of("ffnet_deploy.cli.bench") == layer_of("ffnet_deploy.cli") > layer_of("ffnet_deploy.pipeline.engine")
    assert layer_of("ffnet_deploy.reporting.console") < layer_of("ffnet_deploy.models.ffnet")

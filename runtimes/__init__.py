"""Inference runners, one module per engine, all implementing :class:`~ffnet_deploy.runtimes.base.BaseRunner`.

Importing a runner module never imports its engine; engines load in ``_activate`` so that a missing optional
backend becomes a clear error only when that runtime is used.

Constructor options (every runner also takes ``threads``, ``session_options``, ``manifest`` and ``name``; see
:class:`~ffnet_deploy.runtimes.base.BaseRunner`):

- ``torch``: ``model``, ``variant``, ``trust``, ``resolution``, ``device``, ``extra_outputs``
- ``onnxruntime``: ``providers``, ``graph_optimization_level``, ``extra_outputs``
- ``openvino``: ``device``, ``inference_precision``, ``extra_outputs``
- ``tensorrt``: ``device``
- ``coreml``: ``compute_units``
- ``coreml-reference``: ``compute_fp32``, ``observer``
- ``executorch``: none of its own (``threads`` sizes XNNPACK's process-wide pool)
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from ffnet_deploy.runtimes.base import RUNTIMES, BaseRunner, register_runtime


def load_all() -> None:
    """Import every module of this folder (private ``_x`` modules aside), so that each runner registers itself:
    adding a runtime is adding its module (and its test), nothing else."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def builtin_modules() -> tuple[str, ...]:
    """The modules of this folder that register a runner."""
    load_all()
    prefix = f"{__name__}."
    return tuple(sorted({cls.__module__[len(prefix):] for cls in RUNTIMES.values()
                         if cls.__module__.startswith(prefix)}))


def __getattr__(name: str) -> Any:
    # RUNNER_MODULES is found, not listed: the modules of this folder that register a runner.
    if name == "RUNNER_MODULES":
        return builtin_modules()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_runner(name: str, artifact: str | Path | None = None, **options: Any) -> BaseRunner:
    """Build the runner registered as ``name`` for ``artifact`` (a model file or an artifact directory).

    Args:
        name: Registered runtime name (``"onnxruntime"``, ``"openvino"``, ``"torch"``, ...).
        artifact: What the runner executes; see :class:`~ffnet_deploy.runtimes.base.BaseRunner`.
        **options: The runner's keyword options, e.g. ``threads=2``.

    Raises:
        ConfigError: For an unknown runtime name (the message lists the known ones) or an invalid option.
    """
    load_all()
    return RUNTIMES.get(name)(artifact, **options)


__all__ = ["RUNTIMES", "RUNNER_MODULES", "BaseRunner", "builtin_modules", "create_runner", "load_all",
           "register_runtime"]

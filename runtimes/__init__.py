"""Inference runners, one module per engine, all implementing :class:`~ffnet_deploy.runtimes.base.BaseRunner`.

Importing a runner module never imports its engine; engines load in ``_activate`` so that a missing optional
backend becomes a clear error only when that runtime is used.
"""

from __future__ import annotations

import importlib

from ffnet_deploy.runtimes.base import RUNTIMES, BaseRunner, TensorMeta, create_runner, register_runtime

# Adding a runtime means adding its module here, plus its test.
RUNNER_MODULES = ("pytorch", "onnxruntime", "openvino", "tensorrt", "coreml", "coreml_reference")


def load_all() -> None:
    """Import every runner module so that each registers itself."""
    for module in RUNNER_MODULES:
        importlib.import_module(f"ffnet_deploy.runtimes.{module}")


__all__ = ["RUNTIMES", "RUNNER_MODULES", "BaseRunner", "TensorMeta", "create_runner", "load_all", "register_runtime"]

"""Exporters, one module per deployment format, all subclasses of :class:`~ffnet_deploy.exporters.base.Exporter`.

Importing an exporter module never imports its backend (coremltools, openvino, tensorrt); backends load inside
``export`` so that a missing optional package becomes a clear error only when that format is asked for.
"""

from __future__ import annotations

import importlib

from ffnet_deploy.exporters.base import EXPORTERS, ExportConfig, ExportedArtifact, Exporter, register_exporter

# Adding a format means adding its module here, plus its test (tests/exporters/test_<format>.py).
EXPORTER_MODULES = ("onnx", "openvino", "coreml", "tensorrt")


def load_all() -> None:
    """Import every exporter module so that each registers itself."""
    for module in EXPORTER_MODULES:
        importlib.import_module(f"ffnet_deploy.exporters.{module}")


def get_exporter(name: str) -> Exporter:
    """An instance of the exporter registered as ``name``.

    Raises:
        ConfigError: For an unknown format; the message lists the valid ones.
    """
    load_all()
    return EXPORTERS.get(name)()


def format_names() -> list[str]:
    """Every registered export format, sorted."""
    load_all()
    return EXPORTERS.names()


__all__ = [
    "EXPORTERS",
    "EXPORTER_MODULES",
    "ExportConfig",
    "ExportedArtifact",
    "Exporter",
    "format_names",
    "get_exporter",
    "load_all",
    "register_exporter",
]

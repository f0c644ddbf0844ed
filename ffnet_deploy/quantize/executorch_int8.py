"""INT8 for ExecuTorch's XNNPACK delegate: PT2E post-training quantization with the XNNPACK quantizer.

The recipe is XNNPACK's own (``XNNPACKQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=True)``):
symmetric int8 weights per output channel (min/max observers), int8 activations per tensor, with static ranges that
histogram observers choose (an L2-error search over each activation's histogram, which clips outliers). Those are the
types XNNPACK's int8 kernels take (``qcint8`` weights, ``qint8`` activations), so the whole graph lowers to the
delegate. The steps: ``torch.export`` the float model, ``prepare_pt2e`` (observers), run the calibration images through
it, ``convert_pt2e`` (Q/DQ nodes), then the exporter exports and lowers the result like an FP32 model.

The observers' states are the statistics the calibration cache keeps (:func:`observer_states`,
:func:`load_observer_states`): the min/max of every observer and the histogram of every histogram observer. A cache hit
restores them and skips running the calibration images; the quantization parameters are the calibration run's. (The
histogram is what ``convert_pt2e`` searches the range in: without it, the search finds nothing to clip, returns the
plain min/max, and takes a second per observer to walk its whole step range.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ffnet_deploy.progress import NULL, Progress
from ffnet_deploy.quantize.calibration import CALIBRATING

METHOD = "minmax"
"""The ``--calib-method`` this recipe takes: the default only (XNNPACK's configuration fixes the observers)."""

REVISION = "histograms"
"""What the cache key records of this module's statistics layout: entries written before the histograms were kept
(``min``/``max`` only) are another key, hence recalibrated, not restored without them."""


def prepare(model: Any, example: tuple, dynamic_shapes: Any = None) -> Any:
    """The float ``model`` exported and prepared for calibration (observers inserted)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    graph = torch.export.export(model, example, dynamic_shapes=dynamic_shapes).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return prepare_pt2e(graph, quantizer)


def observers(prepared: Any) -> dict[str, Any]:
    """The observer modules of a prepared model, by module name (each has ``min_val`` and ``max_val``)."""
    return {name: module for name, module in prepared.named_modules()
            if hasattr(module, "min_val") and hasattr(module, "max_val")}


def calibrate(prepared: Any, batches: Iterable[np.ndarray], total: int, progress: Progress = NULL) -> None:
    """Run the calibration ``batches`` (normalized float32 arrays) through the observers, reporting
    ``step(images done, total, "calibrating")`` after each."""
    import torch

    done = 0
    with torch.no_grad():
        for batch in batches:
            prepared(torch.from_numpy(np.ascontiguousarray(batch)))
            done += batch.shape[0]
            progress.step(min(done, total), total, CALIBRATING)


def observer_states(prepared: Any) -> dict[str, Any]:
    """The calibrated states, as the cache stores them (``PT2EStatistics``): each observer's min/max, and the
    histogram of a histogram observer."""
    out = {}
    for name, obs in sorted(observers(prepared).items()):
        lo, hi = obs.min_val.detach().float(), obs.max_val.detach().float()
        out[name] = {"min": lo.flatten().tolist(), "max": hi.flatten().tolist(), "shape": list(lo.shape)}
        histogram = _histogram(obs)
        if histogram is not None:
            out[name]["histogram"] = histogram.detach().float().tolist()
    return {"observers": out}


def _histogram(observer: Any) -> Any:
    """The histogram buffer of a histogram observer; ``None`` for the others."""
    import torch

    found = getattr(observer, "histogram", None)
    return found if isinstance(found, torch.Tensor) else None


def load_observer_states(prepared: Any, statistics: dict[str, Any]) -> None:
    """Put cached ranges back into the observers of a freshly prepared model.

    Raises:
        ValueError: When the observers are not the ones the statistics were collected on (another graph), or a
            histogram is missing or has another number of bins.
    """
    import torch

    stored = statistics["observers"]
    live = observers(prepared)
    if set(stored) != set(live):
        raise ValueError(f"{len(stored)} cached observers, {len(live)} in the model")
    for name, obs in live.items():
        state = stored[name]
        shape = tuple(state["shape"])
        lo = torch.tensor(state["min"], dtype=obs.min_val.dtype).reshape(shape)
        hi = torch.tensor(state["max"], dtype=obs.max_val.dtype).reshape(shape)
        histogram = _histogram(obs)
        if histogram is not None:
            cached = state.get("histogram")
            if cached is None or len(cached) != histogram.numel():
                raise ValueError(f"observer {name}: {histogram.numel()} histogram bins, "
                                 f"{'none' if cached is None else len(cached)} cached")
            obs.histogram = torch.tensor(cached, dtype=histogram.dtype)
        obs.min_val, obs.max_val = lo, hi  # registered buffers: assignment replaces them


def convert(prepared: Any) -> Any:
    """The calibrated model with its Q/DQ nodes (``convert_pt2e``)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return convert_pt2e(prepared)

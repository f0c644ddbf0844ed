"""The native Core ML runner: ``coremltools.models.MLModel.predict``, which needs macOS.

On Linux use the ``coreml-reference`` runner, which interprets the same ``.mlpackage`` in numpy.
Image inputs take float pixel arrays (N, C, H, W) in 0-255; each batch item becomes a PIL image because Core ML
image features are single images.

``threads`` is accepted for a uniform interface but does not apply: Core ML schedules the work itself across the CPU,
GPU and Neural Engine (choose with ``compute_units``) and offers no thread count; the runner records that in
``notices``. Core ML has no options object to hand to a hook, so ``session_options`` is refused.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.coreml_spec import image_channels, input_specs, is_image_feature, output_names
from ffnet_deploy.artifact.manifest import Manifest, TensorSpec
from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes.base import BaseRunner, SessionOptionsHook, register_runtime

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


@register_runtime("coreml")
class CoreMLRunner(BaseRunner):
    """Runs a Core ML model with Apple's Core ML framework.

    Args:
        artifact: ``model.mlpackage`` or an artifact directory.
        compute_units: ``"ALL"`` (default), ``"CPU_ONLY"``, ``"CPU_AND_GPU"`` or ``"CPU_AND_NE"``.
        threads: Accepted, but Core ML offers no thread count (recorded in ``notices``).
        session_options: Not supported; passing one is a ConfigError.
        manifest: The artifact's manifest, if already read.
        name: Display name.
    """

    requires = (("coremltools", "coreml"),)
    model_suffixes = (".mlpackage", ".mlmodel")
    formats = ("coreml",)
    timing_variants = ("ALL", "CPU_AND_NE", "CPU_ONLY")  # compute units bench times; ALL is the pipeline's

    @classmethod
    def precision_unavailable(cls, precision: str) -> str | None:
        if precision == "bf16":
            return "Core ML has no bf16"
        return super().precision_unavailable(precision)

    @classmethod
    def bench_options(cls, precision: str, variant: str | None = None) -> dict[str, Any]:
        return {"compute_units": variant or "ALL"}

    def __init__(self, artifact: str | Path | None, *, compute_units: str = "ALL", threads: int | None = None,
                 session_options: SessionOptionsHook | None = None, manifest: Manifest | None = None,
                 name: str | None = None) -> None:
        super().__init__(artifact, threads=threads, session_options=session_options, manifest=manifest, name=name)
        if compute_units not in COMPUTE_UNITS:
            raise ConfigError(f"{self.name} | compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}")
        self._threads_do_not_apply("Core ML schedules CPU, GPU and Neural Engine work itself")
        self.compute_units = compute_units
        self.model_path: Path | None = None
        self.model: Any = None
        self._spec: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if platform.system() != "Darwin":
            return "needs macOS for Core ML prediction (use the coreml-reference runner elsewhere)"
        return super().unavailable_reason()

    def _activate(self) -> None:
        ct = self._import_required("coremltools")
        if platform.system() != "Darwin":
            raise RuntimeBackendError(
                f"{self.name} | Core ML prediction needs macOS, this is {platform.system()}; "
                "use the coreml-reference runner to check the program on Linux"
            )
        self.model_path = self._model_file()
        try:
            units = getattr(ct.ComputeUnit, self.compute_units)
            self.model = ct.models.MLModel(str(self.model_path), compute_units=units)
        except Exception as err:  # coremltools raises bare Exceptions
            raise RuntimeBackendError(f"{self.name} | cannot load {self.model_path}: {err}") from err
        self._spec = self.model.get_spec()

    def _input_metadata(self) -> list[TensorSpec]:
        return input_specs(self._spec, self.name)

    def _output_names(self) -> list[str]:
        return output_names(self._spec)

    def _item_feed(self, feed: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        from PIL import Image

        item: dict[str, Any] = {}
        for feature in self._spec.description.input:
            x = feed[feature.name][i : i + 1]
            if is_image_feature(feature):
                pixels = np.clip(np.rint(x[0]), 0, 255).astype(np.uint8)
                if image_channels(feature) == 1:
                    item[feature.name] = Image.fromarray(pixels[0], mode="L")
                else:
                    item[feature.name] = Image.fromarray(np.transpose(pixels, (1, 2, 0)), mode="RGB")
            else:
                item[feature.name] = x
        return item

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        batch = next(iter(feed.values())).shape[0]
        results: dict[str, list[np.ndarray]] = {name: [] for name in self._output_names()}
        for i in range(batch):
            try:
                out = self.model.predict(self._item_feed(feed, i))
            except Exception as err:  # coremltools raises bare Exceptions
                raise RuntimeBackendError(f"{self.name} | prediction failed: {err}") from err
            for name in results:
                value = out[name]
                if isinstance(value, dict):  # classifier probabilities: label -> probability
                    value = np.array([value[k] for k in sorted(value)], dtype=np.float32)[None]
                results[name].append(np.asarray(value))
        return {name: np.concatenate(vals) if vals[0].ndim else np.stack(vals) for name, vals in results.items()}

    def _deactivate(self) -> None:
        self.model = None

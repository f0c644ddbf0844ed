"""The LiteRT runner: a ``.tflite`` model through ``ai_edge_litert``'s interpreter, XNNPACK applied on the CPU.

``Interpreter(model_path=..., num_threads=N)``, ``allocate_tensors()``, then ``set_tensor`` / ``invoke`` /
``get_tensor``. The model has a fixed input shape, which :meth:`LiteRTRunner.input_metadata` reports. The runner takes
the normalized float32 image like every other: a full-integer model's int8 input is quantized here with the model's
own ``(scale, zero_point)`` and its int8 logits dequantized, exactly as an app does.

On Linux this runs the XNNPACK delegate a phone's CPU runs, on x86 kernels: it proves that the model loads, delegates
and computes what the PyTorch model computes, and bench times it, but those timings are **host measurements**, not
device latency (every bench row of this runner says so, :attr:`LiteRTRunner.latency_note`). Phone latency comes from
LiteRT's ``benchmark_model`` and is imported with ``report add`` (README, Android).

A file that is not a LiteRT model is refused by its bytes before LiteRT sees it, and a damaged one by LiteRT's
FlatBuffer verifier, both in one line (:func:`ffnet_deploy.artifact.tflite.open_interpreter`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ffnet_deploy.artifact.manifest import TensorSpec
from ffnet_deploy.errors import RuntimeBackendError, first_line
from ffnet_deploy.runtimes._xnnpack import XnnpackHostRunner
from ffnet_deploy.runtimes.base import register_runtime

_INTEGER = (np.int8, np.uint8, np.int16)


@register_runtime("litert")
class LiteRTRunner(XnnpackHostRunner):
    """Runs a LiteRT model (``model.tflite``) with ``ai_edge_litert``'s interpreter and its default XNNPACK delegate.

    Args:
        artifact: ``model.tflite`` or an artifact directory.
        threads: Threads of the interpreter (and XNNPACK's pool); ``None`` keeps LiteRT's default.
        session_options: Not supported (the interpreter takes its options as constructor arguments).
        manifest: The artifact's manifest, if already read.
        name: Display name.
    """

    requires = (("ai_edge_litert.interpreter", "litert"),)
    model_suffixes = (".tflite",)
    formats = ("litert",)
    latency_note: ClassVar[str | None] = (
        "host measurement: LiteRT's XNNPACK on this CPU, not device latency (time it on the phone)")

    def _activate(self) -> None:
        from ffnet_deploy.artifact.tflite import open_interpreter

        self._interpreter = open_interpreter(self._model_file(), self.name, threads=self.threads)
        (self._input,) = self._interpreter.get_input_details()
        self._outputs = list(self._interpreter.get_output_details())

    def _deactivate(self) -> None:
        self._interpreter: Any = None
        self._input: dict | None = None
        self._outputs: list[dict] = []

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        (array,) = feed.values()
        spec = self._input
        if spec["dtype"] in _INTEGER:  # a full-integer model: quantize the image as an app does
            scale, zero = spec["quantization"]
            info = np.iinfo(spec["dtype"])
            array = np.clip(np.round(array / scale) + zero, info.min, info.max).astype(spec["dtype"])
        try:
            self._interpreter.set_tensor(spec["index"], np.ascontiguousarray(array))
            self._interpreter.invoke()
            outs = [self._interpreter.get_tensor(d["index"]) for d in self._outputs]
        except (ValueError, RuntimeError) as err:  # a shape or type the model does not take
            raise RuntimeBackendError(f"{self.name} | invoke failed: {first_line(err)}") from err
        result = {}
        for name, d, out in zip(self._output_names(), self._outputs, outs, strict=True):
            if d["dtype"] in _INTEGER:
                scale, zero = d["quantization"]
                out = ((out.astype(np.float32) - zero) * scale).astype(np.float32)
            result[name] = out
        return result

    def _input_metadata(self) -> list[TensorSpec]:
        # The runner's feed is the float image whatever the model stores (it quantizes an int8 input itself).
        return [TensorSpec(self._input_name(0), tuple(int(d) for d in self._input["shape"]), "float32", "tensor")]

    def _output_count(self) -> int:
        return len(self._outputs)

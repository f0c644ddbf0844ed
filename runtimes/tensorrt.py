"""The TensorRT runner (TensorRT 10 name-based tensor API, NVIDIA GPU only).

It deserializes a ``model.engine`` built by ``build_engine.sh`` (or ``trtexec``) and runs it with
``execute_async_v3``. Device memory is held in torch CUDA tensors, so no extra CUDA binding package is needed.
An engine is tied to the GPU and TensorRT version that built it; this runner cannot run on a CPU-only machine.

``threads`` is accepted for a uniform interface but does not apply: the network runs on the GPU (the runner records
that in ``notices``). TensorRT has no options object before deserialization, so ``session_options`` is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.manifest import Manifest, TensorSpec
from ffnet_deploy.errors import RuntimeBackendError
from ffnet_deploy.runtimes.base import BaseRunner, SessionOptionsHook, register_runtime


@register_runtime("tensorrt")
class TensorRTRunner(BaseRunner):
    """Runs a serialized TensorRT engine on a CUDA GPU.

    Args:
        artifact: ``model.engine`` or an artifact directory holding one.
        device: CUDA device index.
        threads: Accepted, but does not apply to GPU execution (recorded in ``notices``).
        session_options: Not supported; passing one is a ConfigError.
        manifest: The artifact's manifest, if already read.
        name: Display name.
    """

    requires = (("tensorrt", "tensorrt"),)
    model_suffixes = (".engine", ".plan")
    formats = ("tensorrt",)

    @classmethod
    def precision_unavailable(cls, precision: str) -> str | None:
        if precision == "bf16":
            return "bench builds TensorRT engines in fp32, fp16 or int8"
        return super().precision_unavailable(precision)

    def __init__(self, artifact: str | Path | None, *, device: int = 0, threads: int | None = None,
                 session_options: SessionOptionsHook | None = None, manifest: Manifest | None = None,
                 name: str | None = None) -> None:
        super().__init__(artifact, threads=threads, session_options=session_options, manifest=manifest, name=name)
        self._threads_do_not_apply("TensorRT executes the network on the GPU")
        self.device = device
        self.engine_path: Path | None = None
        self.engine: Any = None
        self.context: Any = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[str] = []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = super().unavailable_reason()
        if missing:
            return f"{missing} (and an NVIDIA GPU)"
        try:
            import torch

            if not torch.cuda.is_available():
                return "needs a CUDA GPU (torch.cuda.is_available() is False)"
        except ImportError:
            return "needs torch with CUDA for device buffers"
        return None

    def _activate(self) -> None:
        trt = self._import_required("tensorrt")
        import torch

        if not torch.cuda.is_available():
            raise RuntimeBackendError(f"{self.name} | needs a CUDA GPU; torch.cuda.is_available() is False")
        self.engine_path = self._model_file()
        self._torch = torch
        self._trt = trt
        torch.cuda.set_device(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeBackendError(
                f"{self.name} | cannot deserialize {self.engine_path}; engines only load with the TensorRT version "
                "and GPU that built them: rebuild it with build_engine.sh"
            )
        self.context = self.engine.create_execution_context()
        self._inputs, self._outputs = [], []
        for i in range(self.engine.num_io_tensors):
            tname = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT:
                shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(tname))
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(tname)))
                self._inputs.append(TensorSpec(tname, shape, dtype))
            else:
                self._outputs.append(tname)

    def _input_metadata(self) -> list[TensorSpec]:
        return list(self._inputs)

    def _output_names(self) -> list[str]:
        return list(self._outputs)

    def _torch_dtype(self, dtype: np.dtype) -> Any:
        return self._torch.from_numpy(np.zeros(0, dtype)).dtype

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        torch, trt = self._torch, self._trt
        keep = []  # device tensors must outlive execute_async_v3
        for meta in self._inputs:
            tensor = torch.from_numpy(feed[meta.name]).cuda(self.device)
            keep.append(tensor)
            if not self.context.set_input_shape(meta.name, tuple(tensor.shape)):
                raise RuntimeBackendError(
                    f"{self.name} | input {meta.name!r} shape {tuple(tensor.shape)} is outside the engine's "
                    "optimization profile; rebuild the engine with a wider --minShapes/--maxShapes range"
                )
            self.context.set_tensor_address(meta.name, tensor.data_ptr())
        outputs = {}
        for tname in self._outputs:
            shape = tuple(self.context.get_tensor_shape(tname))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(tname)))
            out = torch.empty(shape, dtype=self._torch_dtype(dtype), device=f"cuda:{self.device}")
            self.context.set_tensor_address(tname, out.data_ptr())
            outputs[tname] = out
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeBackendError(f"{self.name} | execute_async_v3 failed for {self.engine_path}")
        stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outputs.items()}

    def _deactivate(self) -> None:
        self.context = None
        self.engine = None
        self._runtime = None

"""The ExecuTorch runner: a ``.pte`` program through ``executorch.runtime`` (the XNNPACK delegate on the CPU).

``Runtime.get().load_program(path)``, then ``load_method("forward")`` and ``execute([tensor])``. The program has a
fixed input shape, which :meth:`ExecuTorchRunner.input_metadata` reports from the method's metadata.

On Linux this runs the same delegate an Android phone runs, on x86 kernels: it proves that the program loads and
computes what the PyTorch model computes, and bench times it, but those timings are **host measurements**, not
device latency (XNNPACK's x86 and Arm kernels differ, and so do the cores): every bench row of this runner says so
(:attr:`ExecuTorchRunner.latency_note`). Phone latency is imported with ``report add`` (README, Android).

``threads`` sizes XNNPACK's thread pool, which is one per process in ExecuTorch (the last runner activated sets it).
ExecuTorch's C++ side prints CPU-detection lines on stderr when it first loads a program; they are dropped, and
whatever else it printed goes into the error message when loading fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ffnet_deploy.artifact.manifest import TensorSpec
from ffnet_deploy.errors import RuntimeBackendError
from ffnet_deploy.native_stderr import captured_stderr
from ffnet_deploy.runtimes._xnnpack import XnnpackHostRunner
from ffnet_deploy.runtimes.base import register_runtime

# ExecuTorch ScalarType codes (c10's numbering) of the dtypes an FFNet program takes.
_DTYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32"}
_NOISE = ("cpuinfo_utils.cpp",)


@register_runtime("executorch")
class ExecuTorchRunner(XnnpackHostRunner):
    """Runs an ExecuTorch program (``model.pte``) with ``executorch.runtime``.

    Args:
        artifact: ``model.pte`` or an artifact directory.
        threads: Threads of XNNPACK's (process-wide) pool; ``None`` keeps ExecuTorch's default.
        session_options: Not supported (the Python runtime has no options object).
        manifest: The artifact's manifest, if already read.
        name: Display name.
    """

    requires = (("executorch.runtime", "executorch"),)
    model_suffixes = (".pte",)
    formats = ("executorch",)
    latency_note: ClassVar[str | None] = (
        "host measurement: ExecuTorch's XNNPACK on this CPU, not device latency (time it on the phone)")

    def _activate(self) -> None:
        self._import_required("executorch.runtime")
        from executorch.runtime import Runtime

        from ffnet_deploy.artifact.pte import looks_like_pte

        path = self._model_file()
        if not looks_like_pte(path):
            raise RuntimeBackendError(f"{self.name} | {path} is not an ExecuTorch program (.pte); re-export it with "
                                      "'ffnet-deploy export --format executorch'")
        with captured_stderr(_NOISE) as said:
            try:
                if self.threads is not None:
                    from executorch.extension.pybindings import portable_lib

                    portable_lib._unsafe_reset_threadpool(self.threads)
                self._program = Runtime.get().load_program(path)
                self._meta = self._program.metadata("forward")
                self._method = self._program.load_method("forward")
                error = None
            except Exception as err:  # the bindings raise RuntimeError with an error code
                error = err
        if error is not None:
            self._program = self._method = None
            why = "; ".join(said[-2:]) or str(error)
            raise RuntimeBackendError(f"{self.name} | cannot load {path}: {why}; re-export it with "
                                      "'ffnet-deploy export --format executorch'") from error

    def _deactivate(self) -> None:
        self._program: Any = None
        self._method: Any = None
        self._meta: Any = None

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        import torch

        (array,) = feed.values()
        try:
            outputs = self._method.execute([torch.from_numpy(array)])
        except Exception as err:  # RuntimeError with ExecuTorch's error code
            raise RuntimeBackendError(f"{self.name} | execute failed: {err}") from err
        return {name: out.numpy() for name, out in zip(self._output_names(), outputs, strict=False)}

    def _input_metadata(self) -> list[TensorSpec]:
        specs = []
        for i in range(self._meta.num_inputs()):
            info = self._meta.input_tensor_meta(i)
            dtype = _DTYPES.get(int(info.dtype()), "float32")
            specs.append(TensorSpec(self._input_name(i), tuple(int(d) for d in info.sizes()), dtype, "tensor"))
        return specs

    def _output_count(self) -> int:
        return self._meta.num_outputs()

"""The ONNX Runtime runner (CPU execution provider by default).

``extra_outputs`` lists intermediate tensor names (e.g. the manifest's ``block_outputs`` values) to return next to
the model outputs: they are appended to the graph outputs of an in-memory copy of the model before the session is
created, which is how ``validate --localize`` reads per-block tensors.

``threads`` sets ``intra_op_num_threads`` (and ``inter_op_num_threads`` to 1: the default sequential execution
runs one node at a time, so the threads of one inference are the intra-op pool). ONNX Runtime's worker threads
spin-wait after each run by default, which is fastest for one session run back to back but steals the cores from
anything that runs next; a benchmark that interleaves contenders turns spinning off with :func:`no_spinning`::

    create_runner("onnxruntime", path, threads=2, session_options=no_spinning)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.manifest import Manifest, TensorSpec
from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes.base import BaseRunner, SessionOptionsHook, register_runtime


def no_spinning(options: Any) -> None:
    """``session_options`` hook (or a call on any ``SessionOptions``): worker threads sleep between runs instead of
    spin-waiting, so they do not steal the cores from whatever runs next."""
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")


# ONNX Runtime reports element types as strings.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

_OPT_LEVELS = ("disabled", "basic", "extended", "all")


def _affinity_threads() -> int | None:
    """The CPUs this process may use where that is fewer than the machine has, else ``None`` (ONNX Runtime's own
    default). Measured on one CPU of two of an AMD EPYC (the demo model, batch 1): 0.335 ms a call with the default
    pool of 2 threads, 0.266 ms with 1."""
    from ffnet_deploy.environment import usable_cpus

    cpus = usable_cpus()
    return cpus if cpus < (os.cpu_count() or cpus) else None


@register_runtime("onnxruntime")
class OnnxRuntimeRunner(BaseRunner):
    """Runs an ONNX model with ONNX Runtime.

    Args:
        artifact: ``model.onnx`` or an artifact directory.
        providers: Execution providers in priority order; default ``["CPUExecutionProvider"]``.
        graph_optimization_level: ``"disabled"``, ``"basic"``, ``"extended"`` or ``"all"`` (default).
        extra_outputs: Intermediate tensor names to return as additional outputs.
        threads: CPU threads of one inference (``intra_op_num_threads``; inter-op threads are set to 1); ``None``
            lets ONNX Runtime choose, except in a process kept to some of the machine's CPUs (``taskset``, a
            container's cpuset), where it is the number of those CPUs: ONNX Runtime sizes its default pool by the
            machine's cores, and more spinning threads than CPUs slow every call.
        session_options: Called with the ``onnxruntime.SessionOptions`` before the session is created.
        manifest: The artifact's manifest, if already read.
        name: Display name.
    """

    model_suffixes = (".onnx",)
    formats = ("onnx", "tensorrt")  # ONNX artifacts, and a TensorRT folder's TensorRT-ready graph
    converts_onnx = True  # an in-memory model runs from its plain ONNX export as is
    localize = "blocks"

    @classmethod
    def precision_unavailable(cls, precision: str) -> str | None:
        if precision == "bf16":
            return "ONNX Runtime's CPU provider has no bf16 convolution kernels; use openvino for bf16 on a CPU"
        return super().precision_unavailable(precision)

    @classmethod
    def bench_options(cls, precision: str, variant: str | None = None) -> dict[str, Any]:
        # Workers that spin after a call slow whatever runs next (benchmarks.suite); bench tells them not to.
        return {"session_options": no_spinning}
    session_options_kind = "onnxruntime.SessionOptions"

    def __init__(self, artifact: str | Path | None, *, providers: Sequence[str] | None = None,
                 graph_optimization_level: str = "all", extra_outputs: Sequence[str] = (),
                 threads: int | None = None, session_options: SessionOptionsHook | None = None,
                 manifest: Manifest | None = None, name: str | None = None) -> None:
        super().__init__(artifact, threads=threads, session_options=session_options, manifest=manifest, name=name)
        if graph_optimization_level not in _OPT_LEVELS:
            raise ConfigError(
                f"{self.name} | graph_optimization_level must be one of {_OPT_LEVELS}, got {graph_optimization_level!r}"
            )
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.graph_optimization_level = graph_optimization_level
        self.extra_outputs = list(extra_outputs)
        self.model_path: Path | None = None
        self.session: Any = None

    def _activate(self) -> None:
        import onnxruntime as ort

        self.model_path = self._model_file()
        options = ort.SessionOptions()
        threads = self.threads if self.threads is not None else _affinity_threads()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        self._call_session_options(options)
        source: str | bytes = str(self.model_path)
        if self.extra_outputs:
            source = self._with_extra_outputs()
        unknown = [p for p in self.providers if p not in ort.get_available_providers()]
        if unknown:
            raise RuntimeBackendError(
                f"{self.name} | execution providers {unknown} are not available; "
                f"this onnxruntime build has {ort.get_available_providers()}"
            )
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=self.providers)
        except Exception as err:  # ORT raises its own non-exported exception types
            raise RuntimeBackendError(f"{self.name} | cannot load {self.model_path}: {err}") from err

    def _with_extra_outputs(self) -> bytes:
        """The model with ``extra_outputs`` appended to its graph outputs, serialized."""
        import onnx

        model = onnx.load(str(self.model_path))
        produced = {out for node in model.graph.node for out in node.output}
        produced |= {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
        missing = [n for n in self.extra_outputs if n not in produced]
        if missing:
            raise RuntimeBackendError(
                f"{self.name} | extra outputs {missing} are not tensors of {self.model_path}; "
                "use names from the manifest's block_outputs or the graph"
            )
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            known = {vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.output)}
        except Exception:  # shape inference is a nicety; outputs without shapes still work
            known = {}
        existing = {o.name for o in model.graph.output}
        for tensor in self.extra_outputs:
            if tensor in existing:
                continue
            info = onnx.ValueInfoProto()
            if tensor in known:
                info.CopyFrom(known[tensor])
            else:
                info = onnx.helper.make_empty_tensor_value_info(tensor)
            model.graph.output.append(info)
        return model.SerializeToString()

    def _input_metadata(self) -> list[TensorSpec]:
        specs = []
        for node in self.session.get_inputs():
            shape = tuple(d if isinstance(d, int) else None for d in node.shape)
            if node.type not in _ORT_DTYPES:
                raise RuntimeBackendError(f"{self.name} | input {node.name!r} has unsupported type {node.type}")
            specs.append(TensorSpec(node.name, shape, _ORT_DTYPES[node.type]))
        return specs

    def _output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        names = self._output_names()
        try:
            values = self.session.run(names, feed)
        except Exception as err:  # ORT raises its own non-exported exception types
            raise RuntimeBackendError(f"{self.name} | inference failed: {err}") from err
        return dict(zip(names, values, strict=True))

    def _deactivate(self) -> None:
        self.session = None

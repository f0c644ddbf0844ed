"""The OpenVINO runner (CPU by default).

The inference precision is always set explicitly: on CPUs with AMX or AVX512-BF16, OpenVINO's CPU plugin defaults
to bf16 execution, which would make an "fp32" parity check silently compare bf16 numbers. ``inference_precision``
defaults to ``"f32"``; ``"bf16"`` and ``"f16"`` select the reduced-precision paths on purpose.

``threads`` sets ``inference_num_threads``. The ``session_options`` hook receives the config dict (property name ->
value) that is passed to ``Core.compile_model``, after the runner has put its own entries in it; it may add, change
or remove entries in place, e.g. ``lambda config: config.update({"NUM_STREAMS": "1"})``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.manifest import Manifest, TensorSpec
from ffnet_deploy.environment import has_bf16
from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.interrupts import signal_stack_kept
from ffnet_deploy.runtimes.base import BaseRunner, SessionOptionsHook, register_runtime

PRECISIONS = ("f32", "bf16", "f16")


@register_runtime("openvino")
class OpenVINORunner(BaseRunner):
    """Runs an OpenVINO IR (``model.xml`` + ``model.bin``) or an ONNX file with OpenVINO.

    Args:
        artifact: ``model.xml``, ``model.onnx`` or an artifact directory.
        device: OpenVINO device name, ``"CPU"`` by default.
        inference_precision: ``"f32"`` (default), ``"bf16"`` or ``"f16"``, passed as the inference precision hint.
        extra_outputs: Intermediate tensor names to return as additional outputs (``model.add_outputs``).
        threads: CPU threads of one inference (``inference_num_threads``); ``None`` lets OpenVINO choose.
        session_options: Called with the config dict passed to ``compile_model``; it may edit it in place.
        manifest: The artifact's manifest, if already read.
        name: Display name.
    """

    requires = (("openvino", "openvino"),)
    model_suffixes = (".xml", ".onnx")
    formats = ("openvino", "onnx")
    executes = ("bf16",)  # the fp32 IR executed in bf16 (inference precision hint), where the CPU has it
    converts_onnx = True  # an in-memory model runs from the IR converted from its plain ONNX export
    localize = "blocks"

    INFERENCE_HINT = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}
    """Inference precision hint bench sets per precision. fp16 means fp16 *weights* (the IR); on a CPU its arithmetic
    is f32 unless the CPU has fp16 units, and int8 runs int8 kernels with f32 for the layers NNCF kept in float, so
    the numbers compare with fp32 on the same footing. bf16 is the fp32 IR executed in bf16. Others: f32."""

    @classmethod
    def precision_unavailable(cls, precision: str) -> str | None:
        if precision == "bf16" and not has_bf16():
            return "this CPU has no bf16 arithmetic (AVX512-BF16 or AMX)"
        return super().precision_unavailable(precision)

    @classmethod
    def bench_options(cls, precision: str, variant: str | None = None) -> dict[str, Any]:
        return {"inference_precision": cls.INFERENCE_HINT.get(precision, "f32")}

    @classmethod
    def model_from_onnx(cls, onnx: Path) -> Path:
        import openvino as ov

        xml = onnx.with_suffix(".xml")
        if not xml.exists():
            ov.save_model(ov.convert_model(str(onnx)), str(xml), compress_to_fp16=False)
        return xml
    session_options_kind = "dict of compile_model properties"

    def __init__(self, artifact: str | Path | None, *, device: str = "CPU", inference_precision: str = "f32",
                 extra_outputs: Sequence[str] = (), threads: int | None = None,
                 session_options: SessionOptionsHook | None = None, manifest: Manifest | None = None,
                 name: str | None = None) -> None:
        super().__init__(artifact, threads=threads, session_options=session_options, manifest=manifest, name=name)
        if inference_precision not in PRECISIONS:
            raise ConfigError(
                f"{self.name} | inference_precision must be one of {PRECISIONS}, got {inference_precision!r}"
            )
        self.device = device
        self.inference_precision = inference_precision
        self.extra_outputs = list(extra_outputs)
        self.model_path: Path | None = None
        self.compiled: Any = None
        self._request: Any = None
        self._out_names: list[str] = []

    def _activate(self) -> None:
        # OpenVINO's CPU plugin swaps the signal stack of the thread that loads it, until its Core is freed (see there)
        with signal_stack_kept():
            self._load()

    def _load(self) -> None:
        ov = self._import_required("openvino")
        import openvino.properties as props
        import openvino.properties.hint as hints

        self.model_path = self._model_file()
        core = ov.Core()
        if self.device not in core.available_devices:
            raise RuntimeBackendError(
                f"{self.name} | device {self.device!r} is not available; this machine has {core.available_devices}"
            )
        try:
            model = core.read_model(str(self.model_path))
        except Exception as err:  # OpenVINO raises RuntimeError subclasses without a public base
            raise RuntimeBackendError(f"{self.name} | cannot read {self.model_path}: {err}") from err
        n_model_outputs = len(model.outputs)
        if self.extra_outputs:
            known = {name for op in model.get_ops() for out in op.outputs() for name in out.get_names()}
            missing = [n for n in self.extra_outputs if n not in known]
            if missing:
                raise RuntimeBackendError(
                    f"{self.name} | extra outputs {missing} are not tensors of {self.model_path}; "
                    "use names from the manifest's block_outputs"
                )
            model.add_outputs(list(self.extra_outputs))
        precision = {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}[self.inference_precision]
        config: dict[str, Any] = {hints.inference_precision(): precision}
        if self.threads is not None:
            config[props.inference_num_threads()] = self.threads
        self._call_session_options(config)
        try:
            self.compiled = core.compile_model(model, self.device, config)
        except Exception as err:  # OpenVINO raises RuntimeError subclasses without a public base
            raise RuntimeBackendError(
                f"{self.name} | cannot compile {self.model_path} for {self.device} "
                f"with inference precision {self.inference_precision}: {err}"
            ) from err
        self._request = self.compiled.create_infer_request()
        names = []
        for i, port in enumerate(self.compiled.outputs):
            if i >= n_model_outputs:
                # An added output may carry several tensor names; report it under the name that was asked for.
                names.append(self.extra_outputs[i - n_model_outputs])
            else:
                names.append(port.get_any_name() if port.get_names() else f"output_{i}")
        self._out_names = names

    def actual_inference_precision(self) -> str:
        """The inference precision the compiled model reports (``"f32"``, ``"bf16"``), to prove what actually runs."""
        self._require_active()
        import openvino.properties.hint as hints

        value = self.compiled.get_property(hints.inference_precision())
        return value.to_string() if hasattr(value, "to_string") else str(value).lower()

    def _input_metadata(self) -> list[TensorSpec]:
        specs = []
        for i, port in enumerate(self.compiled.inputs):
            shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
            name = port.get_any_name() if port.get_names() else f"input_{i}"
            specs.append(TensorSpec(name, shape, port.get_element_type().to_dtype()))
        return specs

    def _output_names(self) -> list[str]:
        return list(self._out_names)

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        inputs = {i: feed[meta.name] for i, meta in enumerate(self._input_metadata())}
        try:
            self._request.infer(inputs)
        except Exception as err:  # OpenVINO raises RuntimeError subclasses without a public base
            raise RuntimeBackendError(f"{self.name} | inference failed: {err}") from err
        return {
            name: self._request.get_output_tensor(i).data.copy() for i, name in enumerate(self._out_names)
        }

    def _deactivate(self) -> None:
        self._request = None
        self.compiled = None

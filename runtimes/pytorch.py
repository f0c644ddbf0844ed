"""The PyTorch eager runner: the reference every other runtime is compared against.

It runs an in-memory ``nn.Module`` (``create_runner("torch", None, model=m)``) or loads an FFNet checkpoint with
:func:`~ffnet_deploy.models.checkpoint.load_ffnet` (``create_runner("torch", "ffnet_1.pth.tar")``). The input is
``images`` (N, 3, H, W) float32 and the output ``logits``. ``extra_outputs`` names submodules (``"patch_embed"``,
``"stages.1.0"``) whose outputs are returned as well, which is what ``validate --localize`` compares block by block.

``threads`` is applied with ``torch.set_num_threads`` around each inference and the previous value restored after,
because torch's thread count is process-wide and the runner must not change it for the rest of the program. Eager
PyTorch has no session options object, so the ``session_options`` hook is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.artifact.manifest import Manifest, TensorSpec
from ffnet_deploy.artifact.precisions import get_precision
from ffnet_deploy.environment import has_bf16
from ffnet_deploy.errors import ConfigError, RuntimeBackendError
from ffnet_deploy.runtimes.base import BaseRunner, SessionOptionsHook, register_runtime

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


@register_runtime("torch")
class TorchRunner(BaseRunner):
    """Eager PyTorch on CPU (or any torch device).

    Args:
        artifact: A checkpoint file (:func:`~ffnet_deploy.models.checkpoint.load_ffnet`); ``None`` with ``model``.
        model: An ``nn.Module`` to run as is (it is switched to eval mode, not copied).
        variant: Variant name for the checkpoint; detected when omitted.
        trust: Allow arbitrary pickles in the checkpoint (``--trust-checkpoint``).
        resolution: Input height and width the runner accepts; defaults to ``model.cfg.resolution``. ``0`` accepts
            any spatial size.
        device: Torch device string.
        extra_outputs: Dotted submodule paths whose forward outputs are returned next to ``logits``.
        threads: CPU threads of one inference (``torch.set_num_threads`` while it runs); ``None`` keeps torch's.
        session_options: Not supported (eager PyTorch has nothing to configure); passing one is a ConfigError.
        manifest: Not used by this runner (checkpoints have no manifest); accepted for a uniform interface.
        name: Display name.
    """

    needs_artifact = False  # an in-memory model= needs no file
    executes = ("bf16",)  # a bf16 copy of the model (bench_model), where the CPU has bf16 arithmetic

    @classmethod
    def precision_unavailable(cls, precision: str) -> str | None:
        if precision == "bf16":
            return None if has_bf16() else "this CPU has no bf16 arithmetic (AVX512-BF16 or AMX)"
        if not get_precision(precision).baseline:
            return f"eager PyTorch on CPU has no {precision} inference path here; bench onnxruntime or openvino"
        return None

    @classmethod
    def bench_model(cls, model: Any, precision: str) -> Any:
        return bf16_module(model) if precision == "bf16" else model

    def __init__(self, artifact: str | Path | None = None, *, model: Any = None, variant: str | None = None,
                 trust: bool = False, resolution: int | None = None, device: str = "cpu",
                 extra_outputs: Sequence[str] = (), threads: int | None = None,
                 session_options: SessionOptionsHook | None = None, manifest: Manifest | None = None,
                 name: str | None = None) -> None:
        who = name or self.runtime_name
        if artifact is None and model is None:
            raise ConfigError(f"{who} | needs a checkpoint path or model=<nn.Module>; got neither")
        if artifact is not None and model is not None:
            raise ConfigError(f"{who} | pass either a checkpoint path or model=, not both")
        super().__init__(artifact, threads=threads, session_options=session_options, manifest=manifest, name=name)
        self._given_model = model
        self._variant = variant
        self._trust = trust
        self._resolution = resolution
        self._device = device
        self._extra_outputs = list(extra_outputs)
        self.model: Any = None
        self._captured: dict[str, Any] = {}
        self._hooks: list[Any] = []

    def _activate(self) -> None:
        import torch

        if self._given_model is not None:
            model = self._given_model
        else:
            from ffnet_deploy.models.checkpoint import load_ffnet

            model = load_ffnet(self.artifact, self._variant, trust=self._trust)
        self.model = model.eval().to(self._device)
        modules = dict(self.model.named_modules())
        for path in self._extra_outputs:
            if path not in modules:
                raise RuntimeBackendError(
                    f"{self.name} | extra output {path!r} is not a submodule of {type(model).__name__}; "
                    "use dotted paths such as 'patch_embed' or 'stages.1.0'"
                )
            self._hooks.append(modules[path].register_forward_hook(self._capture(path)))
        self._torch = torch

    def _capture(self, path: str):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            self._captured[path] = output.detach()

        return hook

    def _input_metadata(self) -> list[TensorSpec]:
        res = self._resolution
        if res is None:
            cfg = getattr(self.model, "cfg", None)
            res = getattr(cfg, "resolution", 0)
        hw = (res, res) if res else (None, None)
        return [TensorSpec(INPUT_NAME, (None, 3, *hw), "float32", "tensor")]

    def _output_names(self) -> list[str]:
        return [OUTPUT_NAME, *self._extra_outputs]

    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        torch = self._torch
        self._captured.clear()
        previous = torch.get_num_threads() if self.threads is not None else None
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                x = torch.from_numpy(feed[INPUT_NAME]).to(self._device)
                logits = self.model(x)
        finally:
            if previous is not None:
                torch.set_num_threads(previous)
        out = {OUTPUT_NAME: logits.float().cpu().numpy()}
        for path in self._extra_outputs:
            out[path] = self._captured[path].float().cpu().numpy()
        return out

    def _deactivate(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._captured.clear()
        self.model = None


def bf16_module(model: Any) -> Any:
    """A bf16 copy of a float32 module (weights and activations) that takes and returns float32."""
    import copy

    import torch

    inner = copy.deepcopy(model).to(torch.bfloat16).eval()

    class Bf16(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.to(torch.bfloat16)).float()

    return Bf16()

"""What the two XNNPACK host runners share: ExecuTorch's (``.pte``) and LiteRT's (``.tflite``).

Both run on this machine the delegate a phone's CPU runs, on a model with a fixed input shape, and name its tensors
the same way: the manifest's names when it lists them (as many outputs as the model has), else ``images`` (then
``input_1``, ...) and ``logits`` (then ``output_1``, ...). What each loads, how it runs it, and its capabilities
(``requires``, ``model_suffixes``, ``formats``, ``latency_note``) stay declared in its own module.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

from ffnet_deploy.artifact.manifest import Manifest
from ffnet_deploy.runtimes.base import BaseRunner, SessionOptionsHook


class XnnpackHostRunner(BaseRunner):
    """A runner of a phone format on the host's XNNPACK (module docstring); subclasses implement ``_activate``,
    ``_deactivate`` (which also sets the engine's state before the first activation), ``_infer``,
    ``_input_metadata`` (naming inputs with :meth:`_input_name`) and :meth:`_output_count`."""

    def __init__(self, artifact: str | Path | None, *, threads: int | None = None,
                 session_options: SessionOptionsHook | None = None, manifest: Manifest | None = None,
                 name: str | None = None) -> None:
        super().__init__(artifact, threads=threads, session_options=session_options, manifest=manifest, name=name)
        self._deactivate()  # the engine's state starts as a released engine leaves it

    @abstractmethod
    def _deactivate(self) -> None:
        """Drop the engine and what it was asked for; also called by the constructor to set them empty."""

    @abstractmethod
    def _output_count(self) -> int:
        """How many outputs the active model has."""

    def _input_name(self, index: int) -> str:
        """The name of input ``index``: the manifest's, else ``images`` for the first."""
        if self.manifest is not None and index < len(self.manifest.inputs):
            return self.manifest.inputs[index].name
        return "images" if index == 0 else f"input_{index}"

    def _output_names(self) -> list[str]:
        n = self._output_count()
        if self.manifest is not None and len(self.manifest.outputs) == n:
            return [o.name for o in self.manifest.outputs]
        return ["logits"] + [f"output_{i}" for i in range(1, n)]

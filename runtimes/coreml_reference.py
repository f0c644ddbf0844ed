"""The numpy reference interpreter for Core ML programs (work in progress: being written in the next commit)."""

from __future__ import annotations

from ffnet_deploy.runtimes.base import BaseRunner, register_runtime

from ffnet_deploy.errors import RuntimeBackendError


@register_runtime("coreml-reference")
class CoreMLReferenceRunner(BaseRunner):
    """Placeholder until the interpreter lands; refuses to run."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "the coreml-reference interpreter is not committed yet"

    def _activate(self) -> None:
        raise RuntimeBackendError(f"{self.name} | not implemented yet")

    def _infer(self, feed):
        raise RuntimeBackendError(f"{self.name} | not implemented yet")

    def _input_metadata(self):
        return []

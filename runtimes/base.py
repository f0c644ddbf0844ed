"""The runner protocol every inference engine implements.

Modelled on Polygraphy's ``BaseRunner``: the public methods :meth:`BaseRunner.activate`, :meth:`BaseRunner.infer`
and :meth:`BaseRunner.deactivate` check state and inputs, then call the subclass's ``_activate`` / ``_infer`` /
``_deactivate``. A subclass holds only what is specific to its engine. Runners are context managers::

    with create_runner("onnxruntime", "model.onnx") as runner:
        logits = runner.infer({"images": x})["logits"]
        print(runner.last_latency_ms)

Runners register themselves by name with :func:`register_runtime`; :func:`create_runner` builds one by name.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffnet_deploy.errors import RuntimeBackendError
from ffnet_deploy.registry import Registry


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape and dtype of one model input or output.

    ``shape`` entries are ints for fixed dimensions and ``None`` for dynamic ones.
    """

    name: str  # tensor name in the artifact, e.g. "images"
    shape: tuple[int | None, ...]  # None marks a dynamic dimension
    dtype: np.dtype  # numpy dtype the runner expects

    def accepts(self, array: np.ndarray) -> bool:
        """Whether ``array`` has this rank and matches every fixed dimension."""
        if array.ndim != len(self.shape):
            return False
        return all(want is None or want == got for want, got in zip(self.shape, array.shape, strict=True))

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"({dims}) {np.dtype(self.dtype).name}"


Feed = Mapping[str, np.ndarray]


class BaseRunner(ABC):
    """Base class of all runners.

    Args:
        artifact: Path of the model file or directory the runner executes (``None`` for in-memory models).
        name: Display name; defaults to the registered runtime name.

    Subclasses implement ``_activate``, ``_infer``, ``_input_metadata`` and optionally ``_deactivate`` and
    ``_output_names``. They must not time themselves: :meth:`infer` records the latency of each ``_infer`` call.
    """

    runtime_name: str = "base"  # set by @register_runtime
    requires: tuple[tuple[str, str], ...] = ()  # (importable module, ffnet-deploy extra that installs it)

    def __init__(self, artifact: str | Path | None = None, *, name: str | None = None) -> None:
        self.artifact = Path(artifact) if artifact is not None else None
        self.name = name or self.runtime_name
        self.is_active = False
        self.last_latency_ms: float | None = None
        self.inference_times_ms: list[float] = []

    # -- public protocol ------------------------------------------------------------------------------------------

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """``None`` when this runtime can run on this machine, else one line saying what it needs.

        The default checks that every module in :attr:`requires` imports. Subclasses that also need hardware (a GPU,
        macOS) extend it.
        """
        import importlib

        for module, extra in cls.requires:
            try:
                importlib.import_module(module)
            except ImportError:
                return f"needs {module}: pip install 'ffnet-deploy[{extra}]'"
        return None

    def activate(self) -> BaseRunner:
        """Load the artifact and prepare the engine. Activating twice is an error."""
        if self.is_active:
            raise RuntimeBackendError(f"{self.name} | already active; call deactivate() first")
        if self.artifact is not None and not self.artifact.exists():
            raise RuntimeBackendError(f"{self.name} | artifact {self.artifact} does not exist")
        self._activate()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        """Release the engine. Deactivating an inactive runner is an error."""
        if not self.is_active:
            raise RuntimeBackendError(f"{self.name} | not active; call activate() first")
        try:
            self._deactivate()
        finally:
            self.is_active = False

    def input_metadata(self) -> dict[str, TensorMeta]:
        """Inputs of the active artifact, by name, in the artifact's order."""
        self._require_active()
        return {meta.name: meta for meta in self._input_metadata()}

    def output_names(self) -> list[str]:
        """Output names of the active artifact, in the artifact's order."""
        self._require_active()
        return self._output_names()

    def infer(self, feed: Feed | np.ndarray) -> dict[str, np.ndarray]:
        """Run one inference.

        Args:
            feed: Input arrays by name. A bare array is accepted when the artifact has exactly one input.

        Returns:
            Output arrays by name, as numpy arrays.

        Raises:
            RuntimeBackendError: If the runner is inactive, an input is missing or unexpected, or an input's shape
                does not match the artifact.
        """
        self._require_active()
        meta = self.input_metadata()
        if isinstance(feed, np.ndarray):
            if len(meta) != 1:
                raise RuntimeBackendError(f"{self.name} | artifact has inputs {list(meta)}; pass a dict by name")
            feed = {next(iter(meta)): feed}
        missing = [n for n in meta if n not in feed]
        extra = [n for n in feed if n not in meta]
        if missing or extra:
            raise RuntimeBackendError(
                f"{self.name} | inputs mismatch: missing {missing}, unexpected {extra}; the artifact takes {list(meta)}"
            )
        prepared = {}
        for name, m in meta.items():
            array = np.asarray(feed[name])
            if not m.accepts(array):
                raise RuntimeBackendError(
                    f"{self.name} | input {name!r} expects {m.describe()}, got {tuple(array.shape)}"
                )
            prepared[name] = np.ascontiguousarray(array, dtype=m.dtype)
        start = time.perf_counter()
        outputs = self._infer(prepared)
        self.last_latency_ms = (time.perf_counter() - start) * 1e3
        self.inference_times_ms.append(self.last_latency_ms)
        return {k: np.asarray(v) for k, v in outputs.items()}

    # -- context manager ------------------------------------------------------------------------------------------

    def __enter__(self) -> BaseRunner:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        if self.is_active:
            self.deactivate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(artifact={str(self.artifact)!r}, active={self.is_active})"

    # -- subclass hooks -------------------------------------------------------------------------------------------

    @abstractmethod
    def _activate(self) -> None:
        """Load the artifact."""

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Run the engine on validated, contiguous inputs of the right dtype."""

    @abstractmethod
    def _input_metadata(self) -> list[TensorMeta]:
        """Describe the inputs of the loaded artifact."""

    def _output_names(self) -> list[str]:
        """Output names; the default asks for them by running nothing and is meant to be overridden."""
        raise NotImplementedError(f"{type(self).__name__} does not report output names")

    def _deactivate(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Release the engine; the default drops nothing."""

    def _require_active(self) -> None:
        if not self.is_active:
            raise RuntimeBackendError(f"{self.name} | not active; use it as a context manager or call activate()")


def resolve_model_file(path: str | Path, suffixes: tuple[str, ...], component: str = "runtime") -> Path:
    """Turn an artifact directory or a model file into the model file a runner loads.

    A path whose suffix is one of ``suffixes`` is returned as is (``model.mlpackage`` is itself a directory). For an
    artifact directory, the manifest's ``artifact.path`` is used when its suffix fits, else the first
    ``model<suffix>`` found in the directory, in the order of ``suffixes``.

    Args:
        path: Model file, or artifact directory holding ``manifest.json``.
        suffixes: Accepted model file suffixes, most preferred first, e.g. ``(".engine", ".onnx")``.
        component: Who asks, for error messages.

    Raises:
        RuntimeBackendError: If no model file with an accepted suffix can be found.
    """
    import json

    path = Path(path)
    if path.suffix in suffixes:
        return path
    if not path.is_dir():
        raise RuntimeBackendError(
            f"{component} | expected a {'/'.join(suffixes)} file or an artifact directory, got {path}"
        )
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            rel = json.loads(manifest.read_text())["artifact"]["path"]
        except (ValueError, KeyError, TypeError) as err:
            raise RuntimeBackendError(f"{component} | {manifest} has no readable artifact.path ({err})") from err
        candidate = path / rel
        if candidate.suffix in suffixes and candidate.exists():
            return candidate
    for suffix in suffixes:
        candidate = path / f"model{suffix}"
        if candidate.exists():
            return candidate
    raise RuntimeBackendError(
        f"{component} | no model file ({', '.join('model' + s for s in suffixes)}) in {path}; "
        "pass the model file or an artifact directory written by 'ffnet-deploy export'"
    )


RUNTIMES: Registry[type[BaseRunner]] = Registry("runtime", name_attr="runtime_name")
register_runtime = RUNTIMES.register
"""Class decorator registering a :class:`BaseRunner` subclass under a name (stored as ``runtime_name``)."""


def create_runner(name: str, artifact: str | Path | None = None, **options: Any) -> BaseRunner:
    """Build the runner registered as ``name`` for ``artifact``.

    Raises:
        ConfigError: For an unknown runtime name; the message lists the known ones.
    """
    from ffnet_deploy.runtimes import load_all

    load_all()
    return RUNTIMES.get(name)(artifact, **options)

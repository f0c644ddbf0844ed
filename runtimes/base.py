"""The runner protocol every inference engine implements.

Modelled on Polygraphy's ``BaseRunner``: the public methods :meth:`BaseRunner.activate`, :meth:`BaseRunner.infer`
and :meth:`BaseRunner.deactivate` check state and inputs, then call the subclass's ``_activate`` / ``_infer`` /
``_deactivate``. A subclass holds only what is specific to its engine. Runners are context managers::

    from ffnet_deploy.runtimes import create_runner

    with create_runner("onnxruntime", "out/onnx", threads=2) as runner:
        logits = runner.infer({"images": x})["logits"]
        print(runner.last_latency_ms, runner.manifest.precision)

Options every runner takes (see :class:`BaseRunner`): ``threads`` (CPU threads of one inference) and
``session_options`` (a hook that receives the engine's native options object). An artifact directory is read once,
with :func:`~ffnet_deploy.artifact.manifest.read_manifest`, into :attr:`BaseRunner.manifest`; no runner parses JSON.

Runners register themselves by name with :func:`register_runtime`; ``ffnet_deploy.runtimes.create_runner`` builds
one by name. This module never imports the package ``__init__`` (which imports it), so there is no import cycle.

Capabilities, not names: a runner declares what it can do as class attributes and class methods, and validate, bench
and the pipeline ask it instead of listing runners: the formats and files it loads (``formats``,
``model_suffixes``), the execution-only precisions it can run an artifact in (``executes``, bf16) and why a
precision cannot run here (:meth:`BaseRunner.precision_unavailable`), the options bench builds it with per precision
and timing variant (:meth:`BaseRunner.bench_options`, ``timing_variants``: Core ML's compute units), whether it runs
an in-memory model (``needs_artifact = False``) or one converted from plain ONNX (``converts_onnx``), and which
error localization it supports (``localize``), and whether its timings here are host measurements rather than the
target device's latency (``latency_note``). A format names its runners (``FormatSpec.runtimes``, ``bench_runtime``
in :mod:`ffnet_deploy.artifact.formats`); each of them must list that format in ``formats`` (the contract test
checks).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ffnet_deploy.artifact.manifest import Manifest, TensorSpec, has_manifest, read_manifest
from ffnet_deploy.artifact.precisions import get_precision
from ffnet_deploy.environment import cap_threads
from ffnet_deploy.errors import ConfigError, RuntimeBackendError, require
from ffnet_deploy.registry import Registry

Feed = Mapping[str, np.ndarray]

SessionOptionsHook = Callable[[Any], object]
"""Called with the engine's native options object before the session or compiled model is created; it edits that
object in place and its return value is ignored."""


class BaseRunner(ABC):
    """Base class of all runners.

    Args:
        artifact: The model file, or the artifact directory written by ``ffnet-deploy export`` (its
            ``manifest.json`` is read into :attr:`manifest`). ``None`` only for runners with ``needs_artifact =
            False`` (in-memory models), or when ``manifest`` was read from a directory (that directory is used).
        threads: CPU threads one inference may use (intra-op parallelism); ``None`` keeps the engine's default.
            Runners that do not execute on the CPU accept it and record in :attr:`notices` that it does not apply.
        session_options: A hook called with the engine's native options object just before the engine is created,
            after the runner applied its own settings, so it can change anything the runner does not expose (e.g.
            ``lambda o: o.add_session_config_entry("session.intra_op.allow_spinning", "0")`` for ONNX Runtime).
            What it receives is :attr:`session_options_kind`; runners whose engine has no such object refuse it.
        manifest: The artifact's manifest, when the caller already read it; otherwise it is read from ``artifact``.
        name: Display name; defaults to the registered runtime name.

    Raises:
        ConfigError: If an artifact is needed and missing, an option is invalid, or the hook is not supported.
        ManifestError: If the artifact directory's ``manifest.json`` is broken (one line naming the field).

    Subclasses implement ``_activate``, ``_infer``, ``_input_metadata`` and optionally ``_deactivate`` and
    ``_output_names``. They must not time themselves: :meth:`infer` records the latency of each ``_infer`` call.
    """

    runtime_name: str = "base"  # set by @register_runtime
    requires: tuple[tuple[str, str], ...] = ()  # (importable module, ffnet-deploy extra that installs it)
    needs_artifact: ClassVar[bool] = True  # False for runners that can run an in-memory model
    model_suffixes: ClassVar[tuple[str, ...]] = ()  # model files the runner loads, most preferred first
    session_options_kind: ClassVar[str | None] = None  # what the session_options hook receives; None = unsupported
    # -- capabilities (module docstring) --
    formats: ClassVar[tuple[str, ...]] = ()  # artifact formats it loads
    executes: ClassVar[tuple[str, ...]] = ()  # execution-only precisions it runs an artifact in (bf16)
    timing_variants: ClassVar[tuple[str | None, ...]] = (None,)  # bench times each; the first is the default
    converts_onnx: ClassVar[bool] = False  # runs an in-memory model from its plain ONNX export (model_from_onnx)
    any_batch: ClassVar[bool] = False  # takes feeds larger than a fixed-batch artifact's batch (and runs them right)
    localize: ClassVar[str | None] = None  # error localization: "blocks" (extra_outputs), "mil-ops", None
    latency_note: ClassVar[str | None] = None  # set when its timings here are not the target device's (a phone
    # runtime on a Linux host): every bench row it times carries the note (BenchRow.host_measurement)

    def __init__(self, artifact: str | Path | None = None, *, threads: int | None = None,
                 session_options: SessionOptionsHook | None = None, manifest: Manifest | None = None,
                 name: str | None = None) -> None:
        self.name = name or self.runtime_name
        if artifact is None and self.needs_artifact and manifest is not None and manifest.directory is not None:
            artifact = manifest.directory
        if artifact is None and self.needs_artifact:
            files = " or ".join(f"a model{s} file" for s in self.model_suffixes) or "a model file"
            raise ConfigError(f"{self.name} | needs an artifact: {files}, or an artifact directory written by "
                              "'ffnet-deploy export'; got None")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"{self.name} | threads must be a positive int or None, got {threads!r}")
        threads, capped = cap_threads(threads, self.name)
        if session_options is not None:
            if not callable(session_options):
                raise ConfigError(f"{self.name} | session_options must be a callable that receives the engine's "
                                  f"options object, got {type(session_options).__name__}")
            if self.session_options_kind is None:
                raise ConfigError(f"{self.name} | session_options is not supported: this engine has no options "
                                  "object to configure")
        self.artifact = Path(artifact) if artifact is not None else None
        if manifest is None and self.artifact is not None and self.artifact.is_dir() and has_manifest(self.artifact):
            manifest = read_manifest(self.artifact)
        self.manifest: Manifest | None = manifest  # the artifact's typed manifest, None for a bare model file
        self.threads = threads
        self.session_options = session_options
        self.notices: list[str] = [capped] if capped else []  # options accepted but not taking effect, and why
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

    @classmethod
    def precision_unavailable(cls, precision: str) -> str | None:
        """``None`` when this runtime can run ``precision`` here, else one line saying why not.

        An artifact runner runs an artifact of any stored precision (the artifact is what it is) and an
        execution-only precision only when it lists it in :attr:`executes`; an in-memory runner runs the baseline
        precision and what it :attr:`executes`. Runners override this to say it in their own words, or to check
        the hardware (bf16 arithmetic).
        """
        p = get_precision(precision)
        if precision in cls.executes or (p.stored and (cls.needs_artifact or p.baseline)):
            return None
        return f"{cls.runtime_name} cannot execute {precision}"

    @classmethod
    def bench_options(cls, precision: str, variant: str | None = None) -> dict[str, Any]:
        """Constructor options bench builds this runner with to time ``precision`` (at timing ``variant``)."""
        return {}

    @classmethod
    def bench_model(cls, model: Any, precision: str) -> Any:
        """The in-memory model an in-memory runner (``needs_artifact = False``) times at ``precision``."""
        return model

    @classmethod
    def model_from_onnx(cls, onnx: Path) -> Path:
        """The model file this runner loads for an in-memory model exported to plain ONNX at ``onnx`` (only for
        runners with ``converts_onnx``); converted next to it, once."""
        return onnx

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

    def input_metadata(self) -> dict[str, TensorSpec]:
        """Inputs of the active artifact as the engine reports them, by name, in the artifact's order."""
        self._require_active()
        return {spec.name: spec for spec in self._input_metadata()}

    def output_names(self) -> list[str]:
        """Output names of the active artifact, in the artifact's order."""
        self._require_active()
        return self._output_names()

    def infer(self, feed: Feed | np.ndarray) -> dict[str, np.ndarray]:
        """Run one inference.

        Inputs are never silently converted: an array of the input's dtype passes as is, a cast within the same kind
        (float64 to float32) or a safe one (uint8 to float32) is made, and anything else (floats fed to a uint8
        pixel input, int64 to float32) is an error.

        Args:
            feed: Input arrays by name. A bare array is accepted when the artifact has exactly one input.

        Returns:
            Output arrays by name, as numpy arrays.

        Raises:
            RuntimeBackendError: If the runner is inactive, an input is missing or unexpected, or an input's shape
                or dtype does not match the artifact.
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
        for name, spec in meta.items():
            array = np.asarray(feed[name])
            if not spec.accepts(array):
                raise RuntimeBackendError(
                    f"{self.name} | input {name!r} expects {spec.describe()}, got {tuple(array.shape)}"
                )
            prepared[name] = self._conform_dtype(spec, array)
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
    def _input_metadata(self) -> list[TensorSpec]:
        """Describe the inputs of the loaded artifact."""

    def _output_names(self) -> list[str]:
        """Output names; the default asks for them by running nothing and is meant to be overridden."""
        raise NotImplementedError(f"{type(self).__name__} does not report output names")

    def _deactivate(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Release the engine; the default drops nothing."""

    # -- helpers for subclasses -----------------------------------------------------------------------------------

    def _model_file(self) -> Path:
        """The model file to load: :attr:`artifact` itself, or the file its manifest names (see
        :func:`resolve_model_file`)."""
        assert self.artifact is not None  # needs_artifact runners always have one
        return resolve_model_file(self.artifact, self.model_suffixes, self.name, self.manifest)

    def _import_required(self, module: str) -> Any:
        """Import ``module``, one of :attr:`requires`, or raise the one-line error naming the extra it declares
        there (the declaration :meth:`unavailable_reason` checks, so the module and its extra are named once)."""
        return require(module, dict(self.requires)[module], self.name)

    def _call_session_options(self, options: Any) -> None:
        """Give the user's hook the engine's native options object (see ``session_options``)."""
        if self.session_options is not None:
            self.session_options(options)

    def _threads_do_not_apply(self, why: str) -> None:
        """Record that ``threads`` was given to an engine that does not run on CPU threads."""
        if self.threads is not None:
            self.notices.append(f"threads={self.threads} does not apply: {why}")

    def _require_active(self) -> None:
        if not self.is_active:
            raise RuntimeBackendError(f"{self.name} | not active; use it as a context manager or call activate()")

    def _conform_dtype(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        """``array`` as a contiguous array of the input's dtype, or a one-line error when that would change values.

        Pixels are the case this guards: a float array cast to a uint8 input wraps and truncates into garbage that
        still runs, so only casts that keep the values (same kind, or numpy-safe) are made.
        """
        want = spec.np_dtype
        if want is None:  # not an array feature: the engine converts it itself
            return array
        got = array.dtype
        if not dtype_cast_allowed(got, want):
            pixels = " (0-255 pixels)" if want == np.uint8 else ""
            if want == np.uint8 and got.kind == "f":
                advice = "pass uint8 pixels or re-export without --include-preprocessing"
            elif want.kind in "iu" and got.kind == "f":
                advice = f"pass {want.name} values"
            else:
                advice = f"pass {want.name} arrays (convert with .astype(np.{want.name}) where the values fit)"
            raise RuntimeBackendError(f"{self.name} | input {spec.name!r} expects {want.name}{pixels}, "
                                      f"got {got.name}; {advice}")
        return np.ascontiguousarray(array, dtype=want)


def dtype_cast_allowed(got: np.dtype, want: np.dtype) -> bool:
    """Whether :meth:`BaseRunner.infer` converts an array of dtype ``got`` for an input of dtype ``want``.

    Allowed: the same dtype; a cast within one kind (float64 to float32, int64 to int32), which numpy calls
    ``same_kind``; and a cast numpy calls ``safe`` from integers or booleans (uint8 pixels to float32, uint8 to
    int32). Refused: floats to integers, integers to a float that cannot hold them exactly (int64 to float32), and
    anything to or from strings, objects or complex numbers across kinds.
    """
    got, want = np.dtype(got), np.dtype(want)
    if got == want:
        return True
    if got.kind == want.kind:
        return bool(np.can_cast(got, want, "same_kind"))
    if got.kind in "biu" and want.kind in "iuf":
        return bool(np.can_cast(got, want, "safe"))
    return False


def resolve_model_file(path: str | Path, suffixes: tuple[str, ...], component: str = "runtime",
                       manifest: Manifest | None = None) -> Path:
    """Turn an artifact directory or a model file into the model file a runner loads.

    A path whose suffix is one of ``suffixes`` is returned as is (``model.mlpackage`` is itself a directory). For an
    artifact directory, the manifest's ``artifact.path`` is used when its suffix fits, else the first
    ``model<suffix>`` found in the directory, in the order of ``suffixes`` (the ONNX file a TensorRT artifact keeps
    next to its engine, for instance).

    Args:
        path: Model file, or artifact directory holding ``manifest.json``.
        suffixes: Accepted model file suffixes, most preferred first, e.g. ``(".engine", ".onnx")``.
        component: Who asks, for error messages.
        manifest: The directory's manifest; read here when ``None`` and the directory has one.

    Raises:
        RuntimeBackendError: If no model file with an accepted suffix can be found.
        ManifestError: If the directory's ``manifest.json`` is broken.
    """
    path = Path(path)
    if path.suffix in suffixes:
        return path
    if not path.is_dir():
        raise RuntimeBackendError(
            f"{component} | expected a {'/'.join(suffixes)} file or an artifact directory, got {path}"
        )
    if manifest is None and has_manifest(path):
        manifest = read_manifest(path)
    if manifest is not None:
        candidate = path / manifest.artifact.path
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


def _load_runners() -> None:
    import importlib

    importlib.import_module("ffnet_deploy.runtimes").load_all()


RUNTIMES: Registry[type[BaseRunner]] = Registry("runtime", name_attr="runtime_name", loader=_load_runners)
register_runtime = RUNTIMES.register
"""Class decorator registering a :class:`BaseRunner` subclass under a name (stored as ``runtime_name``)."""

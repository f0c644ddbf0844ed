"""User-facing error types.

Every error a user can cause (a bad path, a wrong variant, a missing optional backend, an artifact that fails
parity) derives from :class:`FFNetDeployError`. The CLI catches exactly this root type and prints its message as
one line with exit code :data:`EXIT_USER_ERROR`; anything else is a bug and keeps its traceback.

Exit codes, the same from every command (written here once; the README's "Exit codes" section says the same):
:data:`EXIT_OK` 0, :data:`EXIT_FAILED_CHECK` 1 (a parity or validation check failed, the report is still written),
:data:`EXIT_USER_ERROR` 1 (one line naming the problem and the fix), :data:`EXIT_USAGE` 2 (click's usage errors:
an unknown option, a missing argument), and ``128 + signum`` when a terminating signal arrived
(:attr:`Interrupted.exit_code`).

Messages follow one shape: which component failed, what it expected, what it got, and what to do, e.g.
``onnxruntime | input 'images' expects (1, 3, 256, 256), got (1, 3, 224, 224)``.
"""

from __future__ import annotations

EXIT_OK = 0
"""Everything the command did succeeded."""
EXIT_FAILED_CHECK = 1
"""A check failed (a parity gate, a validation metric, a pipeline job): what was measured is still written."""
EXIT_USER_ERROR = 1
"""A :class:`FFNetDeployError`: a bad input or option, printed as one line; the same from every command."""
EXIT_USAGE = 2
"""click's usage errors (an unknown option, a missing argument), as click itself exits."""


def first_line(err: BaseException, default: str | None = None) -> str:
    """The first non-empty line of ``str(err)``; ``default`` (the exception's type name when ``None``) when the
    message is empty. Never raises, whatever the exception carries."""
    try:
        text = str(err)
    except Exception:  # noqa: BLE001 - a broken __str__ of a backend's exception
        text = ""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line or (type(err).__name__ if default is None else default)


class FFNetDeployError(Exception):
    """Root of every user error. The CLI prints ``str(err)`` and exits :data:`EXIT_USER_ERROR`."""


class ConfigError(FFNetDeployError):
    """An option or configuration value is invalid (unknown variant, bad resolution, ...)."""


class CheckpointError(FFNetDeployError):
    """A checkpoint cannot be read, is refused as unsafe, or does not match the model."""


class MissingDependencyError(FFNetDeployError):
    """An optional backend is not installed; the message names the extra to install."""


class ExportError(FFNetDeployError):
    """An export could not be produced (backend failure, existing artifact, unwritable output)."""


class RuntimeBackendError(FFNetDeployError):
    """A runtime could not load or run an artifact, or was fed inputs that do not match it."""


class ReparameterizationError(FFNetDeployError):
    """Structural reparameterization left modules unfused (a BatchNorm, a block without a working fusion rule)."""


class QuantizationError(FFNetDeployError):
    """INT8 quantization or compression cannot produce what was asked (e.g. no configuration meets --max-drop)."""


class CalibrationError(QuantizationError):
    """Calibration data or a calibration-statistics cache cannot be used (too few images, another model's cache)."""


class ParityError(FFNetDeployError):
    """An artifact's outputs do not match the PyTorch reference within tolerance."""


class ShapeMismatchError(ParityError, RuntimeBackendError):
    """Two arrays a metric compares (:mod:`ffnet_deploy.validate.metrics`) cannot be matched element for element.

    Both a parity failure (the artifact's output is not the reference's shape) and a runtime fault (the runtime
    returned a tensor of another size), so it is caught as either.
    """


class Interrupted(BaseException):  # noqa: N818 - named like KeyboardInterrupt, which it generalizes
    """A terminating signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) arrived; see :mod:`ffnet_deploy.interrupts`.

    A :class:`BaseException`, like :class:`KeyboardInterrupt`, so that no fallback written as ``except Exception``
    (an onnxsim failure, a runtime error in the parity gate) can take it for an ordinary failure and carry on. The
    CLI prints ``str(err)`` as one line and exits ``128 + signum``.

    Attributes:
        signum: The signal number.
        kept: What was written before the signal arrived, for the message; ``None`` when nothing was.
    """

    def __init__(self, signum: int, kept: str | None = None) -> None:
        super().__init__(signum, kept)
        self.signum = signum
        self.kept = kept

    @property
    def signal_name(self) -> str:
        """``"SIGTERM"``, ``"SIGINT"``, ..."""
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """``128 + signum``, the shell's convention (130 for Ctrl-C)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}; {self.kept or 'nothing was written'}"


def require(module: str, extra: str, component: str | None = None):
    """Import an optional dependency or raise a :class:`MissingDependencyError` that names the extra.

    Args:
        module: Importable module name, e.g. ``"coremltools"``.
        extra: The ``ffnet-deploy`` extra that installs it, e.g. ``"coreml"``.
        component: Who needs it, for the message; defaults to ``extra``.

    Returns:
        The imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        who = component or extra
        raise MissingDependencyError(
            f"{who} needs {module} ({err}): pip install 'ffnet-deploy[{extra}]'"
        ) from err

"""ffnet-deploy: reparameterize, quantize, export, validate and benchmark FFNet.

The main entry points::

    from ffnet_deploy import create_ffnet, load_ffnet, reparameterize_model

    model = load_ffnet("ffnet_1.pth.tar")        # variant detected from the weights
    fused = reparameterize_model(model)          # a fused copy; `model` is unchanged
"""

from __future__ import annotations

import logging as _logging
import re as _re
import sys as _sys

if _sys.platform != "darwin":
    # coremltools converts fine off macOS but warns at import that its native prediction library is missing
    # (seven "Failed to load _ML...Proxy" lines). We never predict with it here; drop exactly those lines.
    _logging.getLogger("coremltools").addFilter(
        lambda record: not (record.getMessage().startswith("Failed to load _ML")
                            and "libcoremlpython" in record.getMessage())
    )

from ffnet_deploy._version import __version__
from ffnet_deploy.errors import FFNetDeployError

# The entry points below are imported on first use (PEP 562), not with the package: they need torch, and a process
# that only reads a manifest or prints help should not pay for importing it.
_LAZY = {
    "LoadedCheckpoint": "ffnet_deploy.models.checkpoint", "inspect_checkpoint": "ffnet_deploy.models.checkpoint",
    "load_checkpoint": "ffnet_deploy.models.checkpoint", "load_ffnet": "ffnet_deploy.models.checkpoint",
    "open_checkpoint": "ffnet_deploy.models.checkpoint", "save_checkpoint": "ffnet_deploy.models.checkpoint",
    "VARIANTS": "ffnet_deploy.models.config", "FFNetConfig": "ffnet_deploy.models.config",
    "get_config": "ffnet_deploy.models.config", "FFNet": "ffnet_deploy.models.ffnet",
    "create_ffnet": "ffnet_deploy.models.ffnet", "reparam_report": "ffnet_deploy.models.reparam",
    "reparameterize_model": "ffnet_deploy.models.reparam",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ffnet_deploy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

# coremltools also logs, at every import, that the installed scikit-learn is outside its range (which only disables
# its scikit-learn converter, never used here) and that the installed torch is newer than the newest it was tested
# with (the Core ML export's own parity gate is what tells whether the conversion is right). Both are noise on every
# Core ML command; exactly these two messages are dropped, any other coremltools warning still shows. Nothing above
# imports coremltools, so the filter is in place before it first logs.
_COREMLTOOLS_NOISE = (
    _re.compile(r"scikit-learn version \S+ is not supported\. Minimum required version: \S+\. Maximum required "
                r"version: \S+\. Disabling scikit-learn conversion API\."),
    _re.compile(r"Torch version \S+ has not been tested with coremltools\. You may run into unexpected errors\. "
                r"Torch \S+ is the most recent version that has been tested\."),
)
_logging.getLogger("coremltools").addFilter(
    lambda record: not any(p.fullmatch(record.getMessage()) for p in _COREMLTOOLS_NOISE)
)

__all__ = [
    "LoadedCheckpoint",
    "VARIANTS",
    "FFNet",
    "FFNetConfig",
    "FFNetDeployError",
    "__version__",
    "create_ffnet",
    "get_config",
    "inspect_checkpoint",
    "load_checkpoint",
    "load_ffnet",
    "open_checkpoint",
    "reparam_report",
    "reparameterize_model",
    "save_checkpoint",
]

"""ffnet-deploy: reparameterize, quantize, export, validate and benchmark FFNet.

The main entry points::

    from ffnet_deploy import create_ffnet, load_ffnet, reparameterize_model

    model = load_ffnet("ffnet_1.pth.tar")        # variant detected from the weights
    fused = reparameterize_model(model)          # a fused copy; `model` is unchanged
"""

from __future__ import annotations

import logging as _logging
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
from ffnet_deploy.models.checkpoint import inspect_checkpoint, load_checkpoint, load_ffnet, save_checkpoint
from ffnet_deploy.models.config import VARIANTS, FFNetConfig, get_config
from ffnet_deploy.models.ffnet import FFNet, create_ffnet
from ffnet_deploy.models.reparam import reparam_report, reparameterize_model

__all__ = [
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
    "reparam_report",
    "reparameterize_model",
    "save_checkpoint",
]

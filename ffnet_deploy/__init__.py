"""ffnet-deploy: reparameterize, quantize, export, validate and benchmark FFNet.

The main entry points::

    from ffnet_deploy import create_ffnet, load_ffnet, reparameterize_model

    model = load_ffnet("ffnet_1.pth.tar")        # variant detected from the weights
    fused = reparameterize_model(model)          # a fused copy; `model` is unchanged
"""

from __future__ import annotations

__version__ = "0.1.0"

from ffnet_deploy.checkpoint import inspect_checkpoint, load_checkpoint, load_ffnet, save_checkpoint
from ffnet_deploy.errors import FFNetDeployError
from ffnet_deploy.model import VARIANTS, FFNet, FFNetConfig, create_ffnet, get_config
from ffnet_deploy.reparam import reparam_report, reparameterize_model

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

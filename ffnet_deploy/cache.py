"""Where ffnet-deploy keeps what it can recompute: the demo checkpoint and calibration statistics.

``$FFNET_DEPLOY_CACHE`` when set, else ``$XDG_CACHE_HOME/ffnet-deploy``, else ``~/.cache/ffnet-deploy``. Everything in
it is keyed by content, so deleting it only costs time.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FFNET_DEPLOY_CACHE"


def cache_root() -> Path:
    """The cache folder (not created here)."""
    explicit = os.environ.get(CACHE_ENV)  # empty variables count as unset
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ffnet-deploy"

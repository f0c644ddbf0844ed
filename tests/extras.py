"""Skip marks for the tests of an optional extra, decided without importing it.

``pytest.importorskip`` at a module's top imports the backend while collecting, in every pytest-xdist worker, even the
one that runs none of its tests (litert_torch takes about 3 CPU-s to import; ExecuTorch's exir comes with
coremltools anyway). :func:`needs` looks the modules up instead (``importlib.util.find_spec`` imports only their
parent packages); a test imports the backend when it runs.
"""

from __future__ import annotations

from importlib.util import find_spec

import pytest

LITERT_EXTRA = "needs the litert extra: pip install -e '.[litert]'"


def _found(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def needs(*modules: str, reason: str | None = None) -> pytest.MarkDecorator:
    """A ``skipif`` mark: skip unless every one of ``modules`` is installed (``reason``, else the first missing one)."""
    missing = [m for m in modules if not _found(m)]
    return pytest.mark.skipif(bool(missing), reason=reason or f"needs {missing[0] if missing else ''}")

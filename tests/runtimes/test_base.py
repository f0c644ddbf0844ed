"""The runner base class: availability from declared requirements."""

from __future__ import annotations

from ffnet_deploy.runtimes.base import BaseRunner


class _Needs(BaseRunner):
    requires = (("numpy", "dev"), ("no_such_engine_xyz", "xyz"))

    def _activate(self):  # pragma: no cover - never activated
        raise AssertionError

    def _infer(self, feed):  # pragma: no cover
        raise AssertionError

    def _input_metadata(self):  # pragma: no cover
        raise AssertionError


def test_unavailable_reason_names_the_missing_module_and_extra():
    assert _Needs.unavailable_reason() == "needs no_such_engine_xyz: pip install 'ffnet-deploy[xyz]'"
    assert BaseRunner.unavailable_reason() is None

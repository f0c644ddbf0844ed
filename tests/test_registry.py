"""Name-keyed registries: duplicates are bugs, unknown names are user errors that list the known ones."""

from __future__ import annotations

import pytest

from ffnet_deploy.errors import ConfigError
from ffnet_deploy.registry import Registry


def test_register_get_and_name_attribute():
    reg: Registry[type] = Registry("widget", name_attr="widget_name")

    @reg.register("round")
    class Round:
        pass

    assert reg.get("round") is Round and Round.widget_name == "round"
    assert "round" in reg and list(reg) == ["round"] and len(reg) == 1


def test_duplicate_is_an_error():
    reg: Registry[object] = Registry("widget")
    reg.register("a")(object())
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(object())


def test_unknown_name_lists_known_ones():
    reg: Registry[object] = Registry("widget")
    reg.register("b")(1)
    reg.register("a")(2)
    with pytest.raises(ConfigError, match=r"unknown widget 'c'; choose one of: a, b"):
        reg.get("c")

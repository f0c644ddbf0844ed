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


def test_temporarily_registers_inside_the_block_only():
    reg: Registry[object] = Registry("widget")
    reg.register("a")(1)
    with reg.temporarily("toy", 2) as obj:
        assert obj == 2 and reg.names() == ["a", "toy"] and reg.get("toy") == 2
    assert reg.names() == ["a"] and "toy" not in reg
    with pytest.raises(ValueError, match="already registered"), reg.temporarily("a", 3):
        pass
    assert reg.get("a") == 1  # a refused temporary entry leaves the original in place
    with pytest.raises(RuntimeError), reg.temporarily("toy", 4):
        raise RuntimeError("the block failed")
    assert "toy" not in reg
    assert reg.unregister("a") == 1 and len(reg) == 0


def test_loader_runs_once_before_the_first_lookup():
    calls = []
    reg: Registry[int] = Registry("widget", loader=lambda: calls.append(reg.register("built-in")(1)))
    assert calls == []  # nothing is imported until someone asks
    assert reg.names() == ["built-in"] and "built-in" in reg and reg.get("built-in") == 1
    with reg.temporarily("toy", 2):
        assert reg.values() == [1, 2]
    assert len(calls) == 1 and reg.names() == ["built-in"]

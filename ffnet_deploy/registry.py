"""Name-keyed registries for exporters and runtimes.

A registry maps a short name (``"onnx"``, ``"openvino"``) to a factory. Registering a name twice is a programming
error; looking up an unknown name is a user error whose message lists the known names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ffnet_deploy.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories.

    Args:
        kind: What the entries are, for messages (``"export format"``, ``"runtime"``).
        name_attr: If set, :meth:`register` also stores the registered name on the object under this attribute,
            so that a registered class knows its own name (e.g. ``"runtime_name"``).
    """

    def __init__(self, kind: str, name_attr: str | None = None) -> None:
        self.kind = kind
        self.name_attr = name_attr
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``.

        Raises:
            ValueError: If ``name`` is already registered (a bug, not a user error).
        """

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name]!r}")
            self._entries[name] = obj
            if self.name_attr is not None:
                setattr(obj, self.name_attr, name)
            return obj

        return deco

    def get(self, name: str) -> T:
        """Look up ``name``.

        Raises:
            ConfigError: If ``name`` is unknown; the message lists the known names.
        """
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

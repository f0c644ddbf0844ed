"""Name-keyed registries: export formats, runtimes, precisions, token mixers.

A registry maps a short name (``"onnx"``, ``"openvino"``) to an entry (a class, or a frozen declaration).
Registering a name twice is a programming error; looking up an unknown name is a user error whose message lists the
known names.

A registry can be filled lazily: ``loader`` is called once, before the first lookup, to import the modules that
register the built-in entries (the way a plugin system loads its entry points). Code below the layer that declares
the entries (the manifest reader asking which formats exist) then sees every built-in without importing it by name.

Entries can also be added for a while and removed again (:meth:`Registry.temporarily`, :meth:`Registry.unregister`):
a test that registers a toy format leaves the built-in set exactly as it found it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from ffnet_deploy.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of entries.

    Args:
        kind: What the entries are, for messages (``"export format"``, ``"runtime"``).
        name_attr: If set, :meth:`register` also stores the registered name on the object under this attribute,
            so that a registered class knows its own name (e.g. ``"runtime_name"``).
        loader: Called once, before the first lookup, to import the modules that register the built-in entries.
    """

    def __init__(self, kind: str, name_attr: str | None = None, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.name_attr = name_attr
        self._entries: dict[str, T] = {}
        self._loader = loader
        self._loaded = loader is None

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: the modules the loader imports register here, and must not load again
        try:
            self._loader()  # type: ignore[misc]
        except BaseException:
            self._loaded = False
            raise

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

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry.

        Raises:
            KeyError: If ``name`` is not registered.
        """
        return self._entries.pop(name)

    @contextmanager
    def temporarily(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` as ``name`` inside a ``with`` block only (a test's toy entry); the built-ins are
        loaded first, so the block ends with the registry exactly as it was."""
        self._load()
        self.register(name)(obj)
        try:
            yield obj
        finally:
            if self._entries.get(name) is obj:
                del self._entries[name]

    def get(self, name: str) -> T:
        """Look up ``name``.

        Raises:
            ConfigError: If ``name`` is unknown; the message lists the known names.
        """
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def values(self) -> list[T]:
        """All entries, in the order of :meth:`names`."""
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

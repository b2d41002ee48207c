"""A small name -> class registry with did-you-mean errors and lazy ``"module:Class"`` entries."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """Raised for a name that is not registered; the message lists the valid names."""


class Registry(Generic[T]):
    """Maps names to classes (or lazy ``"package.module:Class"`` strings resolved on first use).

    Duplicate names are refused so that two plugins cannot silently shadow each other.
    """

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or (kind[:-1] + "ies" if kind.endswith("y") else kind + "s")
        self._entries: dict[str, type[T] | str] = {}

    def register(self, name: str, obj: type[T] | str | None = None) -> Callable[[type[T]], type[T]] | None:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        key = self._normalise(name)

        def add(target: type[T] | str) -> type[T] | str:
            if key in self._entries and self._entries[key] is not target:
                raise ValueError(
                    f"A {self.kind} named {name!r} is already registered ({self._describe(key)}); "
                    "pick another name or unregister the old one first."
                )
            self._entries[key] = target
            return target

        if obj is not None:
            add(obj)
            return None
        return add  # type: ignore[return-value]

    def unregister(self, name: str) -> None:
        self._entries.pop(self._normalise(name), None)

    def get(self, name: str) -> type[T]:
        """Return the class registered as ``name`` (importing lazy entries)."""
        key = self._normalise(name)
        if key not in self._entries:
            raise UnknownNameError(self._unknown_message(name))
        entry = self._entries[key]
        if isinstance(entry, str):
            entry = _import_path(entry)
            self._entries[key] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalise(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _unknown_message(self, name: str) -> str:
        valid = self.names()
        close = difflib.get_close_matches(self._normalise(name), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"Unknown {self.kind} {name!r}.{hint} Valid {self.plural}: {', '.join(valid)}."

    def _describe(self, key: str) -> str:
        entry = self._entries[key]
        return entry if isinstance(entry, str) else f"{entry.__module__}.{entry.__qualname__}"

    @staticmethod
    def _normalise(name: str) -> str:
        return name.strip().lower().replace("-", "_")


def _import_path(path: str) -> Any:
    """Import ``"pkg.module:Attr"`` or ``"pkg.module.Attr"``."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not an import path of the form 'package.module.Class'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"Cannot import module {module_name!r} for {path!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ValueError(f"Module {module_name!r} has no attribute {attr!r} (from {path!r}).") from err

"""A small name -> object registry that refuses duplicates and answers unknown names with "did you mean"."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from svlm.data.schema import UnknownBenchmarkError

T = TypeVar("T")


def _key(name: str) -> str:
    # "ScienceQA-IMG", "scienceqa_img" and "scienceqa img" name the same thing
    return name.strip().lower().replace("-", "_").replace(" ", "_")


class Registry(Generic[T]):
    """Names (and aliases) to entries; lookups are case- and dash/underscore-insensitive."""

    def __init__(self, kind: str, error: type[Exception] = UnknownBenchmarkError) -> None:
        self.kind = kind
        self._error = error
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        for n in (name, *aliases):
            if _key(n) in self._aliases:
                raise ValueError(f"{self.kind} {n!r} is already registered (as {self._aliases[_key(n)]!r})")
        self._entries[name] = entry
        for n in (name, *aliases):
            self._aliases[_key(n)] = name
        return entry

    def resolve(self, name: str) -> str:
        """Canonical name for `name` or an alias of it; raises with close matches otherwise."""
        if not isinstance(name, str):
            raise self._error(f"{self.kind} name must be a string, got {type(name).__name__}")
        canonical = self._aliases.get(_key(name))
        if canonical is None:
            close = difflib.get_close_matches(_key(name), list(self._aliases), n=3, cutoff=0.5)
            suggestions = sorted({self._aliases[c] for c in close})
            hint = f" Did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
            raise self._error(f"Unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}.")
        return canonical

    def get(self, name: str) -> T:
        return self._entries[self.resolve(name)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

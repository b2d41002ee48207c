"""Strategies written outside svlm: entry-point plug-ins and modules imported by name.

A module that registers strategies (``@svlm.register_strategy("l2norm")``) reaches the registry in one of
three ways:

- an installed package declares it in the ``svlm.strategies`` entry-point group (``pyproject.toml``:
  ``[project.entry-points."svlm.strategies"] l2norm = "mypkg.strategies"``); svlm imports every such entry
  the first time a strategy name is looked up or listed;
- the command line imports it: ``svlm test --import mypkg.strategies ...`` (repeatable, or comma-separated);
- a config names the class by its path (``strategy: mypkg.strategies.L2Norm``), which imports its module.

The ``svlm`` command adds the current folder to the end of ``sys.path`` (as ``python -m`` does, but after
the installed packages, so a local file never shadows one), so modules of the project folder it runs in
import without ``PYTHONPATH=.``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

log = logging.getLogger(__name__)

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "add_cwd_to_path", "import_modules", "load_entry_points"]

#: Entry-point group whose entries svlm imports to find strategies of other packages.
ENTRY_POINT_GROUP = "svlm.strategies"

_loaded: dict[str, object] = {}


class PluginError(ValueError):
    """A plug-in module that cannot be imported (the message names it and the import error)."""


def import_modules(names: Iterable[str]) -> list[str]:
    """Import each module of ``names`` (``"mypkg.strategies"``; ``"a,b"`` holds two), registering the
    strategies they define. Returns the module names imported."""
    imported = []
    for spec in names:
        for name in (n.strip() for n in spec.split(",")):
            if not name:
                continue
            try:
                importlib.import_module(name)
            except ImportError as err:
                raise PluginError(
                    f"Cannot import module {name!r} given with --import: {err}. Give a module importable "
                    f"from the current folder ({os.getcwd()}) or an installed package."
                ) from err
            imported.append(name)
    return imported


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> dict[str, object]:
    """Load every entry point of ``group`` once per process: a module entry registers its strategies on
    import; a class entry (``name = "pkg.mod:Class"``) that is not registered yet is registered as ``name``.
    Returns ``{entry name: loaded object}``."""
    for entry in entry_points(group=group):
        key = f"{group}:{entry.name}"
        if key in _loaded:
            continue
        _loaded[key] = _load(entry)
    return {k.partition(":")[2]: v for k, v in _loaded.items() if k.startswith(f"{group}:")}


def _load(entry: EntryPoint) -> object:
    from svlm.strategies.base import Strategy
    from svlm.strategies.registry import STRATEGIES, register_strategy

    dist = getattr(entry.dist, "name", None) or "an installed package"
    try:
        obj = entry.load()
    except Exception as err:  # a broken plug-in names itself instead of failing somewhere deep
        raise PluginError(
            f"Cannot load svlm strategy plug-in {entry.name!r} = {entry.value!r} (from {dist}): {err}"
        ) from err
    if isinstance(obj, type) and issubclass(obj, Strategy) and entry.name not in STRATEGIES:
        register_strategy(entry.name)(obj)
    log.debug("loaded svlm plug-in %s = %s", entry.name, entry.value)
    return obj


def add_cwd_to_path() -> None:
    """Make modules of the current folder importable (appended: installed packages keep precedence)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)

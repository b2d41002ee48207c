"""The strategy registry: ``@register_strategy("name")`` and building strategies by name or class path."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from svlm.registry import Registry, UnknownNameError, _import_path
from svlm.strategies.base import Strategy

STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator that makes a :class:`Strategy` available as ``name`` (duplicates are refused)."""

    def decorator(cls: type[Strategy]) -> type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"@register_strategy({name!r}) must decorate a subclass of svlm.Strategy.")
        STRATEGIES.register(name)(cls)
        cls.name = name
        return cls

    return decorator


def _load_plugins() -> None:
    from svlm.plugins import load_entry_points

    load_entry_points()


def available_strategies(include_oracles: bool = False) -> list[str]:
    """Names of all registered strategies (the ``svlm.strategies`` entry-point plug-ins included); oracles
    (upper bounds that read benchmark annotations, such as ``evidence_oracle``) only with
    ``include_oracles``."""
    _load_plugins()
    return [n for n in STRATEGIES.names() if include_oracles or not STRATEGIES.get(n).oracle]


def strategy_class(name_or_path: str) -> type[Strategy]:
    """The class registered as ``name_or_path``, or imported from a ``package.module.Class`` path.

    A name not registered yet loads the ``svlm.strategies`` entry-point plug-ins first (see
    :mod:`svlm.plugins`)."""
    if name_or_path not in STRATEGIES:
        _load_plugins()
    if name_or_path in STRATEGIES or "." not in name_or_path:
        try:
            return STRATEGIES.get(name_or_path)
        except UnknownNameError as err:
            raise UnknownNameError(
                f"{err} Strategies of your own modules: `svlm ... --import your.module`, a "
                "`package.module.Class` path, or an `svlm.strategies` entry point."
            ) from None
    cls = _import_path(name_or_path)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"{name_or_path!r} is not a subclass of svlm.Strategy.")
    return cls


def registered_name(name_or_path: str) -> str | None:
    """The name the class of ``name_or_path`` is registered under, or ``None`` (not registered, or not
    importable: building the strategy reports that)."""
    try:
        cls = strategy_class(name_or_path)
    except ValueError:
        return None
    name = cls.__dict__.get("name")  # not a registered parent's name
    return name if isinstance(name, str) and name in STRATEGIES and STRATEGIES.get(name) is cls else None


def build_strategy(strategy: str | Strategy | dict[str, Any], **kwargs: Any) -> Strategy:
    """A strategy from a name, a class path, a ``{"class_path", "init_args"}`` dict, or an instance.

    ``None`` values in ``kwargs`` are dropped so that CLI defaults never override a strategy's own.
    Unknown keyword arguments get an error listing the strategy's parameters.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if isinstance(strategy, Strategy):
        if kwargs:
            raise ValueError(
                f"Got a Strategy instance and extra arguments {sorted(kwargs)}; pass one or the other."
            )
        return strategy
    if isinstance(strategy, dict):
        spec = dict(strategy)
        path = spec.pop("class_path", None) or spec.pop("name", None)
        if path is None:
            raise ValueError(f"A strategy config needs 'name' or 'class_path'; got keys {sorted(strategy)}.")
        init = {**spec.pop("init_args", {}), **{k: v for k, v in spec.items() if k != "label"}}
        return build_strategy(path, **{**init, **kwargs})
    if not isinstance(strategy, str):
        raise TypeError(
            f"strategy must be a name, a class path or a Strategy; got {type(strategy).__name__}."
        )
    cls = strategy_class(strategy)
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown and not accepts_any:
        valid = sorted(k for k in params if k != "self")
        raise ValueError(
            f"Strategy {strategy!r} got unknown argument(s) {unknown}. "
            f"Its arguments: {', '.join(valid) or 'none'}."
        )
    _check_argument_types(strategy, cls, kwargs)
    return cls(**kwargs)


_SCALARS: tuple[type, ...] = (bool, int, float, str, type(None))


def _check_argument_types(strategy: str, cls: type, kwargs: dict[str, Any]) -> None:
    """Refuse a value of the wrong kind for an argument annotated with plain scalar types only (``seed: int``
    given ``"x"``), naming it, instead of a traceback from deep inside torch. Other annotations (lists,
    paths, mappings) and ``budget`` (:func:`svlm.strategies.base.parse_budget`) are the strategy's own."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: nothing to check against
        return
    for name, value in kwargs.items():
        hint = hints.get(name)
        if name == "budget" or hint is None:
            continue
        allowed = (
            typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        )
        if not all(isinstance(t, type) and t in _SCALARS for t in allowed):
            continue
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(
                f"Strategy {strategy!r} argument {name!r} must be {kinds}; got {value!r} "
                f"({type(value).__name__})."
            )

"""Calibrated schedule files: what ``svlm fit`` writes and a strategy's ``schedule=`` argument reads.

A schedule is a small human-readable YAML (or JSON) file::

    strategy: sparsevlm
    params:            # keyword arguments of the strategy
      layers: [2, 6, 15]
      rank_scale: [9.1, 4.2, 1.7]
      rank_bias: 0.0
    metrics: {...}     # what calibration measured (informational)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from svlm.results import atomic_write_text


class ScheduleError(ValueError):
    """A schedule file that is missing, truncated or malformed."""


def save_schedule(
    path: str | Path, strategy: str, params: dict[str, Any], metrics: dict[str, Any] | None = None
) -> Path:
    """Write a schedule atomically (YAML unless the suffix is .json)."""
    path = Path(path)
    data = {"strategy": strategy, "params": params, "metrics": metrics or {}}
    text = json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(path, text)
    return path


def load_schedule(path: str | Path, strategy: str | None = None) -> dict[str, Any]:
    """The ``params`` of a schedule file, validated; ``strategy`` (if given) must match the file's."""
    return dict(read_schedule(path, strategy)["params"])


def read_schedule(path: str | Path, strategy: str | None = None) -> dict[str, Any]:
    """The whole file (``strategy``, ``params``, ``metrics``), validated like :func:`load_schedule`."""
    path = Path(path)
    if not path.is_file():
        raise ScheduleError(f"Schedule file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ScheduleError(f"Schedule file {str(path)!r} is not valid YAML/JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise ScheduleError(
            f"Schedule file {str(path)!r} must be a mapping with 'strategy' and 'params'; "
            f"got {type(data).__name__}."
        )
    if strategy is not None and data.get("strategy") != strategy:
        raise ScheduleError(
            f"Schedule file {str(path)!r} is for strategy {data.get('strategy')!r}, not {strategy!r}."
        )
    return {
        "strategy": data.get("strategy"),
        "params": dict(data["params"]),
        "metrics": data.get("metrics") or {},
    }

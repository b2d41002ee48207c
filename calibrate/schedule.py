"""Calibrated schedule files: what ``svlm fit`` writes and a strategy's ``schedule=`` argument reads.

A schedule is a small human-readable YAML (or JSON) file::

    checksum: 3f2a...  # of everything below: a truncated or edited file is refused (delete it after an edit)
    strategy: sparsevlm
    model:             # what it was calibrated for: another depth is refused, another name warned about
      name: zoo:svlm-shapes-llava
      num_layers: 8
    params:            # keyword arguments of the strategy
      layers: [2, 6, 15]
      rank_scale: [9.1, 4.2, 1.7]
      rank_bias: 0.0
    metrics: {...}     # what calibration measured (informational)

Every value of ``params`` is checked when the file is read (:func:`validate_params`), naming the bad one.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from svlm.results import atomic_write_text

#: SparseVLM's pruning layers and count tables are given for the 32-layer, 576-visual-token reference model
#: (and scaled to the model at hand).
REFERENCE_LAYERS = 32
REFERENCE_VISUAL_TOKENS = 576
#: Parameters a sparsevlm schedule may set.
SPARSEVLM_PARAMS = ("budget", "layers", "counts", "rank_scale", "rank_bias", "rank_rtol")


class ScheduleError(ValueError):
    """A schedule file that is missing, truncated, malformed, or for another model."""


def _checksum(data: Mapping[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def model_record(name: str, num_layers: int) -> dict[str, Any]:
    """The ``model`` entry of a schedule: what it was calibrated for."""
    return {"name": str(name), "num_layers": int(num_layers)}


def save_schedule(
    path: str | Path,
    strategy: str,
    params: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> Path:
    """Write a schedule atomically (YAML unless the suffix is .json), its checksum first.

    ``params`` are checked as :func:`read_schedule` checks them, so no file is written that cannot be read.
    """
    validate_params(params, where=f"Schedule for {str(path)!r}")
    path = Path(path)
    data: dict[str, Any] = {"strategy": strategy}
    if model is not None:
        data["model"] = dict(model)
    data.update({"params": params, "metrics": metrics or {}})
    data = json.loads(json.dumps(data))  # plain types, as they will be read back
    data = {"checksum": _checksum(data), **data}
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
    if "checksum" in data and data["checksum"] != _checksum(data):
        raise ScheduleError(
            f"Schedule file {str(path)!r} does not match its checksum: it is truncated or was edited (after "
            "an intended edit, delete its `checksum:` line)."
        )
    if strategy is not None and data.get("strategy") != strategy:
        raise ScheduleError(
            f"Schedule file {str(path)!r} is for strategy {data.get('strategy')!r}, not {strategy!r}."
        )
    model = data.get("model")
    if model is not None and (not isinstance(model, dict) or not _count(model.get("num_layers"), 1)):
        raise ScheduleError(f"Schedule file {str(path)!r}: `model` must name num_layers >= 1; got {model!r}.")
    params = dict(data["params"])
    if data.get("strategy") == "sparsevlm":
        validate_params(params, where=f"Schedule file {str(path)!r}")
    return {
        "strategy": data.get("strategy"),
        "model": model,
        "params": params,
        "metrics": data.get("metrics") or {},
    }


def _count(value: Any, low: int, high: int | None = None) -> bool:
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def validate_params(params: Mapping[str, Any], where: str = "Schedule") -> None:
    """Check every value of a sparsevlm schedule's ``params``; :class:`ScheduleError` names the bad one.

    ``layers``: strictly increasing pruning layers of the 32-layer reference frame (0..30); ``counts``: one
    visual-token count per layer, 0..576 (the reference table frame); ``rank_scale`` >= 0 and ``rank_bias``
    (a number or one per layer), finite, with ``rank_scale > 0`` or ``rank_bias >= 1`` on every layer (else
    the rule keeps no token); ``rank_rtol`` >= 0; ``budget`` by :func:`svlm.strategies.parse_budget`. An empty
    value (a file cut after ``rank_scale:``) is an error, not "unset".
    """
    from svlm.strategies.base import BudgetError, parse_budget

    unknown = sorted(set(params) - set(SPARSEVLM_PARAMS))
    if unknown:
        raise ScheduleError(f"{where}: unknown parameters {unknown}; valid: {', '.join(SPARSEVLM_PARAMS)}.")
    empty = sorted(k for k, v in params.items() if v is None)
    if empty:
        raise ScheduleError(f"{where}: parameters {empty} have no value (a truncated file?).")
    layers = params.get("layers")
    if layers is not None:
        last = REFERENCE_LAYERS - 2
        if not isinstance(layers, list) or not layers or not all(_count(x, 0, last) for x in layers):
            raise ScheduleError(
                f"{where}: layers must be a non-empty list of pruning layers 0..{last} (of the "
                f"{REFERENCE_LAYERS}-layer reference frame); got {layers!r}."
            )
        if sorted(set(layers)) != layers:
            raise ScheduleError(f"{where}: layers must be strictly increasing; got {layers!r}.")
    steps = len(layers) if isinstance(layers, list) else None

    def per_layer(name: str, check: Any, rule: str) -> list[float] | None:
        value = params.get(name)
        if value is None:
            return None
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and steps is not None and len(value) != steps:
            raise ScheduleError(
                f"{where}: {name} has {len(value)} entries for {steps} layers {layers}: {value!r}."
            )
        bad = [v for v in values if not check(v)]
        if bad or not values:
            raise ScheduleError(
                f"{where}: {name} must be {rule}; bad value {bad[0] if bad else value!r} in {value!r}."
            )
        return [float(v) for v in values]

    per_layer(
        "counts", lambda v: _count(v, 0, REFERENCE_VISUAL_TOKENS), f"integers 0..{REFERENCE_VISUAL_TOKENS}"
    )
    if params.get("counts") is not None and not isinstance(params["counts"], list):
        raise ScheduleError(f"{where}: counts must be a list, one count per layer; got {params['counts']!r}.")
    scale = per_layer("rank_scale", lambda v: _real(v) and v >= 0, "a finite number >= 0 (or one per layer)")
    bias = per_layer("rank_bias", _real, "a finite number (or one per layer)")
    per_layer("rank_rtol", lambda v: _real(v) and v >= 0, "a finite number >= 0 (or one per layer)")
    if scale is not None:
        bias = bias or [0.0]
        n = max(len(scale), len(bias))
        pairs = [(scale[i % len(scale)], bias[i % len(bias)]) for i in range(n)]
        if any(s == 0 and b < 1 for s, b in pairs):
            raise ScheduleError(
                f"{where}: rank_scale {params['rank_scale']!r} with rank_bias "
                f"{params.get('rank_bias', 0.0)!r} keeps no token on some layer; give rank_scale > 0 or "
                "rank_bias >= 1."
            )
    if "budget" in params:
        try:
            parse_budget(params["budget"])
        except BudgetError as err:
            raise ScheduleError(f"{where}: {err}") from None


def check_schedule_model(
    record: Mapping[str, Any] | None, num_layers: int, where: str = "Schedule", name: str | None = None
) -> None:
    """Refuse a schedule calibrated for a model of another depth; warn when the model's name differs."""
    if not record:
        return
    if int(record["num_layers"]) != int(num_layers):
        raise ScheduleError(
            f"{where} was calibrated for {record.get('name')!r} with {record['num_layers']} decoder layers; "
            f"this model has {num_layers}: calibrate it for this model (`svlm fit`)."
        )
    if name is not None and record.get("name") not in (None, name):
        warnings.warn(
            f"{where} was calibrated for {record.get('name')!r}, not {name!r} (same depth): its thresholds "
            "may not transfer.",
            stacklevel=2,
        )

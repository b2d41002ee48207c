"""The trade-off as a Markdown table (``tradeoff.md``), with one column per question type when the benchmark
scores them: what the README's tables are pasted from, so each comes from one recorded command."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["question_types", "tradeoff_markdown"]


def question_types(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """The question types the main metric is broken down by (``metric/<main>/<type>`` keys), in first-seen
    order."""
    main = points[0].get("main_metric") if points else None
    if not main:
        return []
    prefix = f"metric/{main}/"
    return list(dict.fromkeys(k[len(prefix) :] for p in points for k in p if k.startswith(prefix)))


def _cell(value: Any, digits: int) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{number:.{digits}f}" if math.isfinite(number) else "-"


def tradeoff_markdown(points: Sequence[Mapping[str, Any]]) -> str:
    """One row per point: label, budget, FLOPs ratio, accuracy, relative accuracy, then accuracy per question
    type (``-`` where a point has no value); a last line names the samples and the metric."""
    types = question_types(points)
    head = ["point", "budget", "FLOPs ratio", "accuracy", "relative accuracy", *types]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    main = points[0].get("main_metric") if points else None
    for p in points:
        cells = [
            str(p.get("label", p.get("strategy", "?"))),
            _cell(p.get("budget"), 1),
            _cell(p.get("flops_ratio"), 3),
            _cell(p.get("accuracy"), 3),
            _cell(p.get("relative_accuracy"), 3),
            *(_cell(p.get(f"metric/{main}/{t}"), 2) for t in types),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if points:
        model, benchmark = points[0].get("model", "?"), points[0].get("benchmark", "?")
        lines.append("")
        lines.append(f"{points[0].get('samples', '?')} samples of {benchmark}, model {model}, metric {main}.")
    return "\n".join(lines) + "\n"

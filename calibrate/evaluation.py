"""Held-out evaluation of schedules: fidelity to dense, accuracy, budget and FLOPs per strategy point.

Shared by the calibrator's validation epochs and by ``python -m svlm.calibrate.compare``; the point dicts
have the keys :class:`svlm.callbacks.TradeoffCurve` and ``svlm.results.POINT_COLUMNS`` expect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from svlm.calibrate.fidelity import Answer, fidelity
from svlm.metrics import MAIN_METRICS

__all__ = ["BatchResult", "PointTally", "batch_result"]


@dataclass
class BatchResult:
    """One strategy point on one batch (small and CPU-only, so baselines can be cached across epochs)."""

    answers: list[str]
    budget: list[float]
    budget_output: float
    prefill_flops: float
    dense_prefill_flops: float
    kl: list[float]
    cosine: list[float]
    kept: list[float]  # visual tokens after each pruning step, summed over the batch

    @property
    def samples(self) -> int:
        return len(self.answers)


def batch_result(answers: list[str], answer: Answer, dense: Answer, report: Any) -> BatchResult:
    values = fidelity(dense, answer)
    n = len(answers)
    return BatchResult(
        answers=list(answers),
        budget=[float(b) for b in report.budget_per_sample],
        budget_output=float(report.budget_output) * n,
        prefill_flops=float(report.prefill_flops),
        dense_prefill_flops=float(report.dense_prefill_flops),
        kl=values["kl"].tolist(),
        cosine=values["cosine"].tolist(),
        kept=[float(d.visual_after.sum()) for d in report.decisions],
    )


def _metric_values(value: Any, name: str = "score") -> dict[str, float]:
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(_metric_values(v, str(k)))
        return out
    try:
        return {name: float(value.float().mean()) if hasattr(value, "float") else float(value)}
    except (TypeError, ValueError):
        return {}


@dataclass
class PointTally:
    """Accumulates :class:`BatchResult` s of one strategy point; :meth:`point` summarises them."""

    label: str
    strategy: str
    budget_target: float | None
    metric: Any = None  # a torchmetrics metric (svlm.metrics.metric_for), or None without labels
    main_metric: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    results: list[BatchResult] = field(default_factory=list)

    def add(self, result: BatchResult, batch: Mapping[str, Any] | None = None) -> None:
        self.results.append(result)
        if self.metric is not None and batch is not None and batch.get("answers") is not None:
            from svlm.metrics import update_from_batch

            update_from_batch(self.metric, result.answers, batch)

    def reset(self) -> None:
        self.results = []
        if self.metric is not None:
            self.metric.reset()

    def point(self) -> dict[str, Any]:
        n = sum(r.samples for r in self.results)
        flops = sum(r.prefill_flops for r in self.results)
        dense = sum(r.dense_prefill_flops for r in self.results)
        steps = max((len(r.kept) for r in self.results), default=0)
        values = _metric_values(self.metric.compute()) if self.metric is not None and n else {}
        main = self.main_metric or next((k for k in MAIN_METRICS if k in values), next(iter(values), None))

        def mean(total: float) -> float:
            return total / n if n else math.nan

        point = {
            "label": self.label,
            "strategy": self.strategy,
            "budget_target": self.budget_target,
            "budget": mean(sum(sum(r.budget) for r in self.results)),
            "budget_output": mean(sum(r.budget_output for r in self.results)),
            "prefill_flops": mean(flops),
            "dense_prefill_flops": mean(dense),
            "prefill_tflops": mean(flops) / 1e12,
            "flops_ratio": flops / dense if dense else math.nan,
            "kl": mean(sum(sum(r.kl) for r in self.results)),
            "cosine_distance": mean(sum(sum(r.cosine) for r in self.results)),
            "kept_per_step": [
                mean(sum(r.kept[i] for r in self.results if i < len(r.kept))) for i in range(steps)
            ],
            "main_metric": main,
            "accuracy": values.get(main, math.nan) if main else math.nan,
            "higher_is_better": True,
            "samples": n,
            **self.extra,
        }
        point["cosine"] = 1 - point["cosine_distance"]
        point.update({f"metric/{k}": v for k, v in values.items()})
        return point


def relative_to_dense(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``relative_accuracy`` (accuracy / dense accuracy) to every point, in place."""
    dense = next((p for p in points if p.get("strategy") == "dense"), None)
    for p in points:
        base = dense.get("accuracy") if dense else None
        p["relative_accuracy"] = p["accuracy"] / base if base and math.isfinite(base) and base else math.nan
    return points

"""Accuracy-vs-cost trade-off tables and plots for the strategy points of one evaluation run."""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from svlm.results import POINT_COLUMNS, atomic_open, atomic_write_csv, atomic_write_json, csv_columns

log = logging.getLogger(__name__)

__all__ = ["PLOT_METRICS", "TradeoffCurve", "check_metric", "pareto_front", "plot_tradeoff"]

#: Point keys a trade-off can plot besides ``metric/<name>`` and ``relative/<name>`` (every metric the
#: benchmark computes, e.g. ``metric/pope_f1``); ``kl``/``cosine`` are the calibration points' fidelity.
PLOT_METRICS: tuple[str, ...] = (
    "accuracy",
    "relative_accuracy",
    "budget",
    "budget_output",
    "visual_tokens",
    "prefill_flops",
    "prefill_tflops",
    "flops_ratio",
    "kv_cache_bytes",
    "prefill_latency_s",
    "generate_latency_s",
    "kl",
    "cosine",
)
METRIC_PREFIXES: tuple[str, ...] = ("metric/", "relative/")


def check_metric(metric: str, available: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` naming the valid keys unless ``metric`` can be plotted.

    Without ``available`` (before any point exists) ``metric`` must be one of :data:`PLOT_METRICS` or start
    with ``metric/`` or ``relative/``; with it (the numeric keys of the computed points), it must be one of
    them.
    """
    if available is None:
        if metric in PLOT_METRICS or (metric.startswith(METRIC_PREFIXES) and metric not in METRIC_PREFIXES):
            return
        valid = [*PLOT_METRICS, "metric/<name>", "relative/<name>"]
        candidates: Sequence[str] = PLOT_METRICS
    else:
        if metric in available:
            return
        valid = candidates = sorted(available)
    close = difflib.get_close_matches(metric, candidates, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown trade-off metric {metric!r}.{hint} Valid metrics: {', '.join(valid)}.")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(
    points: Sequence[Mapping[str, Any]],
    x: str = "prefill_flops",
    y: str = "accuracy",
    maximize_y: bool = True,
) -> list[int]:
    """Indices of the points no other point dominates: lower ``x`` (cost), higher ``y`` (quality) is better.

    A point is dominated when another is at least as good on both axes and strictly better on one; identical
    points do not dominate each other. Points with a missing or non-finite coordinate are never on the front.
    Indices are returned in order of increasing ``x``.
    """
    sign = 1.0 if maximize_y else -1.0
    coords = [
        (i, float(p[x]), sign * float(p[y]))
        for i, p in enumerate(points)
        if _finite(p.get(x)) and _finite(p.get(y))
    ]
    front = [
        (px, i)
        for i, px, py in coords
        if not any(qx <= px and qy >= py and (qx < px or qy > py) for j, qx, qy in coords if j != i)
    ]
    return [i for _, i in sorted(front)]


def plot_tradeoff(
    points: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    metric: str = "accuracy",
    metric_label: str | None = None,
    maximize: bool = True,
    title: str | None = None,
) -> Path:
    """Save a two-panel PNG: ``metric`` vs prefill FLOPs and vs measured visual-token budget.

    One line per strategy (points sorted by cost), the dense point as a dashed reference line with a star,
    and the Pareto front (computed on each panel's x axis) as a grey step line with ringed points.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metric_label = metric_label or metric
    flops = [p["prefill_flops"] for p in points if _finite(p.get("prefill_flops"))]
    scale, unit = (1e12, "TFLOPs") if not flops or max(flops) >= 1e11 else (1e9, "GFLOPs")
    points = [
        {**p, "_flops": p["prefill_flops"] / scale} if _finite(p.get("prefill_flops")) else dict(p)
        for p in points
    ]
    panels = [
        ("_flops", f"prefill {unit} per sample (analytic)"),
        ("budget", "visual tokens per layer (measured, input-counted)"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    strategies = list(dict.fromkeys(str(p.get("strategy", "?")) for p in points))
    cmap = plt.get_cmap("tab10")
    colors = {s: cmap(i % 10) for i, s in enumerate(s for s in strategies if s != "dense")}
    dense = [p for p in points if p.get("strategy") == "dense" and _finite(p.get(metric))]

    for ax, (xkey, xlabel) in zip(axes, panels, strict=True):
        usable = [p for p in points if _finite(p.get(xkey)) and _finite(p.get(metric))]
        for strategy in strategies:
            if strategy == "dense":
                continue
            pts = sorted((p for p in usable if p.get("strategy") == strategy), key=lambda p: p[xkey])
            if not pts:
                continue
            ax.plot(
                [p[xkey] for p in pts],
                [p[metric] for p in pts],
                marker="o",
                color=colors[strategy],
                label=strategy,
            )
            for p in pts:
                if p.get("budget_target") is not None:
                    ax.annotate(
                        f"{p['budget_target']:g}",
                        (p[xkey], p[metric]),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                        color=colors[strategy],
                    )
        for i, p in enumerate(dense):
            ax.axhline(
                p[metric], color="black", linestyle="--", linewidth=1, label="dense" if i == 0 else None
            )
            if _finite(p.get(xkey)):
                ax.plot([p[xkey]], [p[metric]], marker="*", markersize=14, color="black", linestyle="none")
        front = [usable[i] for i in pareto_front(usable, x=xkey, y=metric, maximize_y=maximize)]
        if front:
            ax.step(
                [p[xkey] for p in front],
                [p[metric] for p in front],
                where="post",
                color="grey",
                alpha=0.6,
                linewidth=3,
                zorder=0,
                label="Pareto front",
            )
            ax.scatter(
                [p[xkey] for p in front],
                [p[metric] for p in front],
                s=160,
                facecolors="none",
                edgecolors="grey",
                linewidths=1.5,
                zorder=3,
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_label)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


class TradeoffCurve(Callback):
    """Write the trade-off of all evaluated strategy points: ``tradeoff.csv``, ``tradeoff.json`` and a PNG.

    Reads ``pl_module.points`` (one dict per strategy point, see :class:`svlm.module.VLMEvaluator`) at the end
    of ``test`` and after each validation run during ``fit``. Files are written atomically, so an interrupted
    run never leaves a truncated table.

    Args:
        dirpath: Folder for the files. Defaults to the trainer's ``default_root_dir`` (e.g. ``results/demo``).
        filename: Stem of the files (``<filename>.csv``, ``.json``, ``.png``).
        metric: Point key plotted on the y axis and used for the Pareto front. Defaults to ``"accuracy"``,
            which the evaluator fills with the benchmark's main metric; one of :data:`PLOT_METRICS`, or
            ``metric/<name>`` / ``relative/<name>`` for any metric of the benchmark (the columns of
            ``tradeoff.csv``). An unknown name fails at once; a ``metric/`` name the benchmark does not
            compute fails once the points exist, after the CSV and JSON are written.
        plot: Whether to save the PNG (needs matplotlib).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "tradeoff",
        metric: str = "accuracy",
        plot: bool = True,
    ) -> None:
        check_metric(metric)
        self.dirpath = dirpath
        self.filename = filename
        self.metric = metric
        self.plot = plot
        self.last_paths: dict[str, Path] = {}

    def _dir(self, trainer: Trainer) -> Path:
        return Path(self.dirpath if self.dirpath is not None else trainer.default_root_dir)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module, stage="test")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.write(trainer, pl_module, stage="validate")

    def write(self, trainer: Trainer, pl_module: LightningModule, stage: str = "test") -> dict[str, Path]:
        """Write the files for the current ``pl_module.points``; returns the paths written."""
        points = [dict(p) for p in getattr(pl_module, "points", None) or []]
        if not points or not trainer.is_global_zero:
            return {}
        maximize = bool(points[0].get("higher_is_better", True))
        front = set(pareto_front(points, x="prefill_flops", y=self.metric, maximize_y=maximize))
        for i, p in enumerate(points):
            p["pareto"] = i in front
        out = self._dir(trainer)
        paths = {
            "csv": atomic_write_csv(out / f"{self.filename}.csv", points, csv_columns(points, POINT_COLUMNS)),
            "json": atomic_write_json(
                out / f"{self.filename}.json",
                {
                    "stage": stage,
                    "epoch": trainer.current_epoch,
                    "global_step": trainer.global_step,
                    "metric": self.metric,
                    "points": points,
                },
            ),
        }
        numeric = [
            k for k in dict.fromkeys(k for p in points for k in p) if any(_finite(p.get(k)) for p in points)
        ]
        check_metric(self.metric, numeric)  # after the tables: the evaluation is not lost
        if self.plot:
            main = points[0].get("main_metric")
            label = f"{self.metric} ({main})" if main and self.metric == "accuracy" else self.metric
            benchmark = points[0].get("benchmark")
            title = " - ".join(str(t) for t in (points[0].get("model"), benchmark) if t)
            paths["png"] = plot_tradeoff(
                points, out / f"{self.filename}.png", self.metric, label, maximize, title or None
            )
        self._log(trainer, points)
        self.last_paths = paths
        log.info("Trade-off of %d points written to %s", len(points), out)
        return paths

    def _log(self, trainer: Trainer, points: list[dict[str, Any]]) -> None:
        """Log which points are Pareto-optimal (the evaluator itself logs the per-point numbers)."""
        metrics = {f"tradeoff/{p['label']}/pareto": float(p["pareto"]) for p in points}
        metrics["tradeoff/pareto_points"] = float(sum(p["pareto"] for p in points))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

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

from svlm.callbacks.markdown import tradeoff_markdown
from svlm.results import (
    POINT_COLUMNS,
    atomic_open,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    csv_columns,
)

log = logging.getLogger(__name__)

__all__ = [
    "PLOT_METRICS",
    "TradeoffCurve",
    "check_metric",
    "pareto_front",
    "place_labels",
    "plot_tradeoff",
    "tradeoff_figure",
]

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
    points do not dominate each other. Points with a missing or non-finite coordinate are never on the front,
    nor are oracle points (``"oracle": true``: upper bounds that read annotations, not methods), which also
    dominate nothing. Indices are returned in order of increasing ``x``.
    """
    sign = 1.0 if maximize_y else -1.0
    coords = [
        (i, float(p[x]), sign * float(p[y]))
        for i, p in enumerate(points)
        if _finite(p.get(x)) and _finite(p.get(y)) and not p.get("oracle")
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
    """Save :func:`tradeoff_figure` as a PNG at ``path`` (atomically)."""
    import matplotlib.pyplot as plt

    fig = tradeoff_figure(points, metric, metric_label, maximize, title)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def tradeoff_figure(
    points: Sequence[Mapping[str, Any]],
    metric: str = "accuracy",
    metric_label: str | None = None,
    maximize: bool = True,
    title: str | None = None,
) -> Any:
    """A two-panel figure: ``metric`` vs prefill FLOPs and vs measured visual-token budget.

    One line per strategy (points sorted by cost), the dense point as a dashed reference line with a star,
    and the Pareto front (computed on each panel's x axis) as a grey step line with ringed points. Points are
    labelled with their target budget (or, for points of one strategy that share it, the end of their labels)
    without overlapping labels; one legend for both panels sits below them.
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
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained")
    strategies = list(dict.fromkeys(str(p.get("strategy", "?")) for p in points))
    cmap = plt.get_cmap("tab10")
    colors = {s: cmap(i % 10) for i, s in enumerate(s for s in strategies if s != "dense")}
    dense = [p for p in points if p.get("strategy") == "dense" and _finite(p.get(metric))]

    notes: dict[Any, list[tuple[float, float, str, Any]]] = {ax: [] for ax in axes}
    for ax, (xkey, xlabel) in zip(axes, panels, strict=True):
        usable = [p for p in points if _finite(p.get(xkey)) and _finite(p.get(metric))]
        for strategy in strategies:
            if strategy == "dense":
                continue
            pts = sorted((p for p in usable if p.get("strategy") == strategy), key=lambda p: p[xkey])
            if not pts:
                continue
            oracle = any(p.get("oracle") for p in pts)
            ax.plot(
                [p[xkey] for p in pts],
                [p[metric] for p in pts],
                marker="o",
                color=colors[strategy],
                linestyle=":" if oracle else "-",
                label=f"{strategy} (upper bound)" if oracle else strategy,
            )
            notes[ax].extend((p[xkey], p[metric], text, colors[strategy]) for p, text in _point_notes(pts))
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
    legend: dict[str, Any] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    if legend:  # one legend for both panels, below them: it never hides a point
        fig.legend(
            list(legend.values()),
            list(legend),
            loc="outside lower center",
            ncols=min(len(legend), 6),
            fontsize=8,
        )
    if title:
        fig.suptitle(title)
    fig.draw_without_rendering()  # settle the layout: labels are placed in display space
    for ax, items in notes.items():
        place_labels(ax, items)
    return fig


def _point_notes(points: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], str]]:
    """What to write next to each point of one strategy's line: its target budget, or, where several points
    share one (the epochs of a calibration), what tells them apart in their labels (``e0``, ``e1``, ...)."""
    targets = [p.get("budget_target") for p in points]
    if len(set(targets)) == len(targets):
        return [(p, f"{t:g}") for p, t in zip(points, targets, strict=True) if isinstance(t, (int, float))]
    labels = [str(p.get("label", "")) for p in points]
    prefix = os.path.commonprefix(labels) if len(labels) > 1 else ""
    prefix = prefix[: prefix.rfind("-") + 1] if "-" in prefix else ""
    return [(p, label[len(prefix) :] or label) for p, label in zip(points, labels, strict=True)]


#: Where a point's label may go, in points from the point, tried in order until one overlaps no other label.
LABEL_OFFSETS: tuple[tuple[int, int], ...] = (
    (4, 4),
    (4, -10),
    (-4, 4),
    (-4, -10),
    (4, 12),
    (-4, 12),
    (4, -18),
    (-4, -18),
    (10, -3),
    (-10, -3),
)


def place_labels(
    ax: Any, items: Sequence[tuple[float, float, str, Any]], same_spot_px: float = 6.0
) -> list[Any]:
    """Annotate ``(x, y, text, color)`` items so that no two labels overlap: each takes the first offset of
    :data:`LABEL_OFFSETS` that is free (the first one if none is). A label equal to one already placed within
    ``same_spot_px`` pixels (two strategies at the same budget on the same spot) is written once."""
    renderer = ax.figure.canvas.get_renderer()
    placed: list[tuple[Any, str, Any]] = []
    annotations = []
    for x, y, text, color in items:
        if not (_finite(x) and _finite(y)):
            continue
        spot = ax.transData.transform((x, y))
        if any(t == text and abs(spot - s).max() < same_spot_px for _, t, s in placed):
            continue
        for i, (dx, dy) in enumerate(LABEL_OFFSETS):
            note = ax.annotate(
                text,
                (x, y),
                textcoords="offset points",
                xytext=(dx, dy),
                ha="left" if dx >= 0 else "right",
                fontsize=7,
                color=color,
            )
            box = note.get_window_extent(renderer).padded(2)
            if not any(box.overlaps(b) for b, _, _ in placed) or i == len(LABEL_OFFSETS) - 1:
                break
            note.remove()
        if any(box.overlaps(b) for b, _, _ in placed):  # nowhere free: back to the first place
            note.set_position(LABEL_OFFSETS[0])
            note.set_ha("left")
            box = note.get_window_extent(renderer).padded(2)
        placed.append((box, text, spot))
        annotations.append(note)
    return annotations


class TradeoffCurve(Callback):
    """Write the trade-off of all evaluated strategy points: ``tradeoff.csv``, ``tradeoff.json``,
    ``tradeoff.md`` (a Markdown table with accuracy per question type) and a PNG.

    Reads ``pl_module.points`` (one dict per strategy point, see :class:`svlm.module.VLMEvaluator`) at the end
    of ``test`` and after each validation run during ``fit``. Files are written atomically, so an interrupted
    run never leaves a truncated table.

    Args:
        dirpath: Folder for the files. Defaults to the trainer's ``default_root_dir`` (e.g. ``results/demo``).
        filename: Stem of the files (``<filename>.csv``, ``.json``, ``.md``, ``.png``).
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
            "md": atomic_write_text(out / f"{self.filename}.md", tradeoff_markdown(points)),
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

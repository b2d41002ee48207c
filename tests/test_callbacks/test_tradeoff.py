import csv
import json
import math
from types import SimpleNamespace

import pytest

from svlm.callbacks import TradeoffCurve, pareto_front
from svlm.results import POINT_COLUMNS


def _point(label, strategy, flops, acc, budget=None, target=None):
    return {
        "label": label,
        "strategy": strategy,
        "budget_target": target,
        "budget": budget if budget is not None else flops * 100,
        "budget_output": (budget if budget is not None else flops * 100) - 5,
        "prefill_flops": flops * 1e12,
        "prefill_tflops": flops,
        "dense_prefill_flops": 4e12,
        "flops_ratio": flops / 4,
        "main_metric": "exact_match",
        "accuracy": acc,
        "relative_accuracy": acc / 0.8,
        "metric/exact_match": acc,
        "samples": 8,
        "model": "tiny:llava",
        "benchmark": "shapes",
    }


POINTS = [
    _point("dense", "dense", 4.0, 0.80, budget=576),
    _point("fastv-192", "fastv", 1.6, 0.70, target=192),
    _point("fastv-64", "fastv", 0.8, 0.50, target=64),
    _point("sparsevlm-192", "sparsevlm", 1.5, 0.75, target=192),
    _point("sparsevlm-64", "sparsevlm", 0.7, 0.60, target=64),
    _point("random-64", "random", 0.6, 0.40, target=64),
]


class _Trainer(SimpleNamespace):
    pass


def _trainer(tmp_path, loggers=()):
    return _Trainer(
        default_root_dir=str(tmp_path),
        is_global_zero=True,
        sanity_checking=False,
        current_epoch=0,
        global_step=0,
        loggers=list(loggers),
    )


class _Logger:
    def __init__(self):
        self.logged = {}

    def log_metrics(self, metrics, step=None):
        self.logged.update(metrics)


def test_pareto_front_on_known_points():
    # dominated: fastv-192 (sparsevlm-192 is cheaper and better) and fastv-64 (sparsevlm-64 cheaper, better)
    front = pareto_front(POINTS, x="prefill_flops", y="accuracy")
    assert [POINTS[i]["label"] for i in front] == ["random-64", "sparsevlm-64", "sparsevlm-192", "dense"]


def test_pareto_front_edge_cases():
    pts = [
        {"x": 1.0, "y": 0.5},
        {"x": 1.0, "y": 0.5},  # identical points do not dominate each other
        {"x": 1.0, "y": 0.4},  # same cost, worse
        {"x": 2.0, "y": math.nan},  # missing value: never on the front
        {"x": 0.5, "y": 0.1},
    ]
    assert pareto_front(pts, x="x", y="y") == [4, 0, 1]
    # lower-is-better metric
    assert pareto_front(pts, x="x", y="y", maximize_y=False) == [4]
    assert pareto_front([], x="x", y="y") == []


def test_oracle_points_are_off_the_front_and_dominate_nothing():
    oracle = {"label": "evidence_oracle-64", "prefill_flops": 0.1, "accuracy": 0.99, "oracle": True}
    front = pareto_front([*POINTS, oracle], x="prefill_flops", y="accuracy")
    assert [POINTS[i]["label"] for i in front] == ["random-64", "sparsevlm-64", "sparsevlm-192", "dense"]


def test_a_run_marks_oracle_points_and_keeps_them_off_the_front(tmp_path):
    import json

    from svlm.cli import main

    args = [
        "test", "--model.model", "tiny:llava?num_layers=4&image_size=336", "--model.dtype", "float32",
        "--model.max_new_tokens", "2", "--model.strategies",
        "[dense, {strategy: evidence_oracle, budget: 64}, {strategy: random, budget: 64}]",
        "--data.benchmark", "scenes", "--data.limit", "2", "--data.batch_size", "2",
        "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(args) == 0
    points = {p["label"]: p for p in json.loads((tmp_path / "run" / "tradeoff.json").read_text())["points"]}
    assert [points[k]["oracle"] for k in ("dense", "evidence_oracle-64", "random-64")] == [False, True, False]
    assert points["evidence_oracle-64"]["pareto"] is False


def test_markdown_table_has_a_column_per_question_type():
    from svlm.callbacks.markdown import question_types, tradeoff_markdown

    points = [
        {"label": "dense", "budget": 576.0, "flops_ratio": 1.0, "accuracy": 0.9, "relative_accuracy": 1.0,
         "main_metric": "exact_match", "metric/exact_match/color": 1.0, "metric/exact_match/text": 0.8,
         "samples": 10, "model": "m", "benchmark": "scenes"},
        {"label": "random-64", "budget": 64.0, "flops_ratio": 0.27, "accuracy": 0.5,
         "relative_accuracy": 0.556, "main_metric": "exact_match", "metric/exact_match/color": 0.25,
         "metric/exact_match/count": None},
    ]  # fmt: skip
    assert question_types(points) == ["color", "text", "count"]
    lines = tradeoff_markdown(points).splitlines()
    assert (
        lines[0] == "| point | budget | FLOPs ratio | accuracy | relative accuracy | color | text | count |"
    )
    assert lines[2] == "| dense | 576.0 | 1.000 | 0.900 | 1.000 | 1.00 | 0.80 | - |"
    assert lines[3] == "| random-64 | 64.0 | 0.270 | 0.500 | 0.556 | 0.25 | - | - |"
    assert lines[-1] == "10 samples of scenes, model m, metric exact_match."


def test_tradeoff_writes_csv_json_png(tmp_path):
    logger = _Logger()
    cb = TradeoffCurve()
    module = SimpleNamespace(points=POINTS)
    paths = cb.write(_trainer(tmp_path, [logger]), module)
    assert set(paths) == {"csv", "json", "md", "png"}
    assert (tmp_path / "tradeoff.md").read_text().startswith("| point | budget |")

    with open(tmp_path / "tradeoff.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == [p["label"] for p in POINTS]
    header = list(rows[0])
    expected = [c for c in POINT_COLUMNS if c in header]
    assert header[: len(expected)] == expected  # fixed columns first, in order
    for col in (
        "label",
        "strategy",
        "budget",
        "budget_output",
        "prefill_flops",
        "flops_ratio",
        "accuracy",
        "pareto",
    ):
        assert col in header
    assert "metric/exact_match" in header
    assert rows[0]["budget_target"] == ""  # None -> empty cell
    assert [r["pareto"] for r in rows] == ["True", "False", "False", "True", "True", "True"]

    data = json.loads((tmp_path / "tradeoff.json").read_text())
    assert data["stage"] == "test" and len(data["points"]) == len(POINTS)
    assert data["points"][1]["pareto"] is False

    png = (tmp_path / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert logger.logged["tradeoff/pareto_points"] == 4.0
    assert logger.logged["tradeoff/dense/pareto"] == 1.0
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_tradeoff_nan_and_custom_dir(tmp_path):
    pts = [dict(p) for p in POINTS[:3]]
    pts[1]["accuracy"] = math.nan
    cb = TradeoffCurve(dirpath=str(tmp_path / "out"), filename="curve", plot=False)
    paths = cb.write(_trainer(tmp_path), SimpleNamespace(points=pts))
    assert set(paths) == {"csv", "json", "md"}
    data = json.loads((tmp_path / "out" / "curve.json").read_text())
    assert data["points"][1]["accuracy"] is None  # strict JSON: NaN -> null


def test_tradeoff_skips_without_points_and_in_sanity_check(tmp_path):
    cb = TradeoffCurve()
    assert cb.write(_trainer(tmp_path), SimpleNamespace(points=[])) == {}
    trainer = _trainer(tmp_path)
    trainer.sanity_checking = True
    cb.on_validation_end(trainer, SimpleNamespace(points=POINTS))
    assert not (tmp_path / "tradeoff.csv").exists()
    trainer.sanity_checking = False
    cb.on_validation_end(trainer, SimpleNamespace(points=POINTS))
    assert json.loads((tmp_path / "tradeoff.json").read_text())["stage"] == "validate"


@pytest.mark.parametrize("metric", ["accuracy", "metric/exact_match"])
def test_plot_metric_choice(tmp_path, metric):
    cb = TradeoffCurve(metric=metric)
    assert cb.write(_trainer(tmp_path), SimpleNamespace(points=POINTS))["png"].exists()


def _labels(fig):
    return [[t.get_text() for t in ax.texts] for ax in fig.axes]


def test_plot_labels_never_overlap_and_the_legend_sits_below():
    """Two strategies at the same budget on the same spot get one "192", neighbours do not overlap, and
    the one legend is outside both panels (it hid points before)."""
    import matplotlib.pyplot as plt

    from svlm.callbacks.tradeoff import tradeoff_figure

    points = [
        _point("dense", "dense", 4.0, 0.80, budget=256),
        _point("fastv-192", "fastv", 1.6, 0.70, budget=192, target=192),
        _point("random-192", "random", 1.6, 0.70, budget=192, target=192),
        _point("fastv-128", "fastv", 1.1, 0.60, budget=128, target=128),
        _point("random-128", "random", 1.2, 0.60, budget=128, target=128),
        _point("sparsevlm-128", "sparsevlm", 1.3, 0.60, budget=128, target=128),
    ]
    fig = tradeoff_figure(points)
    try:
        assert [sorted(texts) for texts in _labels(fig)] == [["128", "128", "128", "192"], ["128", "192"]]
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            boxes = [t.get_window_extent(renderer) for t in ax.texts]
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
            assert ax.get_legend() is None
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == [
            "fastv",
            "random",
            "sparsevlm",
            "dense",
            "Pareto front",
        ]
        legend_box = legend.get_window_extent(renderer)
        assert all(legend_box.y1 < ax.get_window_extent(renderer).y0 for ax in fig.axes)
    finally:
        plt.close(fig)


def test_calibration_epochs_are_labelled_by_epoch():
    """Points of one strategy at one budget (calibration epochs) are told apart by label, not all "96"."""
    import matplotlib.pyplot as plt

    from svlm.callbacks.tradeoff import tradeoff_figure

    points = [
        _point("dense", "dense", 4.0, 0.80, budget=256),
        _point("sparsevlm-96", "sparsevlm", 1.0, 0.5, 96, 96),
    ]
    points += [
        _point(f"calibrated-e{e}", "calibrated", 1.0 - 0.1 * e, 0.5 + 0.05 * e, 96, 96) for e in range(4)
    ]
    fig = tradeoff_figure(points)
    try:
        assert sorted(_labels(fig)[0]) == ["96", "e0", "e1", "e2", "e3"]
    finally:
        plt.close(fig)

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


def test_tradeoff_writes_csv_json_png(tmp_path):
    logger = _Logger()
    cb = TradeoffCurve()
    module = SimpleNamespace(points=POINTS)
    paths = cb.write(_trainer(tmp_path, [logger]), module)
    assert set(paths) == {"csv", "json", "png"}

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
    assert set(paths) == {"csv", "json"}
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

"""The svlm-scenes bounds computed from a table run's points: each check can fail."""

from __future__ import annotations

import json

import pytest

from svlm.data.scenes_bounds import bounds, main


def _points(dense=0.9, oracle=0.88, rand=0.5, divprune=0.7, pooling=0.6):
    def point(strategy, acc, budget=64.0):
        return {"strategy": strategy, "budget_target": budget, "accuracy": acc, "samples": 500}

    return [
        point("dense", dense, 576.0),
        point("evidence_oracle", oracle),
        point("random", rand),
        point("random", 0.8, 192.0),
        point("divprune", divprune),
        point("pooling", pooling),
    ]


def test_every_check_holds_on_a_benchmark_where_choice_matters():
    result = bounds(_points())
    assert result["best_question_agnostic"] == "divprune" and result["question_agnostic"]["pooling"] == 0.6
    assert all(result["checks"].values()), result["checks"]


@pytest.mark.parametrize(
    "kwargs, failing",
    [
        ({"dense": 0.8, "oracle": 0.78}, "dense >= 0.85"),
        ({"rand": 0.7}, "random-64 loses >= 25 points"),
        ({"oracle": 0.8}, "oracle-64 keeps >= 95% of dense"),
        ({"divprune": 0.85}, "best question-agnostic-64 >= 8 points below the oracle"),
    ],
)
def test_each_check_fails_on_its_own(kwargs, failing):
    checks = bounds(_points(**kwargs))["checks"]
    assert [name for name, ok in checks.items() if not ok] == [failing]


def test_missing_points_are_reported_not_guessed(tmp_path, capsys):
    only_dense = [{"strategy": "dense", "budget_target": 576.0, "accuracy": 0.9, "samples": 10}]
    checks = bounds(only_dense)["checks"]
    assert checks["dense >= 0.85"] is True and [v for v in checks.values() if v is None] == [None] * 3
    with pytest.raises(ValueError, match="no 'dense' point"):
        bounds(only_dense[1:])
    path = tmp_path / "tradeoff.json"
    path.write_text(json.dumps({"points": _points(divprune=0.85)}))
    assert main([str(path)]) == 0 and main([str(path), "--check"]) == 1
    assert json.loads((tmp_path / "bounds.json").read_text())["dense"] == 0.9
    assert "[FAIL] best question-agnostic-64" in capsys.readouterr().out

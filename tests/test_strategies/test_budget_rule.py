"""One budget rule for every strategy (svlm.strategies.base.parse_budget): counts, fractions, refusals."""

from __future__ import annotations

import math

import pytest
import torch

import svlm
from svlm.module import expand_points
from svlm.strategies import BudgetError, parse_budget

PRUNING = [name for name in svlm.available_strategies() if name != "dense"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (64, 64),
        (1, 1),
        (96.5, 96.5),
        (0.5, 0.5),
        ("64", 64),
        (" 0.25 ", 0.25),
        ("128.0", 128.0),
    ],
)
def test_parse_budget_accepts(value, expected):
    got = parse_budget(value)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "is a bool"),
        (False, "is a bool"),
        ("sixty", "is not a number"),
        ("", "is not a number"),
        ([64], "is not a number"),
        (1.0, "ambiguous"),
        ("1.0", "ambiguous"),
        (0, "must be > 0"),
        (-3, "must be > 0"),
        (0.0, "finite number > 0"),
        (-0.5, "finite number > 0"),
        (math.nan, "finite number > 0"),
        (math.inf, "finite number > 0"),
        ("nan", "finite number > 0"),
    ],
)
def test_parse_budget_refuses_naming_the_value(value, message):
    with pytest.raises(BudgetError, match=message) as info:
        parse_budget(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("name", PRUNING)
@pytest.mark.parametrize("value", [True, 1.0, "lots", math.nan])
def test_every_strategy_refuses_the_same_values(name, value):
    with pytest.raises(BudgetError):
        svlm.build_strategy(name, budget=value)


@pytest.mark.parametrize("name", PRUNING)
def test_every_strategy_reads_a_numeric_string(name):
    assert svlm.build_strategy(name, budget="64").budget == 64


@pytest.mark.parametrize("name", PRUNING)
@torch.no_grad()
def test_a_fraction_below_one_token_fails_the_same_everywhere(make_tiny_vlm, images, questions, name):
    tiny = make_tiny_vlm("llava")
    sparse = svlm.sparsify(tiny.model, name, budget=1e-9)
    with pytest.raises(BudgetError, match="less than one token"):
        sparse(**tiny.inputs(images[:1], questions[:1]))


def test_cli_points_use_the_rule():
    (point,) = expand_points([{"strategy": "fastv", "budget": "64"}])
    assert point.budget == 64 and point.label == "fastv-64"
    with pytest.raises(BudgetError, match="is a bool"):
        expand_points([{"strategy": "fastv", "budget": True}])

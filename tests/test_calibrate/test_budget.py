"""The analytic model of what SparseVLM keeps: exact against real runs; bisection meets the budget."""

from __future__ import annotations

import pytest
import torch

import svlm
from svlm.calibrate.budget import (
    Geometry,
    RankRule,
    RankStats,
    RecordingSparseVLM,
    TableRule,
    simulate,
    solve_multiplier,
)
from svlm.calibrate.fidelity import forward_answer
from svlm.calibrate.params import CountsSpace, RankSpace, default_shape
from svlm.strategies.base import BudgetError

LAYERS = [2, 6, 15]


@pytest.fixture(scope="module")
def small(make_tiny_vlm):
    # 8 layers (pruning at 1/2/4 after scaling), 64 visual tokens: fast, and the rank rule has room to act
    return make_tiny_vlm("llava", num_layers=8, image_size=112)


@pytest.fixture(scope="module")
def inputs(small, images, questions):
    return small.inputs(images[:1] * 3, [*questions, "Is there a star? Answer yes or no."])


@pytest.mark.parametrize(
    "params",
    [
        {"rank_scale": [3.0, 1.5, 0.7], "rank_bias": [2.0, 1.0, 0.0], "rank_rtol": [1e-3, 1e-2, 0.1]},
        {"rank_scale": [0.0, 2.0, 9.0], "rank_bias": [30.0, 3.0, 1.0], "rank_rtol": [0.3, 0.05, 1e-5]},
    ],
)
def test_simulation_matches_real_runs(small, inputs, params):
    strategy = RecordingSparseVLM(layers=LAYERS, **params)
    _, report = forward_answer(small.model, inputs, strategy)
    ids = ["a", "b", "c"]
    stats = RankStats()
    stats.update_tokens(ids, report)
    stats.update_svals(ids, strategy.records, len(LAYERS))
    _, n_visual, n_text, svals = stats.pack(ids, len(LAYERS))
    geometry = Geometry.of(small.model.config, LAYERS)
    rule = RankRule(tuple(params["rank_scale"]), tuple(params["rank_bias"]), tuple(params["rank_rtol"]))
    sim = simulate(geometry, rule, n_visual, n_text, svals)
    assert sim.counts.T.tolist() == [d.visual_after.tolist() for d in report.decisions]
    assert sim.budget.tolist() == pytest.approx(report.budget_per_sample)
    assert sim.flops.tolist() == pytest.approx([geometry.tokens_flops(t) for t in report.tokens])


def test_table_rule_matches_counts_mode(small, inputs):
    sparse = svlm.sparsify(small.model, "sparsevlm", layers=LAYERS, counts=[300, 100, 20])
    with torch.no_grad():
        sparse(**inputs)
    report = sparse.last_report
    geometry = Geometry.of(small.model.config, LAYERS)
    n_visual = torch.tensor([float(v[0]) for v in report.visual_tokens])
    n_text = torch.tensor(
        [float(t[0] - v[0]) for t, v in zip(report.tokens, report.visual_tokens, strict=True)]
    )
    sim = simulate(geometry, TableRule((300, 100, 20)), n_visual, n_text)
    assert sim.budget.tolist() == pytest.approx(report.budget_per_sample)


def _synthetic(samples: int = 40, steps: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    svals = torch.rand(samples, steps, 12, generator=g, dtype=torch.float64).sort(-1, descending=True).values
    svals[..., 0] = 1.0
    n_visual = torch.full((samples,), 576.0, dtype=torch.float64)
    n_text = torch.randint(20, 40, (samples,), generator=g).double()
    geometry = Geometry(num_layers=32, layers=(2, 6, 15), per_token=1e6, per_pair=1e3)
    return geometry, n_visual, n_text, svals


@pytest.mark.parametrize("space_cls", [RankSpace, CountsSpace])
@pytest.mark.parametrize("target", [64.0, 128.0, 192.0])
def test_bisection_meets_the_budget(space_cls, target):
    geometry, n_visual, n_text, svals = _synthetic()
    space = space_cls(3)
    unit = space.initial(default_shape(target, 3), adaptivity=0.6, log10_rtol=-1.0)

    def predict(m: float) -> tuple[float, float]:
        sim = simulate(geometry, space.rule(unit, m, svals), n_visual, n_text, svals)
        return float(sim.budget.mean()), float(sim.flops.sum())

    m = solve_multiplier(predict, target)
    budget, flops = predict(m)
    assert target * 0.99 <= budget <= target  # meets the target from below, within one count step
    assert predict(m * 1.01)[0] > target or m == 0
    # a FLOPs cap below the budget's FLOPs binds instead
    m_capped = solve_multiplier(predict, target, flops=0.97 * flops)
    assert predict(m_capped)[1] <= 0.97 * flops and predict(m_capped)[0] < budget


def test_bisection_errors_name_the_problem():
    geometry, n_visual, n_text, svals = _synthetic()
    space = RankSpace(3)
    unit = space.initial(default_shape(64, 3))

    def predict(m: float) -> tuple[float, float]:
        sim = simulate(geometry, space.rule(unit, m, svals), n_visual, n_text, svals)
        return float(sim.budget.mean()), float(sim.flops.sum())

    with pytest.raises(BudgetError, match="cannot be met"):
        solve_multiplier(predict, 40.0)  # 3 of 32 layers see all 576 tokens: 54 per layer at least
    with pytest.raises(BudgetError, match="nothing to prune"):
        solve_multiplier(predict, 600.0)


def test_rank_space_maps_adaptivity_zero_to_fixed_counts():
    space = RankSpace(3)
    unit = space.initial([66, 34, 20], adaptivity=0.0)
    rule = space.rule(unit, 66.0, None)
    assert rule.scale == (0.0, 0.0, 0.0)
    assert rule.bias == (66.0, 34.0, 20.0)
    params = space.strategy_params(rule, LAYERS)
    assert set(params) == {"layers", "rank_scale", "rank_bias", "rank_rtol"}


def test_rank_space_fixed_counts_keep_at_least_one_token():
    """A step whose fixed count falls below one token keeps one (as the counts space does): the schedule
    reader refuses a rule that keeps none, so the search must never evaluate or write one."""
    from svlm.calibrate.schedule import validate_params

    space = RankSpace(3)
    unit = space.initial([66, 34, 0.5], adaptivity=0.0)
    rule = space.rule(unit, 1.0, None)
    assert rule.scale == (0.0, 0.0, 0.0) and rule.bias == (1.0, 1.0, 1.0)
    validate_params(space.strategy_params(rule, LAYERS))

"""The evolution strategy: improves a toy objective, keeps its state through an optimizer state_dict."""

from __future__ import annotations

import pytest
import torch

from svlm.calibrate.search import EvolutionSearch


def _run(search: EvolutionSearch, objective, iterations: int) -> list[float]:
    values = []
    for _ in range(iterations):
        current = objective(search.incumbent)
        candidates = search.ask()
        search.tell(current, [objective(c) for c in candidates])
        values.append(objective(search.incumbent))
    return values


def test_search_improves_a_toy_objective():
    target = torch.tensor([0.2, 0.8, 0.5, 0.1, 0.9, 0.3])

    def objective(x: torch.Tensor) -> float:
        return float(((x.double() - target) ** 2).sum())

    x = torch.nn.Parameter(torch.full((6,), 0.5), requires_grad=False)
    search = EvolutionSearch([x], sigma=0.1, offspring=2, coordinates=2, seed=0)
    start = objective(x)
    values = _run(search, objective, 150)
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))  # elitist: never worse
    assert values[-1] < 0.05 * start
    assert 0 < search.accepted < search.iterations == 150
    assert bool(((x >= 0) & (x <= 1)).all())  # stays in the unit box


def test_search_state_round_trips_through_state_dict():
    def objective(x: torch.Tensor) -> float:
        return float((x.double() - 0.7).abs().sum())

    a = torch.nn.Parameter(torch.full((4,), 0.1), requires_grad=False)
    search = EvolutionSearch([a], sigma=0.2, seed=3)
    _run(search, objective, 10)
    state = search.state_dict()
    b = torch.nn.Parameter(a.detach().clone(), requires_grad=False)
    resumed = EvolutionSearch([b], sigma=0.2, seed=3)
    resumed.load_state_dict(state)
    assert resumed.sigma == search.sigma and resumed.iterations == 10
    for x, y in zip(search.ask(), resumed.ask(), strict=True):  # same generator state -> same candidates
        torch.testing.assert_close(x, y)


def test_search_rejects_bad_options_and_tell_without_ask():
    x = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    with pytest.raises(ValueError, match="offspring"):
        EvolutionSearch([x], offspring=0)
    with pytest.raises(ValueError, match="sigma"):
        EvolutionSearch([x], sigma=2.0)
    with pytest.raises(RuntimeError, match="ask"):
        EvolutionSearch([x]).tell(1.0, [0.5])


def test_ties_are_rejected_and_shrink_the_step():
    x = torch.nn.Parameter(torch.full((3,), 0.5), requires_grad=False)
    search = EvolutionSearch([x], sigma=0.2, seed=0)
    search.ask()
    assert search.tell(1.0, [1.0]) is None  # no evidence, no move
    torch.testing.assert_close(x, torch.full((3,), 0.5))
    assert search.sigma < 0.2

"""Search spaces: a point of the unit box -> SparseVLM schedule parameters, given one global multiplier.

Both parametrisations separate the *shape* of a schedule (searched) from its *size* (a multiplier ``m``
solved per candidate so that the calibration budget meets the target), so the search never wastes a step
on a candidate that is merely bigger or smaller.

``rank`` (default) — per pruning step ``l`` three coordinates:

* ``share_l`` (log): the relative size of the count after step ``l``; ``c_l = m * exp(share_l)`` tokens;
* ``adaptivity_l`` in [0, 1]: how much of ``c_l`` follows the attention's rank (0: a fixed count,
  1: the pure v1 rule ``rank * scale``);
* ``log10_rtol_l``: the relative singular-value threshold that defines the rank.

They map onto v1's rule ``min(int(rank_l * scale_l + bias_l), n_l - 1)`` as
``scale_l = adaptivity_l * c_l / mean_rank_l`` and ``bias_l = (1 - adaptivity_l) * c_l`` (``mean_rank_l``:
the mean rank at ``rtol_l`` on the calibration set), so the expected count stays ``c_l`` whatever the
adaptivity or threshold. Adaptivity 0 with the default shape is SparseVLM's uncalibrated budget schedule.

``counts`` — per pruning step ``share_l`` only: a fixed table (v1.5/v2 style) with an exact budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from svlm.calibrate.budget import RankRule, TableRule, ranks
from svlm.strategies.sparsevlm import PRESETS

__all__ = ["PARAMETRIZATIONS", "CountsSpace", "RankSpace", "default_shape", "make_space"]

SHARE_RANGE = (-4.0, 4.0)
RTOL_RANGE = (-6.0, -0.3)
SIGNIFICANT_DIGITS = 6


def default_shape(budget: float, steps: int, version: str = "v2") -> list[float]:
    """SparseVLM's schedule shape for ``budget`` (nearest published preset), fitted to ``steps`` steps."""
    if version not in PRESETS:
        raise ValueError(f"Unknown SparseVLM version {version!r}; valid: {', '.join(PRESETS)}.")
    table = PRESETS[version]
    shape = list(table[min(table, key=lambda k: abs(k - budget))])
    if steps <= len(shape):
        return [float(x) for x in shape[len(shape) - steps :]]
    return [float(x) for x in shape + [shape[-1]] * (steps - len(shape))]


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


class _Space:
    """Common part: names and bounds of the coordinates; ``to_real``/``to_unit`` map the unit box."""

    kind = ""

    def __init__(self, steps: int, names: list[str], lower: list[float], upper: list[float]) -> None:
        self.steps = steps
        self.names = names
        self.lower = torch.tensor(lower, dtype=torch.float64)
        self.upper = torch.tensor(upper, dtype=torch.float64)

    @property
    def dim(self) -> int:
        return len(self.names)

    def to_real(self, unit: torch.Tensor) -> torch.Tensor:
        return self.lower + unit.double().clamp(0, 1) * (self.upper - self.lower)

    def to_unit(self, real: Sequence[float] | torch.Tensor) -> torch.Tensor:
        real = torch.as_tensor(real, dtype=torch.float64)
        return ((real - self.lower) / (self.upper - self.lower)).clamp(0, 1)

    def describe(self, unit: torch.Tensor) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, self.to_real(unit), strict=True)}

    def shares(self, unit: torch.Tensor) -> torch.Tensor:
        return self.to_real(unit)[: self.steps].exp()


class RankSpace(_Space):
    """``[share_1..P, adaptivity_1..P, log10_rtol_1..P]`` -> v1 rank rule (see module docstring)."""

    kind = "rank"

    def __init__(self, steps: int) -> None:
        names = (
            [f"share_{i}" for i in range(steps)]
            + [f"adaptivity_{i}" for i in range(steps)]
            + [f"log10_rtol_{i}" for i in range(steps)]
        )
        lower = [SHARE_RANGE[0]] * steps + [0.0] * steps + [RTOL_RANGE[0]] * steps
        upper = [SHARE_RANGE[1]] * steps + [1.0] * steps + [RTOL_RANGE[1]] * steps
        super().__init__(steps, names, lower, upper)

    def initial(
        self, shape: Sequence[float], adaptivity: float = 0.0, log10_rtol: float = -3.0
    ) -> torch.Tensor:
        share = torch.tensor([math.log(s / max(shape)) for s in shape], dtype=torch.float64)
        real = torch.cat(
            [
                share,
                torch.full((self.steps,), float(adaptivity)),
                torch.full((self.steps,), float(log10_rtol)),
            ]
        )
        return self.to_unit(real)

    def rtol(self, unit: torch.Tensor) -> list[float]:
        return [_round(10.0**v) for v in self.to_real(unit)[2 * self.steps :].tolist()]

    def rule(self, unit: torch.Tensor, multiplier: float, svals: torch.Tensor | None) -> RankRule:
        real = self.to_real(unit)
        levels = multiplier * real[: self.steps].exp()
        adaptivity = real[self.steps : 2 * self.steps]
        rtol = self.rtol(unit)
        if svals is not None and svals.shape[0] > 0:
            mean_rank = ranks(svals, rtol).double().mean(0).clamp_min(1.0)
        else:
            mean_rank = torch.ones(self.steps, dtype=torch.float64)
        scale = [_round(float(x)) for x in adaptivity * levels / mean_rank]
        bias = [_round(float(x)) for x in (1 - adaptivity) * levels]
        # a fixed count (scale 0) reads better as the integer that int() makes of it, and keeps at least one
        # token as the counts space does (a schedule that keeps none is refused when read)
        bias = [float(max(1, math.floor(b))) if s == 0 else b for s, b in zip(scale, bias, strict=True)]
        return RankRule(scale=tuple(scale), bias=tuple(bias), rtol=tuple(rtol))

    @staticmethod
    def strategy_params(rule: RankRule, layers: Sequence[int]) -> dict[str, Any]:
        return {
            "layers": [int(x) for x in layers],
            "rank_scale": list(rule.scale),
            "rank_bias": list(rule.bias),
            "rank_rtol": list(rule.rtol),
        }


class CountsSpace(_Space):
    """``[share_1..P]`` -> a fixed counts table (for 576 visual tokens) of size ``m * exp(share)``."""

    kind = "counts"

    def __init__(self, steps: int) -> None:
        super().__init__(
            steps, [f"share_{i}" for i in range(steps)], [SHARE_RANGE[0]] * steps, [SHARE_RANGE[1]] * steps
        )

    def initial(self, shape: Sequence[float], **_: Any) -> torch.Tensor:
        return self.to_unit([math.log(s / max(shape)) for s in shape])

    def rule(self, unit: torch.Tensor, multiplier: float, svals: torch.Tensor | None = None) -> TableRule:
        levels = multiplier * self.shares(unit)
        return TableRule(counts=tuple(max(1, int(round(float(x)))) for x in levels))

    @staticmethod
    def strategy_params(rule: TableRule, layers: Sequence[int]) -> dict[str, Any]:
        return {"layers": [int(x) for x in layers], "counts": list(rule.counts)}


PARAMETRIZATIONS: dict[str, type[_Space]] = {"rank": RankSpace, "counts": CountsSpace}


def make_space(kind: str, steps: int) -> RankSpace | CountsSpace:
    if kind not in PARAMETRIZATIONS:
        raise ValueError(f"Unknown parametrization {kind!r}; valid: {', '.join(PARAMETRIZATIONS)}.")
    return PARAMETRIZATIONS[kind](steps)

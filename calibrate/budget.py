"""Predict what a SparseVLM schedule keeps without running the model, and solve its scale for a budget.

The rank rule ``k_l = min(int(rank_l * scale_l + bias_l), n_l - 1)`` depends on the data only through the
singular values of the raters' attention at each pruning layer (the numerical rank for any ``rtol`` is the
number of singular values above ``rtol * sigma_max``). :class:`RankStats` keeps those singular values per
calibration sample, recorded by :class:`RecordingSparseVLM` during real pruned forwards; :func:`simulate`
then gives the per-sample counts, budget and decoder FLOPs of any candidate rule in microseconds, so the
global multiplier of a candidate can be bisected against the target budget on the whole calibration set
(:func:`solve_multiplier`) at the price of zero extra forwards.

The singular values at a later pruning layer depend on what earlier layers kept; the cache holds those of
the current search incumbent, which is refreshed on every batch it runs on, so the prediction for a nearby
candidate is close (the calibrator measures and logs the gap, and re-solves when it is large).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from svlm import flops as svlm_flops
from svlm.strategies.base import BudgetError
from svlm.strategies.sparsevlm import REFERENCE_VISUAL_TOKENS, SparseVLM, scale_layers

__all__ = [
    "Geometry",
    "RankRule",
    "RankStats",
    "RecordingSparseVLM",
    "Simulation",
    "TableRule",
    "simulate",
    "solve_multiplier",
]


class RecordingSparseVLM(SparseVLM):
    """SparseVLM that also records, per pruning step and sample, the singular values behind each rank.

    The ranks it uses are SparseVLM's own (``super()._ranks``); the singular values are extra, for
    :class:`RankStats`. ``records[step][sample]`` is a float32 CPU tensor (descending), reset per prefill.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.records: dict[int, list[torch.Tensor]] = {}

    def prepare(self, ctx: Any) -> None:
        self.records = {}
        super().prepare(ctx)

    def _ranks(self, view: Any, probs: torch.Tensor, step: int) -> list[int]:
        ranks = super()._ranks(view, probs, step)
        values = []
        for b in range(probs.shape[0]):
            rows = probs[b][view.rows_valid[b]]
            matrix = rows[:, view.visual[b] & view.valid[b]].float()
            values.append(torch.linalg.svdvals(matrix).cpu() if matrix.numel() else torch.zeros(0))
        self.records[step] = values
        return ranks


@dataclass(frozen=True)
class Geometry:
    """Where a model prunes and what a token costs there.

    ``layers`` are the pruning layers after :func:`~svlm.strategies.sparsevlm.scale_layers`; the decoder
    FLOPs of one layer on ``n`` tokens are ``per_token * n + per_pair * n**2`` (svlm's analytic count).
    """

    num_layers: int
    layers: tuple[int, ...]
    per_token: float
    per_pair: float

    @classmethod
    def of(cls, config: Any, layers: Sequence[int]) -> Geometry:
        text = getattr(config, "text_config", None) or config
        num_layers = int(text.num_hidden_layers)
        one = svlm_flops.decoder_layer_flops(1, 1, config)
        two = svlm_flops.decoder_layer_flops(2, 2, config)
        per_pair = (two - 2 * one) / 2
        return cls(num_layers, tuple(scale_layers(layers, num_layers)), one - per_pair, per_pair)

    @property
    def spans(self) -> torch.Tensor:
        """Layers that see the count kept after each pruning layer (the last one runs to the end)."""
        bounds = [*self.layers[1:], self.num_layers - 1]
        return torch.tensor(
            [hi - lo for lo, hi in zip(self.layers, bounds, strict=True)], dtype=torch.float64
        )

    @property
    def dense_layers(self) -> int:
        """Layers that see every visual token (up to and including the first pruning layer)."""
        return self.layers[0] + 1

    def visual_per_layer(self, n_visual: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """[S, num_layers] visual tokens entering each layer, from [S] totals and [S, steps] counts."""
        reps = torch.tensor([self.dense_layers, *self.spans.long().tolist()])
        columns = torch.cat([n_visual.double().unsqueeze(-1), counts.double()], dim=-1)
        return torch.repeat_interleave(columns, reps, dim=-1)

    def budget(self, n_visual: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """[S] mean over layers of visual tokens entering each layer (``Report.budget`` per sample)."""
        full = self.dense_layers * n_visual.double()
        return (full + (counts.double() * self.spans).sum(-1)) / self.num_layers

    def decoder_flops(
        self, n_text: torch.Tensor, n_visual: torch.Tensor, counts: torch.Tensor
    ) -> torch.Tensor:
        """[S] analytic decoder FLOPs of the prefill (projections, attention rectangle, MLP)."""
        tokens = self.visual_per_layer(n_visual, counts) + n_text.double().unsqueeze(-1)
        return (self.per_token * tokens + self.per_pair * tokens**2).sum(-1)

    def tokens_flops(self, tokens_per_layer: Sequence[float]) -> float:
        """Decoder FLOPs of one sample from its tokens per layer (e.g. ``Report.tokens[sample]``)."""
        t = torch.tensor(tokens_per_layer, dtype=torch.float64)
        return float((self.per_token * t + self.per_pair * t**2).sum())


@dataclass(frozen=True)
class RankRule:
    """SparseVLM v1's count ``int(rank(rtol) * scale + bias)`` per pruning step."""

    scale: tuple[float, ...]
    bias: tuple[float, ...]
    rtol: tuple[float, ...]


@dataclass(frozen=True)
class TableRule:
    """SparseVLM's fixed ``counts`` (a table for 576 visual tokens, scaled to each sample's count)."""

    counts: tuple[int, ...]


class RankStats:
    """Per-sample statistics of the calibration set: visual and text tokens, and the singular values of the
    raters' attention at each pruning step (from the last recorded pruned forward of that sample)."""

    def __init__(self) -> None:
        self.n_visual: dict[str, int] = {}
        self.n_text: dict[str, int] = {}
        self.svals: dict[str, list[torch.Tensor]] = {}
        self._packed: tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.n_visual)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.n_visual

    def has_svals(self, ids: Iterable[str]) -> bool:
        return all(i in self.svals for i in ids)

    def update_tokens(self, ids: Sequence[str], report: Any) -> None:
        """Token counts of each sample from a pruned forward's ``Report``."""
        for i, sid in enumerate(ids):
            visual, tokens = report.visual_tokens[i][0], report.tokens[i][0]
            self.n_visual[sid], self.n_text[sid] = int(visual), int(tokens - visual)
        self._packed = None

    def update_svals(self, ids: Sequence[str], records: dict[int, list[torch.Tensor]], steps: int) -> None:
        """Singular values recorded by :class:`RecordingSparseVLM` (steps it did not reach get none)."""
        for i, sid in enumerate(ids):
            self.svals[sid] = [records[s][i] if s in records else torch.zeros(0) for s in range(steps)]
        self._packed = None

    def restore_svals(self, saved: dict[str, list[torch.Tensor]]) -> None:
        """Put back singular values saved from :attr:`svals` (after a trial with another schedule)."""
        self.svals.update(saved)
        self._packed = None

    def pack(
        self, ids: Sequence[str] | None = None, steps: int | None = None
    ) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, n_visual [S], n_text [S], svals [S, steps, R] zero-padded) of ``ids`` (default: all)."""
        if ids is None and self._packed is not None:
            return self._packed
        chosen = list(self.n_visual) if ids is None else list(ids)
        missing = [i for i in chosen if i not in self.n_visual]
        if missing:
            raise KeyError(f"No calibration statistics for samples {missing[:5]}.")
        n_visual = torch.tensor([self.n_visual[i] for i in chosen], dtype=torch.float64)
        n_text = torch.tensor([self.n_text[i] for i in chosen], dtype=torch.float64)
        if steps is None:
            steps = max((len(v) for v in self.svals.values()), default=0)
        width = max((len(t) for i in chosen for t in self.svals.get(i, [])), default=0)
        svals = torch.zeros(len(chosen), steps, max(width, 1), dtype=torch.float64)
        for s, sid in enumerate(chosen):
            for step, values in enumerate(self.svals.get(sid, [])[:steps]):
                svals[s, step, : len(values)] = values.double()
        packed = (chosen, n_visual, n_text, svals)
        if ids is None:
            self._packed = packed
        return packed

    def state_dict(self) -> dict[str, Any]:
        return {"n_visual": dict(self.n_visual), "n_text": dict(self.n_text), "svals": dict(self.svals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_visual = dict(state["n_visual"])
        self.n_text = dict(state["n_text"])
        self.svals = {k: [torch.as_tensor(t) for t in v] for k, v in state["svals"].items()}
        self._packed = None


def ranks(svals: torch.Tensor, rtol: Sequence[float]) -> torch.Tensor:
    """[S, steps] numerical ranks: singular values above ``rtol * sigma_max``, as ``matrix_rank`` counts."""
    tol = torch.tensor(rtol, dtype=svals.dtype).view(1, -1, 1) * svals[..., :1]
    return (svals > tol).sum(-1)


@dataclass
class Simulation:
    """Predicted per-sample counts after each pruning step, budget and decoder FLOPs."""

    counts: torch.Tensor  # [S, steps]
    budget: torch.Tensor  # [S]
    flops: torch.Tensor  # [S]


def simulate(
    geometry: Geometry,
    rule: RankRule | TableRule,
    n_visual: torch.Tensor,
    n_text: torch.Tensor,
    svals: torch.Tensor | None = None,
) -> Simulation:
    """What SparseVLM keeps under ``rule``, exactly as its ``select`` computes it (given singular values)."""
    steps = len(geometry.layers)
    current = n_visual.double().clone()
    counts = torch.zeros(len(n_visual), steps, dtype=torch.float64)
    if isinstance(rule, RankRule):
        if svals is None:
            raise ValueError("The rank rule needs the singular values of the raters' attention (svals).")
        r = ranks(svals, rule.rtol).double()
        for step in range(steps):
            rank = torch.minimum(r[:, step], current)
            target = torch.trunc(rank * rule.scale[step] + rule.bias[step]).clamp_min(0)
            # the reference's edges: at most n - 1 (possibly 0), and no pruning at all when rank == n
            current = torch.where(rank == current, current, torch.minimum(target, (current - 1).clamp_min(0)))
            counts[:, step] = current
    else:
        table = torch.tensor(rule.counts, dtype=torch.float64)
        planned = (n_visual.double().unsqueeze(-1) * table / REFERENCE_VISUAL_TOKENS).round()
        planned = torch.minimum(planned.clamp_min(1), n_visual.double().unsqueeze(-1))
        for step in range(steps):
            current = torch.minimum(planned[:, step], current)
            counts[:, step] = current
    counts = torch.where(n_visual.unsqueeze(-1) > 0, counts, 0.0)
    return Simulation(
        counts=counts,
        budget=geometry.budget(n_visual, counts),
        flops=geometry.decoder_flops(n_text, n_visual, counts),
    )


def solve_multiplier(
    predict: Callable[[float], tuple[float, float]],
    budget: float,
    flops: float | None = None,
    initial: float = 1.0,
    iterations: int = 60,
) -> float:
    """Largest ``m >= 0`` whose predicted (budget, FLOPs) stay within ``budget`` and ``flops``, by bisection.

    ``predict(m)`` must be non-decreasing in ``m`` in both outputs (more scale, more tokens). Raises
    :class:`~svlm.strategies.base.BudgetError` when even ``m = 0`` (one token per pruning step) is over.
    """

    def feasible(m: float) -> bool:
        b, f = predict(m)
        return b <= budget + 1e-9 and (flops is None or f <= flops * (1 + 1e-12))

    if not feasible(0.0):
        floor = predict(0.0)[0]
        raise BudgetError(
            f"budget={budget:g} cannot be met: keeping one visual token after every pruning layer already "
            f"averages {floor:.1f} visual tokens per layer. Prune earlier (smaller `layers`) or raise the "
            "budget."
        )
    ceiling = 1e12
    if feasible(ceiling):
        top = predict(ceiling)[0]
        raise BudgetError(
            f"budget={budget:g} leaves nothing to prune: keeping all but one visual token at every pruning "
            f"layer averages {top:.1f} visual tokens per layer. Use a smaller budget."
        )
    lo, hi = 0.0, min(max(initial, 1e-6), ceiling)
    while feasible(hi):  # grow until infeasible; terminates at ceiling
        lo, hi = hi, min(hi * 2, ceiling)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * max(1.0, hi):
            break
    return lo

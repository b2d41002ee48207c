"""Random pruning: a strong, signal-free baseline (UniPruneBench, VTC-Bench)."""

from __future__ import annotations

import torch

from svlm.strategies.base import (
    LayerView,
    PrefillContext,
    Selection,
    Strategy,
    keep_top_visual,
    schedule_counts,
)
from svlm.strategies.registry import register_strategy


@register_strategy("random")
class RandomPrune(Strategy):
    """Keep a seeded uniformly random subset of visual tokens.

    Prunes after ``layer`` (-1: before the language model).
    The kept count meets ``budget`` (mean visual tokens entering each decoder layer). Seeded: the same seed
    and inputs keep the same tokens.
    """

    def __init__(self, budget: float = 64, layer: int = -1, seed: int = 0) -> None:
        super().__init__(budget)
        self.layer = layer
        self.seed = seed

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return [self.layer]

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        counts = schedule_counts(ctx.info.num_layers, [self.layer], ctx.num_visual, self.target_tokens(ctx))
        # Scores follow each visual token's ordinal in its sample, so that padding and batching do not
        # change which tokens a sample keeps.
        candidates = view.visual & view.valid
        ordinal = (candidates.cumsum(-1) - 1).clamp_min(0)
        # Drawn on the CPU so that a seed keeps the same tokens on every device; one small copy over.
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        table = torch.rand(int(view.visual.shape[1]), generator=generator, device="cpu")
        table = table.to(view.visual.device, non_blocking=True)
        scores = table[ordinal]
        keep = keep_top_visual(view, scores, counts[:, 0].to(view.visual.device))
        return Selection(keep=keep, info={"kept": counts[:, 0]})

    def extra_repr(self) -> str:
        return f"budget={self.budget}, layer={self.layer}, seed={self.seed}"

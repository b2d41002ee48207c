"""DivPrune (Alvar et al., CVPR 2025): "Diversity-based Visual Token Pruning for Large Multimodal Models"
(arXiv:2503.02175)."""

from __future__ import annotations

import torch

from svlm.strategies.base import LayerView, PrefillContext, Selection, Strategy
from svlm.strategies.registry import register_strategy


def max_min_diverse(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows chosen greedily to maximise the minimum cosine distance to those chosen."""
    n = features.shape[0]
    k = max(0, min(k, n))
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    dist = 1 - x @ x.T
    chosen = [int(dist.sum(-1).argmax())]
    nearest = dist[chosen[0]].clone()
    nearest[chosen[0]] = -1
    for _ in range(k - 1):
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, dist[nxt])
        nearest[chosen] = -1
    return torch.tensor(sorted(chosen), dtype=torch.long, device=features.device)


@register_strategy("divprune")
class DivPrune(Strategy):
    """Keep the most diverse visual features (greedy max-min distance), before the language model.

    Keeps ``budget`` visual tokens whose projected features maximise the minimum cosine distance to those
    already kept. Needs no attention, so it works with any kernel."""

    def __init__(self, budget: float = 64) -> None:
        super().__init__(budget)

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return [-1]

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        targets = self.target_tokens(ctx).round().long()
        keep = torch.zeros_like(view.visual)
        visual = view.visual & view.valid
        for b in range(view.hidden.shape[0]):
            slots = visual[b].nonzero().squeeze(-1)
            chosen = max_min_diverse(view.hidden[b, slots], int(targets[b]))
            keep[b, slots[chosen]] = True
        return Selection(keep=keep, info={"kept": targets})

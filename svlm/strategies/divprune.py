"""DivPrune (Alvar et al., CVPR 2025): "Diversity-based Visual Token Pruning for Large Multimodal Models"
(arXiv:2503.02175)."""

from __future__ import annotations

import torch

from svlm.engine.scoring import rows_from_mask
from svlm.engine.sequence import gather_rows
from svlm.kernels.max_min import max_min_select
from svlm.strategies.base import LayerView, PrefillContext, Selection, Strategy
from svlm.strategies.registry import register_strategy


def cosine_distances(features: torch.Tensor) -> torch.Tensor:
    """[..., m, m] pairwise cosine distances ``1 - cos`` of rows ``features`` [..., m, d] (float32)."""
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    return 1 - torch.matmul(x, x.transpose(-1, -2))


def max_min_diverse(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows chosen greedily to maximise the minimum cosine distance to those chosen."""
    n = features.shape[0]
    valid = torch.ones(1, n, dtype=torch.bool, device=features.device)
    count = torch.full((1,), max(0, min(k, n)), dtype=torch.long, device=features.device)
    chosen = max_min_select(cosine_distances(features).unsqueeze(0), valid, count)[0]
    return torch.arange(n, device=features.device)[chosen]


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
        visual = view.visual & view.valid
        slots, ok = rows_from_mask(visual)  # each sample's visual slots, left-aligned
        dist = cosine_distances(gather_rows(view.hidden, slots))
        chosen = max_min_select(dist, ok, targets.to(ok.device)) & ok
        keep = torch.zeros_like(visual).scatter_(1, slots, chosen)
        return Selection(keep=keep, info={"kept": targets})

"""FastV (Chen et al., ECCV 2024): "An Image is Worth 1/2 Tokens After Layer 2"."""

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


@register_strategy("fastv")
class FastV(Strategy):
    """Drop the least-attended visual tokens once the first ``k`` layers have run.

    Layers ``0..k-1`` see every token; the attention of layer ``k-1`` (from the last token, as in the
    reference code, or averaged over all text tokens after the image with ``signal="text"``, as in the
    paper) ranks the visual tokens and the lowest ``ratio`` of them are dropped for the remaining layers.
    With ``budget`` set, the kept count is solved from it instead of ``ratio``.
    """

    def __init__(
        self, budget: float | None = None, k: int = 2, ratio: float = 0.5, signal: str = "last"
    ) -> None:
        super().__init__(budget)
        if k < 1:
            raise ValueError(f"FastV needs k >= 1 (layers run before pruning); got k={k}.")
        if not 0 <= ratio < 1:
            raise ValueError(f"ratio is the share of visual tokens dropped, in [0, 1); got {ratio}.")
        if signal not in ("last", "text"):
            raise ValueError(f"signal must be 'last' or 'text'; got {signal!r}.")
        self.k, self.ratio, self.signal = k, ratio, signal

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return [self.k - 1]

    def attention_rows(self, ctx: PrefillContext, view: LayerView) -> torch.Tensor:
        valid = view.valid
        if self.signal == "last":
            rows = torch.zeros_like(valid)
            last = torch.where(valid, torch.arange(valid.shape[1], device=valid.device), -1).amax(-1)
            rows.scatter_(1, last.unsqueeze(-1), True)
            return rows
        slots = torch.arange(valid.shape[1], device=valid.device)
        last_visual = torch.where(view.visual, slots, -1).amax(-1, keepdim=True)
        return valid & ~view.visual & (slots > last_visual)

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        n_visual = view.num_visual
        if self.budget is None:
            keep_count = torch.ceil(n_visual.double() * (1 - self.ratio)).long()
        else:
            counts = schedule_counts(
                ctx.info.num_layers, [self.k - 1], ctx.num_visual, self.target_tokens(ctx)
            )
            keep_count = counts[:, 0]
        keep = keep_top_visual(view, view.visual_scores(), keep_count.to(n_visual.device))
        return Selection(keep=keep, info={"kept": keep_count})

    def extra_repr(self) -> str:
        return f"budget={self.budget}, k={self.k}, ratio={self.ratio}, signal={self.signal!r}"

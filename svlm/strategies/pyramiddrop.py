"""PyramidDrop (Xing et al., CVPR 2025): "Accelerating Your Large Vision-Language Models via Pyramid
Visual Redundancy Reduction" (arXiv:2410.17247)."""

from __future__ import annotations

from collections.abc import Sequence

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
from svlm.strategies.sparsevlm import scale_layers


@register_strategy("pyramiddrop")
class PyramidDrop(Strategy):
    """Drop visual tokens stage by stage, ranked by the last instruction token's attention.

    At the end of each stage keep a share ``ratio`` of the visual tokens the stage received.
    Default stages end at layers 8/16/24 of a 32-layer model (scaled to other depths like SparseVLM's) with
    ``ratio=0.5``. With ``budget`` the geometric shape is kept and scaled to meet it.
    """

    def __init__(
        self, budget: float | None = None, layers: Sequence[int] = (8, 16, 24), ratio: float = 0.5
    ) -> None:
        super().__init__(budget)
        if not 0 < ratio < 1:
            raise ValueError(f"ratio (share kept per stage) must be in (0, 1); got {ratio}.")
        self.layers, self.ratio = [int(x) for x in layers], ratio

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return scale_layers(self.layers, ctx.info.num_layers)

    def prepare(self, ctx: PrefillContext) -> None:
        layers = self.prune_layers(ctx)
        shape = [self.ratio ** (i + 1) for i in range(len(layers))]
        if self.budget is None:
            ctx.scratch["counts"] = (
                (ctx.num_visual.double().unsqueeze(-1) * torch.tensor(shape, device=ctx.visual.device))
                .round()
                .long()
            )
        else:
            ctx.scratch["counts"] = schedule_counts(
                ctx.info.num_layers, layers, ctx.num_visual, self.target_tokens(ctx), shape
            )
        ctx.scratch["layers"] = layers

    def attention_rows(self, ctx: PrefillContext, view: LayerView) -> torch.Tensor:
        slots = torch.arange(view.valid.shape[1], device=view.valid.device)
        last = torch.where(view.valid, slots, -1).amax(-1, keepdim=True)
        return slots == last

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        step = ctx.scratch["layers"].index(view.layer)
        count = ctx.scratch["counts"][:, step].to(view.valid.device).clamp_min(1)
        return Selection(keep=keep_top_visual(view, view.visual_scores(), count), info={"kept": count})

    def extra_repr(self) -> str:
        return f"budget={self.budget}, layers={self.layers}, ratio={self.ratio}"

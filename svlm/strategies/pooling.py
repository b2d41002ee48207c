"""Spatial average pooling of the visual tokens: the image-downsampling baseline that recent benchmarks
(UniPruneBench, VTC-Bench) found hard to beat."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from svlm.strategies.base import LayerView, PrefillContext, Selection, Strategy, pack_merged
from svlm.strategies.registry import register_strategy


def pooled_grid(rows: int, cols: int, target: float) -> tuple[int, int]:
    """Output grid with about ``target`` cells and the input's aspect ratio (never more cells than input)."""
    stride = math.sqrt(rows * cols / max(target, 1.0))
    return max(1, min(rows, round(rows / stride))), max(1, min(cols, round(cols / stride)))


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


@register_strategy("pooling")
class Pooling(Strategy):
    """Average-pool each image's visual-token grid down to the budget, before the language model.

    Adaptive 2-D pooling on the token grid (1-D pooling in sequence order for layouts without a plain grid,
    e.g. LLaVA-NeXT's packed crops). Pooled tokens take the position of their window's centre token."""

    def __init__(self, budget: float = 64) -> None:
        super().__init__(budget)

    @property
    def drops_only(self) -> bool:
        return False

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return [-1]

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        targets = self.target_tokens(ctx)
        visual = view.visual & view.valid
        results = []
        for i in range(view.hidden.shape[0]):
            slots = visual[i].nonzero().squeeze(-1)
            results.append(self._pool_sample(ctx, i, view.hidden[i, slots], slots, float(targets[i])))
        merged, anchor, valid = pack_merged(results, view.hidden)
        return Selection(
            keep=torch.zeros_like(visual), merged=merged, merged_anchor=anchor, merged_valid=valid
        )

    def _pool_sample(
        self, ctx: PrefillContext, sample: int, features: torch.Tensor, slots: torch.Tensor, target: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            grids = ctx.adapter.visual_grids(ctx.inputs, sample)
        except (NotImplementedError, ValueError, KeyError):
            grids = None
        if not grids or sum(r * c for r, c in grids) != len(slots):
            grids = [(1, len(slots))]  # sequence order
        tokens, anchors, start = [], [], 0
        total = len(slots)
        for rows, cols in grids:
            count = rows * cols
            share = target * count / total
            out_r, out_c = (
                pooled_grid(rows, cols, share) if rows > 1 else (1, max(1, min(cols, round(share))))
            )
            grid = features[start : start + count].T.reshape(1, -1, rows, cols).float()
            pooled = F.adaptive_avg_pool2d(grid, (out_r, out_c))[0].reshape(features.shape[-1], -1).T
            tokens.append(pooled.to(features.dtype))
            for r0, r1 in _windows(rows, out_r):
                for c0, c1 in _windows(cols, out_c):
                    anchors.append(slots[start + ((r0 + r1 - 1) // 2) * cols + (c0 + c1 - 1) // 2])
            start += count
        return torch.cat(tokens), torch.stack(anchors)

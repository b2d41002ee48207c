"""Spatial average pooling of the visual tokens: the image-downsampling baseline that recent benchmarks
(UniPruneBench, VTC-Bench) found hard to beat."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from svlm.engine.sequence import gather_rows
from svlm.strategies.base import LayerView, PrefillContext, Selection, Strategy
from svlm.strategies.registry import register_strategy


def pooled_grid(rows: int, cols: int, target: float) -> tuple[int, int]:
    """Output grid with about ``target`` cells and the input's aspect ratio (never more cells than input)."""
    stride = math.sqrt(rows * cols / max(target, 1.0))
    return max(1, min(rows, round(rows / stride))), max(1, min(cols, round(cols / stride)))


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


@dataclass(frozen=True)
class PoolLayout:
    """How one sample's visual tokens are pooled: ``parts`` (start, rows, cols, out_rows, out_cols) of each
    image's grid in sequence order, and ``anchors``: the ordinal (among the sample's visual tokens) of
    each pooled token's window centre."""

    parts: tuple[tuple[int, int, int, int, int], ...]
    anchors: tuple[int, ...]


def pool_layout(grids: list[tuple[int, int]] | None, total: int, target: float) -> PoolLayout:
    """The layout for ``total`` visual tokens on ``grids`` (1-D sequence order when they do not fit)."""
    if total == 0:
        return PoolLayout((), ())
    if not grids or sum(r * c for r, c in grids) != total:
        grids = [(1, total)]  # sequence order
    parts, anchors, start = [], [], 0
    for rows, cols in grids:
        count = rows * cols
        share = target * count / total
        out_r, out_c = pooled_grid(rows, cols, share) if rows > 1 else (1, max(1, min(cols, round(share))))
        parts.append((start, rows, cols, out_r, out_c))
        for r0, r1 in _windows(rows, out_r):
            for c0, c1 in _windows(cols, out_c):
                anchors.append(start + ((r0 + r1 - 1) // 2) * cols + (c0 + c1 - 1) // 2)
        start += count
    return PoolLayout(tuple(parts), tuple(anchors))


def pool_tokens(features: torch.Tensor, layout: PoolLayout) -> torch.Tensor:
    """[s, m, d]: the pooled tokens of samples sharing ``layout``, from their visual features [s, n, d]."""
    s, _, d = features.shape
    tokens = []
    for start, rows, cols, out_r, out_c in layout.parts:
        grid = features[:, start : start + rows * cols].transpose(1, 2).reshape(s, d, rows, cols).float()
        pooled = F.adaptive_avg_pool2d(grid, (out_r, out_c)).reshape(s, d, -1).transpose(1, 2)
        tokens.append(pooled.to(features.dtype))
    return torch.cat(tokens, dim=1)


@register_strategy("pooling")
class Pooling(Strategy):
    """Average-pool each image's visual-token grid down to the budget, before the language model.

    Adaptive 2-D pooling on the token grid (1-D pooling in sequence order for layouts without a plain grid,
    e.g. LLaVA-NeXT's packed crops). Pooled tokens take the position of their window's centre token.
    Samples that share a layout (the usual case: same image size) are pooled together in one call.
    """

    def __init__(self, budget: float = 64) -> None:
        super().__init__(budget)

    @property
    def drops_only(self) -> bool:
        return False

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return [-1]

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        visual = view.visual & view.valid
        b, _, d = view.hidden.shape
        device = visual.device
        host = torch.stack([visual.sum(-1).double(), self.target_tokens(ctx).double()]).tolist()  # one sync
        counts, targets = [int(c) for c in host[0]], host[1]
        grids = visual_grids_of_batch(ctx, counts)
        layouts = [pool_layout(grids[i], counts[i], targets[i]) for i in range(b)]
        width = max(1, max(len(layout.anchors) for layout in layouts))
        order = torch.sort((~visual).to(torch.int8), dim=-1, stable=True).indices
        slots = order[:, : max(1, max(counts))]  # each sample's visual slots first, in order
        features = gather_rows(view.hidden, slots)
        merged = view.hidden.new_zeros(b, width, d)
        anchor = torch.zeros(b, width, dtype=torch.long, device=device)
        valid = torch.zeros(b, width, dtype=torch.bool, device=device)
        groups: dict[PoolLayout, list[int]] = {}
        for i, layout in enumerate(layouts):
            if layout.anchors:
                groups.setdefault(layout, []).append(i)
        for layout, members in groups.items():
            rows = torch.tensor(members, dtype=torch.long, device=device)
            m = len(layout.anchors)
            ordinals = torch.tensor(layout.anchors, dtype=torch.long, device=device)
            merged[rows, :m] = pool_tokens(features[rows], layout)
            anchor[rows, :m] = slots[rows][:, ordinals]
            valid[rows, :m] = True
        return Selection(
            keep=torch.zeros_like(visual), merged=merged, merged_anchor=anchor, merged_valid=valid
        )

    def _pool_sample(
        self, ctx: PrefillContext, sample: int, features: torch.Tensor, slots: torch.Tensor, target: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample's pooled tokens [m, d] and anchor slots [m] (``features`` [n, d] at ``slots`` [n])."""
        try:
            grids = ctx.adapter.visual_grids(ctx.inputs, sample)
        except (NotImplementedError, ValueError, KeyError):
            grids = None
        layout = pool_layout(grids, len(slots), target)
        ordinals = torch.tensor(layout.anchors, dtype=torch.long, device=slots.device)
        return pool_tokens(features.unsqueeze(0), layout)[0], slots[ordinals]


def visual_grids_of_batch(ctx: PrefillContext, counts: list[int]) -> list[list[tuple[int, int]] | None]:
    """Each sample's image grids (None where the family describes none), from host-side token counts."""
    try:
        return ctx.adapter.visual_grids_batch(ctx.inputs, counts)
    except (NotImplementedError, ValueError, KeyError):
        return [None] * len(counts)

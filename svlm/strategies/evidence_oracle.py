"""Evidence oracle: keep the visual tokens that cover the objects a question is about, read from the
svlm-scenes annotations. NOT a pruning method: an upper bound for question-aware selection on svlm-scenes.

A real method must find the evidence from the image and the question; this one is told where it is (each
generated svlm-scenes image notes its evidence objects, `svlm.data.evidence`). What it scores is how much a
question-aware choice of ``budget`` tokens can keep, which the benchmark's acceptance compares against the
best question-agnostic choice (DivPrune, pooling, VisionZip). It runs on svlm-scenes samples generated in the
same process only (``benchmark: scenes``); on any other image it stops with a message.
"""

from __future__ import annotations

import math

import torch

from svlm.data.evidence import evidence_scores, find_note
from svlm.strategies.base import (
    LayerView,
    PrefillContext,
    Selection,
    Strategy,
    keep_top_visual,
    schedule_counts,
)
from svlm.strategies.registry import register_strategy


@register_strategy("evidence_oracle")
class EvidenceOracle(Strategy):
    """Keep the tokens covering the question's evidence objects (svlm-scenes annotations), before the LLM.

    Each evidence object's centre token first, then the others by covered share; seeded random tokens fill
    the rest of the budget. An annotation-reading upper bound on svlm-scenes, not a method (see the module
    docstring).
    """

    oracle = True

    def __init__(self, budget: float = 64, seed: int = 0) -> None:
        super().__init__(budget)
        self.seed = seed

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return [-1]

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        counts = schedule_counts(ctx.info.num_layers, [-1], ctx.num_visual, self.target_tokens(ctx))
        pixel_values = ctx.inputs.get("pixel_values", ctx.request_inputs.get("pixel_values"))
        if pixel_values is None or pixel_values.ndim != 4 or len(pixel_values) != ctx.batch_size:
            raise ValueError(
                "evidence_oracle needs one image per sample (pixel_values [batch, 3, H, W]) from the "
                "svlm-scenes benchmark"
            )
        candidates = view.visual & view.valid
        ordinal = (candidates.cumsum(-1) - 1).clamp_min(0)
        n_visual = int(view.visual.shape[1])
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        fill = 1e-3 * torch.rand(n_visual, generator=generator)
        rows = []
        for b, n in enumerate(candidates.sum(-1).tolist()):  # an oracle: one host look-up per image
            grid = math.isqrt(int(n))
            if grid * grid != n:
                raise ValueError(f"evidence_oracle needs a square grid of visual tokens, got {n} tokens")
            cover = evidence_scores(find_note(pixel_values[b]), grid)
            score = torch.where(cover > 0, 1.0 + cover, torch.zeros_like(cover))
            row = fill.clone()
            row[: len(score)] += score
            rows.append(row)
        table = torch.stack(rows).to(view.visual.device, non_blocking=True)
        scores = table.gather(1, ordinal.to(table.device).clamp_max(n_visual - 1))
        keep = keep_top_visual(view, scores, counts[:, 0].to(view.visual.device))
        return Selection(keep=keep, info={"kept": counts[:, 0]})

    def extra_repr(self) -> str:
        return f"budget={self.budget}, seed={self.seed}"

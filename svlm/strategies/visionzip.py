"""VisionZip (Yang et al., CVPR 2025): "Longer is Better but Not Necessary in Vision Language Models"
(arXiv:2412.04467)."""

from __future__ import annotations

import torch

from svlm.strategies.base import LayerView, PrefillContext, Selection, Strategy, keep_top_visual, pack_merged
from svlm.strategies.registry import register_strategy
from svlm.strategies.signals import cls_attention, cls_layers


def contextual_merge(
    features: torch.Tensor, num_contextual: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Merge rows into ``num_contextual`` tokens: evenly spaced targets, each other row joins the most
    similar target (cosine), each merged token is the mean of its group. Returns (merged, target rows,
    member rows per group)."""
    n = features.shape[0]
    k = max(0, min(num_contextual, n))
    if k == 0:
        return features.new_zeros(0, features.shape[-1]), torch.zeros(0, dtype=torch.long), []
    targets = torch.linspace(0, n - 1, k).round().long().unique()
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    assignment = (x @ x[targets].T).argmax(-1)
    assignment[targets] = torch.arange(len(targets))
    groups = [torch.nonzero(assignment == g).squeeze(-1) for g in range(len(targets))]
    merged = torch.stack([features[g].float().mean(0) for g in groups]).to(features.dtype)
    return merged, targets, groups


@register_strategy("visionzip")
class VisionZip(Strategy):
    """Keep dominant tokens by vision CLS attention and merge the rest into a few contextual tokens.

    Runs before the language model; by default the budget is split 54:10 (dominant:contextual) as in the
    paper's 64-token setting.
    The CLS attention comes from the encoder layer LLaVA takes its features from, computed rows-only from
    that layer's q/k. Families without a CLS token use the virtual-CLS substitute.
    """

    def __init__(self, budget: float = 64, contextual_share: float = 10 / 64) -> None:
        super().__init__(budget)
        if not 0 <= contextual_share < 1:
            raise ValueError(f"contextual_share must be in [0, 1); got {contextual_share}.")
        self.contextual_share = contextual_share

    @property
    def drops_only(self) -> bool:
        return self.contextual_share == 0

    def vision_attention_layers(self, adapter: object) -> list[int]:
        return cls_layers(adapter, [0])

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return [-1]

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        scores, source = cls_attention(ctx, self.vision_attention_layers(ctx.adapter))
        total = self.target_tokens(ctx).round().long()
        contextual = (total.double() * self.contextual_share).round().long()
        dominant = (total - contextual).clamp_min(1)
        keep = keep_top_visual(view, scores, dominant.to(scores.device))
        if not bool((contextual > 0).any()):
            return Selection(keep=keep, info={"dominant": dominant, "signal": source})
        rest = view.visual & view.valid & ~keep
        results = []
        for i in range(view.hidden.shape[0]):
            slots = rest[i].nonzero().squeeze(-1)
            merged, targets, _ = contextual_merge(view.hidden[i, slots], int(contextual[i]))
            results.append((merged, slots[targets.to(slots.device)] if len(targets) else targets))
        merged, anchor, valid = pack_merged(results, view.hidden)
        info = {"dominant": dominant, "contextual": valid.sum(-1), "signal": source}
        return Selection(keep=keep, merged=merged, merged_anchor=anchor, merged_valid=valid, info=info)

    def extra_repr(self) -> str:
        return f"budget={self.budget}, contextual_share={self.contextual_share:.3f}"

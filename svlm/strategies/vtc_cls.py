"""VTC-CLS (Wang et al., 2024): "[CLS] Attention is All You Need for Training-Free Visual Token Pruning:
Make VLM Inference Faster" (arXiv:2412.01818)."""

from __future__ import annotations

from collections.abc import Sequence

from svlm.strategies.base import LayerView, PrefillContext, Selection, Strategy, keep_top_visual
from svlm.strategies.registry import register_strategy
from svlm.strategies.signals import cls_attention, cls_layers


@register_strategy("vtc_cls")
class VTCCLS(Strategy):
    """Keep the visual tokens the vision encoder's [CLS] token attends to most, before the LLM.

    ``ensemble`` lists encoder layers relative to the feature layer (0 = the layer LLaVA takes features
    from, -1 the one before, ...); their CLS attention is averaged. Computed rows-only (one query row) from
    each layer's own q/k. Families without a CLS token use the virtual-CLS substitute
    (:func:`svlm.strategies.signals.virtual_cls_attention`).
    """

    def __init__(self, budget: float = 64, ensemble: Sequence[int] = (0, -1, -2)) -> None:
        super().__init__(budget)
        self.ensemble = [int(x) for x in ensemble]

    def vision_attention_layers(self, adapter: object) -> list[int]:
        return cls_layers(adapter, self.ensemble)

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return [-1]

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        scores, source = cls_attention(ctx, self.vision_attention_layers(ctx.adapter))
        counts = self.target_tokens(ctx).round().long()
        keep = keep_top_visual(view, scores, counts.to(scores.device))
        return Selection(keep=keep, info={"kept": counts, "signal": source})

    def extra_repr(self) -> str:
        return f"budget={self.budget}, ensemble={self.ensemble}"

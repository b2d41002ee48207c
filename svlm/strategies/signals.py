"""Importance signals shared by several strategies."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from svlm.strategies.base import PrefillContext


def scatter_to_visual_slots(values: torch.Tensor, ctx: PrefillContext) -> torch.Tensor:
    """Place per-visual-token ``values`` (flattened in image order) on the visual slots: [b, n]."""
    flat = values.reshape(-1).float()
    slots = ctx.visual & ctx.valid
    if flat.numel() != int(slots.sum()):
        raise ValueError(
            f"The vision encoder gave {flat.numel()} token scores for {int(slots.sum())} visual tokens."
        )
    out = torch.zeros(slots.shape, dtype=torch.float32, device=slots.device)
    out[slots] = flat.to(slots.device)
    return out


def virtual_cls_attention(ctx: PrefillContext) -> torch.Tensor:
    """[b, n] attention of each sample's mean visual embedding to its visual tokens.

    The substitute for a CLS token in encoders that have none (Qwen2-VL, LLaVA-NeXT's packed crops): one
    query, the mean of the sample's visual features at the language model's input, scaled dot-product
    softmax over the sample's visual tokens.
    """
    x = ctx.inputs_embeds.float()
    visual = ctx.visual & ctx.valid
    weights = visual.float().unsqueeze(-1)
    mean = (x * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1)
    logits = (x * mean).sum(-1) / x.shape[-1] ** 0.5
    logits = logits.masked_fill(~visual, float("-inf"))
    return torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)


def cls_attention(ctx: PrefillContext, layers: Sequence[int]) -> tuple[torch.Tensor, str]:
    """[b, n] CLS attention to the visual tokens, averaged over encoder ``layers``, and its source.

    Falls back to :func:`virtual_cls_attention` for families without a CLS token.
    """
    maps = []
    for layer in layers:
        captured = ctx.vision.get(layer)
        if captured is None:
            break
        maps.append(ctx.adapter.cls_attention(layer, captured["q"], captured["k"]))
    if maps and len(maps) == len(layers):
        return scatter_to_visual_slots(torch.stack(maps).mean(0), ctx), "cls"
    return virtual_cls_attention(ctx), "virtual_cls"


def cls_layers(adapter: object, offsets: Sequence[int]) -> list[int]:
    """Encoder layers relative to the layer LLaVA takes its features from (0 = that layer)."""
    feature_layer = getattr(adapter, "feature_layer", None)
    if feature_layer is None:
        return []
    try:
        base = feature_layer()
    except NotImplementedError:
        return []
    return sorted({base + o for o in offsets if 0 <= base + o})

"""VisionZip (Yang et al., CVPR 2025): "Longer is Better but Not Necessary in Vision Language Models"
(arXiv:2412.04467)."""

from __future__ import annotations

import torch

from svlm.strategies.base import LayerView, PrefillContext, Selection, Strategy, keep_top_visual
from svlm.strategies.registry import register_strategy
from svlm.strategies.signals import cls_attention, cls_layers


def linspace_targets(count: torch.Tensor, k: torch.Tensor, width: int) -> torch.Tensor:
    """[b, width] ordinals ``round(linspace(0, count - 1, k))`` per sample (entries >= k are padding).

    Evaluated the way ``torch.linspace`` evaluates its points (float32, from the start for the first half,
    from the end for the second), so each sample gets exactly the targets a per-sample ``linspace`` gives.
    """
    j = torch.arange(width, device=count.device).unsqueeze(0)
    end = (count - 1).clamp_min(0).float().unsqueeze(-1)
    steps = k.unsqueeze(-1)
    step = end / (steps - 1).clamp_min(1).float()
    halfway = steps // 2
    value = torch.where(j < halfway, j.float() * step, end - (steps - 1 - j).float() * step)
    value = torch.where(steps > 1, value, 0.0)  # one point: linspace gives the start
    return value.round().long().clamp(min=0)


def batched_contextual_merge(
    hidden: torch.Tensor, candidates: torch.Tensor, num_contextual: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge each sample's ``candidates`` [b, n] slots into ``num_contextual[b]`` tokens, without host loops.

    Targets are evenly spaced among the candidates (in slot order); every other candidate joins the target
    it is most similar to (cosine); a merged token is the mean of its group. Returns ``merged`` [b, m, d],
    ``anchor`` [b, m] (the target slot), ``valid`` [b, m] and ``assignment`` [b, n] (group of each slot,
    -1 off the candidates).
    """
    b, n, d = hidden.shape
    count = candidates.sum(-1)
    k = torch.minimum(num_contextual.to(count.device).long().clamp_min(0), count)
    width = int(k.max()) if b else 0  # the only host sync
    width = max(width, 1)
    ordinal = torch.arange(width, device=hidden.device).unsqueeze(0)
    valid = ordinal < k.unsqueeze(-1)
    targets = linspace_targets(count, k, width)  # ordinals among the candidates
    # slot of the j-th candidate: candidates sorted first, in slot order
    order = torch.sort((~candidates).to(torch.int8), dim=-1, stable=True).indices
    anchor = torch.gather(order, 1, targets.clamp(max=n - 1))
    anchor = torch.where(valid, anchor, 0)
    x = torch.nn.functional.normalize(hidden.float(), dim=-1)
    centres = torch.gather(x, 1, anchor.unsqueeze(-1).expand(-1, -1, d))
    similarity = torch.matmul(x, centres.transpose(1, 2)).masked_fill(~valid.unsqueeze(1), float("-inf"))
    assignment = similarity.argmax(-1)  # [b, n]
    is_target = torch.zeros(b, n + 1, dtype=torch.long, device=hidden.device)
    is_target.scatter_(1, torch.where(valid, anchor, n), ordinal.expand(b, -1) + 1)
    is_target = is_target[:, :n]
    assignment = torch.where(is_target > 0, is_target - 1, assignment)
    assignment = torch.where(candidates, assignment, -1)
    member = candidates.unsqueeze(-1).float()
    sums = torch.zeros(b, width + 1, d, dtype=torch.float32, device=hidden.device)
    group = torch.where(candidates, assignment, width)
    sums.scatter_add_(1, group.unsqueeze(-1).expand(-1, -1, d), hidden.float() * member)
    sizes = torch.zeros(b, width + 1, dtype=torch.float32, device=hidden.device)
    sizes.scatter_add_(1, group, member.squeeze(-1))
    merged = (sums[:, :width] / sizes[:, :width].clamp_min(1).unsqueeze(-1)).to(hidden.dtype)
    return merged * valid.unsqueeze(-1), anchor, valid, assignment


def contextual_merge(
    features: torch.Tensor, num_contextual: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One sample's contextual merge of rows ``features`` [n, d] into ``num_contextual`` tokens. Returns
    (merged, target rows, member rows per group)."""
    n = features.shape[0]
    k = max(0, min(num_contextual, n))
    if k == 0:
        empty = torch.zeros(0, dtype=torch.long, device=features.device)
        return features.new_zeros(0, features.shape[-1]), empty, []
    candidates = torch.ones(1, n, dtype=torch.bool, device=features.device)
    wanted = torch.full((1,), k, dtype=torch.long, device=features.device)
    merged, anchor, _, assignment = batched_contextual_merge(features.unsqueeze(0), candidates, wanted)
    rows = torch.arange(n, device=features.device)
    return merged[0], anchor[0], [rows[assignment[0] == g] for g in range(k)]


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
        if self.contextual_share == 0:
            return Selection(keep=keep, info={"dominant": dominant, "signal": source})
        rest = view.visual & view.valid & ~keep
        merged, anchor, valid, _ = batched_contextual_merge(view.hidden, rest, contextual)
        info = {"dominant": dominant, "contextual": valid.sum(-1), "signal": source}
        return Selection(keep=keep, merged=merged, merged_anchor=anchor, merged_valid=valid, info=info)

    def extra_repr(self) -> str:
        return f"budget={self.budget}, contextual_share={self.contextual_share:.3f}"

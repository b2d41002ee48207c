"""SparseVLM (Zhang et al., ICML 2025): text-guided, progressive visual-token sparsification.

Paper: "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference",
arXiv:2410.04417. Reference code: Gumpest/SparseVLMs (v1, v1.5, v2).

How it maps to the paper:

* **raters** — text tokens after the image whose relevance to the visual tokens is above the mean:
  ``m = softmax(V T^T over text).mean(over visual)``, raters are ``m > mean(m)`` (computed once, on the
  language model's input embeddings);
* **scores** — at each pruning layer, the raters' attention to each visual token, averaged over heads and
  raters, computed rows-only from the layer's own q/k (never an n x n matrix);
* **how many to keep** — one of: ``budget`` (mean visual tokens entering each layer, solved over the
  schedule's shape), a ``preset`` of the v1.5/v2 hard-coded schedules, explicit ``counts``, or the v1
  **rank rule** ``min(int(rank(P) * scale + bias), n_visual - 1)`` where ``P`` is the head-averaged
  [raters x visual] attention;
* **recycling** — the top ``recycle_ratio`` of deleted tokens (by score) are clustered with density-peak
  clustering on k nearest neighbours into ``int(n * cluster_ratio) + 1`` clusters and averaged; the merged
  tokens go right after the kept visual tokens;
* **SparseVLM+ (v2)** — ``gravity_correction`` divides the attention by a RoPE-only attention (all-ones q/k),
  ``priority_heads`` scores with the heads of largest rater-to-visual attention only.

Pruning layers default to ``[2, 6, 15]`` on 32 layers and scale to other depths as
``floor(l * num_layers / 32 + 0.5)`` (clamped to ``num_layers - 2``, duplicates removed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from svlm.engine.scoring import rows_from_mask
from svlm.engine.sequence import gather_rows
from svlm.strategies.base import (
    BudgetError,
    LayerView,
    PrefillContext,
    Selection,
    Strategy,
    keep_top_visual,
    pack_merged,
    schedule_counts,
)
from svlm.strategies.registry import register_strategy

REFERENCE_LAYERS = 32
REFERENCE_VISUAL_TOKENS = 576
DEFAULT_LAYERS = (2, 6, 15)

#: Visual tokens kept after layers 2/6/15 of LLaVA-1.5-7B in the reference code, by version and budget.
PRESETS: dict[str, dict[int, tuple[int, int, int]]] = {
    "v1.5": {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)},
    "v2": {192: (300, 200, 118), 128: (238, 108, 60), 96: (246, 54, 28), 64: (66, 34, 20)},
}


def scale_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    """Map pruning layers of the 32-layer reference model to a model with ``num_layers`` layers."""
    if num_layers == REFERENCE_LAYERS:
        return list(layers)
    scaled = [min(num_layers - 2, int(layer * num_layers / REFERENCE_LAYERS + 0.5)) for layer in layers]
    return sorted(set(scaled))


def select_raters(
    embeds: torch.Tensor, visual: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Bool [b, n]: text tokens after the image whose visual relevance is above their mean.

    Only the [visual x text] block is computed. Also returns its FLOPs (for the report's overhead).
    """
    slots = torch.arange(visual.shape[1], device=visual.device)
    last_visual = torch.where(visual, slots, -1).amax(-1, keepdim=True)
    text = valid & ~visual & (slots > last_visual)
    v_idx, v_ok = rows_from_mask(visual & valid)
    t_idx, t_ok = rows_from_mask(text)
    x = embeds.float()
    v = gather_rows(x, v_idx)
    t = gather_rows(x, t_idx)
    logits = torch.matmul(v, t.transpose(1, 2))  # [b, n_visual, n_text]
    logits = logits.masked_fill(~t_ok.unsqueeze(1), float("-inf"))
    probs = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0) * v_ok.unsqueeze(-1)
    relevance = probs.sum(1) / v_ok.sum(-1, keepdim=True).clamp_min(1)  # [b, n_text]
    mean = (relevance * t_ok).sum(-1, keepdim=True) / t_ok.sum(-1, keepdim=True).clamp_min(1)
    chosen = t_ok & (relevance > mean)
    raters = torch.zeros_like(text)
    raters.scatter_(1, t_idx, chosen)
    raters &= text
    # no text after the image (or all equal): fall back to every text token after it
    raters = torch.where(raters.any(-1, keepdim=True), raters, text)
    flops = 2.0 * float((v_ok.sum(-1) * t_ok.sum(-1)).sum()) * x.shape[-1]
    return raters, flops


def attention_rank(probs: torch.Tensor, rtol: float | None = None) -> int:
    """Numerical rank of a [raters x visual] attention matrix (``rtol`` relative to the largest singular
    value; ``None`` uses the float32 default ``max(m, n) * eps``, as the reference code does)."""
    if probs.numel() == 0:
        return 0
    return int(torch.linalg.matrix_rank(probs.float(), rtol=rtol))


def density_peak_clusters(features: torch.Tensor, num_clusters: int, knn: int = 5) -> torch.Tensor:
    """Cluster index [n] for each row of ``features`` by density-peak clustering on k nearest neighbours.

    Density ``rho_i = exp(-mean squared distance to the k nearest neighbours)``; ``delta_i`` = distance to
    the nearest denser point (the densest point gets the largest distance); centres are the points with the
    largest ``rho * delta``; every point joins its nearest centre.
    """
    n = features.shape[0]
    num_clusters = max(1, min(num_clusters, n))
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=features.device)
    x = features.float()
    dist = torch.cdist(x, x) / (x.shape[-1] ** 0.5)
    k = max(1, min(knn, n - 1))
    nearest = torch.topk(dist, k + 1, largest=False).values[:, 1:]
    density = torch.exp(-(nearest**2).mean(-1))
    density = density + torch.rand(n, generator=torch.Generator().manual_seed(0)).to(x.device) * 1e-6
    denser = density.unsqueeze(0) > density.unsqueeze(1)  # [i, j]: j is denser than i
    delta = torch.where(denser, dist, torch.full_like(dist, float("inf"))).amin(-1)
    delta = torch.where(torch.isinf(delta), dist.amax(-1), delta)
    centres = torch.topk(density * delta, num_clusters).indices
    assignment = dist[:, centres].argmin(-1)
    assignment[centres] = torch.arange(num_clusters, device=x.device)
    return assignment


@register_strategy("sparsevlm")
class SparseVLM(Strategy):
    """SparseVLM: raters' attention scores visual tokens, pruned progressively, optionally recycled.

    Exactly one way of setting the counts is used, in this order: ``rank_scale`` (v1 rank rule),
    ``counts``, ``preset`` (v1.5/v2 tables), ``budget``; with none of them, ``preset=192``. ``schedule``
    loads those parameters from a file written by calibration (``svlm fit``).
    """

    def __init__(
        self,
        budget: float | None = None,
        layers: Sequence[int] = DEFAULT_LAYERS,
        preset: int | None = None,
        version: str = "v2",
        counts: Sequence[int] | None = None,
        rank_scale: float | Sequence[float] | None = None,
        rank_bias: float | Sequence[float] = 0.0,
        rank_rtol: float | Sequence[float] | None = None,
        recycle: bool = False,
        recycle_ratio: float = 0.3,
        cluster_ratio: float = 0.1,
        knn: int = 5,
        gravity_correction: bool = False,
        priority_heads: int | None = None,
        schedule: str | None = None,
    ) -> None:
        if schedule is not None:
            from svlm.calibrate.schedule import load_schedule

            loaded = load_schedule(schedule, strategy="sparsevlm")
            budget = loaded.pop("budget", budget)
            layers = loaded.pop("layers", layers)
            counts = loaded.pop("counts", counts)
            rank_scale = loaded.pop("rank_scale", rank_scale)
            rank_bias = loaded.pop("rank_bias", rank_bias)
            rank_rtol = loaded.pop("rank_rtol", rank_rtol)
            if loaded:
                raise ValueError(
                    f"Schedule {schedule!r} has parameters SparseVLM does not take: {sorted(loaded)}."
                )
        self.schedule = schedule
        super().__init__(budget)
        if version not in PRESETS:
            raise ValueError(f"Unknown SparseVLM version {version!r}; valid: {', '.join(PRESETS)}.")
        if preset is not None and preset not in PRESETS[version]:
            raise ValueError(
                f"No SparseVLM {version} preset for {preset} tokens; valid: {sorted(PRESETS[version])}."
            )
        if counts is not None and len(counts) != len(layers):
            raise ValueError(f"counts {list(counts)} must have one entry per pruning layer {list(layers)}.")
        if not 0 < recycle_ratio <= 1 or not 0 < cluster_ratio <= 1:
            raise ValueError("recycle_ratio and cluster_ratio must be in (0, 1].")
        self.layers = [int(x) for x in layers]
        self.preset, self.version = preset, version
        self.counts = None if counts is None else [int(c) for c in counts]
        self.rank_scale, self.rank_bias, self.rank_rtol = rank_scale, rank_bias, rank_rtol
        self.recycle, self.recycle_ratio, self.cluster_ratio, self.knn = (
            recycle,
            recycle_ratio,
            cluster_ratio,
            knn,
        )
        self.gravity_correction, self.priority_heads = gravity_correction, priority_heads
        if self.mode == "preset" and self.preset is None:
            self.preset = 192

    @property
    def drops_only(self) -> bool:
        return not self.recycle

    @property
    def needs_head_attention(self) -> bool:
        return self.gravity_correction or self.priority_heads is not None

    @property
    def mode(self) -> str:
        if self.rank_scale is not None:
            return "rank"
        if self.counts is not None:
            return "counts"
        if self.budget is not None and self.preset is None:
            return "budget"
        return "preset"

    # -- hooks ------------------------------------------------------------------------------------------
    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return scale_layers(self.layers, ctx.info.num_layers)

    def prepare(self, ctx: PrefillContext) -> None:
        ctx.scratch["raters"], flops = select_raters(ctx.inputs_embeds, ctx.visual, ctx.valid)
        ctx.overhead_flops += flops
        ctx.scratch["layers"] = self.prune_layers(ctx)
        if self.mode in ("budget", "preset", "counts"):
            ctx.scratch["schedule"] = self._schedule(ctx)

    def attention_rows(self, ctx: PrefillContext, view: LayerView) -> torch.Tensor:
        raters = ctx.scratch["raters"]
        origin = view.origin.clamp_min(0)
        return torch.gather(raters, 1, origin) & (view.origin >= 0) & view.valid

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        step = ctx.scratch["layers"].index(view.layer)
        probs = self._head_weighted(view)  # [b, r, n]
        scores = self._scores(view, probs)
        n_visual = view.num_visual
        info: dict[str, object] = {}
        if self.mode == "rank":
            ranks = self._ranks(view, probs, step)
            scale = _per_layer(self.rank_scale, step)
            bias = _per_layer(self.rank_bias, step)
            target = torch.tensor([int(r * scale + bias) for r in ranks], device=n_visual.device)
            target = torch.minimum(target.clamp_min(1), (n_visual - 1).clamp_min(1))
            info["rank"] = ranks
        else:
            target = torch.minimum(ctx.scratch["schedule"][:, step].to(n_visual.device), n_visual)
        merged_counts = self._cluster_counts(n_visual - target) if self.recycle else torch.zeros_like(target)
        keep_count = (target - merged_counts).clamp_min(1)
        keep = keep_top_visual(view, scores, keep_count)
        info.update(kept=keep_count, target=target)
        if not self.recycle:
            return Selection(keep=keep, info=info)
        merged, anchor, merged_valid = self._recycle(view, scores, keep, merged_counts)
        info["recycled"] = merged_valid.sum(-1)
        return Selection(keep=keep, merged=merged, merged_anchor=anchor, merged_valid=merged_valid, info=info)

    # -- pieces -----------------------------------------------------------------------------------------
    def _schedule(self, ctx: PrefillContext) -> torch.Tensor:
        """[b, steps] visual tokens to have after each pruning layer."""
        layers = ctx.scratch["layers"]
        n_visual = ctx.num_visual
        if self.mode == "budget":
            shape = self._shape_for(
                self.budget if self.budget >= 1 else self.budget * REFERENCE_VISUAL_TOKENS
            )
            shape = _fit(shape, len(layers))
            return schedule_counts(ctx.info.num_layers, layers, n_visual, self.target_tokens(ctx), shape)
        table = self.counts if self.mode == "counts" else PRESETS[self.version][self.preset]
        table = _fit(table, len(layers))
        # Tables are for 576 visual tokens; other token counts keep the same fractions.
        fractions = torch.tensor(table, dtype=torch.float64) / REFERENCE_VISUAL_TOKENS
        counts = (n_visual.double().unsqueeze(-1) * fractions).round().long()
        if ctx.info.num_layers == REFERENCE_LAYERS and bool((n_visual == REFERENCE_VISUAL_TOKENS).all()):
            counts = torch.tensor(table).expand(len(n_visual), -1).clone()
        return torch.minimum(counts.clamp_min(1), n_visual.unsqueeze(-1))

    def _shape_for(self, budget_tokens: float) -> tuple[int, ...]:
        table = PRESETS[self.version]
        nearest = min(table, key=lambda k: abs(k - budget_tokens))
        return table[nearest]

    def _head_weighted(self, view: LayerView) -> torch.Tensor:
        """[b, r, n] attention averaged over heads (or the priority heads), gravity-corrected if asked."""
        attn = view.attention  # [b, h, r, n]
        if self.gravity_correction:
            ones = torch.ones(1, 1, 1, device=attn.device, dtype=torch.float32)
            prior = view.recompute(q=ones, k=ones)
            attn = attn / prior.clamp_min(1e-6)
            attn = attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)
        if self.priority_heads is not None and self.priority_heads < attn.shape[1]:
            visual = (view.visual & view.valid).view(attn.shape[0], 1, 1, -1)
            mass = (attn * visual).sum((-1, -2))  # [b, h]
            heads = torch.topk(mass, self.priority_heads, dim=-1).indices
            attn = torch.gather(attn, 1, heads.view(*heads.shape, 1, 1).expand(-1, -1, *attn.shape[2:]))
        return attn.mean(1)

    def _scores(self, view: LayerView, probs: torch.Tensor) -> torch.Tensor:
        weights = view.rows_valid.float().unsqueeze(-1)
        scores = (probs * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return scores.masked_fill(~(view.visual & view.valid), float("-inf"))

    def _ranks(self, view: LayerView, probs: torch.Tensor, step: int) -> list[int]:
        rtol = _per_layer(self.rank_rtol, step)
        ranks = []
        for b in range(probs.shape[0]):
            rows = probs[b][view.rows_valid[b]]
            ranks.append(attention_rank(rows[:, view.visual[b] & view.valid[b]], rtol))
        return ranks

    def _cluster_counts(self, deleted: torch.Tensor) -> torch.Tensor:
        recycled = (deleted.double() * self.recycle_ratio).long() + 1
        clusters = (recycled.double() * self.cluster_ratio).long() + 1
        return torch.where(deleted > 0, torch.minimum(clusters, recycled), torch.zeros_like(deleted))

    def _recycle(
        self, view: LayerView, scores: torch.Tensor, keep: torch.Tensor, planned: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        deleted = view.visual & view.valid & ~keep
        merged, anchor, valid, _ = recycle_tokens(
            view.hidden, scores, deleted, self.recycle_ratio, self.cluster_ratio, self.knn, planned
        )
        return merged, anchor, valid

    def extra_repr(self) -> str:
        detail = {
            "budget": f"budget={self.budget}",
            "preset": f"preset={self.preset}, version={self.version!r}",
            "counts": f"counts={self.counts}",
            "rank": f"rank_scale={self.rank_scale}, rank_bias={self.rank_bias}",
        }[self.mode]
        return f"{detail}, layers={self.layers}, recycle={self.recycle}"


def recycle_tokens(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    deleted: torch.Tensor,
    recycle_ratio: float = 0.3,
    cluster_ratio: float = 0.1,
    knn: int = 5,
    max_clusters: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[torch.Tensor]]]:
    """Merge the best-scored deleted tokens of each sample into density-peak cluster averages.

    Of the ``deleted`` [b, n] slots, the top ``int(recycle_ratio * n_deleted) + 1`` by score are clustered
    into ``int(n_recycled * cluster_ratio) + 1`` clusters; each cluster becomes the mean of its members'
    hidden states and takes the position of its best-scored member. Returns ``merged`` [b, m, d], ``anchor``
    [b, m] (slot whose position a merged token takes), ``valid`` [b, m] and the member slots of each cluster.
    ``max_clusters`` [b] caps the clusters per sample (so that a schedule's token count is met exactly).
    """
    b, _, d = hidden.shape
    per_sample: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []
    for i in range(b):
        idx = deleted[i].nonzero().squeeze(-1)
        if idx.numel() == 0:
            per_sample.append((hidden.new_zeros(0, d), idx, []))
            continue
        n_recycled = min(int(recycle_ratio * idx.numel()) + 1, idx.numel())
        best = idx[torch.topk(scores[i, idx].float(), n_recycled).indices]
        n_clusters = int(n_recycled * cluster_ratio) + 1
        if max_clusters is not None:
            n_clusters = max(1, min(n_clusters, int(max_clusters[i])))
        assignment = density_peak_clusters(hidden[i, best], n_clusters, knn)
        k = int(assignment.max()) + 1
        sums = torch.zeros(k, d, dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, assignment, hidden[i, best].float())
        sizes = torch.bincount(assignment, minlength=k).clamp_min(1).unsqueeze(-1)
        members = [best[assignment == c] for c in range(k)]
        anchors = torch.stack([m[scores[i, m].float().argmax()] for m in members])
        per_sample.append(((sums / sizes).to(hidden.dtype), anchors, members))
    merged, anchor, valid = pack_merged([(x[0], x[1]) for x in per_sample], hidden)
    return merged, anchor, valid, [x[2] for x in per_sample]


def _per_layer(value: float | Sequence[float] | None, step: int) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    if step >= len(value):
        raise BudgetError(f"Per-layer value {list(value)} has no entry for pruning step {step}.")
    return float(value[step])


def _fit(table: Sequence[int], steps: int) -> tuple[int, ...]:
    """Use a 3-step table on a schedule with another number of steps (scaled layers can merge)."""
    table = tuple(table)
    if len(table) == steps:
        return table
    if steps < len(table):
        return table[len(table) - steps :]
    return table + (table[-1],) * (steps - len(table))

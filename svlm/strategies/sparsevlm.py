"""SparseVLM (Zhang et al., ICML 2025): text-guided, progressive visual-token sparsification.

Paper: "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference",
arXiv:2410.04417. Reference code: GitHub Gumpest/SparseVLMs. ``version`` selects one of its published modes,
each reproduced exactly (``tests/test_strategies/test_sparsevlm_reference.py`` runs a transcription of the
reference next to this module):

* ``"v1"`` (commit b72c5d6): pruning after layers 2/6/15/19, the **rank rule**
  ``min(int(rank(P) * scale + bias), n - 1)`` (no pruning when ``rank(P) == n``) with the published
  ``scale``/``bias`` per preset, recycling, positions renumbered after each pruning;
* ``"v1.5"`` (tag ``v1.5``): pruning after layers 2/6/15 to the hard-coded counts, recycling, renumbered
  positions;
* ``"v2"`` (SparseVLM+, main 26a5f48 with ``USE_VERSION=2_0``): the v2 counts, RoPE-gravity correction,
  14 priority heads, no recycling, original positions.

Common to all: **raters** are the text tokens after the image whose relevance to the visual tokens is above
the mean (``m = softmax(V T^T over text).mean(over visual)``, ``m > mean(m)``, on the language model's input
embeddings); a visual token's **score** is the raters' attention to it (layer's causal softmax, mean over
heads, then over raters), computed rows-only from the layer's own q/k. **Recycling** clusters the top 30% (by
score) of the deleted tokens into ``int(n / 10) + 1`` density-peak (DPC-kNN) clusters and inserts their means
right after the kept visual tokens, on top of the kept count.

svlm's own additions, off the reference path: ``budget=`` (counts solved to meet a mean-tokens-per-layer
budget), ``counts=``, ``schedule=`` (calibrated by ``svlm fit``), ``positions="original"`` for v1/v1.5,
scaling of the pruning layers and tables to other depths and visual-token counts, ``knn=`` for clustering.
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
    schedule_counts,
)
from svlm.strategies.registry import register_strategy

REFERENCE_LAYERS = 32
REFERENCE_VISUAL_TOKENS = 576
VERSIONS = ("v1", "v1.5", "v2")
#: The default: SparseVLM+, the authors' current version, and the one that runs on every family (it keeps
#: original positions, which Qwen2-VL's 3-D M-RoPE needs).
DEFAULT_VERSION = "v2"
DEFAULT_LAYERS = (2, 6, 15)
#: Pruning layers of the 32-layer reference model by version (``pruning_loc`` of modelling_sparse_llama.py).
VERSION_LAYERS: dict[str, tuple[int, ...]] = {
    "v1": (2, 6, 15, 19),
    "v1.5": DEFAULT_LAYERS,
    "v2": DEFAULT_LAYERS,
}

#: Visual tokens kept after layers 2/6/15 of LLaVA-1.5-7B (before recycled tokens are added), by version and
#: preset (score.py: tag v1.5 for 192/128/64, main 26a5f48 for v1.5's 96 and all of v2).
PRESETS: dict[str, dict[int, tuple[int, int, int]]] = {
    "v1.5": {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)},
    "v2": {192: (300, 200, 118), 128: (238, 108, 60), 96: (246, 54, 28), 64: (66, 34, 20)},
}
#: v1's rank-rule ``(scale, bias)`` per preset (README and scripts/v1_5/eval/*.sh of commit b72c5d6).
RANK_PRESETS: dict[int, tuple[float, float]] = {192: (13.5, 0.0), 128: (9.0, 6.0), 64: (0.8, 0.0)}
#: SparseVLM+ scores with the 14 heads of largest rater-to-visual attention (score.py, main 26a5f48).
PRIORITY_HEADS = 14
POSITIONS = ("renumber", "original")
#: Distances are computed as the reference does (norm of pairwise differences) while the [b, m, m, d]
#: difference tensor has at most this many elements; above, by cdist's direct kernel (same up to rounding).
EXACT_DISTANCE_ELEMENTS = 1 << 26


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
    """Numerical rank of one [raters x visual] attention matrix (see :func:`batched_ranks`)."""
    if probs.numel() == 0:
        return 0
    return int(torch.linalg.matrix_rank(probs.float(), rtol=rtol))


def batched_ranks(
    matrix: torch.Tensor, rows_valid: torch.Tensor, cols_valid: torch.Tensor, rtol: float | None = None
) -> torch.Tensor:
    """[b] numerical ranks of the valid block of each [b, r, c] matrix, in one batched SVD.

    Padding rows and columns are zeroed (they add no singular value). ``rtol`` None is ``torch``'s default
    for each sample's own valid shape, ``max(r_b, c_b) * eps`` (what the reference's ``matrix_rank`` uses).
    """
    ok = rows_valid.unsqueeze(-1) & cols_valid.unsqueeze(-2)
    matrix = torch.where(ok, matrix.float(), 0.0)
    if matrix.shape[-1] == 0 or matrix.shape[-2] == 0:
        return torch.zeros(matrix.shape[0], dtype=torch.long, device=matrix.device)
    if rtol is None:
        dims = torch.maximum(rows_valid.sum(-1), cols_valid.sum(-1)).double()
        tol = (dims * torch.finfo(torch.float32).eps).float()
    else:
        tol = torch.full((matrix.shape[0],), float(rtol), device=matrix.device)
    return torch.linalg.matrix_rank(matrix, rtol=tol).long()


def tie_noise(m: int, device: torch.device) -> torch.Tensor:
    """[m] deterministic values in [0, 1e-6), added to densities to break ties (the reference adds
    ``torch.rand * 1e-6``; a fixed sequence keeps runs reproducible and batch-independent)."""
    return torch.frac(torch.arange(m, device=device, dtype=torch.float64) * 0.6180339887498949).float() * 1e-6


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """[b, m, m] Euclidean distances of the rows of ``x`` [b, m, d], divided by ``sqrt(d)``."""
    b, m, d = x.shape
    if b * m * m * d <= EXACT_DISTANCE_ELEMENTS:
        dist = (x.unsqueeze(2) - x.unsqueeze(1)).norm(dim=-1, p=2)
    else:
        dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    return dist / (d**0.5)


def density_peak_clusters(
    features: torch.Tensor,
    valid: torch.Tensor,
    num_clusters: torch.Tensor,
    knn: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN clustering of each sample's valid rows, as the reference's ``cluster_and_merge``.

    ``features`` [b, m, d], ``valid`` [b, m], ``num_clusters`` [b] (<= valid rows). Density is
    ``exp(-mean squared distance to the k nearest rows)`` with ``k = num_clusters`` counting the row itself
    (``knn`` overrides k), plus :func:`tie_noise`; a row's distance indicator is the distance to its nearest
    denser row (the sample's largest distance when there is none); the ``num_clusters`` rows of largest
    ``density * indicator`` are the centres, in that order; every row joins its nearest centre and each
    centre its own cluster. Returns (cluster index [b, m], -1 on invalid rows; centre rows [b, c_max]).
    """
    b, m, _ = features.shape
    device = features.device
    c_max = int(num_clusters.max()) if b else 0  # one host sync per pruning layer
    cluster = torch.full((b, m), -1, dtype=torch.long, device=device)
    if c_max == 0 or m == 0:
        return cluster, torch.zeros(b, 0, dtype=torch.long, device=device)
    pair = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    dist = pairwise_distances(features.float())
    k = num_clusters if knn is None else torch.minimum(torch.full_like(num_clusters, knn), valid.sum(-1))
    k_max = c_max if knn is None else min(knn, m)
    nearest = torch.topk(dist.masked_fill(~pair, float("inf")), k_max, dim=-1, largest=False).values
    used = torch.arange(k_max, device=device) < k.view(b, 1, 1)
    squares = torch.where(used, nearest**2, 0.0)
    if knn is None and b == 1:
        mean = squares.mean(-1)  # the reference's op (no padding at batch 1)
    else:
        mean = squares.sum(-1) / k.clamp_min(1).view(b, 1)
    density = (-mean).exp() + tie_noise(m, device)
    dist_max = dist.masked_fill(~pair, float("-inf")).flatten(1).amax(-1).view(b, 1, 1)
    denser = (density.unsqueeze(1) > density.unsqueeze(2)) & pair
    indicator = torch.where(denser, dist, dist_max).amin(-1)
    score = (indicator * density).masked_fill(~valid, float("-inf"))
    centres = torch.topk(score, c_max, dim=-1).indices  # [b, c_max], best first
    centre_ok = torch.arange(c_max, device=device) < num_clusters.unsqueeze(-1)
    to_centre = torch.gather(dist, 1, centres.unsqueeze(-1).expand(b, c_max, m))  # [b, c, m]
    nearest_centre = to_centre.masked_fill(~centre_ok.unsqueeze(-1), float("inf")).argmin(1)
    # each centre joins its own cluster (invalid centres write into a spare column that is dropped)
    own = torch.cat([nearest_centre, nearest_centre.new_zeros(b, 1)], dim=1)
    target = torch.where(centre_ok, centres, m)
    own.scatter_(1, target, torch.arange(c_max, device=device).expand(b, c_max))
    cluster = torch.where(valid, own[:, :m], -1)
    return cluster, centres


def recycle_tokens(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    deleted: torch.Tensor,
    recycle_ratio: float = 0.3,
    cluster_ratio: float = 0.1,
    knn: int | None = None,
    max_clusters: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the best-scored deleted tokens of each sample into density-peak cluster means (no host loops).

    Of the ``deleted`` [b, n] slots, the top ``int(n_deleted * recycle_ratio) + 1`` by score are clustered
    into ``int(n_recycled * cluster_ratio) + 1`` clusters (at most ``max_clusters`` [b]); a cluster's token
    is its members' mean (weights ``1 / (size + 1e-6)``, as the reference). Returns ``merged`` [b, c, d] in
    cluster order, ``anchor`` [b, c] (slot of each cluster's best-scored member), ``valid`` [b, c] and the
    cluster of each slot [b, n] (-1 where not recycled).
    """
    b, n, d = hidden.shape
    device = hidden.device
    n_deleted = deleted.sum(-1)
    n_recycled = torch.where(
        n_deleted > 0, (n_deleted.double() * recycle_ratio).floor().long() + 1, 0
    ).clamp_max(n_deleted)
    n_clusters = torch.where(n_recycled > 0, (n_recycled.double() * cluster_ratio).floor().long() + 1, 0)
    n_clusters = torch.minimum(n_clusters, n_recycled)
    if max_clusters is not None:
        n_clusters = torch.minimum(n_clusters, max_clusters.to(device).clamp_min(1))
    m = int(n_recycled.max()) if b else 0  # one host sync per pruning layer
    slot_cluster = torch.full((b, n), -1, dtype=torch.long, device=device)
    if m == 0:
        empty = hidden.new_zeros(b, 0, d)
        none = torch.zeros(b, 0, dtype=torch.long, device=device)
        return empty, none, none.bool(), slot_cluster
    ranked = scores.float().masked_fill(~deleted, float("-inf"))
    slots = torch.sort(ranked, dim=-1, descending=True, stable=True).indices[:, :m]  # best first
    ok = torch.arange(m, device=device) < n_recycled.unsqueeze(-1)
    members = gather_rows(hidden, slots)
    cluster, centres = density_peak_clusters(members, ok, n_clusters, knn)
    c = centres.shape[1]
    spare = torch.where(ok, cluster, c) + torch.arange(b, device=device).unsqueeze(-1) * (c + 1)
    flat = spare.reshape(-1)
    sizes = hidden.new_zeros(b * (c + 1), 1).index_add_(0, flat, hidden.new_ones(b * m, 1)) + 1e-6
    weights = hidden.new_ones(b * m, 1) / sizes[flat]
    merged = hidden.new_zeros(b * (c + 1), d)
    merged.index_add_(0, flat, members.reshape(b * m, d) * weights)
    merged = merged.view(b, c + 1, d)[:, :c]
    # best-scored member of each cluster: the first in score order
    order = torch.arange(m, device=device).expand(b, m)
    first = torch.full((b, c + 1), m, dtype=torch.long, device=device)
    first.scatter_reduce_(1, torch.where(ok, cluster, c), order, reduce="amin")
    valid = torch.arange(c, device=device) < n_clusters.unsqueeze(-1)
    anchor = torch.gather(slots, 1, first[:, :c].clamp_max(m - 1))
    slot_cluster = torch.cat([slot_cluster, slot_cluster[:, :1]], dim=1)
    slot_cluster.scatter_(1, torch.where(ok, slots, n), torch.where(ok, cluster, -1))
    return merged, torch.where(valid, anchor, 0), valid, slot_cluster[:, :n]


@register_strategy("sparsevlm")
class SparseVLM(Strategy):
    """SparseVLM: raters' attention scores visual tokens, pruned progressively, optionally recycled.

    ``version`` (``"v1"``, ``"v1.5"``, ``"v2"``; default ``"v2"``) is the reference mode reproduced, with
    ``preset`` (192, 128, 96 or 64; default 192) its published setting. The remaining arguments default to
    the version's choice (None) and can override it: ``layers``, ``recycle``, ``gravity_correction``,
    ``priority_heads`` (0 disables), ``positions`` (``"renumber"``/``"original"``).

    Counts come from, in this order: ``rank_scale`` (v1 rank rule with your scale/bias), ``counts`` (svlm:
    visual tokens after each pruning layer, merged included), ``budget`` (svlm: solved schedule), the v1
    rank presets, the v1.5/v2 tables. ``schedule`` loads parameters calibrated by ``svlm fit``.
    """

    def __init__(
        self,
        budget: float | None = None,
        version: str = DEFAULT_VERSION,
        preset: int | None = None,
        layers: Sequence[int] | None = None,
        counts: Sequence[int] | None = None,
        rank_scale: float | Sequence[float] | None = None,
        rank_bias: float | Sequence[float] = 0.0,
        rank_rtol: float | Sequence[float] | None = None,
        recycle: bool | None = None,
        recycle_ratio: float = 0.3,
        cluster_ratio: float = 0.1,
        knn: int | None = None,
        gravity_correction: bool | None = None,
        priority_heads: int | None = None,
        positions: str | None = None,
        schedule: str | None = None,
    ) -> None:
        self.schedule_model: dict | None = None  # the model a schedule file was calibrated for
        if schedule is not None:
            from svlm.calibrate.schedule import read_schedule

            data = read_schedule(schedule, strategy="sparsevlm")  # every value validated
            loaded, self.schedule_model = dict(data["params"]), data["model"]
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
        if version not in VERSIONS:
            raise ValueError(f"Unknown SparseVLM version {version!r}; valid: {', '.join(VERSIONS)}.")
        valid_presets = sorted(RANK_PRESETS if version == "v1" else PRESETS[version])
        if preset is not None and preset not in valid_presets:
            raise ValueError(f"No SparseVLM {version} preset for {preset} tokens; valid: {valid_presets}.")
        layers = VERSION_LAYERS[version] if layers is None else layers
        if counts is not None and len(counts) != len(layers):
            raise ValueError(f"counts {list(counts)} must have one entry per pruning layer {list(layers)}.")
        if not 0 < recycle_ratio <= 1 or not 0 < cluster_ratio <= 1:
            raise ValueError("recycle_ratio and cluster_ratio must be in (0, 1].")
        if positions is not None and positions not in POSITIONS:
            raise ValueError(f"Unknown positions {positions!r}; valid: {', '.join(POSITIONS)}.")
        if knn is not None and knn < 1:
            raise ValueError(f"knn must be >= 1 (or None for the reference's k); got {knn}.")
        self.version = version
        self.layers = [int(x) for x in layers]
        self.counts = None if counts is None else [int(c) for c in counts]
        self.rank_scale, self.rank_bias, self.rank_rtol = rank_scale, rank_bias, rank_rtol
        self.recycle = version != "v2" if recycle is None else bool(recycle)
        self.recycle_ratio, self.cluster_ratio, self.knn = recycle_ratio, cluster_ratio, knn
        self.gravity_correction = version == "v2" if gravity_correction is None else bool(gravity_correction)
        if priority_heads is None:
            priority_heads = PRIORITY_HEADS if version == "v2" else 0
        self.priority_heads = int(priority_heads)
        self.positions = ("original" if version == "v2" else "renumber") if positions is None else positions
        self.preset = preset
        if self.mode in ("preset", "rank") and self.preset is None and self.rank_scale is None:
            self.preset = 192
        if self.mode == "rank" and self.rank_scale is None:
            self.rank_scale, self.rank_bias = RANK_PRESETS[self.preset]

    @property
    def drops_only(self) -> bool:
        return not self.recycle and self.positions == "original"

    @property
    def renumber_positions(self) -> bool:
        return self.positions == "renumber"

    @property
    def needs_head_attention(self) -> bool:
        return self.gravity_correction or bool(self.priority_heads)

    @property
    def mode(self) -> str:
        """``rank``, ``counts``, ``budget`` or ``preset``: how the counts are set."""
        if self.rank_scale is not None:
            return "rank"
        if self.counts is not None:
            return "counts"
        if self.budget is not None and self.preset is None:
            return "budget"
        return "rank" if self.version == "v1" else "preset"

    @property
    def reference_counts(self) -> bool:
        """True for the reference's count rules (rank rule, tables): the count excludes merged tokens."""
        return self.mode in ("rank", "preset")

    # -- hooks ------------------------------------------------------------------------------------------
    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return scale_layers(self.layers, ctx.info.num_layers)

    def prepare(self, ctx: PrefillContext) -> None:
        if self.schedule_model is not None:
            from svlm.calibrate.schedule import check_schedule_model

            check_schedule_model(
                self.schedule_model, ctx.info.num_layers, where=f"Schedule {self.schedule!r}"
            )
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
            rule = torch.trunc(ranks.to(n_visual.device).double() * scale + bias).long().clamp_min(0)
            # rank == n: the reference keeps every token and merges nothing
            prune = ranks.to(n_visual.device) != n_visual
            target = torch.where(prune, torch.minimum(rule, (n_visual - 1).clamp_min(0)), n_visual)
            info["rank"] = ranks
        else:
            planned = ctx.scratch["schedule"][:, step].to(n_visual.device)
            if self.mode == "preset":  # the reference's topk(min(table, n - 1)); nothing to do without tokens
                prune = n_visual > 0
                target = torch.minimum(planned, (n_visual - 1).clamp_min(0))
            else:
                prune = planned < n_visual
                target = torch.minimum(planned, n_visual)
        if self.recycle and not self.reference_counts:  # svlm: merged tokens count towards the target
            planned_merge = self._cluster_counts(n_visual - target)
            keep_count = (target - planned_merge).clamp_min(1)
        else:
            planned_merge, keep_count = None, target
        keep = keep_top_visual(view, scores, keep_count)
        info.update(kept=keep_count, target=target)
        if not self.recycle:
            return Selection(keep=keep, info=info)
        deleted = view.visual & view.valid & ~keep & prune.unsqueeze(-1)
        merged, anchor, merged_valid, _ = recycle_tokens(
            view.hidden, scores, deleted, self.recycle_ratio, self.cluster_ratio, self.knn, planned_merge
        )
        info["recycled"] = merged_valid.sum(-1)
        if merged.shape[1] == 0:
            return Selection(keep=keep, info=info)
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
        device = n_visual.device
        if ctx.info.num_layers == REFERENCE_LAYERS and n_visual.shape[0] and self._all_reference(n_visual):
            counts = torch.tensor(table, device=device).expand(len(n_visual), -1).clone()
        else:  # svlm: tables are for 576 visual tokens; other token counts keep the same fractions
            fractions = torch.tensor(table, dtype=torch.float64, device=device) / REFERENCE_VISUAL_TOKENS
            counts = (n_visual.double().unsqueeze(-1) * fractions).round().long()
        return torch.minimum(counts.clamp_min(1), n_visual.unsqueeze(-1))

    @staticmethod
    def _all_reference(n_visual: torch.Tensor) -> bool:
        return bool((n_visual == REFERENCE_VISUAL_TOKENS).all())  # one host sync per prefill

    def _shape_for(self, budget_tokens: float) -> tuple[int, ...]:
        table = PRESETS["v1.5" if self.version == "v1" else self.version]
        nearest = min(table, key=lambda k: abs(k - budget_tokens))
        return table[nearest]

    def _head_weighted(self, view: LayerView) -> torch.Tensor:
        """[b, r, n] attention averaged over heads (or the priority heads), gravity-corrected if asked.

        The correction divides each probability by the raw attention logit of all-ones q and k under the
        layer's RoPE (``q1 k1^T / sqrt(d)``, not renormalised), on visual keys, as SparseVLM+ does.
        """
        attn = view.attention  # [b, h, r, n]
        visual = (view.visual & view.valid).view(attn.shape[0], 1, 1, -1)
        visual = visual & view.rows_valid.view(attn.shape[0], 1, -1, 1)  # valid rows x visual keys
        if self.gravity_correction:
            ones = torch.ones(1, 1, 1, device=attn.device, dtype=torch.float32)
            prior = view.recompute(q=ones, k=ones, logits=True)
            attn = torch.where(visual, attn / prior, 0.0)
        if self.priority_heads and self.priority_heads < attn.shape[1]:
            mass = torch.where(visual, attn, 0.0).sum((-1, -2))  # [b, h]
            heads = torch.topk(mass, self.priority_heads, dim=-1).indices
            attn = torch.gather(attn, 1, heads.view(*heads.shape, 1, 1).expand(-1, -1, *attn.shape[2:]))
        return attn.mean(1)

    def _scores(self, view: LayerView, probs: torch.Tensor) -> torch.Tensor:
        weights = view.rows_valid.float().unsqueeze(-1)
        scores = (probs * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return scores.masked_fill(~(view.visual & view.valid), float("-inf"))

    def _ranks(self, view: LayerView, probs: torch.Tensor, step: int) -> torch.Tensor:
        """[b] ranks of the raters x visual block of the head-averaged attention (one batched SVD)."""
        cols, cols_ok = rows_from_mask(view.visual & view.valid)
        block = torch.gather(probs, 2, cols.unsqueeze(1).expand(-1, probs.shape[1], -1))
        return batched_ranks(block, view.rows_valid, cols_ok, _per_layer(self.rank_rtol, step))

    def _cluster_counts(self, deleted: torch.Tensor) -> torch.Tensor:
        recycled = (deleted.double() * self.recycle_ratio).floor().long() + 1
        clusters = (recycled.double() * self.cluster_ratio).floor().long() + 1
        return torch.where(deleted > 0, torch.minimum(clusters, recycled), torch.zeros_like(deleted))

    def extra_repr(self) -> str:
        detail = {
            "budget": f"budget={self.budget}",
            "preset": f"preset={self.preset}",
            "counts": f"counts={self.counts}",
            "rank": f"rank_scale={self.rank_scale}, rank_bias={self.rank_bias}",
        }[self.mode]
        return (
            f"version={self.version!r}, {detail}, layers={self.layers}, recycle={self.recycle}, "
            f"positions={self.positions!r}"
        )


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

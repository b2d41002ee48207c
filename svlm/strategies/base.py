"""The ``Strategy`` base class: the few hooks a token-pruning method implements.

A strategy never touches the model. The engine calls, for one prefill:

1. :meth:`Strategy.prune_layers` — after which decoder layers tokens are selected (``-1``: before the
   language model, on the input embeddings);
2. :meth:`Strategy.prepare` — once, with the input embeddings (SparseVLM picks its raters here);
3. :meth:`Strategy.attention_rows` — at each pruning layer, which query rows' attention the strategy needs
   (the engine computes only those rows against all keys, from the layer's own q/k);
4. :meth:`Strategy.select` — at each pruning layer, which visual tokens to keep, and optionally merged
   tokens to insert after the kept visual tokens.

Text tokens are always kept; the engine gathers the kept rows and keeps their original positions (or, for a
strategy whose ``renumber_positions`` is True, renumbers them contiguously after each pruning).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from svlm.adapters.base import ModelInfo


class BudgetError(ValueError):
    """A budget that the strategy cannot meet (too small, too large, or infeasible for the model depth)."""


BUDGET_RULE = (
    "a budget is a count of visual tokens per layer (a number > 1, or the int 1) or a fraction of each "
    "sample's visual tokens in (0, 1)"
)


def parse_budget(value: Any) -> int | float | None:
    """The one rule for every strategy's ``budget`` (applied by :class:`Strategy`'s constructor).

    ``None`` (no budget) stays ``None``; ints >= 1 and floats > 1 are counts of visual tokens per layer;
    floats in (0, 1) are fractions of each sample's visual tokens; a numeric string (``"64"``, ``"0.5"``) is
    read as that number. Raises :class:`BudgetError` for a bool, a non-numeric string, NaN/inf, values
    <= 0, and ``1.0`` (one token, or all of them? use the int 1 or the ``dense`` strategy).
    """
    if value is None:
        return None
    original = value
    if isinstance(value, bool):
        raise BudgetError(f"budget={value!r} is a bool; {BUDGET_RULE}.")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise BudgetError(f"budget={original!r} is not a number; {BUDGET_RULE}.") from None
    elif not isinstance(value, numbers.Real):
        raise BudgetError(f"budget={original!r} ({type(original).__name__}) is not a number; {BUDGET_RULE}.")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise BudgetError(f"budget={original!r} must be > 0; {BUDGET_RULE}.")
        return int(value)
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"budget={original!r} must be a finite number > 0; {BUDGET_RULE}.")
    if value == 1.0:
        raise BudgetError(
            f"budget={original!r} is ambiguous (one token, or all of them?); {BUDGET_RULE}: write 1 for one "
            "token, or use the `dense` strategy for all tokens."
        )
    return value


@dataclass
class PrefillContext:
    """What a strategy knows about the current call. ``scratch`` is its per-call storage."""

    info: ModelInfo
    input_ids: torch.Tensor  # [b, n]
    inputs_embeds: torch.Tensor  # [b, n, d]
    visual: torch.Tensor  # [b, n] bool
    valid: torch.Tensor  # [b, n] bool (False at padding)
    inputs: dict[str, Any]  # the model inputs of this call (pixel_values, image_grid_thw, ...)
    # the inputs given to the svlm wrapper's call or generate (pixel_values even where generate computed the
    # image features before this forward)
    request_inputs: dict[str, Any] = field(default_factory=dict)
    generator: torch.Generator | None = None
    scratch: dict[str, Any] = field(default_factory=dict)
    overhead_flops: float = 0.0  # FLOPs a strategy spends outside the layers (added to the report's scoring)
    vision: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # captured encoder q/k by layer
    adapter: Any = None  # the model family's adapter (geometry, CLS attention)

    @property
    def num_visual(self) -> torch.Tensor:
        """[b] number of visual tokens of each sample in the prompt."""
        return (self.visual & self.valid).sum(-1)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class LayerView:
    """The sequence leaving a pruning layer, as :meth:`Strategy.attention_rows` and :meth:`Strategy.select`
    see it.

    Tensors are indexed by *slot*: position ``j`` of the current sequence of sample ``b``, which after earlier
    pruning is shorter than the prompt and left-padded (padding slots first, ``valid`` False). A slot's place
    in the original prompt is ``origin[b, j]``. Everything lives on the model's device.

    Attributes:
        layer: Decoder layer whose output this is (``-1``: the language model's input embeddings, for
            strategies that prune before the LLM).
        hidden: ``[b, n, d]`` hidden states leaving ``layer`` (the model's dtype); kept rows go on unchanged.
        visual: ``[b, n]`` bool, True at visual (image) tokens; merged tokens inserted earlier are visual.
        valid: ``[b, n]`` bool, False at padding slots (per sample, since samples keep different numbers).
            Visual candidates are ``visual & valid``.
        origin: ``[b, n]`` long, the slot's index in the original prompt (what ``Report.positions`` returns);
            ``-1`` for padding slots and merged tokens.
        attention: ``[b, h, r, n]`` float32 softmax probabilities of the rows requested by
            :meth:`Strategy.attention_rows` against all ``n`` slots (keys), computed from this layer's own
            q/k; ``h`` is 1 (the head mean) unless the strategy's ``needs_head_attention`` is True. ``None``
            when no rows were requested.
        rows: ``[b, r]`` long, the slot of each attention row (rows are packed per sample, ``rows_valid``
            marks the real ones).
        rows_valid: ``[b, r]`` bool, False for filler rows of samples with fewer requested rows.
        recompute: ``recompute(q=None, k=None)`` recomputes ``attention`` for the same rows with replaced
            query/key projections (broadcast to the captured ones), e.g. SparseVLM+'s position prior.
    """

    layer: int
    hidden: torch.Tensor
    visual: torch.Tensor
    valid: torch.Tensor
    origin: torch.Tensor
    attention: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    rows_valid: torch.Tensor | None = None
    recompute: Callable[..., torch.Tensor] | None = None

    @property
    def num_visual(self) -> torch.Tensor:
        """[b] visual tokens of each sample entering the next layer if nothing is pruned here."""
        return (self.visual & self.valid).sum(-1)

    def visual_scores(self) -> torch.Tensor:
        """[b, n] mean attention (over heads and valid rows) each token receives; -inf off visual slots."""
        if self.attention is None:
            raise RuntimeError(
                f"Layer {self.layer}: attention was not computed; return a row mask from attention_rows()."
            )
        probs = self.attention.mean(1)  # [b, r, n]
        weights = self.rows_valid.float().unsqueeze(-1)
        scores = (probs * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return scores.masked_fill(~(self.visual & self.valid), float("-inf"))


@dataclass
class Selection:
    """A strategy's decision at one layer.

    ``keep`` [b, n] marks visual slots to keep (text slots are kept regardless). Optional ``merged`` [b, m, d]
    hidden states are inserted right after the kept visual tokens; each takes the rotary position of the slot
    ``merged_anchor`` [b, m] points at; ``merged_valid`` [b, m] masks unused merged slots.
    """

    keep: torch.Tensor
    merged: torch.Tensor | None = None
    merged_anchor: torch.Tensor | None = None
    merged_valid: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """Base class of all pruning strategies. Subclass, implement the hooks, register with a decorator.

    ``budget``: the target mean number of visual tokens entering each decoder layer (e.g. 192/128/64 of
    576). A float in (0, 1) is read as a fraction of each sample's visual tokens (at least one token must
    remain); ``1.0``, bools and non-numbers are refused: see :func:`parse_budget`.
    """

    name: ClassVar[str] = ""
    #: True for an upper bound that reads benchmark annotations instead of the inputs (``evidence_oracle``):
    #: left out of ``available_strategies()`` and so of every-strategy sweeps, still built by its name
    oracle: ClassVar[bool] = False

    def vision_attention_layers(self, adapter: Any) -> list[int]:
        """Vision-encoder layers whose q/k projections the strategy wants captured (see ``ctx.vision``)."""
        return []

    @property
    def needs_head_attention(self) -> bool:
        """True when :meth:`select` needs per-head attention rows; otherwise it gets their head mean
        (``view.attention`` of shape [b, 1, r, n]), which the Triton kernel computes on GPUs."""
        return False

    @property
    def renumber_positions(self) -> bool:
        """True when the engine must renumber positions after each pruning: the kept tokens (merged ones
        included) of each sample get positions ``0..k-1`` in slot order, and decoding continues at ``k`` in
        every layer (SparseVLM v1/v1.5). False (the default) keeps every token's original position."""
        return False

    @property
    def drops_only(self) -> bool:
        """True when the strategy only drops tokens (no merging): it must then match the masked-key oracle."""
        return True

    def __init__(self, budget: float | None = None) -> None:
        self.budget = parse_budget(budget)

    # -- hooks ----------------------------------------------------------------------------------------
    def prune_layers(self, ctx: PrefillContext) -> Sequence[int]:
        """Decoder layers after which :meth:`select` runs (-1 = before the language model)."""
        return []

    def prepare(self, ctx: PrefillContext) -> None:
        """Called once per prefill, before layer 0."""

    def attention_rows(self, ctx: PrefillContext, view: LayerView) -> torch.Tensor | None:
        """Bool [b, n] of slots whose attention rows :meth:`select` needs at this layer, or None."""
        return None

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        """Which visual tokens survive this layer."""
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------------------
    def target_tokens(self, ctx: PrefillContext) -> torch.Tensor:
        """[b] float budget in tokens for each sample, validated against its number of visual tokens."""
        n_visual = ctx.num_visual.float()
        if self.budget is None:
            return n_visual
        if self.budget < 1:
            tokens = n_visual * self.budget
            too_small = (tokens < 1) & (n_visual > 0)
            if bool(too_small.any()):
                raise BudgetError(
                    f"budget={self.budget:g} is a fraction of the visual tokens: {self.budget:g} x "
                    f"{int(n_visual[too_small].min())} is less than one token; use a larger fraction or a "
                    "count of tokens."
                )
            return tokens
        too_big = (n_visual < self.budget) & (n_visual > 0)  # samples without an image keep their text
        if bool(too_big.any()):
            raise BudgetError(
                f"budget={self.budget:g} is larger than the number of visual tokens "
                f"({int(n_visual[too_big].min())}) of some samples; use a budget <= "
                f"{int(n_visual.min())} or a fraction in (0, 1)."
            )
        return torch.where(n_visual > 0, float(self.budget), 0.0)

    def extra_repr(self) -> str:
        return f"budget={self.budget}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def pack_merged(
    per_sample: Sequence[tuple[torch.Tensor, torch.Tensor]], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack per-sample merged tokens [m_i, d] and anchor slots [m_i] into the padded tensors a
    :class:`Selection` takes: ``merged`` [b, m, d], ``merged_anchor`` [b, m], ``merged_valid`` [b, m]."""
    b, d = len(per_sample), like.shape[-1]
    m = max(1, max(len(tokens) for tokens, _ in per_sample))
    merged = like.new_zeros(b, m, d)
    anchor = torch.zeros(b, m, dtype=torch.long, device=like.device)
    valid = torch.zeros(b, m, dtype=torch.bool, device=like.device)
    for i, (tokens, anchors) in enumerate(per_sample):
        merged[i, : len(tokens)] = tokens
        anchor[i, : len(anchors)] = anchors
        valid[i, : len(tokens)] = True
    return merged, anchor, valid


def keep_top_visual(view: LayerView, scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep mask [b, n]: the ``k[b]`` highest-scoring visual slots of each sample (text is kept anyway).

    ``scores`` [b, n] is ignored off visual slots. Ties break towards earlier slots.
    """
    candidates = view.visual & view.valid
    scores = scores.float().masked_fill(~candidates, float("-inf"))
    k = torch.minimum(k.long().clamp_min(0), candidates.sum(-1))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (rank < k.unsqueeze(-1)) & candidates


def schedule_counts(
    num_layers: int,
    prune_layers: Sequence[int],
    n_visual: torch.Tensor,
    budget: torch.Tensor,
    shape: Sequence[float] | None = None,
) -> torch.Tensor:
    """Visual tokens to keep after each pruning layer so that the mean over layers meets ``budget``.

    Layers ``0..p1`` see all ``n_visual`` tokens (or none of them if ``p1 == -1``); the counts after each
    pruning layer follow ``shape`` (relative sizes, default all equal) scaled by one factor solved per sample.
    Returns a LongTensor [b, len(prune_layers)]. Raises :class:`BudgetError` when the budget is below what
    the first pruning layer allows.
    """
    layers = list(prune_layers)
    if not layers:
        raise ValueError("schedule_counts needs at least one pruning layer.")
    if sorted(set(layers)) != layers:
        raise ValueError(f"Pruning layers must be strictly increasing; got {layers}.")
    if shape is not None and len(shape) != len(layers):
        raise ValueError(f"shape has {len(shape)} entries for {len(layers)} pruning layers.")
    # The solve runs on the host, on one copy of the per-sample numbers: one sync however many samples and
    # layers, and plain float arithmetic (a few microseconds) instead of dozens of tiny tensor operations.
    device = n_visual.device
    n_host, b_host = torch.stack([n_visual.double(), budget.double().to(device)]).tolist()
    weights = [float(x) for x in shape] if shape is not None else [1.0] * len(layers)
    bounds = layers[1:] + [num_layers - 1]
    spans = [float(hi - lo) for lo, hi in zip(layers, bounds, strict=True)]
    span_total = sum(spans)
    short = [(b, n) for n, b in zip(n_host, b_host, strict=True) if n > 0]
    short = [(b, n) for b, n in short if b * num_layers - (layers[0] + 1) * n < span_total - 1e-9]
    if short:
        minimum = max(((layers[0] + 1) * n + span_total) / num_layers for _, n in short)
        raise BudgetError(
            f"budget={min(b_host):g} cannot be met with pruning after layer {layers[0]} of a "
            f"{num_layers}-layer model: the first {layers[0] + 1} layers alone average "
            f"{minimum:.1f} visual tokens per layer. Prune earlier (e.g. layer 0 or -1) or raise the budget."
        )
    rows = [
        _solve_counts(n, b * num_layers - (layers[0] + 1) * n, spans, weights)
        for n, b in zip(n_host, b_host, strict=True)
    ]
    return torch.tensor(rows, dtype=torch.long, device=device).view(len(n_host), len(layers))


def _solve_counts(n: float, free: float, spans: list[float], weights: list[float]) -> list[int]:
    """One sample's counts: ``free`` token-layers shared in proportion to ``weights`` over layer ``spans``,
    each count clamped at ``n`` (the rest re-solved), rounded half to even, at least 1 (0 without image)."""
    steps = len(spans)
    counts, fixed = [0.0] * steps, [False] * steps
    for _ in range(steps + 1):
        rest = free - sum(c * s for c, s, f in zip(counts, spans, fixed, strict=True) if f)
        weight = max(sum(w * s for w, s, f in zip(weights, spans, fixed, strict=True) if not f), 1e-9)
        scale = rest / weight
        counts = [c if f else scale * w for c, w, f in zip(counts, weights, fixed, strict=True)]
        over = [c > n and not f for c, f in zip(counts, fixed, strict=True)]
        if not any(over):
            break
        counts = [n if o else c for c, o in zip(counts, over, strict=True)]
        fixed = [f or o for f, o in zip(fixed, over, strict=True)]
    return [max(1, round(min(c, n))) if n > 0 else 0 for c in counts]

"""The token sequence entering a decoder layer, and how a selection turns one into the next."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class TokenSequence:
    """Per-slot facts of a (possibly pruned, left-padded) sequence of a batch.

    Slots are in causal order. Padding slots (``valid`` False) exist only so that samples of a batch that
    keep different numbers of tokens share one tensor; they are never attended to as keys.
    """

    origin: torch.Tensor  # [b, n] index in the prompt, -1 for padding and merged slots
    visual: torch.Tensor  # [b, n] bool
    valid: torch.Tensor  # [b, n] bool
    cos: torch.Tensor  # [b, n, head_dim] rotary tables of each slot's original position
    sin: torch.Tensor
    masks: dict[str, torch.Tensor | None] = field(default_factory=dict)  # prefill masks, per format
    # [b] set when positions were renumbered (``renumber``): decoding continues at this position
    next_position: torch.Tensor | None = None
    _padded: bool | None = field(default=None, repr=False, compare=False)

    @property
    def length(self) -> int:
        return self.origin.shape[1]

    @property
    def padded(self) -> bool:
        """True when some slot is padding. Cached: one host sync per sequence, not one per layer or step."""
        if self._padded is None:
            self._padded = not bool(self.valid.all())
        return self._padded

    def visual_counts(self) -> torch.Tensor:
        return (self.visual & self.valid).sum(-1)


def renumber(
    seq: TokenSequence, rotary: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
) -> TokenSequence:
    """Give the valid slots of each sample contiguous positions ``0..k-1`` in slot order, in place.

    ``rotary(positions [b, n])`` returns the rotary tables (cos, sin) [b, n, d] of those positions. Sets
    ``next_position`` to ``k`` (each sample's valid slots), where decoding continues for this sequence's
    layers. Padding slots get position 0 (they are never attended to).
    """
    positions = (seq.valid.long().cumsum(-1) - 1).clamp_min(0)
    seq.cos, seq.sin = rotary(positions)
    seq.next_position = seq.valid.sum(-1)
    return seq


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, j]]`` for x of shape [b, n, ...]."""
    view = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, view)


def plan_gather(
    seq: TokenSequence,
    keep: torch.Tensor,
    merged_valid: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot order of the next sequence as indices into ``cat(current slots, merged slots)``.

    Kept slots stay in order; merged slots go right after the last kept visual slot of their sample; the
    result is left-padded to the longest sample. Returns (index [b, n_new], valid [b, n_new]).
    """
    b, n = keep.shape
    device = keep.device
    slot = torch.arange(n, device=device).expand(b, n)
    key = torch.where(keep, 2.0 * slot.double(), float("-inf"))
    if merged_valid is not None and merged_valid.shape[1] > 0:
        m = merged_valid.shape[1]
        visual_kept = keep & seq.visual
        any_visual = seq.visual & seq.valid
        last_kept = torch.where(visual_kept, slot, -1).amax(-1)
        last_visual = torch.where(any_visual, slot, -1).amax(-1)
        anchor = torch.where(last_kept >= 0, last_kept, last_visual).double()
        offsets = (torch.arange(m, device=device).double() + 1) / (m + 1)
        merged_key = 2.0 * anchor.unsqueeze(-1) + 1.0 * offsets
        merged_key = torch.where(merged_valid, merged_key, float("-inf"))
        key = torch.cat([key, merged_key], dim=1)
    count = torch.isfinite(key).sum(-1)
    n_new = int(count.max())
    order = torch.sort(key, dim=-1, stable=True).indices[:, key.shape[1] - n_new :]
    valid = torch.isfinite(torch.gather(key, 1, order))
    return order, valid


def apply_plan(
    seq: TokenSequence,
    hidden: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    merged: torch.Tensor | None = None,
    merged_anchor: torch.Tensor | None = None,
) -> tuple[TokenSequence, torch.Tensor]:
    """Gather the next sequence (and its hidden states) from the current one plus merged tokens."""
    origin, visual, cos, sin = seq.origin, seq.visual, seq.cos, seq.sin
    if merged is not None and merged.shape[1] > 0:
        anchor = merged_anchor.clamp_min(0)
        hidden = torch.cat([hidden, merged.to(hidden.dtype)], dim=1)
        origin = torch.cat([origin, torch.full_like(anchor, -1)], dim=1)
        visual = torch.cat([visual, torch.ones_like(anchor, dtype=torch.bool)], dim=1)
        cos = torch.cat([cos, gather_rows(cos, anchor)], dim=1)
        sin = torch.cat([sin, gather_rows(sin, anchor)], dim=1)
    new = TokenSequence(
        origin=torch.where(valid, torch.gather(origin, 1, index), -1),
        visual=torch.gather(visual, 1, index) & valid,
        valid=valid,
        cos=gather_rows(cos, index),
        sin=gather_rows(sin, index),
    )
    return new, gather_rows(hidden, index)


def pad_to_bucket(
    seq: TokenSequence, hidden: torch.Tensor, bucket: int
) -> tuple[TokenSequence, torch.Tensor]:
    """``seq`` (and its hidden states) left-padded with padding slots to a multiple of ``bucket`` slots.

    The fast execution modes reuse one CUDA graph per shape; rounding every pruned length up to a few
    buckets lets many inputs share a shape. Padding slots are exact no-ops: they are never attended to as
    keys (each attends only to itself, see :mod:`svlm.engine.masks`), their rows are dropped from the
    logits and not counted as tokens, and their zero hidden states and rotary tables stay finite.
    """
    pad = -seq.length % bucket if bucket > 1 else 0
    if pad == 0:
        return seq, hidden
    b = seq.origin.shape[0]

    def left(x: torch.Tensor, value: float | bool) -> torch.Tensor:
        return torch.cat([x.new_full((b, pad, *x.shape[2:]), value), x], dim=1)

    padded = TokenSequence(
        origin=left(seq.origin, -1),
        visual=left(seq.visual, False),
        valid=left(seq.valid, False),
        cos=left(seq.cos, 0.0),
        sin=left(seq.sin, 0.0),
    )
    padded._padded = True
    return padded, left(hidden, 0.0)

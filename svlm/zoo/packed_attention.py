"""Attention for the recipe's packed training sequences, without a dense [t, t] mask.

A packed sequence is an image prefix (causal) followed by question branches, each of which sees the prefix
and itself causally (``train_default.pack``). Given as a 4-D boolean mask, SDPA on CPU takes its slow masked
path and spends more time on the mask than on the maths (a stage-2 forward of the recipe: 0.89 s with the
mask, 0.34 s causal). This attention function, registered in transformers' public ``AttentionInterface``,
computes the same thing from the layout instead: the prefix with causal SDPA, and every branch as its own
short sequence whose keys are the prefix's keys followed by its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

PACKED_IMPLEMENTATION = "svlm_packed_branches"


@dataclass
class PackedLayout:
    """Where the prefix and the branches of each packed sequence lie.

    ``prefix_len`` is shared by the batch (one image per sequence); ``branch_index`` [b, n, L] holds the
    sequence positions of each branch's tokens (0 where a branch is shorter than L), ``branch_valid``
    [b, n, L] tells them from padding slots, and ``own_mask`` [b, n, 1, L, L] which of its own branch's
    tokens each branch token sees (causal; every branch token also sees the whole prefix).
    """

    prefix_len: int
    branch_index: torch.Tensor
    branch_valid: torch.Tensor
    own_mask: torch.Tensor

    @classmethod
    def from_spans(cls, prefix_len: int, spans: Sequence[Sequence[tuple[int, int]]]) -> PackedLayout:
        """Layout of sequences whose branches are ``(start, length)`` spans after a ``prefix_len`` prefix."""
        b = len(spans)
        n = max(len(s) for s in spans)
        longest = max(length for s in spans for _, length in s)
        index = torch.zeros(b, n, longest, dtype=torch.long)
        valid = torch.zeros(b, n, longest, dtype=torch.bool)
        for i, sample in enumerate(spans):
            for k, (start, length) in enumerate(sample):
                index[i, k, :length] = torch.arange(start, start + length)
                valid[i, k, :length] = True
        causal = torch.ones(longest, longest, dtype=torch.bool).tril()
        return cls(prefix_len, index, valid, (causal & valid[..., None, :]).unsqueeze(2))

    def to(self, device: torch.device | str) -> PackedLayout:
        """The same layout with its index tensors on ``device`` (the one the hidden states live on)."""
        return PackedLayout(
            self.prefix_len,
            self.branch_index.to(device),
            self.branch_valid.to(device),
            self.own_mask.to(device),
        )


_ACTIVE: list[PackedLayout] = []


def _packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Packed-branch attention of ``query`` [b, h, t, d] (the dense mask is ignored): output [b, t, h, d]."""
    if not _ACTIVE:
        raise RuntimeError(
            f"{PACKED_IMPLEMENTATION} attention runs inside `packed_attention(text_config, layout)` only"
        )
    layout = _ACTIVE[-1]
    b, heads, t, dim = query.shape
    group = heads // key.shape[1]
    if group > 1:
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
    p = layout.prefix_len
    _, n, length = layout.branch_index.shape
    out = query.new_zeros(b, heads, t, dim)
    out[:, :, :p] = nn.functional.scaled_dot_product_attention(
        query[:, :, :p], key[:, :, :p], value[:, :, :p], is_causal=True, scale=scaling
    )

    def branches(x: torch.Tensor) -> torch.Tensor:  # [b, h, t, d] -> [b, h, n * L, d]
        return x.gather(2, layout.branch_index.view(b, 1, n * length, 1).expand(b, heads, n * length, dim))

    def per_branch(x: torch.Tensor) -> torch.Tensor:  # [b, h, n * L, d] -> [b, n, h, L, d]
        return x.view(b, heads, n, length, dim).transpose(1, 2)

    # every branch query against the shared prefix keys in one product (no per-branch copies of the prefix),
    # and against its own branch's keys; one softmax over both
    scale = scaling if scaling is not None else dim**-0.5
    q, k, v = branches(query), branches(key), branches(value)
    to_prefix = q @ key[:, :, :p].transpose(-1, -2)  # [b, h, nL, p]
    to_own = per_branch(q) @ per_branch(k).transpose(-1, -2)  # [b, n, h, L, L]
    to_own = to_own.masked_fill(~layout.own_mask, float("-inf"))
    weights = (torch.cat([to_prefix, to_own.transpose(1, 2).flatten(2, 3)], dim=-1) * scale).softmax(-1)
    own_weights = weights[..., p:].unflatten(2, (n, length)).transpose(1, 2)  # [b, n, h, L, L]
    from_own = (own_weights @ per_branch(v)).transpose(1, 2).flatten(2, 3)  # [b, h, nL, d]
    branch_out = weights[..., :p] @ value[:, :, :p] + from_own
    valid = layout.branch_valid.view(b, 1, n * length, 1).to(branch_out.dtype)
    target = layout.branch_index.view(b, 1, n * length, 1).expand(b, heads, n * length, dim)
    out = out.scatter_add(2, target, branch_out * valid)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_IMPLEMENTATION, _packed_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_IMPLEMENTATION, sdpa_mask)


@contextmanager
def packed_attention(text_config: Any, layout: PackedLayout) -> Iterator[None]:
    """Run the decoder of ``text_config`` with packed-branch attention over ``layout``."""
    previous = text_config._attn_implementation
    text_config._attn_implementation = PACKED_IMPLEMENTATION
    _ACTIVE.append(layout)
    try:
        yield
    finally:
        _ACTIVE.pop()
        text_config._attn_implementation = previous

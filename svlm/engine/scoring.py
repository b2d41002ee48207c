"""Attention probabilities of a few query rows against all keys of a layer, from its own q and k.

This is what makes scoring work under SDPA and FlashAttention: those kernels never return attention
weights, and materialising an n x n matrix defeats the point of pruning. The strategy asks for r rows
(raters, the last token, ...) and gets a [b, heads, r, n] tensor: O(r * n) memory, O(r * n * d) compute.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from svlm.engine.sequence import gather_rows
from svlm.kernels.rows_attention import head_mean_rows_attention

RotaryFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rows_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a bool [b, n] row mask into (slot index [b, r], valid [b, r]), r = most rows of any sample."""
    r = int(mask.sum(-1).max()) if mask.numel() else 0
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[:, :r]
    return order, torch.gather(mask, 1, order)


def attention_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    rows: torch.Tensor,
    rows_valid: torch.Tensor,
    key_valid: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    scaling: float,
    rotary: RotaryFn,
    reduce_heads: bool = False,
    rotated_keys: torch.Tensor | None = None,
    softmax: bool = True,
) -> torch.Tensor:
    """Softmax attention probabilities [b, heads, r, n] (float32) of the given rows.

    With ``softmax=False`` it returns the raw scaled logits ``q k^T * scaling`` [b, heads, r, n] instead,
    unmasked (every key, causal or not), zeros on rows that are not valid.

    With ``reduce_heads`` the result is the head mean [b, 1, r, n], computed by the Triton kernel on GPUs
    (no per-head intermediate at all) or by PyTorch elsewhere.

    ``q`` [b, n, heads * d] and ``k`` [b, n, kv_heads * d] are the layer's projections before rotary
    embedding (as its ``q_proj``/``k_proj`` produced them); ``cos``/``sin`` [b, n, d] are the tables the layer
    used. Keys are masked causally in slot order and where ``key_valid`` is False. Rows that are not valid
    come back as zeros. ``rotated_keys`` [b, kv_heads, n, d], the layer's keys after its rotary embedding
    (what its KV cache holds), replaces ``k``: then only the r query rows need rotating, not all n keys.
    """
    b, n, _ = k.shape
    q_rows = gather_rows(q, rows).view(b, -1, num_heads, head_dim).transpose(1, 2).float()
    q_rows = rotary(q_rows, gather_rows(cos, rows).float(), gather_rows(sin, rows).float())
    if rotated_keys is not None:  # the head-mean kernels read them in their own dtype
        keys = rotated_keys if reduce_heads else rotated_keys.float()
    else:
        keys = k.view(b, n, num_kv_heads, head_dim).transpose(1, 2).float()
        keys = rotary(keys, cos.float(), sin.float())
    if reduce_heads and softmax:
        probs = head_mean_rows_attention(q_rows, keys, rows, key_valid, scaling).unsqueeze(1)
        return probs * rows_valid.view(b, 1, -1, 1)
    group = num_heads // num_kv_heads
    q_grouped = q_rows.reshape(b, num_kv_heads, group * q_rows.shape[2], head_dim)
    logits = torch.matmul(q_grouped, keys.transpose(-1, -2)).reshape(b, num_heads, -1, n) * scaling
    if not softmax:
        return logits * rows_valid.view(b, 1, -1, 1)
    slots = torch.arange(n, device=k.device)
    allowed = (slots.view(1, 1, n) <= rows.unsqueeze(-1)) & key_valid.unsqueeze(1)  # [b, r, n]
    logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0) * rows_valid.view(b, 1, -1, 1)

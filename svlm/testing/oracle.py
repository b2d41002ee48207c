"""The masked-key oracle: what a drop-only pruning run must reproduce exactly.

A strategy that only drops tokens (and keeps original positions) is equivalent to a dense run in which,
from each pruning layer on, the dropped tokens are hidden as keys. This module runs that dense run with a
registered attention function (transformers' public ``AttentionInterface``) that applies one key mask per
decoder layer, so strategy authors can test their strategies the way svlm tests its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from svlm.adapters import adapter_for

ORACLE_IMPLEMENTATION = "svlm_key_mask_oracle"
_KEY_MASK_ATTR = "_svlm_oracle_key_mask"


def _oracle_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Plain float32 attention with the layer's extra key mask (``module._svlm_oracle_key_mask`` [b, kv])."""
    b, heads, q_len, dim = query.shape
    kv_len = key.shape[2]
    group = heads // key.shape[1]
    k = key.float().repeat_interleave(group, dim=1)
    v = value.float().repeat_interleave(group, dim=1)
    if attention_mask is None:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=query.device)
        allowed = (torch.arange(kv_len, device=query.device).view(1, -1) <= q_pos.view(-1, 1)).view(
            1, 1, q_len, kv_len
        )
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask == 0
    key_mask = getattr(module, _KEY_MASK_ATTR, None)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :kv_len].to(query.device)
    diagonal = torch.zeros(q_len, kv_len, dtype=torch.bool, device=query.device)
    rows = torch.arange(q_len, device=query.device)
    diagonal[rows, rows + (kv_len - q_len)] = True
    allowed = allowed | diagonal  # rows that are hidden entirely are never compared
    scale = scaling if scaling is not None else dim**-0.5
    logits = torch.matmul(query.float(), k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = torch.matmul(torch.softmax(logits, dim=-1), v).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ORACLE_IMPLEMENTATION, _oracle_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ORACLE_IMPLEMENTATION, sdpa_mask)


@contextmanager
def key_masks(model: nn.Module, masks: Sequence[torch.Tensor | None]) -> Iterator[None]:
    """Run ``model`` with the oracle attention and one key mask [b, kv] per decoder layer."""
    adapter = adapter_for(model)
    text_config = adapter.text_config
    previous = text_config._attn_implementation
    attentions = [adapter.attention(layer) for layer in adapter.decoder_layers]
    text_config._attn_implementation = ORACLE_IMPLEMENTATION
    try:
        for attn, mask in zip(attentions, masks, strict=True):
            setattr(attn, _KEY_MASK_ATTR, mask)
        yield
    finally:
        text_config._attn_implementation = previous
        for attn in attentions:
            if hasattr(attn, _KEY_MASK_ATTR):
                delattr(attn, _KEY_MASK_ATTR)


def layer_key_masks(report: Any, total_length: int) -> list[torch.Tensor]:
    """Per-layer key masks [b, total_length] from a report: kept prompt tokens, plus everything after it."""
    masks = []
    for layer in range(report.info.num_layers):
        mask = torch.ones(report.batch_size, total_length, dtype=torch.bool, device="cpu")
        mask[:, : report.prompt_length] = False
        for b in range(report.batch_size):
            mask[b, report.positions(layer, b)] = True
        masks.append(mask)
    return masks


@torch.no_grad()
def oracle_logits(model: nn.Module, inputs: dict[str, Any], report: Any) -> torch.Tensor:
    """Dense logits of ``inputs`` (which may extend the reported prompt) with the report's dropped tokens
    hidden as keys from their pruning layer on."""
    length = int(inputs["input_ids"].shape[1])
    with key_masks(model, layer_key_masks(report, length)):
        return model(**inputs, use_cache=False).logits

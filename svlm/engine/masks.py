"""Attention masks for pruned layers, in the format each attention implementation expects.

A pruned layer sees a shorter, left-padded sequence: its mask is causal in slot order, hides padding slots
as keys, and lets a padding slot attend to itself only (so that no row is fully masked, which would give
NaN in SDPA). In decoding, the keys are the layer's own cached prompt slots followed by generated tokens.
"""

from __future__ import annotations

import torch

SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def mask_format(attn_implementation: str) -> str:
    """'bool' (SDPA), 'additive' (eager) or 'padding2d' (FlashAttention) for an implementation name."""
    name = attn_implementation or "eager"
    if "flash" in name:
        return "padding2d"
    if name.startswith("sdpa"):
        return "bool"
    if name.startswith("eager"):
        return "additive"
    raise ValueError(
        f"Attention implementation {name!r} is not supported by svlm's pruning engine. "
        f"Supported: {', '.join(SUPPORTED_IMPLEMENTATIONS)}."
    )


def prefill_mask(valid: torch.Tensor, fmt: str, dtype: torch.dtype) -> torch.Tensor:
    """Mask for a pruned layer in prefill: queries and keys are the same ``valid`` [b, n] slots."""
    if fmt == "padding2d":
        return valid.to(torch.int32)
    n = valid.shape[1]
    slots = torch.arange(n, device=valid.device)
    causal = slots.view(1, n) <= slots.view(n, 1)  # [q, k]
    allowed = causal.unsqueeze(0) & valid.unsqueeze(1)  # [b, q, k]
    allowed = allowed | torch.eye(n, dtype=torch.bool, device=valid.device).unsqueeze(0)
    return _to_format(allowed.unsqueeze(1), fmt, dtype)


def decode_mask(
    prompt_valid: torch.Tensor, past: int, q_len: int, fmt: str, dtype: torch.dtype
) -> torch.Tensor:
    """Mask for ``q_len`` new tokens of a pruned layer whose cache holds ``past`` slots.

    The first ``prompt_valid.shape[1]`` cached slots are the layer's pruned prompt; the rest are generated
    tokens, always valid.
    """
    b, k_prompt = prompt_valid.shape
    device = prompt_valid.device
    generated = torch.ones(b, past - k_prompt + q_len, dtype=torch.bool, device=device)
    keys = torch.cat([prompt_valid, generated], dim=1)  # [b, past + q]
    if fmt == "padding2d":
        return keys.to(torch.int32)
    total = past + q_len
    q_pos = past + torch.arange(q_len, device=device)
    causal = torch.arange(total, device=device).view(1, total) <= q_pos.view(q_len, 1)
    allowed = causal.unsqueeze(0) & keys.unsqueeze(1)
    return _to_format(allowed.unsqueeze(1), fmt, dtype)


def _to_format(allowed: torch.Tensor, fmt: str, dtype: torch.dtype) -> torch.Tensor:
    if fmt == "bool":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)

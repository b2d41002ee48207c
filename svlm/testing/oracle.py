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


@torch.no_grad()
def assert_matches_oracle(
    model: nn.Module,
    inputs: dict[str, Any],
    sparse: Any,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> Any:
    """Assert that a drop-only pruned run equals the masked-key oracle where the two are comparable.

    Runs ``sparse(**inputs)`` (a :func:`svlm.sparsify` wrapper of ``model``) and :func:`oracle_logits`, then
    compares the logits only at the prompt positions that entered the last decoder layer
    (``report.positions(last_layer, b)``): a pruned token has no output, so the full logit tensors differ
    there by design. Raises ``AssertionError`` naming the sample and the largest difference; returns the
    run's :class:`svlm.Report`. Strategies that merge tokens (``drops_only`` False) have no oracle.
    """
    strategy = getattr(sparse, "strategy", None)
    if strategy is not None and not strategy.drops_only:
        raise ValueError(
            f"{type(strategy).__name__} merges tokens (drops_only is False): the masked-key oracle only "
            "describes strategies that drop tokens."
        )
    out = sparse(**inputs).logits
    report = sparse.last_report
    if report is None:
        raise ValueError("The sparse run produced no report (no visual tokens?): nothing to compare.")
    ref = oracle_logits(model, inputs, report)
    last = report.info.num_layers - 1
    for b in range(report.batch_size):
        pos = report.positions(last, b).to(out.device)
        got, want = out[b, pos].float(), ref[b, pos].float().to(out.device)
        close = torch.isclose(got, want, atol=atol, rtol=rtol).all(-1)  # [kept positions]
        if not bool(close.all()):
            diff = (got - want).abs().amax(-1)
            worst = int(diff.argmax())
            raise AssertionError(
                f"Sample {b}: pruned logits differ from the masked-key oracle at {int((~close).sum())} of "
                f"{len(pos)} kept positions; largest difference {float(diff[worst]):.3g} at prompt position "
                f"{int(pos[worst])} (atol={atol:g}, rtol={rtol:g})."
            )
    return report

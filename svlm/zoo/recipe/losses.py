"""Stage-2 losses: answer cross-entropy on packed batches and the evidence-attention term."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from transformers import (
    PreTrainedModel,
)

from svlm.zoo.packed_attention import packed_attention
from svlm.zoo.recipe.attributes import AttributeProbes
from svlm.zoo.recipe.packing import PackedBatch


def packed_hidden_states(model: PreTrainedModel, batch: PackedBatch) -> torch.Tensor:
    """The decoder's last hidden states [b, t, hidden] of a packed batch, computed with the packed-branch
    attention (same values as the dense 4-D mask, without its cost), keeping ``batch.visual_keep`` only."""
    llava = model.model
    position_ids, mask = batch.position_ids, batch.attention_mask
    if batch.visual_keep is None:
        inputs: dict[str, torch.Tensor] = {"input_ids": batch.input_ids, "pixel_values": batch.pixel_values}
    else:
        features = torch.stack(list(llava.get_image_features(pixel_values=batch.pixel_values).pooler_output))
        keep = batch.visual_keep[..., None].expand(-1, -1, features.shape[-1])
        embeds = llava.get_input_embeddings()(batch.input_ids)
        slots = (batch.input_ids == model.config.image_token_id)[..., None].expand_as(embeds)
        inputs = {"inputs_embeds": embeds.masked_scatter(slots, features.gather(1, keep).to(embeds.dtype))}
    attention = (
        packed_attention(model.config.text_config, batch.layout)
        if batch.layout is not None
        else nullcontext()
    )
    with attention:
        return llava(
            **inputs, position_ids=position_ids, attention_mask=mask, use_cache=False
        ).last_hidden_state


def packed_loss(
    model: PreTrainedModel,
    batch: PackedBatch,
    attention_layers: Sequence[int] = (),
    attention_weight: float = 0.0,
    keyword_layers: Sequence[int] = (),
    phrase_layers: Sequence[int] = (),
    readout_weight: float = 0.0,
    readout_types: frozenset[str] = frozenset(),
    attribute_probes: AttributeProbes | None = None,
    attribute_weight: float = 0.0,
    stats: dict[str, float] | None = None,
    position_probes: AttributeProbes | None = None,
    position_readout_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over answer tokens (plus the attention-supervision term when ``attention_weight`` is
    set, the attribute-keeping term of ``attribute_probes`` when ``attribute_weight`` is, and the position
    readout of ``position_probes`` on split questions when ``position_readout_weight`` is), and per question
    whether teacher-forced greedy decoding gets every answer token right (LM head on target positions only).
    ``stats``, when given, receives the attribute and position heads' accuracy per layer and group.

    Split questions (``batch.evidence_split``) are looked at one object per layer: the answer position at the
    k-th of ``attention_layers`` towards the k-th object (the last at later layers), the key word towards the
    first."""
    kinds_at: dict[int, set[int]] = {}
    for index in attention_layers:
        kinds_at.setdefault(index, set()).add(0)
    for index in keyword_layers:
        kinds_at.setdefault(index, set()).add(1)
    for index in phrase_layers:
        kinds_at.setdefault(index, set()).add(2)  # 2: the answer position towards the question's phrase
    supervise = attention_weight > 0 and batch.evidence_rows is not None and len(kinds_at) > 0
    keep_attributes = (
        attribute_weight > 0 and attribute_probes is not None and batch.visual_labels is not None
    )
    captured: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
    handles = []
    hooked = (set(kinds_at) if supervise else set()) | (
        set(attribute_probes.layers) if keep_attributes else set()
    )
    if hooked:
        layers = model.model.language_model.layers
        for index in hooked:

            def grab(module, args, kwargs, index=index):
                captured[index] = (kwargs["hidden_states"], kwargs["position_embeddings"])

            handles.append(layers[index].self_attn.register_forward_pre_hook(grab, with_kwargs=True))
    try:
        hidden = packed_hidden_states(model, batch)
    finally:
        for h in handles:
            h.remove()
    logits = model.lm_head(hidden[batch.target_rows, batch.target_cols]).float()
    loss = torch.nn.functional.cross_entropy(logits, batch.targets)
    if supervise:
        terms, readouts, positions = [], [], []
        for i, kinds in kinds_at.items():
            attn = model.model.language_model.layers[i].self_attn
            select = torch.zeros_like(batch.evidence_kinds, dtype=torch.bool)
            for k in kinds - {2}:
                select |= batch.evidence_kinds == k
            # split questions: the answer position looks at the object of this layer's rank among
            # attention_layers (`split_evidence`), the key word at the first
            step = list(attention_layers).index(i) if 0 in kinds else 0
            looked_at = split_evidence(batch, step)
            if bool(select.any()):
                terms.append(evidence_attention_loss(attn, *captured[i], batch, select, looked_at))
            read_position = (
                0 in kinds
                and position_readout_weight > 0
                and position_probes is not None
                and batch.evidence_split is not None
            )
            if read_position:
                obj = min(step, batch.evidence_object_bands.shape[1] - 1)  # as in `split_evidence`
                chosen = batch.evidence_split & (batch.evidence_kinds == 0)
                rows, cols = batch.evidence_rows[chosen], batch.evidence_query_cols[chosen]
                out = attended_output(attn, *captured[i], batch, rows, cols)
                out = torch.nn.functional.rms_norm(out, (out.shape[-1],))[None]
                axes = [0 if g.startswith("row") else 1 for g in position_probes.groups]
                bands = batch.evidence_object_bands[chosen][None, :, obj][..., axes]
                positions.append(position_probes.loss(i, out, bands))
                if stats is not None:
                    for name, acc in position_probes.accuracy(i, out, bands).items():
                        stats[f"L{i}_attended_{name}"] = acc
            if 0 in kinds and readout_weight > 0:
                read = [kind == 0 and t in readout_types for kind, t in batch.evidence_types]
                if any(read):
                    select = torch.tensor(read, device=batch.evidence_kinds.device)
                    readouts.append(evidence_readout_loss(model, attn, *captured[i], batch, select))
            if 2 in kinds and batch.phrase_rows is not None:
                terms.append(phrase_attention_loss(attn, *captured[i], batch))
        if terms:
            loss = loss + attention_weight * torch.stack(terms).mean()
        if readouts:
            loss = loss + readout_weight * torch.stack(readouts).mean()
        if positions:
            loss = loss + position_readout_weight * torch.stack(positions).mean()
    if keep_attributes:
        start, slots = batch.image_start, batch.visual_labels.shape[1]
        terms = []
        for i in attribute_probes.layers:
            visual = captured[i][0][:, start : start + slots]
            terms.append(attribute_probes.loss(i, visual, batch.visual_labels))
            if stats is not None:
                for name, acc in attribute_probes.accuracy(i, visual, batch.visual_labels).items():
                    stats[f"L{i}_{name}"] = acc
        loss = loss + attribute_weight * torch.stack(terms).mean()
    wrong = (logits.argmax(-1) != batch.targets).float()
    per_question = torch.zeros(int(batch.target_question.max()) + 1, device=wrong.device).index_add_(
        0, batch.target_question, wrong
    )
    return loss, per_question == 0


def supervised_visual_attention(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    batch: PackedBatch,
    rows: torch.Tensor,
    cols: torch.Tensor,
    with_values: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention logits [n, h', visual] of the supervised half of the layer's heads from the queries at
    (``rows``, ``cols``) over the image's visual tokens (rows-only: keys, and values when asked for, once per
    sequence, then one row per query), and those heads' values [n, h', visual, d]."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    n_visual = batch.evidence_masks.shape[1]
    head_dim, heads = attn.head_dim, attn.config.num_attention_heads
    cos, sin = position_embeddings
    visual = torch.arange(batch.image_start, batch.image_start + n_visual, device=hidden.device)
    q = attn.q_proj(hidden[rows, cols]).view(len(rows), heads, 1, head_dim)  # [n, h, 1, d]
    k = attn.k_proj(hidden[:, visual]).view(len(hidden), n_visual, -1, head_dim).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[rows, cols][:, None], sin[rows, cols][:, None])
    _, k = apply_rotary_pos_emb(k, k, cos[:, visual], sin[:, visual])
    supervised = max(1, heads // 2)
    group = heads // k.shape[1]
    k = k[rows].repeat_interleave(group, dim=1)[:, :supervised]
    scores = (q[:, :supervised] @ k.transpose(-1, -2)).squeeze(2) * attn.scaling  # [n, h', visual]
    if not with_values:
        return scores, None
    v = attn.v_proj(hidden[:, visual]).view(len(hidden), n_visual, -1, head_dim).transpose(1, 2)
    return scores, v[rows].repeat_interleave(group, dim=1)[:, :supervised]


def evidence_readout_loss(
    model: PreTrainedModel,
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    batch: PackedBatch,
    select: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of the answer's first token read through the final norm and the LM head from the
    supervised heads' share of the attention output at the answer position (their attention over the visual
    tokens, values, and their columns of ``o_proj``)."""
    rows, cols = batch.evidence_rows[select], batch.evidence_query_cols[select]
    read = attended_output(attn, hidden, position_embeddings, batch, rows, cols)
    logits = model.lm_head(model.model.language_model.norm(read)).float()
    return torch.nn.functional.cross_entropy(logits, batch.evidence_answers[select])


def attended_output(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    batch: PackedBatch,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """The supervised heads' share of the attention output [n, hidden] at (``rows``, ``cols``): their
    attention over the visual tokens, values, and their columns of ``o_proj``."""
    scores, v = supervised_visual_attention(attn, hidden, position_embeddings, batch, rows, cols, True)
    out = (scores.softmax(-1).unsqueeze(2) @ v).flatten(1)  # [n, h' * d]: o_proj's first input columns
    return out @ attn.o_proj.weight[:, : out.shape[1]].T


def split_evidence(batch: PackedBatch, step: int) -> torch.Tensor | None:
    """The attention targets [n, visual tokens] at a layer where split questions' answer positions look at
    their ``step``-th object (the last one past it) and their key words at the first: the whole evidence on
    rows not split; None when the batch has no split question."""
    if batch.evidence_split is None:
        return None
    masks = batch.evidence_object_masks
    obj = torch.where(batch.evidence_kinds == 0, min(step, masks.shape[1] - 1), 0)
    looked_at = masks[torch.arange(len(masks), device=masks.device), obj]
    return torch.where(batch.evidence_split[:, None], looked_at, batch.evidence_masks)


def phrase_attention_loss(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    batch: PackedBatch,
) -> torch.Tensor:
    """-log of the attention mass that half of the layer's heads put on the words naming the evidence, among
    the question branch's tokens, from the position that predicts the answer."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rows, cols, keys = batch.phrase_rows, batch.phrase_query_cols, batch.phrase_key_cols
    head_dim, heads = attn.head_dim, attn.config.num_attention_heads
    cos, sin = position_embeddings
    q = attn.q_proj(hidden[rows, cols]).view(len(rows), heads, 1, head_dim)  # [n, h, 1, d]
    k = attn.k_proj(hidden[rows[:, None], keys]).view(len(rows), keys.shape[1], -1, head_dim).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[rows, cols][:, None], sin[rows, cols][:, None])
    _, k = apply_rotary_pos_emb(k, k, cos[rows[:, None], keys], sin[rows[:, None], keys])
    supervised = max(1, heads // 2)
    k = k.repeat_interleave(heads // k.shape[1], dim=1)[:, :supervised]
    scores = (q[:, :supervised] @ k.transpose(-1, -2)).squeeze(2) * attn.scaling  # [n, h', L]
    scores = scores.float().masked_fill(~batch.phrase_valid[:, None, :], float("-inf"))
    logp = scores.log_softmax(-1)
    mass = logp.masked_fill(~batch.phrase_targets[:, None, :], float("-inf")).logsumexp(-1)
    return -mass.mean()


def evidence_attention_loss(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    batch: PackedBatch,
    select: torch.Tensor | None = None,
    evidence: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log of the attention mass that half of the layer's heads put on the question's evidence tokens, among
    the visual tokens, from the position that predicts the answer (rows-only: queries of the supervised
    positions, keys of the image only). The other heads stay free. ``evidence`` [n, visual tokens] replaces
    ``batch.evidence_masks`` as the target (`split_evidence`)."""
    rows, cols = batch.evidence_rows, batch.evidence_query_cols
    evidence = batch.evidence_masks if evidence is None else evidence
    if select is not None:
        rows, cols, evidence = rows[select], cols[select], evidence[select]
    scores, _ = supervised_visual_attention(attn, hidden, position_embeddings, batch, rows, cols)
    logp = scores.float().log_softmax(-1)
    mass = logp.masked_fill(~evidence[:, None, :], float("-inf")).logsumexp(-1)
    return -mass.mean()

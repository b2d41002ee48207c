"""Packed batches: one image prefix, one branch per question (the layout the packed attention computes)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.processing_utils import ProcessorMixin

from svlm.zoo.packed_attention import PackedLayout
from svlm.zoo.recipe.config import POSITION_BANDS
from svlm.zoo.recipe.questions import keyword_end, phrase_start, prompt_text, question_type


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [b, t]
    position_ids: torch.Tensor  # [b, t]
    attention_mask: torch.Tensor  # [b, 1, t, t] bool, True = may attend
    pixel_values: torch.Tensor  # [b, 3, h, w]
    target_rows: torch.Tensor  # [n] batch index of each supervised position
    target_cols: torch.Tensor  # [n] position whose output predicts the target
    targets: torch.Tensor  # [n] target token ids
    target_question: torch.Tensor  # [n] index of the question (over the batch) each target belongs to
    question_types: list[str]  # type of each question (over the batch)
    branch_starts: list[list[tuple[int, int, int]]]  # per sample: (start, length, answer_len) per branch
    # attention supervision: per supervised question, its sequence, the position that predicts the answer's
    # first token, and its evidence tokens [n, visual tokens]; image tokens start at `image_start`
    evidence_rows: torch.Tensor | None = None
    evidence_query_cols: torch.Tensor | None = None
    evidence_masks: torch.Tensor | None = None
    evidence_kinds: torch.Tensor | None = None  # 0: the answer position, 1: the question's key word
    evidence_answers: torch.Tensor | None = None  # [n] the answer's first token id (for the readout loss)
    evidence_types: list[tuple[int, str]] | None = None  # per row: its kind and its question's type
    # questions whose evidence objects are looked at one per layer (``split_types``; None when the batch has
    # none): per row whether it is split, its first and last object's tokens [n, 2, visual tokens] (both the
    # whole evidence on rows not split), and those objects' row and column bands [n, 2, 2] (-100: not split)
    evidence_split: torch.Tensor | None = None
    evidence_object_masks: torch.Tensor | None = None
    evidence_object_bands: torch.Tensor | None = None
    image_start: int = 0
    # phrase supervision: per supervised question, its sequence, the answer position, the positions of its
    # branch up to there [n, L] (padded, ``phrase_valid``) and which of them are the words naming the evidence
    phrase_rows: torch.Tensor | None = None
    phrase_query_cols: torch.Tensor | None = None
    phrase_key_cols: torch.Tensor | None = None
    phrase_valid: torch.Tensor | None = None
    phrase_targets: torch.Tensor | None = None
    layout: PackedLayout | None = None  # prefix and branches, for the packed-branch attention
    visual_keep: torch.Tensor | None = None  # [b, k] the visual tokens kept (None: all)
    # attribute keeping: [b, k, groups] class of each kept visual token per attribute group (-100: not asked)
    visual_labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PackedBatch:
        """The batch with every tensor (and the layout) on ``device``: built on the CPU, moved once a step."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor | PackedLayout)
        }
        return dataclasses.replace(self, **moved)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Inputs of a plain forward with the dense 4-D mask (all visual tokens only)."""
        if self.visual_keep is not None:
            raise ValueError("a batch with dropped visual tokens runs through `packed_hidden_states` only")
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": self.attention_mask,
            "pixel_values": self.pixel_values,
        }


def pack(
    processor: ProcessorMixin,
    images: Sequence[Any],
    qas: Sequence[Sequence[tuple[str, str]]],
    evidence: Sequence[Sequence[torch.Tensor | None]] | None = None,
    visual_keep: torch.Tensor | None = None,
    benchmark: str = "shapes",
) -> PackedBatch:
    """One sequence per image: the image prefix once, then one (question, answer) branch per pair.

    Branch tokens are the tokens the single-question prompt has after the prefix, followed by the answer and
    ``</s>``; each branch attends to the prefix and causally to itself, with positions continuing the prefix.
    ``evidence`` holds per question a mask over the visual tokens, or [objects, visual tokens] for a question
    whose objects are looked at one per layer (see `evidence_tokens`: 2 marks each object's centre, whose
    row and column bands the position readout asks for), or None (not supervised).
    ``visual_keep`` [b, k] (sorted visual-token indices per image) keeps only those visual tokens, at their
    original positions, as a drop-only pruning method would: the sequences are then shorter by the number of
    visual tokens dropped. ``benchmark`` ("shapes" or "scenes") types the questions and finds their key words.
    """
    tok = processor.tokenizer
    image_id = processor.image_token_id
    crop = processor.image_processor.crop_size
    num_image = (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size)
    if visual_keep is not None and (visual_keep.ndim != 2 or len(visual_keep) != len(qas)):
        raise ValueError(f"visual_keep must be [images, kept tokens], got shape {tuple(visual_keep.shape)}")
    num_slots = num_image if visual_keep is None else visual_keep.shape[1]
    dropped = num_image - num_slots
    seqs: list[list[int]] = []
    prefix_lens: list[int] = []
    branches: list[list[tuple[int, int, int]]] = []
    keyword_cols: list[list[int]] = []
    phrase_cols: list[list[int]] = []  # first token of the words naming the evidence, per branch
    for pairs in qas:
        prefix: list[int] | None = None
        ids: list[int] = []
        spans: list[tuple[int, int, int]] = []
        keywords: list[int] = []
        phrases: list[int] = []
        for question, answer in pairs:
            prompt = tok(prompt_text(processor, question), add_special_tokens=True)["input_ids"]
            full = tok(prompt_text(processor, question) + " " + answer, add_special_tokens=True)["input_ids"]
            if full[: len(prompt)] != prompt:
                raise RuntimeError(f"answer {answer!r} changes the prompt's tokenization")
            full = full + [tok.eos_token_id]
            cut = prompt.index(image_id) + 2  # <s> USER: <image> \n | question ...
            image_start = cut - 2
            if prefix is None:
                prefix = full[:cut]
                ids = prefix[: cut - 2] + [image_id] * num_slots + prefix[cut - 1 :]
            elif full[:cut] != prefix:
                raise RuntimeError("questions of one image do not share the image prefix")
            text = prompt_text(processor, question)
            head = tok(
                text[: text.index(question) + keyword_end(question, benchmark)], add_special_tokens=True
            )["input_ids"]
            if full[: len(head)] != head:
                raise RuntimeError(f"the key word of {question!r} does not end on a token boundary")
            keywords.append(len(ids) + len(head) - 1 - cut)
            # the tokens before the phrase (up to the space in front of it) end where its first token starts
            before = tok(
                text[: text.index(question) + max(0, phrase_start(question, benchmark) - 1)],
                add_special_tokens=True,
            )["input_ids"]
            phrases.append(len(ids) + min(len(before), len(head) - 1) - cut)
            spans.append((len(ids), len(full) - cut, len(full) - len(prompt)))
            ids += full[cut:]
        seqs.append(ids)
        prefix_lens.append(len(prefix) - 1 + num_slots)
        branches.append(spans)
        keyword_cols.append(keywords)
        phrase_cols.append(phrases)
    b, t = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((b, t), tok.pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((b, t), dtype=torch.long)
    mask = torch.zeros((b, 1, t, t), dtype=torch.bool)
    rows, cols, targets, owner = [], [], [], []
    ev_rows, ev_cols, ev_masks, ev_kinds, ev_answers, ev_types = [], [], [], [], [], []
    ev_split, ev_objects, ev_bands = [], [], []
    grid = math.isqrt(num_image)
    ph_rows, ph_query, ph_keys, ph_targets = [], [], [], []
    num_questions = 0
    for i, (ids, p, spans) in enumerate(zip(seqs, prefix_lens, branches, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        position_ids[i, :p] = torch.arange(p) + torch.where(
            torch.arange(p) >= image_start + num_slots, dropped, 0
        )
        if visual_keep is not None:
            position_ids[i, image_start : image_start + num_slots] = image_start + visual_keep[i]
        mask[i, 0, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
        for k, (start, length, answer_len) in enumerate(spans):
            end = start + length
            if evidence is not None and evidence[i][k] is not None:
                full = evidence[i][k]
                split = full.ndim == 2
                objects = full[[0, -1]] if split else full.expand(2, -1)
                centre = objects.int().argmax(-1)  # split rows: 2 marks each object's centre token
                # the whole evidence of a split row: its objects' centre tokens, as for other questions
                whole = (full == 2).any(0) if split else full
                objects = objects > 0
                if visual_keep is not None:
                    objects, whole = objects[:, visual_keep[i]], whole[visual_keep[i]]
                bands = torch.stack([centre // grid, centre % grid], -1) * POSITION_BANDS // grid
                for kind, col in enumerate((end - answer_len - 1, keyword_cols[i][k])):
                    ev_rows.append(i)
                    ev_cols.append(col)
                    ev_masks.append(whole)
                    ev_split.append(split)
                    ev_objects.append(objects)
                    ev_bands.append(bands if split else torch.full((2, 2), -100))
                    ev_kinds.append(kind)
                    ev_answers.append(ids[end - answer_len])
                    ev_types.append((kind, question_type(qas[i][k][0], benchmark)))
                answer_at = end - answer_len - 1
                ph_rows.append(i)
                ph_query.append(answer_at)
                ph_keys.append(list(range(start, answer_at + 1)))
                ph_targets.append([phrase_cols[i][k] <= c <= keyword_cols[i][k] for c in ph_keys[-1]])
            position_ids[i, start:end] = torch.arange(p, p + length) + dropped
            mask[i, 0, start:end, :p] = True
            mask[i, 0, start:end, start:end] = torch.ones(length, length, dtype=torch.bool).tril()
            for j in range(end - answer_len, end):  # output at j-1 predicts token j
                rows.append(i)
                cols.append(j - 1)
                targets.append(ids[j])
                owner.append(num_questions)
            num_questions += 1
        pad = torch.arange(len(ids), t)
        mask[i, 0, pad, pad] = True  # padding attends to itself only (no fully masked rows)
    pixel_values = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    longest = max((len(k) for k in ph_keys), default=0)
    ph_valid = torch.zeros(len(ph_keys), longest, dtype=torch.bool)
    ph_key_cols = torch.zeros(len(ph_keys), longest, dtype=torch.long)
    ph_target = torch.zeros(len(ph_keys), longest, dtype=torch.bool)
    for m, (keys, hits) in enumerate(zip(ph_keys, ph_targets, strict=True)):
        ph_valid[m, : len(keys)] = True
        ph_key_cols[m, : len(keys)] = torch.tensor(keys)
        ph_target[m, : len(keys)] = torch.tensor(hits)
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        pixel_values=pixel_values,
        target_rows=torch.tensor(rows),
        target_cols=torch.tensor(cols),
        targets=torch.tensor(targets),
        target_question=torch.tensor(owner),
        question_types=[question_type(q, benchmark) for pairs in qas for q, _ in pairs],
        branch_starts=branches,
        evidence_rows=torch.tensor(ev_rows) if ev_rows else None,
        evidence_query_cols=torch.tensor(ev_cols) if ev_rows else None,
        evidence_masks=torch.stack(ev_masks) if ev_rows else None,
        evidence_kinds=torch.tensor(ev_kinds) if ev_rows else None,
        evidence_answers=torch.tensor(ev_answers) if ev_rows else None,
        evidence_types=ev_types if ev_rows else None,
        evidence_split=torch.tensor(ev_split) if any(ev_split) else None,
        evidence_object_masks=torch.stack(ev_objects) if any(ev_split) else None,
        evidence_object_bands=torch.stack(ev_bands) if any(ev_split) else None,
        image_start=image_start,
        phrase_rows=torch.tensor(ph_rows) if ph_rows else None,
        phrase_query_cols=torch.tensor(ph_query) if ph_rows else None,
        phrase_key_cols=ph_key_cols if ph_rows else None,
        phrase_valid=ph_valid if ph_rows else None,
        phrase_targets=ph_target if ph_rows else None,
        layout=PackedLayout.from_spans(prefix_lens[0], [[(s, n) for s, n, _ in spans] for spans in branches]),
        visual_keep=visual_keep,
    )

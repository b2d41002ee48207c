"""Recipe of svlm's default model: a small LLaVA-1.5-architecture VLM trained on svlm-shapes, on CPU.

    python -m svlm.zoo.train_default --output-dir svlm/zoo/svlm-shapes-llava          # the shipped model
    python -m svlm.zoo.train_default --output-dir /tmp/smoke --smoke                     # a few seconds

The model is ``LlavaForConditionalGeneration``: a CLIP vision tower (224 px, 14-px patches: 256 visual
tokens), the 2-layer MLP projector and an 8-layer Llama decoder, trained from scratch on the shapes *train*
split in two stages, like LLaVA (whose tower comes pretrained from CLIP):

1. Vision pretraining: the tower learns to tell, at each patch, the colour and shape of the object covering
   it and the 3x3 grid cell the patch lies in, and at each object patch how many objects of its colour the
   image holds (linear heads on its output, discarded afterwards). Shape labels sit on each object's centre
   patch first, then on all its patches.
1b. Projector alignment (``--align-steps``), standing in for LLaVA's projector pretraining on captions: the
   projector alone learns to point each visual token towards the input embedding of its object's colour word
   and (at the object's centre) shape word; with tied embeddings (``--tie-word-embeddings``) a token that
   attention copies to the answer position then reads out as its word. Colour questions become learnable in
   a few hundred steps instead of a lottery of thousands.
2. Visual question answering: projector and decoder learn to answer the benchmark's questions (the tower is
   frozen by default). All five types are mixed from the start; a window of steps (``--lead-start``,
   ``--lead-steps``) then asks count questions only (the mix alone never learned to count), and afterwards
   count questions come up twice as often as the others. Half the heads of a few decoder layers are also
   told where to look (``--attention-weight``): the loss adds -log of the attention mass that the answer
   position puts on the patches of the objects the question is about (known from the scene annotation).
   For most steps (``--train-visual-until``) each image keeps only ``--train-visual-tokens`` visual tokens:
   those its objects cover and random background, at their original positions, as drop-only pruning would
   (exact: the same values as hiding the others as keys, tested); the last steps see all 256.

Everything is seeded and the data are a pure function of the seed and the step, so a run is reproducible up
to floating-point non-associativity of the kernels.

Why it trains in minutes on two cores:

- Each image is asked several questions at once. The sequence holds the image prefix once, followed by one
  branch per question (question + instruction + answer); a 4-D attention mask lets each branch see the
  prefix and itself only, and position ids restart after the prefix, so every branch is computed exactly as
  the single-question evaluation prompt would be (``tests/test_zoo.py`` checks this against a plain forward).
  The expensive part, 256 visual tokens through the decoder, is paid once for all questions. The attention
  is computed from that layout (``svlm.zoo.packed_attention``), not from a dense [t, t] mask, which SDPA on
  CPU handles slowly.
- Most steps keep 80 of the 256 visual tokens (above): a 447-token training sequence becomes ~270, about
  twice as fast, and the decoder learns on the tokens that hold the answers.
- Extra questions are derived from the scene annotation of the same training image with the benchmark's own
  templates (the original question is always one of them), balanced over question types.
- The loss is teacher-forced cross-entropy on the answer tokens (answer and end-of-sequence) only, and the
  LM head is applied to those positions only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)
from transformers.processing_utils import ProcessorMixin

from svlm.data import shapes
from svlm.data.prompts import SHORT_ANSWER, build_conversation, with_instruction
from svlm.zoo.packed_attention import PackedLayout, packed_attention

PATCH_SIZE = 14
VISION_COUNT_CLASSES = 4  # the tower's same-colour count head: 1, 2, 3, 4 or more
SCENE_COUNT_CLASSES = 4  # the scene-summary head's objects per colour: 0, 1, 2, 3 or more


@dataclass
class RecipeConfig:
    """Everything that determines the trained weights (written to ``training_log.json``)."""

    seed: int = 0
    # stage 1: vision-tower pretraining (stands in for CLIP's pretraining; 0 skips it)
    vision_steps: int = 1500
    vision_batch_size: int = 16
    vision_lr: float = 3e-3
    cell_loss_weight: float = 0.1  # weight of the grid-cell head
    # shape labels on the patch at each object's centre first (unambiguous), on every patch it covers from
    # this fraction of the stage on, so that all of an object's tokens carry its shape
    shape_dense_from: float = 1.0
    # label an object's non-centre patches "part of an object" (an extra shape class) instead of leaving them
    # unlabelled, so that exactly one patch per object says "centre": what counting objects needs
    part_class: bool = False
    vision_min_objects: int = 5  # crowded scenes: more labelled objects per image at the same cost
    # weight of a head that names, at every object patch, how many objects of that patch's colour the image
    # holds (1, 2, 3, 4+): the tower's self-attention sees the whole image, the decoder's attention can only
    # average what it attends to, so the count has to be in the features it reads (0 turns it off)
    count_loss_weight: float = 0.25
    # weight of a scene-summary head at every patch: how many objects of each colour the image holds (0, 1, 2,
    # 3+), global content of the kind CLIP features carry; counting then reads one token's features instead of
    # aggregating attention over several objects (0 turns it off)
    scene_loss_weight: float = 0.0
    # stage 1b: projector alignment (LLaVA's projector pretraining, here on the scene annotation): the visual
    # tokens are pulled towards the input embeddings of the words that name their object's colour and shape,
    # so that a question's key words and the image tokens they are about start out alike (0 skips it)
    align_steps: int = 300
    align_batch_size: int = 16
    align_lr: float = 2e-3
    # also pull each object token towards the digit of its colour's object count (" 1" ... " 4"), the answer
    # of "How many <colour> shapes are there?" that stage 1's count head put in the tower's features
    align_counts: bool = False
    # also pull every token towards the words of where its patch lies: " top"/" bottom" for the first/last
    # row of the 3x3 grid and " left"/" right" for the first/last column (the middle ones towards
    # "background"), the words in "What shape is at the top left of the image?" and "top-left"
    align_cells: bool = False
    # stage 2: end-to-end VQA training of the whole model
    steps: int = 5600
    vision_lr_scale: float = 0.0  # the vision tower's stage-2 learning rate relative to `lr` (0: frozen)
    batch_size: int = 8
    questions_per_image: int = 8
    # how often each question type comes up among an image's derived questions ("count:3": three count
    # questions per cycle of the five types; types not named weigh 1)
    question_weights: str = "count:2"
    # the first `lead_steps` steps ask only questions of these types (e.g. "count"): a skill the mix of all
    # five types does not pick up can be learned alone first
    lead_types: str = "count"
    lead_steps: int = 400
    # the lead window starts at this step (0: the first steps); a later window lets the mix of all types learn
    # first (e.g. colour, fast after the projector alignment) and then teaches the lead types alone
    lead_start: int = 800
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 60
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # attention supervision: weight of -log(attention mass on the evidence patches) from the answer position,
    # for half the heads of these decoder layers (0 turns it off)
    attention_weight: float = 1.0
    attention_layers: str = "4,6"  # queries at the position that predicts the answer
    keyword_layers: str = "1,2"  # queries at the question's key word ("What color is the circle?" -> circle)
    # question types whose attention is supervised (leaving out "count" lets its answer live in how much
    # attention the matching objects get, which full mass on them hides; it did not help at 2000 steps)
    attention_types: str = "color,shape,count,exist,position"
    # architecture
    image_size: int = 224
    vision_hidden_size: int = 96
    vision_layers: int = 4
    vision_heads: int = 4
    vision_initializer_range: float = 0.2
    hidden_size: int = 128
    intermediate_size: int = 344
    num_layers: int = 8
    num_heads: int = 4
    initializer_range: float = 0.05
    # one matrix for the input embeddings and the LM head (as in Llama 3.2 1B/3B): a visual token aligned with
    # a word's embedding (stage 1b) then reads out as that word when attention copies it to the answer
    tie_word_embeddings: bool = True
    # RoPE base of the decoder. With 32-dim heads and Llama's 10000 only a few rotary pairs turn slowly enough
    # for a query to match visual tokens by content across the ~260 positions between them
    rope_theta: float = 10000.0
    # std of the decoder's residual-branch outputs (o_proj, down_proj) = initializer_range * this / sqrt(2 L):
    # a deep narrow stack then starts close to the identity and learns like a shallow one
    residual_init_scale: float = 1.0
    # data (the svlm-shapes generator's defaults, as evaluated by `svlm test`)
    data_image_size: int = 336
    # visual tokens each training image keeps (0: all): every token an object covers, then background tokens
    # at random, at their original positions, as drop-only pruning would; the decoder's cost falls with the
    # sequence length, and the last (1 - `train_visual_until`) of the steps see all tokens again
    train_visual_tokens: int = 80
    train_visual_until: float = 0.85
    # curriculum: (end of phase as a fraction of `steps`, min objects, max objects) per phase; scenes with one
    # object first teach the model to find the object among background tokens, then binding (2-5 objects)
    curriculum: str = "0.03:1:1,0.1:1:3,1.0:2:5"
    # evaluation during training (val split; the test split is only used for the final report)
    eval_every: int = 700
    eval_samples: int = 100
    test_samples: int = 500
    # CPU threads of stage 1 and stage 2 (as in the shipped run: other counts change floating-point sums)
    vision_threads: int = 2
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_visual_tokens(self) -> int:
        return (self.image_size // PATCH_SIZE) ** 2


SMOKE = {
    "steps": 3,
    "batch_size": 2,
    "questions_per_image": 2,
    "num_layers": 2,
    "vision_layers": 1,
    "eval_every": 0,
    "eval_samples": 4,
    "test_samples": 4,
    "warmup_steps": 1,
    "vision_steps": 2,
    "vision_batch_size": 2,
    "attention_layers": "1",
    "keyword_layers": "0",
    "lead_steps": 1,
    "lead_start": 0,
    "align_steps": 2,
    "align_batch_size": 2,
    "vision_threads": 1,
    "threads": 1,
}


# ----------------------------------------------------------------------------------------------- model


def check_architecture(cfg: RecipeConfig) -> None:
    """Raise ValueError naming a model option that cannot build the model."""
    if cfg.image_size % PATCH_SIZE:
        raise ValueError(f"image_size must be a multiple of {PATCH_SIZE}, got {cfg.image_size}")
    if not cfg.rope_theta > 0:
        raise ValueError(f"rope_theta must be a positive RoPE base (Llama: 10000), got {cfg.rope_theta}")
    for name in ("count_loss_weight", "scene_loss_weight"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0 turns its head off), got {getattr(cfg, name)}")


def build_model(cfg: RecipeConfig) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A freshly initialised model (seeded) and its processor (tokenizer + CLIP image processor)."""
    from svlm.testing.processor import llava_processor
    from svlm.testing.tokenizer import tiny_tokenizer

    check_architecture(cfg)
    tokenizer = tiny_tokenizer("llava")
    processor = llava_processor(tokenizer, cfg.image_size, PATCH_SIZE)
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=4 * cfg.vision_hidden_size,
        projection_dim=cfg.vision_hidden_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=PATCH_SIZE,
        initializer_range=cfg.vision_initializer_range,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=2048,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=processor.image_token_id,
        image_seq_length=cfg.num_visual_tokens,
        # the last vision layer's output (LLaVA-1.5 takes the penultimate of a 24-layer CLIP; a tiny tower
        # trained from scratch has no layer to spare)
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
        std = cfg.initializer_range * cfg.residual_init_scale / math.sqrt(2 * cfg.num_layers)
        for layer in model.model.language_model.layers:
            torch.nn.init.normal_(layer.self_attn.o_proj.weight, std=std)
            torch.nn.init.normal_(layer.mlp.down_proj.weight, std=std)
    gen = model.generation_config
    gen.do_sample = False
    gen.max_new_tokens = 8
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    return model, processor


# ------------------------------------------------------------------------------------------------ data


def _templates() -> dict[str, Any]:
    return {
        "color": lambda o: f"What color is the {o['shape']}?",
        "shape": lambda o: f"What shape is at the {shapes.POSITION_PHRASES[o['position']]} of the image?",
        "count": lambda color: f"How many {color} shapes are there?",
        "exist": lambda shape, color: f"Is there a {color} {shape}?",
        "position": lambda o: f"Where is the {o['color']} {o['shape']}?",
    }


def derived_questions(
    sample: dict,
    k: int,
    rng: random.Random,
    type_weights: dict[str, int] | None = None,
    only: set[str] | None = None,
) -> list[tuple[str, str]]:
    """``k`` (question, answer) pairs about ``sample``'s image: its own question, then questions derived from
    its scene annotation with the benchmark's templates, cycling over question types, each type
    ``type_weights[type]`` times per cycle (default once; each type's answer drawn uniformly among the answers
    that type can have for this image). ``only`` keeps the question types in it (the image's own question
    too; it is the fallback when the image has no other question of those types)."""
    t = _templates()
    objs = sample["objects"]
    shape_counts: dict[str, int] = {}
    combos = {(o["shape"], o["color"]) for o in objs}
    for o in objs:
        shape_counts[o["shape"]] = shape_counts.get(o["shape"], 0) + 1
    combo_counts: dict[tuple[str, str], int] = {}
    for o in objs:
        combo_counts[(o["shape"], o["color"])] = combo_counts.get((o["shape"], o["color"]), 0) + 1

    by_type: dict[str, dict[str, list[str]]] = {q: {} for q in shapes.QUESTION_TYPES}

    def add(qtype: str, question: str, answer: str) -> None:
        by_type[qtype].setdefault(answer, []).append(question)

    for o in objs:
        if shape_counts[o["shape"]] == 1:
            add("color", t["color"](o), o["color"])
        add("shape", t["shape"](o), o["shape"])
        if combo_counts[(o["shape"], o["color"])] == 1:
            add("position", t["position"](o), o["position"])
        add("exist", t["exist"](o["shape"], o["color"]), "yes")
    for color in shapes.COLORS:
        n = sum(o["color"] == color for o in objs)
        if n <= 3:
            add("count", t["count"](color), str(n))
    present_shapes = {s for s, _ in combos}
    present_colors = {c for _, c in combos}
    for s in shapes.SHAPES:
        for c in shapes.COLORS:
            if (s, c) not in combos and (s in present_shapes or c in present_colors):  # near misses
                add("exist", t["exist"](s, c), "no")

    own = (sample["question"], sample["answer"])
    out = [own] if only is None or question_type(own[0]) in only else []
    seen = {sample["question"]}
    weights = type_weights or {}
    kept = [q for q in shapes.QUESTION_TYPES if only is None or q in only]
    types = [q for q in kept for _ in range(weights.get(q, 1))]
    start = rng.randrange(len(types))
    tries = 0
    while len(out) < k and tries < 20 * k:
        qtype = types[(start + tries) % len(types)]
        tries += 1
        answers = sorted(by_type[qtype])
        if not answers:
            continue
        questions = [q for q in by_type[qtype][rng.choice(answers)] if q not in seen]
        if not questions:
            continue
        q = rng.choice(sorted(questions))
        seen.add(q)
        out.append((q, next(a for a, qs in by_type[qtype].items() if q in qs)))
    return out or [own]


_TYPE_PREFIXES = {
    "What color": "color",
    "What shape": "shape",
    "How many": "count",
    "Is there": "exist",
    "Where is": "position",
}


def question_type(question: str) -> str:
    """The svlm-shapes question type of a templated question."""
    return next((t for prefix, t in _TYPE_PREFIXES.items() if question.startswith(prefix)), "other")


def prompt_text(processor: ProcessorMixin, question: str) -> str:
    """The evaluation prompt of svlm-shapes (question + short-answer instruction, chat template)."""
    conversation = build_conversation(with_instruction(question, SHORT_ANSWER))
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


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
    image_start: int = 0
    layout: PackedLayout | None = None  # prefix and branches, for the packed-branch attention
    visual_keep: torch.Tensor | None = None  # [b, k] the visual tokens kept (None: all)

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
) -> PackedBatch:
    """One sequence per image: the image prefix once, then one (question, answer) branch per pair.

    Branch tokens are the tokens the single-question prompt has after the prefix, followed by the answer and
    ``</s>``; each branch attends to the prefix and causally to itself, with positions continuing the prefix.
    ``visual_keep`` [b, k] (sorted visual-token indices per image) keeps only those visual tokens, at their
    original positions, as a drop-only pruning method would: the sequences are then shorter by the number of
    visual tokens dropped.
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
    for pairs in qas:
        prefix: list[int] | None = None
        ids: list[int] = []
        spans: list[tuple[int, int, int]] = []
        keywords: list[int] = []
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
            head = tok(text[: text.index(question) + keyword_end(question)], add_special_tokens=True)[
                "input_ids"
            ]
            if full[: len(head)] != head:
                raise RuntimeError(f"the key word of {question!r} does not end on a token boundary")
            keywords.append(len(ids) + len(head) - 1 - cut)
            spans.append((len(ids), len(full) - cut, len(full) - len(prompt)))
            ids += full[cut:]
        seqs.append(ids)
        prefix_lens.append(len(prefix) - 1 + num_slots)
        branches.append(spans)
        keyword_cols.append(keywords)
    b, t = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((b, t), tok.pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((b, t), dtype=torch.long)
    mask = torch.zeros((b, 1, t, t), dtype=torch.bool)
    rows, cols, targets, owner = [], [], [], []
    ev_rows, ev_cols, ev_masks, ev_kinds = [], [], [], []
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
                for kind, col in enumerate((end - answer_len - 1, keyword_cols[i][k])):
                    ev_rows.append(i)
                    ev_cols.append(col)
                    ev_masks.append(evidence[i][k] if visual_keep is None else evidence[i][k][visual_keep[i]])
                    ev_kinds.append(kind)
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
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        pixel_values=pixel_values,
        target_rows=torch.tensor(rows),
        target_cols=torch.tensor(cols),
        targets=torch.tensor(targets),
        target_question=torch.tensor(owner),
        question_types=[question_type(q) for pairs in qas for q, _ in pairs],
        branch_starts=branches,
        evidence_rows=torch.tensor(ev_rows) if ev_rows else None,
        evidence_query_cols=torch.tensor(ev_cols) if ev_rows else None,
        evidence_masks=torch.stack(ev_masks) if ev_rows else None,
        evidence_kinds=torch.tensor(ev_kinds) if ev_rows else None,
        image_start=image_start,
        layout=PackedLayout.from_spans(prefix_lens[0], [[(s, n) for s, n, _ in spans] for spans in branches]),
        visual_keep=visual_keep,
    )


@dataclass(frozen=True)
class Phase:
    """Training scenes up to ``end`` (fraction of the steps): ``min_objects``-``max_objects`` shapes of side
    ``shape_scale`` x image size."""

    end: float
    min_objects: int
    max_objects: int
    shape_scale: float = 1 / 7

    def scene_kwargs(self) -> dict[str, Any]:
        return {
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "shape_scale": self.shape_scale,
        }


def parse_curriculum(spec: str) -> list[Phase]:
    """``"0.1:1:1:0.3,1.0:2:5"`` -> phases (end fraction : min objects : max objects [: shape scale])."""
    try:
        phases = [
            Phase(float(f[0]), int(f[1]), int(f[2]), *map(float, f[3:4]))
            for f in (p.split(":") for p in spec.split(","))
        ]
    except (ValueError, TypeError, IndexError):
        raise ValueError(
            "curriculum must look like '0.1:1:1:0.3,1.0:2:5' (end fraction:min objects:max objects"
            f"[:shape scale], one phase per comma), got {spec!r}"
        ) from None
    ends = [p.end for p in phases]
    if ends != sorted(ends) or ends[-1] != 1.0:
        raise ValueError(f"curriculum phases must end in increasing order, the last at 1.0: {spec!r}")
    for p in phases:
        if not 1 <= p.min_objects <= p.max_objects <= 9 or not 0 < p.shape_scale <= 1 / 3:
            raise ValueError(f"curriculum phase {p} needs 1 <= min <= max <= 9 objects and 0 < scale <= 1/3")
    return phases


def phase_at(cfg: RecipeConfig, step: int) -> Phase:
    """The curriculum phase of ``step``."""
    phases = parse_curriculum(cfg.curriculum)
    return next((p for p in phases if step < p.end * cfg.steps), phases[-1])


def train_batch(cfg: RecipeConfig, processor: ProcessorMixin, step: int) -> PackedBatch:
    """Batch ``step`` of training: shapes train samples ``step * batch_size ...``, derived questions seeded
    by (seed, sample index) -- a pure function of the config and the step."""
    images, qas, evidence, keep = [], [], [], []
    types = parse_question_types(cfg.attention_types)
    drop = 0 < cfg.train_visual_tokens < cfg.num_visual_tokens and step < cfg.train_visual_until * cfg.steps
    weights = parse_type_weights(cfg.question_weights)
    lead_types = parse_question_types(cfg.lead_types, "lead_types") if cfg.lead_steps > 0 else None
    for i in range(step * cfg.batch_size, (step + 1) * cfg.batch_size):
        sample = shapes.generate_sample(
            i,
            "train",
            cfg.seed,
            image_size=cfg.data_image_size,
            **phase_at(cfg, step).scene_kwargs(),
        )
        rng = random.Random(cfg.seed * 1_000_003 + i)
        images.append(sample["image"])
        only = lead_types if cfg.lead_start <= step < cfg.lead_start + cfg.lead_steps else None
        qas.append(derived_questions(sample, cfg.questions_per_image, rng, weights, only))
        if cfg.attention_weight > 0:
            supervised = [q if question_type(q) in types else None for q, _ in qas[-1]]
            evidence.append(evidence_tokens(sample, supervised, cfg.image_size, cfg.data_image_size))
        if drop:
            keep.append(
                kept_visual_tokens(sample, cfg, torch.Generator().manual_seed(cfg.seed * 1_000_003 + i))
            )
    return pack(
        processor,
        images,
        qas,
        evidence if cfg.attention_weight > 0 else None,
        torch.stack(keep) if drop else None,
    )


def kept_visual_tokens(sample: dict, cfg: RecipeConfig, generator: torch.Generator) -> torch.Tensor:
    """The ``cfg.train_visual_tokens`` visual tokens a training image keeps (sorted): each object's centre
    token (where the attention loss points), the other tokens its objects cover most, then background tokens
    at random."""
    cover = object_coverage(sample, cfg.image_size, cfg.data_image_size)
    on_object = cover.max(0).values if len(cover) else torch.zeros(cfg.num_visual_tokens)
    on_object[centre_tokens(sample, cfg.image_size, cfg.data_image_size)] += 2.0
    score = on_object + 1e-3 * torch.rand(cfg.num_visual_tokens, generator=generator)
    return score.topk(cfg.train_visual_tokens).indices.sort().values


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over answer tokens (plus the attention-supervision term when ``attention_weight`` is
    set), and per question whether teacher-forced greedy decoding gets every answer token right (LM head on
    target positions only)."""
    kinds_at: dict[int, set[int]] = {}
    for index in attention_layers:
        kinds_at.setdefault(index, set()).add(0)
    for index in keyword_layers:
        kinds_at.setdefault(index, set()).add(1)
    supervise = attention_weight > 0 and batch.evidence_rows is not None and len(kinds_at) > 0
    captured: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
    handles = []
    if supervise:
        layers = model.model.language_model.layers
        for index in kinds_at:

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
        terms = []
        for i, kinds in kinds_at.items():
            select = torch.zeros_like(batch.evidence_kinds, dtype=torch.bool)
            for k in kinds:
                select |= batch.evidence_kinds == k
            if bool(select.any()):
                attn = model.model.language_model.layers[i].self_attn
                terms.append(evidence_attention_loss(attn, *captured[i], batch, select))
        loss = loss + attention_weight * torch.stack(terms).mean()
    wrong = (logits.argmax(-1) != batch.targets).float()
    per_question = torch.zeros(int(batch.target_question.max()) + 1).index_add_(
        0, batch.target_question, wrong
    )
    return loss, per_question == 0


def evidence_attention_loss(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    batch: PackedBatch,
    select: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log of the attention mass that half of the layer's heads put on the question's evidence tokens, among
    the visual tokens, from the position that predicts the answer (rows-only: queries of the supervised
    positions, keys of the image only). The other heads stay free."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rows, cols, evidence = batch.evidence_rows, batch.evidence_query_cols, batch.evidence_masks
    if select is not None:
        rows, cols, evidence = rows[select], cols[select], evidence[select]
    n_visual = evidence.shape[1]
    head_dim = attn.head_dim
    heads = attn.config.num_attention_heads
    cos, sin = position_embeddings
    visual = torch.arange(batch.image_start, batch.image_start + n_visual)
    q = attn.q_proj(hidden[rows, cols]).view(len(rows), heads, 1, head_dim)  # [n, h, 1, d]
    # keys once per sequence (a sequence holds several supervised questions), then one row per question
    k = attn.k_proj(hidden[:, visual]).view(len(hidden), n_visual, -1, head_dim).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[rows, cols][:, None], sin[rows, cols][:, None])
    _, k = apply_rotary_pos_emb(k, k, cos[:, visual], sin[:, visual])
    k = k[rows]
    supervised = max(1, heads // 2)
    kv_group = heads // k.shape[1]
    k = k.repeat_interleave(kv_group, dim=1)[:, :supervised]
    scores = (q[:, :supervised] @ k.transpose(-1, -2)).squeeze(2) * attn.scaling  # [n, h', visual]
    logp = scores.float().log_softmax(-1)
    mass = logp.masked_fill(~evidence[:, None, :], float("-inf")).logsumexp(-1)
    return -mass.mean()


# ---------------------------------------------------------------------------------- vision pretraining


def object_coverage(sample: dict, image_size: int, data_image_size: int) -> torch.Tensor:
    """[objects, visual tokens] share of each patch covered by each object's silhouette (rendered alone)."""
    grid = image_size // PATCH_SIZE
    out = []
    for o in sample["objects"]:
        obj = shapes.Shape(o["shape"], o["color"], shapes.POSITIONS.index(o["position"]), tuple(o["bbox"]))
        mask = shapes.render([obj], data_image_size, (0, 0, 0)).convert("L").resize((image_size, image_size))
        cover = torch.from_numpy(np.asarray(mask) > 0).float()
        out.append(cover.reshape(grid, PATCH_SIZE, grid, PATCH_SIZE).mean((1, 3)).flatten())
    return torch.stack(out) if out else torch.zeros(0, grid * grid)


def patch_labels(
    sample: dict,
    image_size: int,
    data_image_size: int,
    centre_only: bool = False,
    part_label: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per visual token: (shape, colour) class with 0 = background, from the scene annotation.

    A token is labelled with the object covering most of its patch (at least a quarter of it). With
    ``centre_only`` the shape label is kept only on the patch holding each object's centre; the object's other
    patches get ``part_label`` (default -100: ignored by the loss).
    """
    grid = image_size // PATCH_SIZE
    cover = object_coverage(sample, image_size, data_image_size)
    shape_y = torch.zeros(grid * grid, dtype=torch.long)
    color_y = torch.zeros(grid * grid, dtype=torch.long)
    if len(cover):
        best, owner = cover.max(0)
        on = best >= 0.25
        objs = sample["objects"]
        shape_ids = torch.tensor([shapes.SHAPES.index(o["shape"]) + 1 for o in objs])
        color_ids = torch.tensor([list(shapes.COLORS).index(o["color"]) + 1 for o in objs])
        shape_y = torch.where(on, shape_ids[owner], 0)
        color_y = torch.where(on, color_ids[owner], 0)
        if centre_only:
            keep = torch.zeros_like(on)
            keep[centre_tokens(sample, image_size, data_image_size)] = True
            shape_y = torch.where(keep | ~on, shape_y, part_label)
    return shape_y, color_y


def objects_per_colour(sample: dict) -> torch.Tensor:
    """How many objects of each colour of ``shapes.COLORS`` the image holds ([colours], long)."""
    colours = list(shapes.COLORS)
    counts = torch.zeros(len(colours), dtype=torch.long)
    for o in sample["objects"]:
        counts[colours.index(o["color"])] += 1
    return counts


def colour_count_labels(sample: dict, color_y: torch.Tensor) -> torch.Tensor:
    """Per visual token: how many objects of its colour the image holds, as a class (0: one ... 3: four or
    more), or -100 (ignored) on background tokens; ``color_y`` is `patch_labels`' colour class per token."""
    per_colour = torch.cat([torch.zeros(1, dtype=torch.long), objects_per_colour(sample)])  # 0: background
    counts = per_colour[color_y].clamp(max=VISION_COUNT_CLASSES) - 1
    return torch.where(color_y > 0, counts, -100)


def scene_labels(sample: dict) -> torch.Tensor:
    """The image's scene summary: how many objects of each colour it holds, as a class per colour of
    ``shapes.COLORS`` (0, 1, 2, 3 = three or more)."""
    return objects_per_colour(sample).clamp(max=SCENE_COUNT_CLASSES - 1)


def keyword_end(question: str) -> int:
    """Where the words that name the evidence end in a templated question: "What color is the circle?" ->
    after "circle", "How many red shapes are there?" -> after "red", "What shape is at the top left of the
    image?" -> after "left"."""
    if question.startswith("What shape is at the "):
        return question.index(" of the image?")
    if question.startswith("How many "):
        return question.index(" shapes are there?")
    return len(question.rstrip("?"))


def evidence_objects(sample: dict, question: str) -> list[int]:
    """Indices of the objects a templated svlm-shapes question is about (empty when none is: a count of 0, a
    "no" to "Is there ...")."""
    objs = sample["objects"]
    words = question.rstrip("?").split()
    if question.startswith("What color is the "):
        return [i for i, o in enumerate(objs) if o["shape"] == words[-1]]
    if question.startswith("What shape is at the "):
        phrase = question[len("What shape is at the ") : -len(" of the image?")]
        return [i for i, o in enumerate(objs) if shapes.POSITION_PHRASES[o["position"]] == phrase]
    if question.startswith("How many "):
        return [i for i, o in enumerate(objs) if o["color"] == words[2]]
    if question.startswith(("Is there a ", "Where is the ")):
        return [i for i, o in enumerate(objs) if (o["color"], o["shape"]) == (words[-2], words[-1])]
    return []


def centre_tokens(sample: dict, image_size: int, data_image_size: int) -> list[int]:
    """Per object: the visual token whose patch holds the object's centre."""
    grid = image_size // PATCH_SIZE
    scale = image_size / data_image_size
    out = []
    for o in sample["objects"]:
        x0, y0, x1, y1 = o["bbox"]
        col = min(int((x0 + x1) / 2 * scale // PATCH_SIZE), grid - 1)
        row = min(int((y0 + y1) / 2 * scale // PATCH_SIZE), grid - 1)
        out.append(row * grid + col)
    return out


def evidence_tokens(
    sample: dict, questions: Sequence[str | None], image_size: int, data_image_size: int
) -> list[torch.Tensor | None]:
    """Per question: a bool mask over the visual tokens marking its evidence objects' centre patches (where
    stage 1 put each object's shape), or None when the question is about no object (or is None: not
    supervised)."""
    grid = image_size // PATCH_SIZE
    centres = centre_tokens(sample, image_size, data_image_size)
    out: list[torch.Tensor | None] = []
    for question in questions:
        idx = evidence_objects(sample, question) if question is not None else []
        mask = torch.zeros(grid * grid, dtype=torch.bool)
        mask[[centres[i] for i in idx]] = True
        out.append(mask if idx else None)
    return out


def cell_labels(image_size: int) -> torch.Tensor:
    """Per visual token: the 3x3 grid cell (0..8, row-major) its patch centre falls in."""
    grid = image_size // PATCH_SIZE
    centre = (torch.arange(grid) + 0.5) / grid
    band = (centre * shapes.GRID).long().clamp_max(shapes.GRID - 1)
    return (band[:, None] * shapes.GRID + band[None, :]).flatten()


def pretrain_vision(
    model: PreTrainedModel, processor: ProcessorMixin, cfg: RecipeConfig, log_every: int = 50
) -> list[dict[str, Any]]:
    """Stage 1: teach the vision tower to name, at every patch, the shape and colour covering it and the grid
    cell it lies in.

    A from-scratch ViT learns shape from answer tokens alone far too slowly for a CPU budget (LLaVA itself
    starts from a pretrained CLIP); the train split's scene annotations give it direct, dense supervision.
    Optional heads (``count_loss_weight``, ``scene_loss_weight``) add object counts per colour to what the
    tower must name. The linear heads are discarded; the tower's weights carry over to stage 2.
    """
    tower = model.model.vision_tower
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    part_label = len(shapes.SHAPES) + 1 if cfg.part_class else -100
    n_shape, n_color = len(shapes.SHAPES) + 1 + int(cfg.part_class), len(shapes.COLORS) + 1
    n_cell = shapes.GRID**2
    n_count = VISION_COUNT_CLASSES if cfg.count_loss_weight > 0 else 0
    n_scene = len(shapes.COLORS) * SCENE_COUNT_CLASSES if cfg.scene_loss_weight > 0 else 0
    head = torch.nn.Linear(cfg.vision_hidden_size, n_shape + n_color + n_cell + n_count + n_scene)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=gen)
        head.bias.zero_()
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=cfg.vision_lr, weight_decay=0.0)
    cells = cell_labels(cfg.image_size)
    history: list[dict[str, Any]] = []
    window: list[dict[str, float]] = []
    start = time.perf_counter()
    tower.train()
    for step in range(cfg.vision_steps):
        images, shape_y, color_y, count_y, scene_y = [], [], [], [], []
        for i in range(step * cfg.vision_batch_size, (step + 1) * cfg.vision_batch_size):
            # sample indices from the far end of the train split, so stage 2 sees other images
            sample = shapes.generate_sample(
                10_000_000 + i,
                "train",
                cfg.seed,
                image_size=cfg.data_image_size,
                min_objects=cfg.vision_min_objects,
                max_objects=9,
            )
            centre_only = step < cfg.shape_dense_from * cfg.vision_steps
            s, c = patch_labels(sample, cfg.image_size, cfg.data_image_size, centre_only, part_label)
            images.append(sample["image"])
            shape_y.append(s)
            color_y.append(c)
            count_y.append(colour_count_labels(sample, c))
            scene_y.append(scene_labels(sample))
        progress = step / max(1, cfg.vision_steps - 1)
        for group in opt.param_groups:
            warm = min(1.0, (step + 1) / 50)
            group["lr"] = cfg.vision_lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        hidden = tower(pixel_values, output_hidden_states=True).hidden_states[
            model.config.vision_feature_layer
        ]
        logits = head(hidden[:, 1:]).flatten(0, 1)
        sy, cy = torch.cat(shape_y), torch.cat(color_y)
        obj = cy > 0
        # objects cover ~10% of the patches: weight them up so the tower does not settle for "background"
        weight = torch.where(obj, 5.0, 1.0)
        ce = torch.nn.functional.cross_entropy
        loss = (ce(logits[:, :n_shape], sy, reduction="none") * weight).sum() / weight[sy >= 0].sum()
        loss = loss + (ce(logits[:, n_shape : n_shape + n_color], cy, reduction="none") * weight).mean()
        cell_logits = logits[:, n_shape + n_color : n_shape + n_color + n_cell]
        loss = loss + cfg.cell_loss_weight * ce(cell_logits, cells.repeat(len(images)))
        ny = torch.cat(count_y)
        count_at = n_shape + n_color + n_cell
        count_logits = logits[:, count_at : count_at + n_count]
        if n_count:
            loss = loss + cfg.count_loss_weight * ce(count_logits, ny)
        if n_scene:
            # every patch predicts the whole scene's summary
            scene_logits = logits[:, count_at + n_count :].reshape(-1, SCENE_COUNT_CLASSES)
            scene_targets = torch.stack(scene_y).repeat_interleave(hidden.shape[1] - 1, 0).flatten()
            loss = loss + cfg.scene_loss_weight * ce(scene_logits, scene_targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            named = (sy > 0) & (sy <= len(shapes.SHAPES))  # patches labelled with a shape name
            metrics = {
                "loss": float(loss),
                "object_patch_shape_acc": (logits[named, :n_shape].argmax(-1) == sy[named]).float().mean(),
                "object_patch_color_acc": (logits[obj, n_shape : n_shape + n_color].argmax(-1) == cy[obj])
                .float()
                .mean(),
                "foreground_acc": (logits[:, n_shape : n_shape + n_color].argmax(-1).eq(0) == ~obj)
                .float()
                .mean(),
            }
            if n_count:
                metrics["object_patch_count_acc"] = (count_logits[obj].argmax(-1) == ny[obj]).float().mean()
            if n_scene:
                metrics["patch_scene_count_acc"] = (scene_logits.argmax(-1) == scene_targets).float().mean()
            window.append({k: float(v) for k, v in metrics.items()})
        if (step + 1) % log_every == 0 or step + 1 == cfg.vision_steps:
            history.append(_log_window("vision", step, window, start))
            window = []
    return history


def _log_window(stage: str, step: int, window: list[dict[str, float]], start: float) -> dict[str, Any]:
    """One log entry of a pretraining stage: the window's mean metrics (NaN-free), printed as JSON."""
    entry: dict[str, Any] = {"step": step + 1}
    entry.update({k: round(float(np.nanmean([w[k] for w in window])), 4) for k in window[0]})
    entry["elapsed_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps({stage: entry}), flush=True)
    return entry


ALIGN_BACKGROUND_WORD = "background"  # the word background tokens are pulled towards
ALIGN_COUNT_WORDS = ("1", "2", "3", "4")  # an object's colour count, as stage 1's count head names it
ALIGN_SCALE = 10.0  # inverse temperature of the cosine softmax over the named words
# each group's words compete in one softmax; index 0 is the background class, the rest follow the labels
ALIGN_WORD_GROUPS: dict[str, tuple[str, ...]] = {
    "colour": (ALIGN_BACKGROUND_WORD, *shapes.COLORS),
    "shape": (ALIGN_BACKGROUND_WORD, *shapes.SHAPES),
    "count": (ALIGN_BACKGROUND_WORD, *ALIGN_COUNT_WORDS),
    "row": (ALIGN_BACKGROUND_WORD, "top", "bottom"),
    "column": (ALIGN_BACKGROUND_WORD, "left", "right"),
}


def word_token_ids(tokenizer: Any, words: Sequence[str]) -> torch.Tensor:
    """Token id of each word as it appears mid-sentence (" red"); ValueError naming a word that is not one
    token, since its single input embedding is what the projector is aligned to."""
    ids = []
    for word in words:
        pieces = tokenizer.tokenize(" " + word)
        if len(pieces) != 1:
            raise ValueError(
                f"projector alignment needs {word!r} to be one token, the tokenizer gives {pieces}"
            )
        ids.append(tokenizer.convert_tokens_to_ids(pieces[0]))
    return torch.tensor(ids)


def align_projector(
    model: PreTrainedModel, processor: ProcessorMixin, cfg: RecipeConfig, log_every: int = 25
) -> list[dict[str, Any]]:
    """Stage 1b: train the projector (tower and word embeddings frozen) so that each visual token points
    towards the input embedding of its object's colour word and, at the object's centre patch (where stage 1
    put the shape), of its shape word; background tokens towards "background".

    This stands in for LLaVA's projector pretraining on captions, which leaves visual tokens near the words
    that describe them. The loss is a softmax over cosine similarities with those few words only, so the
    directions orthogonal to them stay free for what else the tower says (counts, grid cell). Questions then
    name their evidence with words whose embeddings already look like the evidence tokens, so attention can
    find an object by matching like with like from the first stage-2 step. (Stage 2 moves the embeddings on:
    after a full run SparseVLM's embedding-matched raters were still not the key words.)
    """
    tokenizer = processor.tokenizer
    embed = model.model.language_model.get_input_embeddings().weight.detach()
    words = {
        group: torch.nn.functional.normalize(embed[word_token_ids(tokenizer, names)], dim=-1)
        for group, names in ALIGN_WORD_GROUPS.items()
    }
    cells = cell_labels(cfg.image_size)
    edge_class = torch.tensor([1, 0, 2])  # first band -> top/left, middle -> background, last -> bottom/right
    row_y, column_y = edge_class[cells // shapes.GRID], edge_class[cells % shapes.GRID]
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    opt = torch.optim.AdamW(projector.parameters(), lr=cfg.align_lr, weight_decay=0.0)
    ce = torch.nn.functional.cross_entropy
    history: list[dict[str, Any]] = []
    window: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in range(cfg.align_steps):
        images, shape_y, color_y, count_y = [], [], [], []
        for i in range(step * cfg.align_batch_size, (step + 1) * cfg.align_batch_size):
            # another far range of the train split than stage 1's and stage 2's images
            sample = shapes.generate_sample(
                20_000_000 + i,
                "train",
                cfg.seed,
                image_size=cfg.data_image_size,
                min_objects=2,
                max_objects=9,
            )
            s, c = patch_labels(sample, cfg.image_size, cfg.data_image_size, centre_only=True)
            images.append(sample["image"])
            shape_y.append(s)
            color_y.append(c)
            count_y.append(torch.where(c > 0, colour_count_labels(sample, c) + 1, 0))  # 0: background
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hidden = tower(pixel_values, output_hidden_states=True).hidden_states[
                model.config.vision_feature_layer
            ]
        tokens = torch.nn.functional.normalize(projector(hidden[:, 1:]).flatten(0, 1), dim=-1)
        colour_logits = ALIGN_SCALE * tokens @ words["colour"].T
        shape_logits = ALIGN_SCALE * tokens @ words["shape"].T
        sy, cy = torch.cat(shape_y), torch.cat(color_y)
        weight = torch.where(cy > 0, 5.0, 1.0)  # objects cover ~10% of the patches, as in stage 1
        loss = (ce(colour_logits, cy, reduction="none") * weight).mean()
        loss = loss + (ce(shape_logits, sy, reduction="none") * weight).mean()
        if cfg.align_cells:
            n = len(images)
            loss = loss + ce(ALIGN_SCALE * tokens @ words["row"].T, row_y.repeat(n))
            loss = loss + ce(ALIGN_SCALE * tokens @ words["column"].T, column_y.repeat(n))
        if cfg.align_counts:
            count_logits = ALIGN_SCALE * tokens @ words["count"].T
            ny = torch.cat(count_y)
            loss = loss + (ce(count_logits, ny, reduction="none") * weight).mean()
        progress = step / max(1, cfg.align_steps)
        for group in opt.param_groups:
            warm = min(1.0, (step + 1) / 20)
            group["lr"] = cfg.align_lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            obj, named = cy > 0, sy > 0
            window.append(
                {
                    "loss": float(loss),
                    "object_colour_word_acc": float(
                        (colour_logits[obj].argmax(-1) == cy[obj]).float().mean()
                    ),
                    "centre_shape_word_acc": float(
                        (shape_logits[named].argmax(-1) == sy[named]).float().mean()
                    ),
                }
            )
            if cfg.align_counts:
                window[-1]["object_count_word_acc"] = float(
                    (count_logits[obj].argmax(-1) == ny[obj]).float().mean()
                )
        if (step + 1) % log_every == 0 or step + 1 == cfg.align_steps:
            history.append(_log_window("align", step, window, start))
            window = []
    return history


# ------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    split: str = "val",
    num_samples: int = 100,
    seed: int = 0,
    strategy: str | None = None,
    budget: float | None = None,
    batch_size: int = 16,
    image_size: int = 336,
    max_new_tokens: int = 8,
) -> dict[str, Any]:
    """Greedy answers on ``num_samples`` of the shapes ``split``, scored like ``svlm test`` (normalised exact
    match), overall and per question type; ``strategy``/``budget`` prune with ``svlm.sparsify``."""
    import svlm
    from svlm.data.benchmarks import load_benchmark
    from svlm.metrics import exact_match

    model.eval()
    ds = load_benchmark("shapes", split=split, limit=num_samples, seed=seed, image_size=image_size)
    runner = model if strategy in (None, "dense") else svlm.sparsify(model, strategy, budget=budget)
    tok = processor.tokenizer
    scores: dict[str, list[float]] = {}
    preds = []
    for lo in range(0, len(ds), batch_size):
        rows = [ds[i] for i in range(lo, min(lo + batch_size, len(ds)))]
        prompts = [
            processor.apply_chat_template(
                build_conversation(r["prompt"]), add_generation_prompt=True, tokenize=False
            )
            for r in rows
        ]
        inputs = processor(images=[r["image"] for r in rows], text=prompts, padding=True, return_tensors="pt")
        ids = runner.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        texts = [
            t.strip()
            for t in tok.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        ]
        for r, text in zip(rows, texts, strict=True):
            s = exact_match(text, r["answers"], rule="vqa")  # svlm-shapes scoring
            scores.setdefault("all", []).append(s)
            scores.setdefault(r["category"], []).append(s)
            preds.append(text)
    out = {k: float(np.mean(v)) for k, v in scores.items()}
    out["num_samples"] = len(ds)
    return out


# ------------------------------------------------------------------------------------------------ train


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """``"2,4,6"`` -> [2, 4, 6], checked against the decoder's depth."""
    try:
        layers = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"attention_layers must be comma-separated layer indices, got {spec!r}") from None
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"attention_layers {bad} are outside the decoder's layers 0..{num_layers - 1}")
    return layers


def parse_question_types(spec: str, option: str = "attention_types") -> set[str]:
    """``"color,shape"`` -> {"color", "shape"}, checked against the svlm-shapes question types."""
    types = {t.strip() for t in spec.split(",") if t.strip()}
    bad = sorted(types - set(shapes.QUESTION_TYPES))
    if bad:
        raise ValueError(f"{option} {bad} are not svlm-shapes question types {list(shapes.QUESTION_TYPES)}")
    return types


def parse_type_weights(spec: str) -> dict[str, int]:
    """``"count:3,exist:2"`` -> {"count": 3, "exist": 2} (types not named weigh 1), checked."""
    weights: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, value = part.partition(":")
        if name not in shapes.QUESTION_TYPES or not value.isdigit() or int(value) < 1:
            raise ValueError(
                f"question_weights must look like 'count:3,exist:2' (svlm-shapes question types "
                f"{list(shapes.QUESTION_TYPES)}, whole weights >= 1), got {part!r} in {spec!r}"
            )
        weights[name] = int(value)
    return weights


def lr_at(cfg: RecipeConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: RecipeConfig, output_dir: str | Path | None = None, log_every: int = 10) -> dict[str, Any]:
    """Train, evaluate on the val split every ``eval_every`` steps and on the test split at the end, and
    save model, processor and ``training_log.json`` to ``output_dir`` (when given)."""
    threads_before = torch.get_num_threads()
    try:
        return _train(cfg, output_dir, log_every)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: RecipeConfig, output_dir: str | Path | None, log_every: int) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    attention_layers = parse_layers(cfg.attention_layers, cfg.num_layers)
    keyword_layers = parse_layers(cfg.keyword_layers, cfg.num_layers)
    check_config(cfg)  # everything else, before stage 1's minutes
    model, processor = build_model(cfg)
    if cfg.align_steps > 0:  # fail now rather than after stage 1
        for names in ALIGN_WORD_GROUPS.values():
            word_token_ids(processor.tokenizer, names)
    start = time.perf_counter()
    torch.set_num_threads(cfg.vision_threads)
    vision_log = pretrain_vision(model, processor, cfg) if cfg.vision_steps > 0 else []
    align_log = align_projector(model, processor, cfg) if cfg.align_steps > 0 else []
    torch.set_num_threads(cfg.threads)
    if cfg.vision_lr_scale == 0:
        model.model.vision_tower.requires_grad_(False)
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_vision = name.startswith("model.vision_tower.")
        decays = param.ndim >= 2 and "embed" not in name
        groups.setdefault((is_vision, decays), []).append(param)
    opt = torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": cfg.weight_decay if decays else 0.0,
                "lr_scale": cfg.vision_lr_scale if is_vision else 1.0,
            }
            for (is_vision, decays), params in groups.items()
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    log: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_visual_tokens": cfg.num_visual_tokens,
        "torch_version": torch.__version__,
        "vision_pretraining": vision_log,
        "projector_alignment": align_log,
        "steps": [],
        "val": [],
    }
    window: list[float] = []
    window_acc: dict[str, list[float]] = {}
    for step in range(cfg.steps):
        model.train()
        batch = train_batch(cfg, processor, step)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step) * group["lr_scale"]
        loss, correct = packed_loss(model, batch, attention_layers, cfg.attention_weight, keyword_layers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        window.append(float(loss.detach()))
        for qtype, ok in zip(batch.question_types, correct.tolist(), strict=True):
            window_acc.setdefault("all", []).append(ok)
            window_acc.setdefault(qtype, []).append(ok)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            entry = {
                "step": step + 1,
                "loss": float(np.mean(window)),
                "answer_acc": {k: round(float(np.mean(v)), 3) for k, v in window_acc.items()},
                "lr": lr_at(cfg, step),
                "elapsed_s": round(time.perf_counter() - start, 1),
            }
            log["steps"].append(entry)
            window, window_acc = [], {}
            print(json.dumps(entry), flush=True)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            val = evaluate(
                model, processor, "val", cfg.eval_samples, cfg.seed, image_size=cfg.data_image_size
            )
            val.update(step=step + 1, elapsed_s=round(time.perf_counter() - start, 1))
            log["val"].append(val)
            print(json.dumps({"val": val}), flush=True)
    log["train_time_s"] = round(time.perf_counter() - start, 1)
    model.eval()
    val = evaluate(model, processor, "val", cfg.eval_samples, cfg.seed, image_size=cfg.data_image_size)
    val.update(step=cfg.steps, elapsed_s=round(time.perf_counter() - start, 1))
    log["val"].append(val)
    if cfg.test_samples > 0:
        log["test_dense"] = evaluate(
            model, processor, "test", cfg.test_samples, 0, image_size=cfg.data_image_size
        )
    log["total_time_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps({"val": val, "test_dense": log.get("test_dense")}), flush=True)
    if output_dir is not None:
        save(model, processor, log, output_dir)
    return log


def save(
    model: PreTrainedModel, processor: ProcessorMixin, log: dict[str, Any], output_dir: str | Path
) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")


def _flag(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) for boolean options."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[RecipeConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m svlm.zoo.train_default", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output-dir", default=None, help="where to save the model (default: do not save)")
    parser.add_argument("--smoke", action="store_true", help="a tiny 2-layer model for a few steps (seconds)")
    defaults = RecipeConfig()
    for f in dataclasses.fields(RecipeConfig):
        if f.name == "extra":
            continue
        kind = type(getattr(defaults, f.name))
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=_flag if kind is bool else kind, default=None
        )
    args = parser.parse_args(argv)
    values = dict(SMOKE) if args.smoke else {}
    values.update(
        {
            k: v
            for k, v in vars(args).items()
            if k in {f.name for f in dataclasses.fields(RecipeConfig)} and v is not None
        }
    )
    cfg = RecipeConfig(**values)
    try:
        check_config(cfg)
    except ValueError as err:
        parser.error(str(err))  # one line naming the bad value, before any training
    return cfg, args


def check_config(cfg: RecipeConfig) -> None:
    """Raise ValueError naming the first bad option (layers, question types, curriculum, architecture)."""
    parse_layers(cfg.attention_layers, cfg.num_layers)
    parse_layers(cfg.keyword_layers, cfg.num_layers)
    parse_question_types(cfg.attention_types)
    parse_type_weights(cfg.question_weights)
    if not parse_question_types(cfg.lead_types, "lead_types") and cfg.lead_steps > 0:
        raise ValueError("lead_types must name at least one question type when lead_steps > 0")
    if cfg.align_steps < 0:
        raise ValueError(f"align_steps must be >= 0 (0 skips projector alignment), got {cfg.align_steps}")
    if cfg.lead_start < 0:
        raise ValueError(
            f"lead_start must be >= 0 (the step the lead window starts at), got {cfg.lead_start}"
        )
    if cfg.lead_steps < 0:
        raise ValueError(
            f"lead_steps must be >= 0 (0: every question type from the start), got {cfg.lead_steps}"
        )
    fewest = shapes.GRID * shapes.GRID  # every object's centre token must fit
    if cfg.train_visual_tokens and not fewest <= cfg.train_visual_tokens <= cfg.num_visual_tokens:
        raise ValueError(
            f"train_visual_tokens must be 0 (all) or between {fewest} (one per object of a full scene) and "
            f"{cfg.num_visual_tokens} (the model's visual tokens), got {cfg.train_visual_tokens}"
        )
    if not 0 <= cfg.train_visual_until <= 1:
        raise ValueError(
            f"train_visual_until must be a fraction of the steps in [0, 1], got {cfg.train_visual_until}"
        )
    parse_curriculum(cfg.curriculum)
    check_architecture(cfg)


def main(argv: Sequence[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    train(cfg, args.output_dir)


if __name__ == "__main__":
    main()

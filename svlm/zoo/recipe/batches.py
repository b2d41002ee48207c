"""Stage-2 training batches: a pure function of the config and the step."""

from __future__ import annotations

import random
from typing import Any

import torch
from transformers.processing_utils import ProcessorMixin

from svlm.data import scenes, shapes
from svlm.zoo.recipe.attributes import parse_attribute_groups, visual_attribute_labels
from svlm.zoo.recipe.config import RecipeConfig, parse_question_types, parse_type_weights, phase_at
from svlm.zoo.recipe.labels import centre_tokens, evidence_tokens, object_coverage
from svlm.zoo.recipe.packing import PackedBatch, pack
from svlm.zoo.recipe.questions import derived_questions, question_type


def train_batch(cfg: RecipeConfig, processor: ProcessorMixin, step: int) -> PackedBatch:
    """Batch ``step`` of training: shapes train samples ``step * batch_size ...``, derived questions seeded
    by (seed, sample index) -- a pure function of the config and the step."""
    images, qas, evidence, keep, attributes = [], [], [], [], []
    groups = parse_attribute_groups(cfg.attribute_groups) if cfg.attribute_weight > 0 else []
    types = parse_question_types(cfg.attention_types, benchmark=cfg.benchmark)
    split_types = parse_question_types(cfg.split_types, "split_types", cfg.benchmark)
    drop = 0 < cfg.train_visual_tokens < cfg.num_visual_tokens and step < cfg.train_visual_until * cfg.steps
    weights = parse_type_weights(cfg.question_weights, cfg.benchmark)
    lead_types = (
        parse_question_types(cfg.lead_types, "lead_types", cfg.benchmark) if cfg.lead_steps > 0 else None
    )
    for i in range(step * cfg.batch_size, (step + 1) * cfg.batch_size):
        sample = training_sample(cfg, i, **phase_at(cfg, step).scene_kwargs())
        rng = random.Random(cfg.seed * 1_000_003 + i)
        images.append(sample["image"])
        only = lead_types if cfg.lead_start <= step < cfg.lead_start + cfg.lead_steps else None
        qas.append(derived_questions(sample, cfg.questions_per_image, rng, weights, only))
        if cfg.attention_weight > 0:
            kinds = [question_type(q, cfg.benchmark) for q, _ in qas[-1]]
            supervised = [q if t in types else None for (q, _), t in zip(qas[-1], kinds, strict=True)]
            split = [t in split_types for t in kinds]
            evidence.append(evidence_tokens(sample, supervised, cfg.image_size, cfg.data_image_size, split))
        if drop:
            keep.append(
                kept_visual_tokens(sample, cfg, torch.Generator().manual_seed(cfg.seed * 1_000_003 + i))
            )
        if cfg.attribute_weight > 0:
            labels = visual_attribute_labels(sample, cfg.image_size, cfg.data_image_size, groups)
            attributes.append(labels[keep[-1]] if drop else labels)
    batch = pack(
        processor,
        images,
        qas,
        evidence if cfg.attention_weight > 0 else None,
        torch.stack(keep) if drop else None,
        cfg.benchmark,
    )
    if attributes:
        batch.visual_labels = torch.stack(attributes)
    return batch


def training_sample(cfg: RecipeConfig, index: int, **scene: Any) -> dict:
    """Train-split sample ``index`` of ``cfg.benchmark`` (``scene``: min/max objects, shape scale; svlm-scenes
    takes the object counts only)."""
    if cfg.benchmark == "scenes":
        scene.pop("shape_scale", None)
        return scenes.generate_sample(index, "train", cfg.seed, image_size=cfg.data_image_size, **scene)
    return shapes.generate_sample(index, "train", cfg.seed, image_size=cfg.data_image_size, **scene)


def kept_visual_tokens(sample: dict, cfg: RecipeConfig, generator: torch.Generator) -> torch.Tensor:
    """The ``cfg.train_visual_tokens`` visual tokens a training image keeps (sorted): each object's centre
    token (where the attention loss points), the other tokens its objects cover most, then background tokens
    at random. svlm-scenes holds more object tokens than a training budget: the objects its questions are
    about (noted by `derived_questions`) come first, their centres before all."""
    cover = object_coverage(sample, cfg.image_size, cfg.data_image_size)
    on_object = cover.max(0).values if len(cover) else torch.zeros(cfg.num_visual_tokens)
    centres = centre_tokens(sample, cfg.image_size, cfg.data_image_size)
    on_object[centres] += 2.0
    asked = sorted({i for ev in (sample.get("_evidence") or {}).values() for i in ev})
    if asked:
        on_object += 3.0 * (cover[asked] > 0.05).any(0).float()
        on_object[[centres[i] for i in asked]] += 3.0
    score = on_object + 1e-3 * torch.rand(cfg.num_visual_tokens, generator=generator)
    return score.topk(cfg.train_visual_tokens).indices.sort().values

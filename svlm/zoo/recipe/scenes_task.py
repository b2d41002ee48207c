"""What the recipe needs to train on svlm-scenes instead of svlm-shapes: questions derived from a scene
annotation (with their evidence), object silhouettes, the shape classes (the five shapes and "card") and the
digit labels of cards.

A scenes sample is recognised by its id (``scenes-...``); the other recipe modules dispatch on it.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch

from svlm.data import scenes
from svlm.zoo.recipe.question_mix import pick_by_type, weighted_types

SHAPE_CLASSES: tuple[str, ...] = (*scenes.SHAPES, scenes.CARD)
COLOR_CLASSES: tuple[str, ...] = tuple(scenes.COLORS)
DIGIT_CLASSES = len(scenes.DIGITS)
#: size classes of shapes (cards have their own size and are left out of the size head)
SIZE_CLASSES: tuple[str, ...] = tuple(scenes.SIZES)


def is_scenes(sample: dict) -> bool:
    return str(sample.get("id", "")).startswith("scenes-")


def coverage(sample: dict, image_size: int, data_image_size: int, patch: int) -> torch.Tensor:
    """[objects, visual tokens] share of each patch covered by each object drawn alone (kept in the sample:
    stage 1 asks for it three times per image)."""
    key = (image_size, data_image_size, patch)
    cached = sample.setdefault("_coverage", {})
    if key not in cached:
        cached[key] = _coverage(sample, image_size, data_image_size, patch)
    return cached[key]


def _coverage(sample: dict, image_size: int, data_image_size: int, patch: int) -> torch.Tensor:
    grid = image_size // patch
    scale = image_size / data_image_size
    out = np.zeros((len(sample["objects"]), grid * grid), dtype=np.float32)
    for k, o in enumerate(scenes.scene_objects(sample)):
        # drawn at the model's resolution (the tower sees the image resized to it)
        bbox = tuple(round(v * scale) for v in o.bbox)
        mask = scenes.silhouette(dataclasses.replace(o, bbox=bbox), image_size)
        out[k] = mask.reshape(grid, patch, grid, patch).mean((1, 3), dtype=np.float32).reshape(-1)
    return torch.from_numpy(out)


def same_kind_counts(sample: dict) -> torch.Tensor:
    """Per object: how many objects of its colour and shape the image holds ("How many red stars")."""
    kinds = [(o["color"], o["shape"]) for o in sample["objects"]]
    return torch.tensor([kinds.count(k) for k in kinds], dtype=torch.long)


def digit_labels(owner: torch.Tensor, on: torch.Tensor, sample: dict) -> torch.Tensor:
    """Per visual token: 1 + the digit of the card covering it, 0 on every other token."""
    digits = torch.tensor(
        [int(o["text"]) + 1 if o["shape"] == scenes.CARD else 0 for o in sample["objects"]], dtype=torch.long
    )
    return torch.where(on, digits[owner], 0) if len(digits) else torch.zeros_like(owner)


def size_labels(owner: torch.Tensor, on: torch.Tensor, sample: dict) -> torch.Tensor:
    """Per visual token: 1 + the size class of the shape covering it ("small", "large"), 0 on background,
    -100 (ignored) on cards."""
    sizes = torch.tensor(
        [-100 if o["shape"] == scenes.CARD else SIZE_CLASSES.index(o["size"]) + 1 for o in sample["objects"]],
        dtype=torch.long,
    )
    return torch.where(on, sizes[owner], 0) if len(sizes) else torch.zeros_like(owner)


def derived_questions(
    sample: dict,
    k: int,
    rng: random.Random,
    type_weights: dict[str, int] | None = None,
    only: set[str] | None = None,
) -> list[tuple[str, str]]:
    """``k`` (question, answer) pairs about a scenes training image: its own question, then questions from
    `scenes.questions_about`, cycling over the question types (``type_weights`` times each per cycle), each
    type's answer drawn uniformly among those the image allows. The evidence of each question is stashed in
    ``sample["_evidence"]`` for `evidence_objects`."""
    asked = scenes.questions_about(sample, np.random.default_rng(rng.randrange(2**32)))
    by_type: dict[str, dict[str, list[scenes.Question]]] = {t: {} for t in scenes.QUESTION_TYPES}
    for q in asked:
        by_type[q.qtype].setdefault(q.answer, []).append(q)
    stash = sample.setdefault("_evidence", {})
    stash[sample["question"]] = list(sample["evidence"])
    own = (sample["question"], sample["answer"])
    out = [own] if only is None or sample["question_type"] in only else []
    types = weighted_types(scenes.QUESTION_TYPES, type_weights, only)
    seen = {sample["question"]}
    picked = pick_by_type(by_type, types, k - len(out), rng, seen, lambda q: q.question, max_tries=20 * k)
    for _, q in picked:
        stash[q.question] = list(q.evidence)
    out += [(q.question, q.answer) for _, q in picked]
    return out or [own]


def evidence_objects(sample: dict, question: str) -> list[int]:
    """The objects `question` is about: its own question's annotation, or what `derived_questions` noted."""
    stash = sample.get("_evidence") or {}
    if question in stash:
        return list(stash[question])
    return list(sample["evidence"]) if question == sample["question"] else []


def question_type(question: str) -> str:
    return scenes.parse_question(question)[0]


def keyword_end(question: str) -> int:
    return scenes.parse_question(question)[1]


def phrase_start(question: str) -> int:
    return scenes.phrase_start(question)

"""Stage 1b: projector alignment of visual tokens to the words that name them (as LLaVA's projector
pretraining)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
)
from transformers.processing_utils import ProcessorMixin

from svlm.data import scenes, shapes
from svlm.zoo.recipe import scenes_task
from svlm.zoo.recipe.batches import training_sample
from svlm.zoo.recipe.config import RecipeConfig
from svlm.zoo.recipe.labels import cell_labels, colour_count_labels, digit_labels, patch_labels, size_labels
from svlm.zoo.recipe.vision import VISION_MAX_OBJECTS, _log_window

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
    groups = dict(ALIGN_WORD_GROUPS)
    if cfg.benchmark == "scenes":
        groups["digit"] = (ALIGN_BACKGROUND_WORD, *scenes.DIGITS)
        if cfg.size_loss_weight > 0:
            groups["size"] = (ALIGN_BACKGROUND_WORD, *scenes_task.SIZE_CLASSES)
    words = {
        group: torch.nn.functional.normalize(embed[word_token_ids(tokenizer, names)], dim=-1)
        for group, names in groups.items()
    }
    device = embed.device
    cells = cell_labels(cfg.image_size).to(device)
    # first band -> top/left, middle -> background, last -> bottom/right
    edge_class = torch.tensor([1, 0, 2], device=device)
    row_y, column_y = edge_class[cells // shapes.GRID], edge_class[cells % shapes.GRID]
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    opt = torch.optim.AdamW(projector.parameters(), lr=cfg.align_lr, weight_decay=0.0)
    ce = torch.nn.functional.cross_entropy
    history: list[dict[str, Any]] = []
    window: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in range(cfg.align_steps):
        images, shape_y, color_y, count_y, digit_y, size_y = [], [], [], [], [], []
        for i in range(step * cfg.align_batch_size, (step + 1) * cfg.align_batch_size):
            # another far range of the train split than stage 1's and stage 2's images
            fewest = 2 if cfg.benchmark == "shapes" else 8
            most = VISION_MAX_OBJECTS[cfg.benchmark]
            sample = training_sample(cfg, 20_000_000 + i, min_objects=fewest, max_objects=most)
            s, c = patch_labels(sample, cfg.image_size, cfg.data_image_size, centre_only=True)
            if "digit" in words:  # cards are named by their digit (the word "card" is two tokens)
                s = torch.where(s == len(scenes_task.SHAPE_CLASSES), -100, s)
                digit_y.append(digit_labels(sample, cfg.image_size, cfg.data_image_size))
            if "size" in words:  # the size word at each shape's centre token, like its shape word
                z = size_labels(sample, cfg.image_size, cfg.data_image_size)
                size_y.append(torch.where((s > 0) | (z <= 0), z, -100))
            images.append(sample["image"])
            shape_y.append(s)
            color_y.append(c)
            count_y.append(torch.where(c > 0, colour_count_labels(sample, c) + 1, 0))  # 0: background
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"].to(device)
        with torch.no_grad():
            hidden = tower(pixel_values, output_hidden_states=True).hidden_states[
                model.config.vision_feature_layer
            ]
        tokens = torch.nn.functional.normalize(projector(hidden[:, 1:]).flatten(0, 1), dim=-1)
        colour_logits = ALIGN_SCALE * tokens @ words["colour"].T
        shape_logits = ALIGN_SCALE * tokens @ words["shape"].T
        sy, cy = torch.cat(shape_y).to(device), torch.cat(color_y).to(device)
        weight = torch.where(cy > 0, 5.0, 1.0)  # objects cover ~10% of the patches, as in stage 1
        loss = (ce(colour_logits, cy, reduction="none") * weight).mean()
        loss = loss + (ce(shape_logits, sy, reduction="none") * weight).mean()
        if digit_y:
            dy = torch.cat(digit_y).to(device)
            digit_logits = ALIGN_SCALE * tokens @ words["digit"].T
            loss = loss + (ce(digit_logits, dy, reduction="none") * torch.where(dy > 0, 10.0, 1.0)).mean()
        if size_y:
            zy = torch.cat(size_y).to(device)
            size_logits = ALIGN_SCALE * tokens @ words["size"].T
            size_weight = torch.where(zy > 0, 5.0, 1.0)
            loss = (
                loss
                + (ce(size_logits, zy, reduction="none") * size_weight).sum() / size_weight[zy >= 0].sum()
            )
        if cfg.align_cells:
            n = len(images)
            loss = loss + ce(ALIGN_SCALE * tokens @ words["row"].T, row_y.repeat(n))
            loss = loss + ce(ALIGN_SCALE * tokens @ words["column"].T, column_y.repeat(n))
        if cfg.align_counts:
            count_logits = ALIGN_SCALE * tokens @ words["count"].T
            ny = torch.cat(count_y).to(device)
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
            if digit_y:
                card = dy > 0
                window[-1]["card_digit_word_acc"] = float(
                    (digit_logits[card].argmax(-1) == dy[card]).float().mean()
                )
            if size_y:
                sized = zy > 0
                window[-1]["centre_size_word_acc"] = float(
                    (size_logits[sized].argmax(-1) == zy[sized]).float().mean()
                )
            if cfg.align_counts:
                window[-1]["object_count_word_acc"] = float(
                    (count_logits[obj].argmax(-1) == ny[obj]).float().mean()
                )
        if (step + 1) % log_every == 0 or step + 1 == cfg.align_steps:
            history.append(_log_window("align", step, window, start))
            window = []
    return history

"""Stage 1: vision-tower pretraining on per-patch labels (stands in for CLIP's pretraining)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import torch
from transformers import (
    PreTrainedModel,
)
from transformers.processing_utils import ProcessorMixin

from svlm.data import shapes
from svlm.zoo.recipe import scenes_task
from svlm.zoo.recipe.batches import training_sample
from svlm.zoo.recipe.config import POSITION_BANDS, SCENE_COUNT_CLASSES, VISION_COUNT_CLASSES, RecipeConfig
from svlm.zoo.recipe.labels import (
    cell_labels,
    colour_count_labels,
    digit_labels,
    patch_labels,
    position_labels,
    scene_labels,
    size_labels,
)

#: scenes per stage-1 image: up to a full svlm-shapes grid, or 20 svlm-scenes objects
VISION_MAX_OBJECTS = {"shapes": 9, "scenes": 20}


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
    names = scenes_task.SHAPE_CLASSES if cfg.benchmark == "scenes" else shapes.SHAPES
    part_label = len(names) + 1 if cfg.part_class else -100
    n_shape, n_color = len(names) + 1 + int(cfg.part_class), len(shapes.COLORS) + 1
    n_cell = shapes.GRID**2
    n_count = VISION_COUNT_CLASSES if cfg.count_loss_weight > 0 else 0
    n_scene = len(shapes.COLORS) * SCENE_COUNT_CLASSES if cfg.scene_loss_weight > 0 else 0
    n_digit = scenes_task.DIGIT_CLASSES + 1 if cfg.benchmark == "scenes" and cfg.digit_loss_weight > 0 else 0
    n_size = (
        len(scenes_task.SIZE_CLASSES) + 1 if cfg.benchmark == "scenes" and cfg.size_loss_weight > 0 else 0
    )
    device = next(tower.parameters()).device
    head = torch.nn.Linear(
        cfg.vision_hidden_size, n_shape + n_color + n_cell + n_count + n_scene + n_digit + n_size
    )
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=gen)
        head.bias.zero_()
    head.to(device)
    heads = [head]
    if cfg.position_loss_weight > 0:  # its own head, so runs without it draw the same numbers as before
        position_head = torch.nn.Linear(cfg.vision_hidden_size, 2 * POSITION_BANDS)
        with torch.no_grad():
            position_head.weight.normal_(0.0, 0.02, generator=gen)
            position_head.bias.zero_()
        heads.append(position_head.to(device))
    params = [p for h in heads for p in h.parameters()]
    opt = torch.optim.AdamW([*tower.parameters(), *params], lr=cfg.vision_lr, weight_decay=0.0)
    cells = cell_labels(cfg.image_size).to(device)
    rows, columns = (t.to(device) for t in position_labels(cfg.image_size))
    history: list[dict[str, Any]] = []
    window: list[dict[str, float]] = []
    start = time.perf_counter()
    tower.train()
    for step in range(cfg.vision_steps):
        images, shape_y, color_y, count_y, scene_y, digit_y, size_y = [], [], [], [], [], [], []
        for i in range(step * cfg.vision_batch_size, (step + 1) * cfg.vision_batch_size):
            # sample indices from the far end of the train split, so stage 2 sees other images
            sample = training_sample(
                cfg,
                10_000_000 + i,
                min_objects=cfg.vision_min_objects,
                max_objects=VISION_MAX_OBJECTS[cfg.benchmark],
            )
            if n_digit:
                digit_y.append(digit_labels(sample, cfg.image_size, cfg.data_image_size))
            if n_size:
                size_y.append(size_labels(sample, cfg.image_size, cfg.data_image_size))
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
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"].to(device)
        hidden = tower(pixel_values, output_hidden_states=True).hidden_states[
            model.config.vision_feature_layer
        ]
        logits = head(hidden[:, 1:]).flatten(0, 1)
        sy, cy = torch.cat(shape_y).to(device), torch.cat(color_y).to(device)
        obj = cy > 0
        # objects cover ~10% of the patches: weight them up so the tower does not settle for "background"
        weight = torch.where(obj, 5.0, 1.0)
        ce = torch.nn.functional.cross_entropy
        loss = (ce(logits[:, :n_shape], sy, reduction="none") * weight).sum() / weight[sy >= 0].sum()
        loss = loss + (ce(logits[:, n_shape : n_shape + n_color], cy, reduction="none") * weight).mean()
        cell_logits = logits[:, n_shape + n_color : n_shape + n_color + n_cell]
        loss = loss + cfg.cell_loss_weight * ce(cell_logits, cells.repeat(len(images)))
        ny = torch.cat(count_y).to(device)
        count_at = n_shape + n_color + n_cell
        count_logits = logits[:, count_at : count_at + n_count]
        if n_count:
            loss = loss + cfg.count_loss_weight * ce(count_logits, ny)
        if n_scene:
            # every patch predicts the whole scene's summary
            scene_logits = logits[:, count_at + n_count : count_at + n_count + n_scene]
            scene_logits = scene_logits.reshape(-1, SCENE_COUNT_CLASSES)
            scene_targets = (
                torch.stack(scene_y).repeat_interleave(hidden.shape[1] - 1, 0).flatten().to(device)
            )
            loss = loss + cfg.scene_loss_weight * ce(scene_logits, scene_targets)
        if n_digit:  # svlm-scenes: each card's digit at its patches (cards cover ~2% of the patches)
            dy = torch.cat(digit_y).to(device)
            digit_logits = logits[:, count_at + n_count + n_scene : count_at + n_count + n_scene + n_digit]
            card = dy > 0
            digit_weight = torch.where(card, 10.0, 1.0)
            loss = (
                loss + cfg.digit_loss_weight * (ce(digit_logits, dy, reduction="none") * digit_weight).mean()
            )
        if n_size:  # svlm-scenes: small or large at every shape patch
            zy = torch.cat(size_y).to(device)
            size_logits = logits[:, logits.shape[1] - n_size :]
            size_weight = torch.where(zy > 0, 5.0, 1.0)
            loss = loss + cfg.size_loss_weight * (
                (ce(size_logits, zy, reduction="none") * size_weight).sum() / size_weight[zy >= 0].sum()
            )
        if len(heads) > 1:  # row and column band at every patch
            where = heads[1](hidden[:, 1:]).flatten(0, 1)
            row_logits, column_logits = where[:, :POSITION_BANDS], where[:, POSITION_BANDS:]
            loss = loss + cfg.position_loss_weight * 0.5 * (
                ce(row_logits, rows.repeat(len(images))) + ce(column_logits, columns.repeat(len(images)))
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            named = (sy > 0) & (sy <= len(names))  # patches labelled with a shape name
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
            if n_digit:
                metrics["card_patch_digit_acc"] = (digit_logits[card].argmax(-1) == dy[card]).float().mean()
            if n_size:
                sized = zy > 0
                metrics["shape_patch_size_acc"] = (size_logits[sized].argmax(-1) == zy[sized]).float().mean()
            if len(heads) > 1:
                metrics["patch_row_acc"] = (row_logits.argmax(-1) == rows.repeat(len(images))).float().mean()
                metrics["patch_column_acc"] = (
                    (column_logits.argmax(-1) == columns.repeat(len(images))).float().mean()
                )
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

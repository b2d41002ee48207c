"""Stage 1c: graft where each patch lies onto a trained model's visual tokens, keeping what they say.

A model whose tower was pretrained without the position head (``position_loss_weight`` 0) hands the decoder
tokens that say what a patch shows but hardly where it lies (a linear probe: 28% of the row bands), so
relation questions stay at chance; pretraining the tower again with the head changes every token, and the
decoder has to learn the answer path anew (from scratch with the head: dense 0.452 against 0.796). The graft
fine-tunes only the tower of a loaded model so that a linear head reads each patch's row and column band
from the *projector's output* (what the decoder sees) while that output stays close to the loaded model's
(its squared change relative to its squared norm is the second term), so the decoder keeps working.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.processing_utils import ProcessorMixin

from svlm.zoo.recipe.batches import training_sample
from svlm.zoo.recipe.config import POSITION_BANDS, RecipeConfig
from svlm.zoo.recipe.labels import position_labels
from svlm.zoo.recipe.vision import VISION_MAX_OBJECTS, _log_window

#: sample indices of the graft's images: apart from stage 1's and stage 2's
GRAFT_SAMPLE_OFFSET = 20_000_000


def visual_tokens(model: PreTrainedModel, tower: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """What the decoder receives for ``pixel_values`` through ``tower`` and the model's projector."""
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
    return model.model.multi_modal_projector(hidden[:, 1:])


def graft_positions(
    model: PreTrainedModel, processor: ProcessorMixin, cfg: RecipeConfig, log_every: int = 50
) -> list[dict[str, Any]]:
    """Fine-tune the vision tower for ``cfg.position_graft_steps`` steps (the projector stays frozen): row and
    column bands readable from the visual tokens, the tokens themselves kept as they were."""
    tower = model.model.vision_tower
    reference = copy.deepcopy(tower).eval().requires_grad_(False)  # the tokens the decoder was trained on
    model.model.multi_modal_projector.requires_grad_(False)
    device = next(tower.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    head = torch.nn.Linear(cfg.hidden_size, 2 * POSITION_BANDS)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=gen)
        head.bias.zero_()
    head.to(device)
    tower.requires_grad_(True)
    opt = torch.optim.AdamW(
        [*tower.parameters(), *head.parameters()], lr=cfg.position_graft_lr, weight_decay=0.0
    )
    rows, columns = (t.to(device) for t in position_labels(cfg.image_size))
    ce = torch.nn.functional.cross_entropy
    history: list[dict[str, Any]] = []
    window: list[dict[str, float]] = []
    start = time.perf_counter()
    tower.train()
    for step in range(cfg.position_graft_steps):
        first = GRAFT_SAMPLE_OFFSET + step * cfg.vision_batch_size
        images = [
            training_sample(
                cfg, i, min_objects=cfg.vision_min_objects, max_objects=VISION_MAX_OBJECTS[cfg.benchmark]
            )["image"]
            for i in range(first, first + cfg.vision_batch_size)
        ]
        progress = step / max(1, cfg.position_graft_steps - 1)
        for group in opt.param_groups:
            warm = min(1.0, (step + 1) / 20)
            group["lr"] = (
                cfg.position_graft_lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
            )
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"].to(device)
        tokens = visual_tokens(model, tower, pixel_values)
        with torch.no_grad():
            kept = visual_tokens(model, reference, pixel_values)
        where = head(tokens).flatten(0, 1)
        row_logits, column_logits = where[:, :POSITION_BANDS], where[:, POSITION_BANDS:]
        row_y, column_y = rows.repeat(len(images)), columns.repeat(len(images))
        position_loss = 0.5 * (ce(row_logits, row_y) + ce(column_logits, column_y))
        change = (tokens - kept).pow(2).sum(-1).mean() / kept.pow(2).sum(-1).mean()
        loss = position_loss + cfg.position_graft_keep_weight * change
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            window.append(
                {
                    "loss": float(loss),
                    "relative_change": float(change),
                    "token_cosine": float(torch.nn.functional.cosine_similarity(tokens, kept, dim=-1).mean()),
                    "patch_row_acc": float((row_logits.argmax(-1) == row_y).float().mean()),
                    "patch_column_acc": float((column_logits.argmax(-1) == column_y).float().mean()),
                }
            )
        if (step + 1) % log_every == 0 or step + 1 == cfg.position_graft_steps:
            history.append(_log_window("graft", step, window, start))
            window = []
    tower.eval()
    return history

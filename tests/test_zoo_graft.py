"""Stage 1c (`svlm.zoo.recipe.graft`): positions grafted onto a trained model's visual tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svlm.zoo import recipe
from svlm.zoo.recipe.graft import graft_positions, visual_tokens


def _cfg(**values) -> recipe.RecipeConfig:
    return recipe.RecipeConfig(
        **{**recipe.SCENES, **recipe.SMOKE, "image_size": 112, "data_image_size": 112, **values}
    )


def _graft(keep_weight: float) -> tuple[torch.nn.Module, dict, list, torch.Tensor, torch.Tensor]:
    cfg = _cfg(position_graft_steps=6, position_graft_lr=3e-3, position_graft_keep_weight=keep_weight)
    model, processor = recipe.build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [recipe.training_sample(cfg, i)["image"] for i in range(2)]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        old = visual_tokens(model, model.model.vision_tower, pixels)
    history = graft_positions(model, processor, cfg, log_every=3)
    with torch.no_grad():
        new = visual_tokens(model, model.model.vision_tower, pixels)
    return model, before, history, old, new


def test_graft_trains_the_tower_only_and_logs_what_it_keeps() -> None:
    model, before, history, _, _ = _graft(10.0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.vision_tower.") for k in changed)
    assert [h["step"] for h in history] == [3, 6]
    assert set(history[-1]) >= {"relative_change", "token_cosine", "patch_row_acc", "patch_column_acc"}


def test_keep_weight_holds_the_visual_tokens_in_place() -> None:
    def moved(keep_weight: float) -> float:
        _, _, _, old, new = _graft(keep_weight)
        return float((new - old).pow(2).sum(-1).mean() / old.pow(2).sum(-1).mean())

    held, free = moved(1e4), moved(0.0)
    assert held < free / 3, (held, free)


def test_graft_needs_a_loaded_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="position_graft_steps > 0 keeps a trained model's visual tokens"):
        recipe.check_config(_cfg(position_graft_steps=2))
    with pytest.raises(ValueError, match="projector in init_parts"):
        recipe.check_config(_cfg(position_graft_steps=2, init_from=str(tmp_path), init_parts="vision_tower"))
    with pytest.raises(ValueError, match="must be >= 0"):
        recipe.check_config(_cfg(position_graft_keep_weight=-1.0))

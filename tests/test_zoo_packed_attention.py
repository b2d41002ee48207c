"""The recipe's fast training forward (svlm.zoo.packed_attention) and its training-time visual-token drop.

Both must change the cost of a training step, never its values: the packed-branch attention gives the
hidden states of the dense 4-D mask, and a batch that keeps k visual tokens gives those of the full batch in
which the other visual tokens are hidden as keys (the masked-key view of drop-only pruning).
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from svlm.data import shapes
from svlm.zoo import train_default as recipe
from svlm.zoo.packed_attention import PACKED_IMPLEMENTATION, PackedLayout, packed_attention


@pytest.fixture(scope="module")
def smoke_model():
    cfg = recipe.RecipeConfig(**{**recipe.SMOKE, "num_layers": 3})
    model, processor = recipe.build_model(cfg)
    return cfg, model.eval(), processor


def _batch(cfg, processor, questions=(3, 1), visual_keep=None):
    samples = [
        shapes.generate_sample(i, "train", image_size=cfg.data_image_size) for i in range(len(questions))
    ]
    qas = [
        recipe.derived_questions(s, k, random.Random(i))
        for i, (s, k) in enumerate(zip(samples, questions, strict=True))
    ]
    batch = recipe.pack(processor, [s["image"] for s in samples], qas, visual_keep=visual_keep)
    return samples, batch


def _real_positions(batch, pad_id: int) -> torch.Tensor:
    return batch.input_ids != pad_id


def test_layout_marks_branches_and_their_causal_masks() -> None:
    layout = PackedLayout.from_spans(5, [[(5, 3), (8, 2)], [(5, 1)]])
    assert layout.branch_index.shape == (2, 2, 3)
    assert layout.branch_index[0, 1, :2].tolist() == [8, 9]
    assert layout.branch_valid.tolist() == [
        [[True, True, True], [True, True, False]],
        [[True, False, False], [False, False, False]],  # one branch only: the second is padding
    ]
    assert layout.own_mask[0, 0, 0].tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]
    assert not layout.own_mask[0, 1, 0, :, 2].any()  # a padding slot is nobody's key


def test_packed_attention_equals_the_dense_mask(smoke_model) -> None:
    """Branches of different lengths and counts per image, padding included: same hidden states."""
    cfg, model, processor = smoke_model
    _, batch = _batch(cfg, processor)
    with torch.no_grad():
        dense = model.model(**batch.model_inputs(), use_cache=False).last_hidden_state
        packed = recipe.packed_hidden_states(model, batch)
    real = _real_positions(batch, processor.tokenizer.pad_token_id)
    torch.testing.assert_close(packed[real], dense[real], atol=1e-5, rtol=1e-5)
    assert model.config.text_config._attn_implementation != PACKED_IMPLEMENTATION  # restored afterwards


def test_packed_attention_gradients_equal_the_dense_mask(smoke_model) -> None:
    cfg, model, processor = smoke_model
    _, batch = _batch(cfg, processor)
    real = _real_positions(batch, processor.tokenizer.pad_token_id)
    grads = []
    for run in (
        lambda: model.model(**batch.model_inputs(), use_cache=False).last_hidden_state,
        lambda: recipe.packed_hidden_states(model, batch),
    ):
        model.zero_grad()
        (run()[real] ** 2).sum().backward()
        grads.append(model.model.language_model.layers[0].self_attn.q_proj.weight.grad.clone())
    model.zero_grad()
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)


def test_packed_attention_runs_only_inside_its_context(smoke_model) -> None:
    cfg, model, processor = smoke_model
    _, batch = _batch(cfg, processor)
    model.config.text_config._attn_implementation = PACKED_IMPLEMENTATION
    try:
        with pytest.raises(RuntimeError, match="packed_attention"):
            model.model(**batch.model_inputs(), use_cache=False)
    finally:
        model.config.text_config._attn_implementation = "sdpa"
    with packed_attention(model.config.text_config, batch.layout):
        assert model.config.text_config._attn_implementation == PACKED_IMPLEMENTATION


def test_dropped_visual_tokens_equal_hiding_them_as_keys(smoke_model) -> None:
    """Keeping k visual tokens (original positions) = the full batch with the others masked as keys."""
    cfg, model, processor = smoke_model
    n_visual = cfg.num_visual_tokens
    keep = torch.stack(
        [
            torch.randperm(n_visual, generator=torch.Generator().manual_seed(i))[:40].sort().values
            for i in range(2)
        ]
    )
    _, full = _batch(cfg, processor)
    _, dropped = _batch(cfg, processor, visual_keep=keep)
    assert dropped.input_ids.shape[1] == full.input_ids.shape[1] - (n_visual - 40)
    hidden = torch.ones(2, n_visual, dtype=torch.bool)
    hidden[torch.arange(2)[:, None], keep] = False
    start = full.image_start
    mask = full.attention_mask.clone()
    mask[:, 0, :, start : start + n_visual] &= ~hidden[:, None, :]
    mask |= torch.eye(mask.shape[-1], dtype=torch.bool)  # hidden tokens still see themselves (no empty rows)
    with torch.no_grad():
        reference = model.model(
            **{**full.model_inputs(), "attention_mask": mask}, use_cache=False
        ).last_hidden_state
        out = recipe.packed_hidden_states(model, dropped)
    # the kept columns of the full sequence, in order: text, kept visual tokens, text, branches
    for i in range(2):
        cols = torch.cat(
            [torch.arange(start), start + keep[i], torch.arange(start + n_visual, full.input_ids.shape[1])]
        )
        real = dropped.input_ids[i] != processor.tokenizer.pad_token_id
        assert dropped.position_ids[i][real].tolist() == full.position_ids[i, cols][real].tolist()
        torch.testing.assert_close(out[i][real], reference[i, cols][real], atol=1e-5, rtol=1e-5)
    # the supervised positions still predict the same answer tokens
    assert dropped.targets.tolist() == full.targets.tolist()
    assert (dropped.input_ids[dropped.target_rows, dropped.target_cols + 1] == dropped.targets).all()


def test_dropped_batches_carry_the_kept_evidence(smoke_model) -> None:
    cfg, _, processor = smoke_model
    cfg = dataclasses.replace(cfg, train_visual_tokens=48, train_visual_until=0.5, steps=4)
    batch = recipe.train_batch(cfg, processor, 0)
    assert batch.visual_keep.shape == (cfg.batch_size, 48)
    assert batch.evidence_masks.shape[1] == 48
    assert batch.evidence_masks.any(-1).all()  # every supervised question keeps its evidence token
    assert recipe.train_batch(cfg, processor, 2).visual_keep is None  # the last half sees every token


def test_kept_visual_tokens_are_the_objects_then_random_background() -> None:
    cfg = recipe.RecipeConfig(train_visual_tokens=64)
    sample = shapes.generate_sample(3, "train", image_size=cfg.data_image_size, min_objects=4, max_objects=5)
    cover = recipe.object_coverage(sample, cfg.image_size, cfg.data_image_size).max(0).values
    keep = recipe.kept_visual_tokens(sample, cfg, torch.Generator().manual_seed(0))
    assert len(keep) == 64 and keep.tolist() == sorted(set(keep.tolist()))
    assert set((cover > 0).nonzero().flatten().tolist()) <= set(keep.tolist())
    again = recipe.kept_visual_tokens(sample, cfg, torch.Generator().manual_seed(0))
    other = recipe.kept_visual_tokens(sample, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(keep, again) and not torch.equal(keep, other)


def test_kept_visual_tokens_always_hold_every_objects_centre() -> None:
    cfg = recipe.RecipeConfig(train_visual_tokens=9)
    sample = shapes.generate_sample(5, "train", image_size=cfg.data_image_size, min_objects=9, max_objects=9)
    keep = recipe.kept_visual_tokens(sample, cfg, torch.Generator().manual_seed(0))
    centres = recipe.centre_tokens(sample, cfg.image_size, cfg.data_image_size)
    assert sorted(keep.tolist()) == sorted(centres)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("train_visual_tokens", 4, r"train_visual_tokens must be 0 \(all\) or between 9 .* and 256 .*got 4"),
        ("train_visual_tokens", 300, r"got 300"),
        ("train_visual_until", 1.5, r"train_visual_until must be a fraction .* got 1.5"),
    ],
)
def test_bad_visual_drop_options_are_named(option: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recipe.check_config(recipe.RecipeConfig(**{option: value}))

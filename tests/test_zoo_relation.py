"""Relation questions looked at one object per layer (``split_types``) and the position readout: the
targets each layer's supervised head gets, the bands it must carry, and the options' checks."""

from __future__ import annotations

import random

import pytest
import torch

from svlm.zoo import train_default as recipe
from svlm.zoo.recipe.attributes import AttributeProbes
from svlm.zoo.recipe.batches import training_sample
from svlm.zoo.recipe.labels import centre_tokens, evidence_tokens, object_coverage, position_labels
from svlm.zoo.recipe.losses import packed_loss, split_evidence

SPLIT = {
    **recipe.SCENES,
    **recipe.SMOKE,
    "image_size": 224,
    "train_visual_tokens": 64,
    "attention_layers": "0,1",
    "question_weights": "relation:8",
    "questions_per_image": 6,
    "lead_steps": 0,
    "split_types": "relation",
}
STEP = 1  # a training batch with relation questions among others


def _relation_sample() -> tuple[dict, str]:
    cfg = recipe.RecipeConfig(**SPLIT)
    for index in range(50):
        sample = training_sample(cfg, index, min_objects=8, max_objects=20)
        for q, _ in recipe.derived_questions(sample, 8, random.Random(index)):
            if recipe.question_type(q, "scenes") == "relation":
                return sample, q
    raise AssertionError("no relation question in 50 training scenes")  # pragma: no cover


def test_split_evidence_names_each_object_in_the_questions_order():
    sample, question = _relation_sample()
    first, second = recipe.evidence_objects(sample, question)
    centres = centre_tokens(sample, 336, 336)
    whole, split = evidence_tokens(sample, [question, question], 336, 336, [False, True])
    assert whole.shape == (576,) and set(whole.nonzero().flatten().tolist()) == {
        centres[first],
        centres[second],
    }
    assert split.shape == (2, 576) and split.dtype == torch.uint8
    cover = object_coverage(sample, 336, 336)
    for row, obj in zip(split, (first, second), strict=True):
        assert (row == 2).nonzero().flatten().tolist() == [centres[obj]]  # the centre, marked
        assert torch.equal(row == 1, (cover[obj] > 0.25) & (torch.arange(576) != centres[obj]))
    assert torch.equal((split == 2).any(0), whole)
    assert int((split[0] > 0).sum()) > 1  # the whole object is the target, not its centre only


def test_packed_split_rows_carry_each_objects_tokens_and_bands():
    cfg = recipe.RecipeConfig(**SPLIT)
    _, processor = recipe.build_model(cfg)
    batch = recipe.train_batch(cfg, processor, STEP)
    assert batch.evidence_split is not None and bool(batch.evidence_split.any())
    assert not bool(batch.evidence_split.all())  # other types stay whole
    types = [t for _, t in batch.evidence_types]
    assert batch.evidence_split.tolist() == [t == "relation" for t in types]
    rows, cols = position_labels(224)
    for m in range(len(batch.evidence_rows)):
        objects = batch.evidence_object_masks[m]
        if not batch.evidence_split[m]:
            assert torch.equal(objects[0], batch.evidence_masks[m]) and torch.equal(objects[1], objects[0])
            assert (batch.evidence_object_bands[m] == -100).all()
            continue
        assert not torch.equal(objects[0], objects[1]) and not (objects[0] & objects[1]).any()
        assert int(batch.evidence_masks[m].sum()) == 2  # the whole evidence: the two centres
        keep = batch.visual_keep[int(batch.evidence_rows[m])]
        for o in range(2):
            centre = keep[batch.evidence_masks[m] & objects[o]]  # back to the full grid
            assert len(centre) == 1
            token = int(centre[0])
            assert batch.evidence_object_bands[m, o].tolist() == [int(rows[token]), int(cols[token])]
    # the answer position looks at the first object at the first layer, the second at later ones; the key word
    # at the first always
    answer, word = batch.evidence_kinds == 0, batch.evidence_kinds == 1
    for step, obj in ((0, 0), (1, 1), (5, 1)):
        targets = split_evidence(batch, step)
        s = batch.evidence_split
        assert torch.equal(targets[s & answer], batch.evidence_object_masks[s & answer][:, obj])
        assert torch.equal(targets[s & word], batch.evidence_object_masks[s & word][:, 0])
        assert torch.equal(targets[~s], batch.evidence_masks[~s])


def test_batches_without_split_types_are_unchanged():
    cfg = recipe.RecipeConfig(**{**SPLIT, "split_types": ""})
    _, processor = recipe.build_model(cfg)
    batch = recipe.train_batch(cfg, processor, STEP)
    assert batch.evidence_split is None and batch.evidence_object_masks is None
    split = recipe.train_batch(recipe.RecipeConfig(**SPLIT), processor, STEP)
    assert torch.equal(batch.evidence_masks, split.evidence_masks)  # the whole evidence is the same union
    assert split_evidence(batch, 1) is None


def test_split_targets_and_position_readout_change_the_loss_and_train_the_heads():
    cfg = recipe.RecipeConfig(**SPLIT)
    model, processor = recipe.build_model(cfg)
    split = recipe.train_batch(cfg, processor, STEP)
    whole = recipe.train_batch(recipe.RecipeConfig(**{**SPLIT, "split_types": ""}), processor, STEP)
    with torch.no_grad():
        one, _ = packed_loss(model, whole, [0, 1], 1.0, [])
        each, _ = packed_loss(model, split, [0, 1], 1.0, [])
    assert float(each) != pytest.approx(float(one), rel=1e-3)  # the relation rows' targets changed
    probes = AttributeProbes(cfg.hidden_size, [0, 1], ("row", "column"))
    stats: dict[str, float] = {}
    read, _ = packed_loss(
        model, split, [0, 1], 1.0, [], stats=stats, position_probes=probes, position_readout_weight=1.0
    )
    assert float(read.detach()) > float(each) + 1.0  # two cross-entropies over 12 bands, near log(12)
    assert {"L0_attended_row", "L0_attended_column", "L1_attended_row", "L1_attended_column"} <= set(stats)
    read.backward()
    assert probes.heads["1"][0].weight.grad.abs().sum() > 0
    value = model.model.language_model.layers[1].self_attn.v_proj.weight.grad
    assert value is not None and value.abs().sum() > 0  # the heads learn to carry the position


def test_split_options_are_checked():
    bad = {
        "split_types \\['left'\\] are not svlm-scenes question types": {"split_types": "left"},
        "position_readout_weight must be >= 0": {"position_readout_weight": -1.0},
        "name them in split_types": {"position_readout_weight": 1.0, "split_types": ""},
    }
    for message, options in bad.items():
        with pytest.raises(ValueError, match=message):
            recipe.check_config(recipe.RecipeConfig(**{**SPLIT, **options}))


def test_smoke_run_with_split_relations(tmp_path):
    log = recipe.train(
        recipe.RecipeConfig(**{**SPLIT, "position_readout_weight": 1.0, "test_samples": 0}), tmp_path / "run"
    )
    assert log["config"]["split_types"] == "relation"
    assert any(k.endswith("attended_row") for k in log["steps"][-1].get("attribute_acc", {}))


def test_coordinate_groups_are_regressions_onto_the_band():
    from svlm.zoo.recipe.attributes import ORDINAL

    assert ORDINAL == {"row_coord", "column_coord"}
    probes = AttributeProbes(4, [0], ("row", "row_coord"))
    assert probes.heads["0"][0].out_features == 12 and probes.heads["0"][1].out_features == 1
    bands = torch.tensor([[0, 3, 11, -100]])  # -100: not asked
    coordinate = torch.where(bands >= 0, bands * 2 / 11 - 1, 5.0)  # a hidden unit that holds the coordinate
    hidden = torch.zeros(1, 4, 4)
    hidden[..., 0] = coordinate
    assert torch.isfinite(probes.loss(0, hidden, torch.stack([bands, bands], -1)))
    head = probes.heads["0"][1]
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, 0] = 1.0
        head.bias.zero_()
    exact = AttributeProbes(4, [0], ("row_coord",))
    exact.heads["0"][0].load_state_dict(head.state_dict())
    assert float(exact.loss(0, hidden, bands[..., None])) == pytest.approx(0.0, abs=1e-10)
    assert exact.accuracy(0, hidden, bands[..., None]) == {"row_coord": 1.0}
    with torch.no_grad():
        head.bias.fill_(2 / 11)  # one band off everywhere
    exact.heads["0"][0].load_state_dict(head.state_dict())
    assert float(exact.loss(0, hidden, bands[..., None])) == pytest.approx(0.5)  # half a squared band
    # bands 0 and 3 read as 1 and 4; band 11 reads as 12, clamped to the last band
    assert exact.accuracy(0, hidden, bands[..., None]) == {"row_coord": pytest.approx(1 / 3)}


def test_position_readout_reads_coordinates_when_asked():
    cfg = recipe.RecipeConfig(**{**SPLIT, "position_readout_groups": "column_coord,row_coord"})
    recipe.check_config(cfg)
    model, processor = recipe.build_model(cfg)
    batch = recipe.train_batch(cfg, processor, STEP)
    probes = AttributeProbes(cfg.hidden_size, [0, 1], ("column_coord", "row_coord"))
    stats: dict[str, float] = {}
    loss, _ = packed_loss(
        model, batch, [0, 1], 1.0, [], stats=stats, position_probes=probes, position_readout_weight=1.0
    )
    assert torch.isfinite(loss) and {"L0_attended_column_coord", "L1_attended_row_coord"} <= set(stats)
    with pytest.raises(ValueError, match="position_readout_groups must name groups of"):
        recipe.check_config(recipe.RecipeConfig(**{**SPLIT, "position_readout_groups": "colour"}))

"""The evidence oracle keeps the tokens of the question's objects (svlm-scenes annotations), meets the budget,
stays out of every-strategy sweeps, and refuses images it has no annotation for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import svlm
from svlm.data import evidence
from svlm.data.scenes import build_scenes_dataset, scene_objects
from svlm.strategies.evidence_oracle import EvidenceOracle
from svlm.testing import tiny_vlm


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm("llava", num_layers=2, image_size=336)


@pytest.fixture(scope="module")
def rows():
    ds = build_scenes_dataset("test", 6, seed=5)
    return [ds[i] for i in range(6)]


def _kept(strategy: EvidenceOracle) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    select = strategy.select

    def spy(ctx, view):
        sel = select(ctx, view)
        for b in range(ctx.batch_size):
            visual = torch.nonzero(view.visual[b] & view.valid[b]).flatten()
            out.append(torch.nonzero(sel.keep[b, visual]).flatten())
        return sel

    strategy.select = spy  # type: ignore[method-assign]
    return out


@torch.no_grad()
def test_keeps_every_evidence_centre_and_meets_the_budget(vlm, rows):
    strategy = EvidenceOracle(budget=64)
    kept = _kept(strategy)
    inputs = vlm.inputs([r["image"] for r in rows], [r["question"] for r in rows])
    sparse = svlm.sparsify(vlm.model, strategy)
    sparse(**inputs)
    grid = 24  # 336 px / 14 px
    for row, keep in zip(rows, kept, strict=True):
        assert len(keep) == 64
        objs = scene_objects(row)
        for j in row["evidence"]:
            x, y = objs[j].centre
            assert int(y / 336 * grid) * grid + int(x / 336 * grid) in set(keep.tolist())
    assert sparse.last_report.budget_per_sample[0] == pytest.approx(64, abs=1)


@torch.no_grad()
def test_prefers_evidence_over_random_fill(vlm, rows):
    """With a budget larger than the evidence, every token the evidence covers is kept."""
    strategy = EvidenceOracle(budget=200)
    kept = _kept(strategy)
    row = rows[0]
    sparse = svlm.sparsify(vlm.model, strategy)
    sparse(**vlm.inputs([row["image"]], [row["question"]]))
    note = evidence.find_note(
        vlm.processor.image_processor([row["image"]], return_tensors="pt")["pixel_values"][0]
    )
    covered = set(torch.nonzero(evidence.evidence_scores(note, 24) > 0).flatten().tolist())
    assert 0 < len(covered) <= 200 and covered <= set(kept[0].tolist())


def test_is_an_oracle_left_out_of_sweeps():
    assert "evidence_oracle" not in svlm.available_strategies()
    assert "evidence_oracle" in svlm.available_strategies(include_oracles=True)
    assert isinstance(svlm.build_strategy("evidence_oracle", budget=64), EvidenceOracle)


@torch.no_grad()
def test_refuses_images_without_annotation(vlm):
    noise = np.random.default_rng(1).integers(0, 255, (336, 336, 3), dtype=np.uint8)
    sparse = svlm.sparsify(vlm.model, "evidence_oracle", budget=64)
    with pytest.raises(LookupError, match="not an svlm-scenes image"):
        sparse(**vlm.inputs([Image.fromarray(noise)], ["What color is the small star?"]))


@torch.no_grad()
def test_runs_under_generate(vlm, rows):
    """``generate`` computes the image features before the first forward: the oracle reads the pixel values
    given to the wrapper (``PrefillContext.request_inputs``)."""
    strategy = EvidenceOracle(budget=64)
    kept = _kept(strategy)
    inputs = vlm.inputs([r["image"] for r in rows[:2]], [r["question"] for r in rows[:2]])
    ids = svlm.sparsify(vlm.model, strategy).generate(**inputs, max_new_tokens=2, do_sample=False)
    assert ids.shape[0] == 2 and [len(k) for k in kept] == [64, 64]

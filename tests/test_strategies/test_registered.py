"""Every registered strategy, on every family: forward and generate at batch 1 and 2, budget met."""

from __future__ import annotations

import pytest
import torch

import svlm

BUDGET = 0.6  # a fraction of each sample's visual tokens: feasible for every strategy on 4-layer models


@pytest.mark.parametrize("name", [n for n in svlm.available_strategies() if n != "dense"])
@pytest.mark.parametrize("batch", [1, 2])
@torch.no_grad()
def test_strategy_runs_and_meets_budget(vlm, images, questions, name, batch):
    inputs = vlm.inputs(images[:batch], questions[:batch])
    sparse = svlm.sparsify(vlm.model, name, budget=BUDGET)
    logits = sparse(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits[:, -1]).all()
    report = sparse.last_report
    n_visual = (inputs["input_ids"] == vlm.model.config.image_token_id).sum(-1).float()
    for b in range(batch):
        target = BUDGET * float(n_visual[b])
        assert report.budget_per_sample[b] == pytest.approx(target, rel=0.06, abs=1.5)
    ids = sparse.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert ids.shape == (batch, inputs["input_ids"].shape[1] + 3)

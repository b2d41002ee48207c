"""The report's analytic FLOPs match what torch counts for the pruned run itself (eager attention)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import svlm


@pytest.mark.parametrize(
    "name,kwargs", [("dense", {}), ("fastv", {"budget": 0.6}), ("sparsevlm", {"budget": 0.6})]
)
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@torch.no_grad()
def test_report_flops_match_flop_counter(make_tiny_vlm, images, questions, family, name, kwargs):
    tiny = make_tiny_vlm(family, attn_implementation="eager")
    inputs = tiny.inputs(images[:1], questions[:1])  # batch 1: no padding slots to disagree about
    sparse = svlm.sparsify(tiny.model, name, **kwargs)
    with FlopCounterMode(display=False) as counter:
        sparse(**inputs, logits_to_keep=1, use_cache=False)
    counted = counter.get_total_flops()
    analytic = sparse.last_report.prefill_flops
    assert analytic == pytest.approx(counted, rel=0.05)
    if name != "dense":
        assert analytic < 0.9 * sparse.last_report.dense_prefill_flops

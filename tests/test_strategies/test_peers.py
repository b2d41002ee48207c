"""Unit checks of the peer strategies' building blocks."""

from __future__ import annotations

import torch

import svlm
from svlm.strategies.divprune import max_min_diverse
from svlm.strategies.pooling import pooled_grid
from svlm.strategies.visionzip import contextual_merge


def test_max_min_diversity_picks_one_point_per_cluster():
    torch.manual_seed(0)
    directions = torch.eye(4) * 10
    points = torch.cat([d + 0.01 * torch.randn(5, 4) for d in directions])
    chosen = max_min_diverse(points, 4)
    assert sorted(int(i) // 5 for i in chosen) == [0, 1, 2, 3]


def test_pooled_grid_keeps_aspect_and_budget():
    assert pooled_grid(24, 24, 64) == (8, 8)
    assert pooled_grid(24, 24, 144) == (12, 12)
    rows, cols = pooled_grid(20, 10, 50)
    assert rows == 2 * cols or abs(rows - 2 * cols) <= 1


def test_contextual_merge_averages_groups():
    features = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    merged, targets, groups = contextual_merge(features, 2)
    assert targets.tolist() == [0, 3]
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3]]
    torch.testing.assert_close(merged[0], features[:2].mean(0))


@torch.no_grad()
def test_cls_attention_matches_clip_attention_weights(make_tiny_vlm, images, questions):
    """The rows-only CLS attention equals row 0 of CLIP's own (eager) attention weights."""
    tiny = make_tiny_vlm("llava", attn_implementation="eager")
    inputs = tiny.inputs(images[:1], questions[:1])
    adapter = svlm.adapter_for(tiny.model)
    layer = adapter.feature_layer()
    captured = {}
    attn = adapter.vision_attention(layer)
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, a, o: captured.__setitem__("q", o)),
        attn.k_proj.register_forward_hook(lambda m, a, o: captured.__setitem__("k", o)),
    ]
    try:
        out = tiny.model.model.vision_tower(inputs["pixel_values"], output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    expected = out.attentions[layer][:, :, 0].mean(1)[:, 1:]
    got = adapter.cls_attention(layer, captured["q"], captured["k"])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_pooling_tokens_are_window_means():
    class Grid:
        def visual_grids(self, inputs, sample):
            return [(4, 4)]

    class Ctx:
        adapter = Grid()
        inputs: dict = {}

    features = torch.arange(16, dtype=torch.float).view(16, 1)
    slots = torch.arange(10, 26)
    tokens, anchors = svlm.build_strategy("pooling", budget=4)._pool_sample(Ctx(), 0, features, slots, 4.0)
    grid = features.view(4, 4)
    expected = [grid[r : r + 2, c : c + 2].mean() for r in (0, 2) for c in (0, 2)]
    assert tokens.view(-1).tolist() == [float(e) for e in expected]
    assert anchors.tolist() == [10, 12, 18, 20]

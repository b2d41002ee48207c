"""SparseVLM: presets, rank rule, raters, recycling, SparseVLM+ options."""

from __future__ import annotations

import pytest
import torch

import svlm
from svlm.strategies.sparsevlm import (
    PRESETS,
    attention_rank,
    batched_ranks,
    density_peak_clusters,
    recycle_tokens,
    scale_layers,
    select_raters,
)


@pytest.fixture(scope="module")
def deep_llava():
    # 32 layers like LLaVA-1.5-7B (and 576 visual tokens), narrow so that it stays fast.
    return svlm.testing.tiny_vlm("llava", num_layers=32, hidden_size=32, num_attention_heads=2)


@pytest.mark.parametrize(("version", "expected"), [("v1.5", (309, 204, 113)), ("v2", PRESETS["v2"][192])])
@torch.no_grad()
def test_presets_reproduce_reference_counts_on_32_layers(deep_llava, images, questions, version, expected):
    """v1.5 keeps the table's count and adds the recycled clusters (300 + 9, 200 + 4, 110 + 3); v2 does not
    recycle."""
    sparse = svlm.sparsify(deep_llava.model, "sparsevlm", preset=192, version=version)
    sparse(**deep_llava.inputs(images[:1], questions[:1]))
    visual = sparse.last_report.visual_tokens[0]
    assert visual[:3] == [576, 576, 576]
    assert (visual[3], visual[7], visual[16]) == expected
    assert visual[31] == expected[2]
    if version == "v1.5":  # the README's numbers: output-counted (paper) vs input-counted budget
        assert sparse.last_report.budget_output == pytest.approx(192.03, abs=0.01)
        assert sparse.last_report.budget == pytest.approx(206.5, abs=0.01)


@torch.no_grad()
def test_budget_is_met_on_32_layers(deep_llava, images, questions):
    for budget in (192, 128, 64):
        sparse = svlm.sparsify(deep_llava.model, "sparsevlm", budget=budget)
        sparse(**deep_llava.inputs(images[:1], questions[:1]))
        assert sparse.last_report.budget == pytest.approx(budget, abs=1.0)
        assert sparse.last_report.budget_output < sparse.last_report.budget


def test_layers_scale_with_depth():
    assert scale_layers([2, 6, 15], 32) == [2, 6, 15]
    assert scale_layers([2, 6, 15], 16) == [1, 3, 8]
    assert scale_layers([2, 6, 15], 4) == [0, 1, 2]


def test_rank_of_known_matrix_and_count_rule():
    torch.manual_seed(0)
    low_rank = torch.rand(12, 3) @ torch.rand(3, 40)
    assert attention_rank(low_rank) == 3
    strategy = svlm.build_strategy("sparsevlm", rank_scale=9.0, rank_bias=6)
    assert strategy.mode == "rank"
    assert int(3 * strategy.rank_scale + strategy.rank_bias) == 33
    v1 = svlm.build_strategy("sparsevlm", version="v1", preset=128)
    assert (v1.mode, v1.rank_scale, v1.rank_bias, v1.layers) == ("rank", 9.0, 6.0, [2, 6, 15, 19])


def test_batched_ranks_match_each_sample_alone():
    torch.manual_seed(0)
    a = torch.rand(7, 3) @ torch.rand(3, 20)
    b = torch.rand(5, 5) @ torch.rand(5, 12)
    matrix = torch.zeros(2, 7, 20)
    matrix[0] = a
    matrix[1, :5, :12] = b
    matrix[1, 5:, :] = 9.0  # padding is ignored
    rows = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    cols = torch.tensor([[True] * 20, [True] * 12 + [False] * 8])
    assert batched_ranks(matrix, rows, cols).tolist() == [attention_rank(a), attention_rank(b)] == [3, 5]


@torch.no_grad()
def test_rank_rule_sets_counts(tiny, images, questions):
    sparse = svlm.sparsify(
        tiny.model,
        "sparsevlm",
        rank_scale=2.0,
        rank_bias=1,
        version="v1",
        recycle=False,
        positions="original",
    )
    sparse(**tiny.inputs(images, questions))
    for decision in sparse.last_report.decisions:
        expected = [
            before if r == before else min(int(r * 2.0 + 1), before - 1)
            for r, before in zip(decision.info["rank"].tolist(), decision.visual_before.tolist(), strict=True)
        ]
        assert decision.visual_after.tolist() == expected


@torch.no_grad()
def test_rank_rule_edges_follow_the_reference(tiny, images, questions):
    """The v1 rule can keep no visual token (only the recycled clusters remain); rank == n keeps all."""
    inputs = tiny.inputs(images, questions)
    v1 = {"version": "v1", "positions": "original"}  # renumbering is for 1-D RoPE only (not Qwen's M-RoPE)
    sparse = svlm.sparsify(tiny.model, "sparsevlm", rank_scale=0.0, layers=[2, 6, 15], **v1)
    sparse(**inputs)
    first = sparse.last_report.decisions[0]
    assert first.info["kept"].tolist() == [0, 0]
    assert first.visual_after.tolist() == first.info["recycled"].tolist()
    assert all(n >= 1 for n in first.visual_after.tolist())
    full = svlm.sparsify(tiny.model, "sparsevlm", rank_scale=1.0, layers=[2], **v1)
    strategy = full.strategy
    strategy._ranks = lambda view, probs, step: view.num_visual  # every sample at full rank
    full(**inputs)
    decision = full.last_report.decisions[0]
    assert decision.visual_after.tolist() == decision.visual_before.tolist()
    assert decision.info["recycled"].tolist() == [0, 0]


def test_raters_are_text_after_image_above_mean():
    embeds = torch.zeros(1, 6, 4)
    embeds[0, 1:3] = torch.tensor([1.0, 0, 0, 0])  # visual
    embeds[0, 3] = torch.tensor([5.0, 0, 0, 0])  # text aligned with the image
    embeds[0, 4] = torch.tensor([0, 1.0, 0, 0])
    embeds[0, 5] = torch.tensor([0, 0, 1.0, 0])
    visual = torch.tensor([[0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    raters, flops = select_raters(embeds, visual, torch.ones(1, 6, dtype=torch.bool))
    assert raters.tolist() == [[False, False, False, True, False, False]]
    assert flops == 2 * 2 * 3 * 4


def test_density_peak_clusters_separate_blobs():
    torch.manual_seed(0)
    blobs = torch.cat([torch.randn(10, 8) * 0.05, torch.randn(10, 8) * 0.05 + 5])
    for knn in (3, None):  # None: the reference's k (the number of clusters, the point itself included)
        assignment, centres = density_peak_clusters(
            blobs[None], torch.ones(1, 20, dtype=torch.bool), torch.tensor([2]), knn=knn
        )
        assignment = assignment[0]
        assert len(set(assignment[:10].tolist())) == 1 and len(set(assignment[10:].tolist())) == 1
        assert assignment[0] != assignment[10]
        assert assignment[centres[0]].tolist() == [0, 1]


def test_density_peak_clusters_are_batch_independent():
    torch.manual_seed(0)
    x = torch.randn(2, 30, 8)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, 21:] = False
    clusters = torch.tensor([4, 3])
    together, _ = density_peak_clusters(x, valid, clusters)
    alone, _ = density_peak_clusters(x[1:, :21], valid[1:, :21], clusters[1:])
    assert together[1, :21].tolist() == alone[0].tolist()
    assert together[1, 21:].tolist() == [-1] * 9


def test_recycled_tokens_are_cluster_averages():
    torch.manual_seed(0)
    hidden = torch.randn(2, 30, 8)
    scores = torch.rand(2, 30)
    deleted = torch.zeros(2, 30, dtype=torch.bool)
    deleted[0, 5:25] = True
    deleted[1, 10:14] = True
    merged, anchor, valid, cluster = recycle_tokens(
        hidden, scores, deleted, recycle_ratio=0.5, cluster_ratio=0.3
    )
    for b in range(2):
        n_recycled = int(0.5 * int(deleted[b].sum())) + 1
        assert int((cluster[b] >= 0).sum()) == n_recycled
        assert bool(deleted[b][cluster[b] >= 0].all())
        n_clusters = int(n_recycled * 0.3) + 1
        assert int(valid[b].sum()) == n_clusters
        for c in range(n_clusters):
            slots = (cluster[b] == c).nonzero().flatten()
            torch.testing.assert_close(merged[b, c], hidden[b, slots].mean(0))
            assert int(anchor[b, c]) == int(slots[scores[b, slots].argmax()])


@torch.no_grad()
def test_recycling_runs_meets_counts_and_generates(tiny, images, questions):
    inputs = tiny.inputs(images, questions)
    sparse = svlm.sparsify(tiny.model, "sparsevlm", budget=0.6, recycle=True)  # svlm: merged count towards it
    assert not sparse.strategy.drops_only
    plain = svlm.sparsify(tiny.model, "sparsevlm", budget=0.6)
    plain(**inputs)
    sparse(**inputs)
    assert sparse.last_report.visual_tokens == plain.last_report.visual_tokens
    assert any(int(d.info["recycled"].sum()) > 0 for d in sparse.last_report.decisions)
    out = sparse.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("options", [{"gravity_correction": True}, {"priority_heads": 2}])
@torch.no_grad()
def test_sparsevlm_plus_options_change_scores_but_stay_exact(tiny, images, questions, options):
    from svlm.testing.oracle import oracle_logits

    inputs = tiny.inputs(images, questions)
    plain = svlm.sparsify(tiny.model, "sparsevlm", budget=0.6, gravity_correction=False, priority_heads=0)
    plus = svlm.sparsify(
        tiny.model, "sparsevlm", budget=0.6, **{"gravity_correction": False, "priority_heads": 0, **options}
    )
    plain(**inputs)
    out = plus(**inputs).logits
    report = plus.last_report
    assert report.visual_tokens == plain.last_report.visual_tokens
    last = report.info.num_layers - 1
    assert any(
        not torch.equal(report.positions(last, b), plain.last_report.positions(last, b)) for b in range(2)
    )
    ref = oracle_logits(tiny.model, inputs, report)
    for b in range(2):
        pos = report.positions(last, b)
        torch.testing.assert_close(out[b, pos], ref[b, pos], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_renumbered_positions_are_refused_for_mrope_and_original_positions_run(
    make_tiny_vlm, images, questions
):
    qwen = make_tiny_vlm("qwen2_vl")
    inputs = qwen.inputs(images, questions)
    with pytest.raises(NotImplementedError, match="3-D M-RoPE.*positions='original'"):
        svlm.sparsify(qwen.model, "sparsevlm", version="v1.5", budget=0.5)(**inputs)
    sparse = svlm.sparsify(qwen.model, "sparsevlm", version="v1.5", budget=0.5, positions="original")
    sparse(**inputs)
    assert sparse.last_report.budget < sparse.last_report.visual_tokens[0][0]


def test_bad_arguments_are_named():
    with pytest.raises(
        ValueError, match=r"No SparseVLM v2 preset for 100 tokens; valid: \[64, 96, 128, 192\]"
    ):
        svlm.build_strategy("sparsevlm", preset=100)
    with pytest.raises(ValueError, match="Unknown SparseVLM version 'v3'"):
        svlm.build_strategy("sparsevlm", version="v3")
    with pytest.raises(ValueError, match=r"No SparseVLM v1 preset for 96 tokens; valid: \[64, 128, 192\]"):
        svlm.build_strategy("sparsevlm", version="v1", preset=96)
    with pytest.raises(ValueError, match="Unknown positions 'kept'; valid: renumber, original"):
        svlm.build_strategy("sparsevlm", positions="kept")

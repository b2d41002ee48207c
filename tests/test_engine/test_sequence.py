"""Gather planning: kept order, merged insertion, left padding."""

from __future__ import annotations

import torch

from svlm.engine.sequence import TokenSequence, apply_plan, plan_gather


def make_seq(valid: list[list[bool]], visual: list[list[bool]]) -> TokenSequence:
    valid_t = torch.tensor(valid, dtype=torch.bool)
    b, n = valid_t.shape
    table = torch.arange(n, dtype=torch.float).view(1, n, 1).expand(b, n, 2)
    return TokenSequence(
        origin=torch.arange(n).expand(b, n),
        visual=torch.tensor(visual, dtype=torch.bool),
        valid=valid_t,
        cos=table,
        sin=table,
    )


def test_kept_slots_stay_in_order_and_batch_is_left_padded():
    seq = make_seq([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], [[0, 1, 1, 1, 0], [0, 1, 1, 1, 0]])
    keep = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 0, 0, 1]], dtype=torch.bool)
    index, valid = plan_gather(seq, keep, None)
    assert index.tolist()[0] == [0, 1, 3, 4]
    assert valid.tolist()[1] == [False, False, True, True]
    assert index[1, 2:].tolist() == [1, 4]


def test_merged_tokens_go_after_last_kept_visual_with_anchor_positions():
    seq = make_seq([[1, 1, 1, 1, 1]], [[0, 1, 1, 1, 0]])
    keep = torch.tensor([[1, 1, 0, 0, 1]], dtype=torch.bool)
    merged = torch.full((1, 2, 3), 7.0)
    merged_valid = torch.tensor([[True, True]])
    index, valid = plan_gather(seq, keep, merged_valid)
    assert index.tolist() == [[0, 1, 5, 6, 4]]
    hidden = torch.arange(5, dtype=torch.float).view(1, 5, 1).expand(1, 5, 3)
    new, new_hidden = apply_plan(seq, hidden, index, valid, merged, torch.tensor([[3, 2]]))
    assert new.origin.tolist() == [[0, 1, -1, -1, 4]]
    assert new.visual.tolist() == [[False, True, True, True, False]]
    assert new.cos[0, :, 0].tolist() == [0, 1, 3, 2, 4]
    assert new_hidden[0, 2].tolist() == [7.0, 7.0, 7.0]


def test_pad_to_bucket_adds_padding_slots_on_the_left():
    from svlm.engine.sequence import pad_to_bucket

    b, n, d = 2, 5, 4
    valid = torch.tensor([[True] * 5, [False, True, True, True, True]])
    seq = TokenSequence(
        origin=torch.arange(n).expand(b, n),
        visual=torch.zeros(b, n, dtype=torch.bool),
        valid=valid,
        cos=torch.ones(b, n, d),
        sin=torch.ones(b, n, d),
    )
    hidden = torch.randn(b, n, 8)
    padded, padded_hidden = pad_to_bucket(seq, hidden, 4)
    assert padded.length == 8 and padded_hidden.shape == (b, 8, 8)
    assert not padded.valid[:, :3].any() and torch.equal(padded.valid[:, 3:], valid)
    assert (padded.origin[:, :3] == -1).all() and torch.equal(padded.origin[:, 3:], seq.origin)
    assert torch.equal(padded_hidden[:, 3:], hidden) and not padded_hidden[:, :3].any()
    assert padded.padded and torch.equal(padded.visual_counts(), seq.visual_counts())
    assert pad_to_bucket(seq, hidden, 5)[0] is seq and pad_to_bucket(seq, hidden, 0)[0] is seq

"""svlm.journal: the weights fingerprint, record validation and checksums, the header check."""

from __future__ import annotations

import copy

import pytest
import torch

from svlm.journal import (
    STAT_KEYS,
    Journal,
    JournalMismatch,
    record_checksum,
    validate_record,
    weights_fingerprint,
)
from svlm.testing import tiny_vlm


def test_weights_fingerprint_follows_the_weights():
    model = tiny_vlm("llava").model
    first = weights_fingerprint(model)
    assert weights_fingerprint(tiny_vlm("llava").model) == first  # the same weights, loaded again
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).mul_(1.5)
    assert weights_fingerprint(changed) != first
    assert weights_fingerprint(changed.to(torch.bfloat16)) != weights_fingerprint(model)  # dtype matters


def _record(**stats) -> dict:
    base = dict.fromkeys(STAT_KEYS, 0.0) | {"samples": 2.0, "visual_samples": 2.0, "batches": 1.0}
    base.update(visual_tokens=100.0, budget=60.0, prefill_flops=5.0, dense_prefill_flops=10.0)
    record = {
        "version": 2,
        "point": "p",
        "batch": "b",
        "label": "x",
        "ids": ["a", "b"],
        "answers": ["1", "2"],
    }
    record["stats"] = base | stats
    record["checksum"] = record_checksum(record)
    return record


@pytest.mark.parametrize(
    ("stats", "reason"),
    [
        ({"samples": -25.0}, "not finite non-negative numbers ({'samples': -25.0})"),
        ({"samples": 3.0}, "2 answers for samples=3"),
        ({"budget": float("nan")}, "not finite non-negative"),
        ({"prefill_flops": 1e30}, "2x the dense"),
        ({"budget": 500.0}, "exceeds the visual tokens"),
        ({"batches": 2.0}, "batches=2.0"),
        ({"visual_samples": 3.0}, "visual_samples=3.0 > samples=2.0"),
    ],
)
def test_out_of_range_records_are_rejected(stats, reason):
    assert validate_record(_record()) is None
    assert reason in validate_record(_record(**stats))


def test_edited_records_fail_their_checksum():
    record = _record()
    record["answers"] = ["yes", "yes"]
    assert "checksum mismatch" in validate_record(record)
    del record["stats"]
    assert "field 'stats'" in validate_record(record)


def test_resume_refuses_other_determinants_naming_them(tmp_path):
    journal = Journal(
        tmp_path, determinants={"weights": "aaa", "dtype": "torch.float32", "data": {"seed": 0}}
    )
    journal.add(_record() | {"checksum": None})
    journal.close()
    with pytest.raises(
        JournalMismatch, match=r"data.seed: 0 in the journal, 1 now; weights: 'aaa' in the journal, 'bbb' now"
    ):
        Journal(
            tmp_path,
            resume=True,
            determinants={"weights": "bbb", "dtype": "torch.float32", "data": {"seed": 1}},
        )
    same = Journal(
        tmp_path, resume=True, determinants={"weights": "aaa", "dtype": "torch.float32", "data": {"seed": 0}}
    )
    assert len(same.records) == 1


@pytest.mark.gpu
def test_weights_fingerprint_is_the_same_on_the_gpu():
    model = tiny_vlm("llava").model
    assert weights_fingerprint(copy.deepcopy(model).cuda()) == weights_fingerprint(model)

"""Schedule files: atomic YAML/JSON round trip, loading into SparseVLM, clear errors."""

from __future__ import annotations

import pytest
import torch

import svlm
from svlm.calibrate.schedule import ScheduleError, load_schedule, read_schedule, save_schedule
from svlm.strategies.sparsevlm import SparseVLM

PARAMS = {
    "layers": [2, 6, 15],
    "rank_scale": [1.25, 0.5, 0.0],
    "rank_bias": [3.0, 1.5, 4.0],
    "rank_rtol": [0.001, 0.01, 0.1],
}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    metrics = {"budget_target": 64.0, "calibration": {"counts_per_step": [40.0, 12.5, 4.0]}}
    path = save_schedule(tmp_path / f"schedule{suffix}", "sparsevlm", PARAMS, metrics)
    assert load_schedule(path, strategy="sparsevlm") == PARAMS
    assert read_schedule(path) == {"strategy": "sparsevlm", "params": PARAMS, "metrics": metrics}
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary file left behind
    strategy = SparseVLM(schedule=str(path))
    assert strategy.mode == "rank"
    assert strategy.rank_scale == PARAMS["rank_scale"] and strategy.rank_rtol == PARAMS["rank_rtol"]


def test_loaded_schedule_runs(tmp_path, make_tiny_vlm, images, questions):
    vlm = make_tiny_vlm("llava", num_layers=8, image_size=112)
    path = save_schedule(tmp_path / "s.yaml", "sparsevlm", PARAMS)
    inputs = vlm.inputs(images[:1] * 2, questions)
    from_file = svlm.sparsify(vlm.model, "sparsevlm", schedule=str(path))
    direct = svlm.sparsify(vlm.model, "sparsevlm", **PARAMS)
    with torch.no_grad():
        a, b = from_file(**inputs).logits, direct(**inputs).logits
    torch.testing.assert_close(a, b)
    assert from_file.last_report.visual_tokens == direct.last_report.visual_tokens


def test_errors(tmp_path):
    with pytest.raises(ScheduleError, match="does not exist"):
        load_schedule(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [1, 2]\n")
    with pytest.raises(ScheduleError, match="mapping"):
        load_schedule(bad)
    other = save_schedule(tmp_path / "o.yaml", "fastv", {"budget": 64})
    with pytest.raises(ScheduleError, match="not 'sparsevlm'"):
        load_schedule(other, strategy="sparsevlm")

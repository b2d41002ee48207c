"""The GPU check's measurement module runs end to end on CPU (tiny model, toy kernel shape)."""

from __future__ import annotations

import json

import svlm
from svlm import selection_cost


def test_tiny_run_writes_every_row(tmp_path):
    assert selection_cost.main(["--out", str(tmp_path), "--tiny", "--batches", "1", "--repeats", "1"]) == 0
    data = json.loads((tmp_path / "selection_cost.json").read_text())
    rows = data["selection"]
    assert data["failed"] == []
    expected = {name for name in svlm.available_strategies() if name != "dense"}
    assert {r["strategy"] for r in rows if "share" in r} == expected
    assert all(r["share"] >= 0 and r["selection_ms"] >= 0 for r in rows if "share" in r)
    (kernel,) = data["kernel"]
    assert kernel["auto_choice"] == "reference" and kernel["reference_max_error"] == 0.0

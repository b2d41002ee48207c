"""The pytest-free GPU acceptance check runs on CPU (one family, a few strategies)."""

from __future__ import annotations

import json

from svlm.testing import device_check


def test_device_check_writes_rows(tmp_path):
    argv = ["--out", str(tmp_path), "--device", "cpu", "--families", "llava", "--dtypes", "float32"]
    assert device_check.main([*argv, "--strategies", "random,pooling"]) == 0
    data = json.loads((tmp_path / "device_check.json").read_text())
    assert data["failed"] == 0 and data["checked"] == 2
    random_row = data["rows"][0]
    assert random_row["oracle_error"] < 1e-4 and random_row["batch_vs_alone_error"] < 1e-3

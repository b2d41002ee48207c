import csv
import json
import math
import os
import stat

import pytest
import torch

from svlm.results import (
    atomic_open,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    csv_columns,
    jsonable,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_respects_the_umask(tmp_path, umask):
    """Result files get the mode a plain open() gives (0644 under umask 022), not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        text = atomic_write_text(tmp_path / "t.txt", "x")
        with atomic_open(tmp_path / "b.png", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    for path in (text, tmp_path / "b.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_atomic_open_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write('{"half": ')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_open_rejects_append(tmp_path):
    with pytest.raises(ValueError, match="'w' or 'wb'"), atomic_open(tmp_path / "x", "a"):
        pass


def test_jsonable_strict():
    obj = {"t": torch.tensor([1.0, 2.0]), "nan": math.nan, "inf": -math.inf, 3: (1, 2), "s": torch.tensor(4)}
    assert jsonable(obj) == {"t": [1.0, 2.0], "nan": None, "inf": None, "3": [1, 2], "s": 4}


def test_csv_rows_and_columns(tmp_path):
    rows = [{"b": 1, "a": math.nan}, {"a": 2.5, "c": [1, 2], "label": "x"}]
    assert csv_columns(rows, first=("label", "missing")) == ["label", "b", "a", "c"]
    path = atomic_write_csv(tmp_path / "t.csv", rows, csv_columns(rows, first=("label",)))
    with open(path) as f:
        got = list(csv.DictReader(f))
    assert got == [
        {"label": "", "b": "1", "a": "", "c": ""},
        {"label": "x", "b": "", "a": "2.5", "c": "[1, 2]"},
    ]

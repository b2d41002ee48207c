import csv
import json
import math

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

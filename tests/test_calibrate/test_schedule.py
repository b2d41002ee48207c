"""Schedule files: atomic YAML/JSON round trip, loading into SparseVLM, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

import svlm
from svlm.calibrate import schedule as schedule_module
from svlm.calibrate.schedule import ScheduleError, load_schedule, model_record, read_schedule, save_schedule
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
    assert read_schedule(path) == {
        "strategy": "sparsevlm",
        "model": None,
        "params": PARAMS,
        "metrics": metrics,
    }
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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"counts": [-5, 10, 4], "rank_scale": None}, "counts must be integers 0..576; bad value -5"),
        ({"counts": [600, 10, 4], "rank_scale": None}, "bad value 600"),
        (
            {"rank_scale": [-1.0, 0.5, 0.2]},
            "rank_scale must be a finite number >= 0 (or one per layer); bad value -1.0",
        ),
        ({"rank_scale": [math.nan, 0.5, 0.2]}, "bad value nan"),
        ({"rank_bias": [math.inf, 0.0, 0.0]}, "rank_bias must be a finite number"),
        ({"rank_scale": [1.0, 0.5]}, "rank_scale has 2 entries for 3 layers"),
        ({"layers": [15, 6, 2]}, "layers must be strictly increasing; got [15, 6, 2]"),
        ({"layers": [2, 6, 40]}, "layers must be a non-empty list of pruning layers 0..30"),
        ({"layers": [2, 6, True]}, "layers must be a non-empty list"),
        ({"rank_scale": [0.0, 0.5, 0.2], "rank_bias": 0.0}, "keeps no token on some layer"),
        ({"rank_rtol": -0.1}, "rank_rtol must be a finite number >= 0"),
        ({"budget": True, "rank_scale": None}, "budget=True is a bool"),
        ({"knn": 3}, "unknown parameters ['knn']"),
    ],
)
def test_every_value_is_checked_naming_the_bad_one(tmp_path, monkeypatch, change, message):
    params = {k: v for k, v in {**PARAMS, **change}.items() if v is not None}
    with pytest.raises(ScheduleError, match="s.yaml") as info:  # never written ...
        save_schedule(tmp_path / "s.yaml", "sparsevlm", params)
    assert message in str(info.value) and not (tmp_path / "s.yaml").exists()
    with monkeypatch.context() as m:  # ... and refused when read (a file written without the check)
        m.setattr(schedule_module, "validate_params", lambda *args, **kwargs: None)
        path = save_schedule(tmp_path / "s.yaml", "sparsevlm", params)
    with pytest.raises(ScheduleError, match="s.yaml") as info:
        SparseVLM(schedule=str(path))
    assert message in str(info.value)


def test_truncated_and_edited_files_are_refused(tmp_path):
    path = save_schedule(tmp_path / "s.yaml", "sparsevlm", PARAMS, {"budget_target": 64.0})
    text = path.read_text()
    cut = tmp_path / "cut.yaml"
    cut.write_text(text[: text.index("rank_scale:") + len("rank_scale:")] + "\n")  # cut after the key
    with pytest.raises(ScheduleError, match="truncated"):
        load_schedule(cut)
    data = yaml.safe_load(text)
    del data["checksum"]
    bare = tmp_path / "bare.yaml"  # a hand-written file without checksum: an empty value is still an error
    data["params"]["rank_scale"] = None
    bare.write_text(yaml.safe_dump(data))
    with pytest.raises(ScheduleError, match=r"\['rank_scale'\] have no value"):
        load_schedule(bare)
    edited = tmp_path / "edited.yaml"
    edited.write_text(text.replace("1.25", "2.5"))
    with pytest.raises(ScheduleError, match="does not match its checksum"):
        load_schedule(edited)
    without = tmp_path / "without.yaml"  # an intended edit: drop the checksum line
    without.write_text(edited.read_text().partition("\n")[2])
    assert load_schedule(without)["rank_scale"][0] == 2.5


def test_the_model_a_schedule_was_calibrated_for_is_checked(tmp_path, make_tiny_vlm, images, questions):
    path = save_schedule(tmp_path / "s.yaml", "sparsevlm", PARAMS, model=model_record("zoo:other", 8))
    assert read_schedule(path)["model"] == {"name": "zoo:other", "num_layers": 8}
    four = make_tiny_vlm("llava")  # 4 decoder layers
    sparse = svlm.sparsify(four.model, "sparsevlm", schedule=str(path))
    with pytest.raises(
        ScheduleError, match="calibrated for 'zoo:other' with 8 decoder layers; this model has 4"
    ):
        with torch.no_grad():
            sparse(**four.inputs(images[:1], questions[:1]))
    eight = make_tiny_vlm("llava", num_layers=8, image_size=112)
    with torch.no_grad():
        svlm.sparsify(eight.model, "sparsevlm", schedule=str(path))(**eight.inputs(images[:1], questions[:1]))


def test_svlm_test_checks_the_schedule_model_when_loading(tmp_path):
    from svlm.module import VLMEvaluator

    def evaluator(record):
        path = save_schedule(tmp_path / f"{record['num_layers']}.yaml", "sparsevlm", PARAMS, model=record)
        point = {"strategy": "sparsevlm", "label": "calibrated", "kwargs": {"schedule": str(path)}}
        return VLMEvaluator(model="tiny:llava", dtype="float32", strategies=[point])

    with pytest.warns(UserWarning, match="calibrated for 'zoo:other', not 'tiny:llava'"):
        evaluator(model_record("zoo:other", 4)).configure_model()
    with pytest.raises(ScheduleError, match="point 'calibrated'.*8 decoder layers; this model has 4"):
        evaluator(model_record("tiny:llava", 8)).configure_model()

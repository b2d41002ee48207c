"""Reliability of `svlm test`: bad input fails early with one clear line, interrupted sweeps resume, reruns
repeat their numbers."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml
from torch.utils.data import DataLoader

import svlm.data
from svlm.calibrate.schedule import ScheduleError, load_schedule
from svlm.cli import is_user_error, main
from svlm.data import VLMDataModule
from svlm.engine.validation import InputError
from svlm.journal import STAT_KEYS, Journal, read_journal
from svlm.module import VLMEvaluator, check_model_name
from svlm.testing import random_image

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]
LATENCY = ("prefill_latency_s", "generate_latency_s")
SWEEP = ["dense", {"strategy": "random", "budget": [64, 16]}]


def _config(
    tmp_path: Path, name: str = "run", *, model: dict | None = None, data: dict | None = None
) -> Path:
    root = tmp_path / name
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(root),
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {"model": "tiny:llava", "max_new_tokens": 2, "strategies": SWEEP, **(model or {})},
        "data": {"benchmark": "shapes", "limit": 6, "batch_size": 2, "image_size": 64, **(data or {})},
        "tradeoff": {"plot": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _points(tmp_path: Path, name: str = "run") -> list[dict]:
    points = json.loads((tmp_path / name / "tradeoff.json").read_text())["points"]
    return [{k: v for k, v in p.items() if k not in LATENCY} for p in points]


def _fails(capsys, args: list[str], code: int, message: str) -> str:
    """``svlm <args>`` exits with ``code`` and one line naming the problem, without a traceback."""
    assert main(args) == code
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    return err


# -- bad input: one line, exit code, before heavy work ------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "code", "message"),
    [
        ({"strategies": ["randm"]}, 2, "Unknown strategy 'randm'. Did you mean 'random'?"),
        ({"model": "tiny:gemma"}, 1, "Unknown tiny model family 'gemma'. Valid: llava, llava_next"),
        ({"strategies": [{"strategy": "fastv", "budget": 0}]}, 2, "budget=0.0 must be a finite number > 0"),
        (
            {"strategies": ["dense", {"strategy": "random", "budget": 1000}]},
            1,
            "Strategy point 'random-1000': budget=1000 is larger than the number of visual tokens (576)",
        ),
        (
            {"strategies": ["dense", {"strategy": "random", "budget": 8, "kwargs": {"layer": 9}}]},
            1,
            "Pruning layers [9] are outside this 4-layer model; valid pruning layers are -1",
        ),
        (
            {"strategies": [{"strategy": "random", "budget": 8, "kwargs": {"seed": "x"}}]},
            2,
            "Strategy 'random' argument 'seed' must be int; got 'x' (str).",
        ),
    ],
    ids=["strategy", "family", "budget<=0", "budget>tokens", "layer>depth", "argument type"],
)
def test_bad_model_settings(tmp_path, capsys, model, code, message):
    _fails(capsys, ["test", "--config", str(_config(tmp_path, model=model))], code, message)
    journal = tmp_path / "run" / "journal" / "rank0.jsonl"
    assert not journal.exists() or journal.read_text() == ""  # failed before any generate


def test_unsupported_model_type_in_a_folder(tmp_path, capsys):
    folder = tmp_path / "gemma"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    config = _config(tmp_path, model={"model": str(folder)})
    _fails(capsys, ["test", "--config", str(config)], 1, "Unsupported model type 'gemma3'. svlm supports")


def test_missing_split_and_empty_data(tmp_path, capsys):
    config = str(_config(tmp_path))
    _fails(capsys, ["test", "--config", config, "--data.split", "tset"], 1, "valid splits: ['test', 'train'")
    empty = tmp_path / "pope.csv"
    empty.write_text("id,question,answer,category\n")
    args = ["--data.benchmark", "pope", "--data.path", str(empty), "--data.cache_dir", str(tmp_path / "hf")]
    _fails(capsys, ["test", "--config", config, *args], 1, f"pope split 'test' from '{empty}' has no samples")


def test_too_few_batches_for_the_processes():
    dm = VLMDataModule("shapes", limit=3, batch_size=2, image_size=32)
    dm.trainer = type("T", (), {"world_size": 4, "global_rank": 0})()
    with pytest.raises(svlm.data.DataError, match=r"3 samples .* make 2 batch\(es\), fewer than the 4 proc"):
        dm.test_dataloader()


def test_settings_fail_at_once_naming_the_valid_values(tmp_path, capsys):
    """Typos and empty values that used to be accepted silently or end in a traceback (issue 28)."""
    config = str(_config(tmp_path))
    err = _fails(capsys, ["test", "--config", config, "--tradeoff.metric", "acuracy"], 2, "'acuracy'")
    assert "Did you mean 'accuracy'? Valid metrics: accuracy, relative_accuracy" in err
    _fails(capsys, ["test", "--config", config, "--model.dtype", "flaot32"], 1, "Unknown dtype 'flaot32'")
    _fails(capsys, ["test", "--config", config, "--model.attn_implementation", "sdpaa"], 1, "'sdpaa'")
    for subcommand, yaml_config in [("test", config), ("fit", str(ROOT / "configs" / "calib.yaml"))]:
        start = time.perf_counter()
        args = [subcommand, "--config", yaml_config, "--model.model", str(tmp_path / "does_not_exist")]
        _fails(capsys, args, 1, f"Model folder '{tmp_path / 'does_not_exist'}' does not exist")
        assert time.perf_counter() - start < 20  # no hub lookup (it took ~29 s)
    assert not (tmp_path / "run" / "tradeoff.csv").exists()


@pytest.mark.parametrize("key", ["max_new_tokens", "cpu_threads_and_batch_size"])
def test_empty_yaml_values_are_named(tmp_path, capsys, key):
    text = _config(tmp_path).read_text()
    if key == "max_new_tokens":
        broken, message = (
            text.replace("max_new_tokens: 2", "max_new_tokens:"),
            "model.max_new_tokens is empty",
        )
    else:  # cpu_threads may be null (torch's default); batch_size may not
        broken = text.replace("batch_size: 2", "batch_size:").replace(
            "model: tiny:llava", "cpu_threads:\n  model: tiny:llava"
        )
        message = "data.batch_size is empty (null); give it a value of type int (default: 8)"
    path = tmp_path / "empty.yaml"
    path.write_text(broken)
    assert yaml.safe_load(broken) != yaml.safe_load(text)
    _fails(capsys, ["test", "--config", str(path)], 2, message)


def test_plotted_metric_missing_from_the_points_fails_after_the_tables(tmp_path, capsys):
    """A `metric/<name>` the benchmark does not compute is only known once the points exist: the tables are
    written first, then the run fails naming the metrics it has."""
    config = str(_config(tmp_path, model={"strategies": ["dense"]}, data={"limit": 2}))
    err = _fails(
        capsys, ["test", "--config", config, "--tradeoff.metric", "metric/vqa_acc"], 1, "'metric/vqa_acc'"
    )
    assert "metric/exact_match" in err
    assert (tmp_path / "run" / "tradeoff.csv").exists()


def test_malformed_config_and_schedule_files(tmp_path, capsys):
    config = _config(tmp_path)
    truncated = tmp_path / "truncated.yaml"
    truncated.write_text(config.read_text()[: len(config.read_text()) // 2] + "  strategies: [dense, {str")
    err = _fails(capsys, ["test", "--config", str(truncated)], 2, "svlm test: error: Problems parsing config")
    assert len(err.splitlines()) < 12  # the message, not the whole usage
    _fails(capsys, ["test", "--config", str(tmp_path / "nope.yaml")], 2, "nope.yaml")

    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("strategy: sparsevlm\nparams: {layers: [2, 6")  # cut off while writing
    with pytest.raises(ScheduleError, match="is not valid YAML"):
        load_schedule(schedule)
    point = {"strategy": "sparsevlm", "budget": 64, "kwargs": {"schedule": str(schedule)}}
    config = _config(tmp_path, model={"strategies": [point]})
    _fails(capsys, ["test", "--config", str(config)], 2, f"Schedule file '{schedule}' is not valid YAML")
    schedule.write_text("- just\n- a list\n")
    _fails(capsys, ["test", "--config", str(config)], 2, "must be a mapping with 'strategy' and 'params'")


class _Batches(VLMDataModule):
    """Shapes batches passed through ``edit`` (a test sets it) to make inputs a processor would not."""

    edit = staticmethod(lambda batch: batch)

    def test_dataloader(self):
        batches = [self.edit(batch) for batch in super().test_dataloader()]
        return DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)


def _edited(monkeypatch, edit) -> None:
    monkeypatch.setattr(_Batches, "edit", staticmethod(edit))
    monkeypatch.setattr(svlm.data, "VLMDataModule", _Batches)


def _no_image_entry(batch):
    batch["conversations"] = [
        [{"role": "user", "content": c[0]["content"][1:]}] for c in batch["conversations"]
    ]
    return batch


def _two_images_first(batch):
    batch["images"][0] = [batch["images"][0], batch["images"][0]]
    content = batch["conversations"][0][0]["content"]
    batch["conversations"][0][0]["content"] = [{"type": "image"}, *content]
    return batch


def _empty_second_image(batch):
    from PIL import Image

    batch["images"][1] = Image.new("RGB", (0, 0))
    return batch


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_no_image_entry, "Sample 0 of the batch has 1 image(s) but its prompt has 0 image entries"),
        (_two_images_first, "The batch mixes samples with different numbers of images (per sample: [2, 1])"),
        (_empty_second_image, "Sample 1 of the batch has an empty image (0x0 pixels)"),
    ],
    ids=["prompt-without-image", "mixed-image-counts", "empty-image"],
)
def test_bad_batches(tmp_path, capsys, monkeypatch, edit, message):
    _edited(monkeypatch, edit)
    _fails(capsys, ["test", "--config", str(_config(tmp_path))], 1, message)


def _tokenize_then(change):
    original = VLMEvaluator.tokenize

    def tokenize(self, batch):
        inputs = original(self, batch)
        change(self, inputs)
        return inputs

    return tokenize


def _nan_pixel(module, inputs):
    inputs["pixel_values"].view(-1)[0] = float("nan")


def _drop_image_token(module, inputs):
    ids = inputs["input_ids"]
    position = (ids[0] == module.vlm.config.image_token_id).nonzero()[0]
    ids[0, position] = module.processor.tokenizer.pad_token_id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_nan_pixel, "pixel_values contain 1 NaN/inf values"),
        (_drop_image_token, "image tokens (per sample: [575]) but the images give 576 visual tokens"),
    ],
    ids=["nan-pixels", "image-token-mismatch"],
)
def test_bad_model_inputs(tmp_path, capsys, monkeypatch, change, message):
    monkeypatch.setattr(VLMEvaluator, "tokenize", _tokenize_then(change))
    err = _fails(capsys, ["test", "--config", str(_config(tmp_path))], 1, message)
    assert "Strategy point 'dense'" in err  # the preflight, before any generate


def test_text_only_batches_run_dense_with_a_warning(tmp_path, monkeypatch):
    def text_only(batch):
        batch["images"] = [None] * len(batch["images"])
        return _no_image_entry(batch)

    _edited(monkeypatch, text_only)
    with pytest.warns(UserWarning, match="no visual tokens: running dense"):
        assert main(["test", "--config", str(_config(tmp_path, data={"limit": 2}))]) == 0
    dense, rnd64, _ = _points(tmp_path)
    assert rnd64["visual_tokens"] == rnd64["budget"] == 0
    assert rnd64["prefill_flops"] == dense["prefill_flops"] == dense["dense_prefill_flops"]


def test_user_errors_are_told_from_bugs():
    with pytest.raises(ValueError) as bug:
        json.loads("{")  # a ValueError from another library keeps its traceback
    assert not is_user_error(bug.value)
    with pytest.raises(ValueError) as user:
        check_model_name("tiny:gemma")
    assert is_user_error(user.value)
    check_model_name("tiny:qwen2_vl?num_layers=2")  # valid names pass


def test_check_images_counts():
    image = random_image(0, size=(32, 32))
    text = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]
    assert VLMEvaluator.check_images({"images": [image, image]}, [with_image, with_image]) == [1, 1]
    assert VLMEvaluator.check_images({"images": [None, None]}, [text, text]) == [0, 0]
    with pytest.raises(InputError, match=r"Sample 1 of the batch has 0 image\(s\) but its prompt has 1"):
        VLMEvaluator.check_images({"images": [image, None]}, [with_image, with_image])


# -- nothing lost: journal, resume, identical reruns ---------------------------------------------------------


def _record(batch: str, answers: list[str]) -> dict:
    n = float(len(answers))
    stats = dict.fromkeys(STAT_KEYS, 0.0) | {"samples": n, "visual_samples": n, "batches": 1.0}
    return {"point": "p", "batch": batch, "label": "p", "ids": None, "answers": answers, "stats": stats}


def test_journal_ignores_torn_lines_and_resumes(tmp_path):
    journal = Journal(tmp_path, rank=0)
    journal.add(_record("b0", ["x"]))
    journal.add(_record("b1", ["y"]))
    journal.close()
    with open(tmp_path / "rank0.jsonl", "a") as f:
        f.write('{"version": 2, "point": "p", "batch": "b2", "ans')  # killed mid-write
    (tmp_path / "rank3.jsonl").write_text("")  # left by an earlier 4-process run
    resumed = Journal(tmp_path, rank=0, world_size=1, resume=True)
    assert set(resumed.records) == {("p", "b0"), ("p", "b1")} and resumed.skipped == 1
    resumed.add(_record("b2", ["z"]))
    resumed.close()
    records, skipped = read_journal(tmp_path)
    assert records[("p", "b2")]["answers"] == ["z"] and skipped == 1  # the torn line stays unreadable
    fresh = Journal(tmp_path, rank=0, world_size=2)
    assert read_journal(tmp_path)[0]  # a fresh run truncates nothing before its first record
    fresh.add(_record("b0", ["w"]))
    fresh.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert read_journal(tmp_path) == ({("p", "b0"): read_journal(tmp_path)[0][("p", "b0")]}, 0)
    assert names == ["header.json", "rank0.jsonl"]  # other ranks' files removed


def _count_generate(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = VLMEvaluator.generate

    def generate(self, index, inputs, seed=None):
        calls.append("hf" if index is None else self.point_configs[index].label)
        return original(self, index, inputs, seed)

    monkeypatch.setattr(VLMEvaluator, "generate", generate)
    return calls


def _interrupt_at(monkeypatch, batch_to_stop: int, ctrl_c: bool) -> None:
    original = VLMEvaluator.evaluate_batch

    def evaluate_batch(self, batch, batch_idx):
        if batch_idx == batch_to_stop:
            if ctrl_c:
                signal.raise_signal(signal.SIGINT)  # a real Ctrl-C: Lightning shuts down and exits 1
            raise RuntimeError("worker crashed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VLMEvaluator, "evaluate_batch", evaluate_batch)


@pytest.mark.parametrize("ctrl_c", [True, False], ids=["ctrl-c", "crash"])
def test_interrupted_sweep_resumes_without_recomputing(tmp_path, monkeypatch, ctrl_c):
    calls = _count_generate(monkeypatch)
    assert main(["test", "--config", str(_config(tmp_path, "full"))]) == 0
    assert len(calls) == 1 + 3 * 3  # warm-up + 3 points x 3 batches

    config = str(_config(tmp_path))
    with monkeypatch.context() as patch:
        _interrupt_at(patch, batch_to_stop=2, ctrl_c=ctrl_c)
        handler = signal.getsignal(signal.SIGINT)
        # Ctrl-C as in a terminal, also where the suite runs in the background (which ignores SIGINT)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with pytest.raises(SystemExit if ctrl_c else RuntimeError):
                main(["test", "--config", config])
        finally:
            signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while shutting down
    assert not (tmp_path / "run" / "tradeoff.csv").exists()  # no partial results
    records, skipped = read_journal(tmp_path / "run" / "journal")
    assert len(records) == 3 * 2 and skipped == 0  # the two finished batches of every point

    calls.clear()
    assert main(["test", "--config", config, "--model.resume", "true"]) == 0
    assert sorted(calls) == ["dense", "dense", "random-16", "random-64"]  # warm-up + the last batch only
    assert _points(tmp_path) == _points(tmp_path, "full")

    # a wider sweep resumes too: only the new point is computed
    calls.clear()
    wider = ["--model.strategies", json.dumps([*SWEEP, {"strategy": "random", "budget": 32}])]
    assert main(["test", "--config", config, "--model.resume", "true", *wider]) == 0
    assert calls == ["random-32"] * 4
    assert _points(tmp_path)[:3] == _points(tmp_path, "full")


def test_rerun_with_the_same_seed_repeats_the_numbers(tmp_path):
    config = str(_config(tmp_path, model={"strategies": ["dense", {"strategy": "fastv", "budget": 0.6}]}))
    assert main(["test", "--config", config]) == 0
    first = _points(tmp_path)
    first_journal = read_journal(tmp_path / "run" / "journal")[0]
    assert main(["test", "--config", config]) == 1  # the folder holds a run: refused, untouched
    assert _points(tmp_path) == first
    assert main(["test", "--config", config, "--overwrite", "true"]) == 0  # everything recomputed
    assert _points(tmp_path) == first
    again = read_journal(tmp_path / "run" / "journal")[0]
    assert {k: r["answers"] for k, r in again.items()} == {k: r["answers"] for k, r in first_journal.items()}
    assert main(["test", "--config", config, "--data.seed", "1", "--overwrite", "true"]) == 0  # other data
    assert [p["samples"] for p in _points(tmp_path)] == [6, 6]
    assert not set(read_journal(tmp_path / "run" / "journal")[0]) & set(first_journal)

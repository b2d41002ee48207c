"""One run, one folder: every output follows the run folder, a second run is refused or replaces the first
only when asked, nothing is lost before the new run has validated, and resume trusts only matching work."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import svlm.models
from svlm import run_folder
from svlm.cli import main
from svlm.journal import HEADER_NAME, read_journal
from svlm.module import VLMEvaluator
from svlm.run_folder import LOCK_NAME, RunFolder, RunFolderError

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]
LATENCY = ("prefill_latency_s", "generate_latency_s")
SWEEP = ["dense", {"strategy": "random", "budget": [0.5]}]
SMALL = ["--data.limit", "4", "--data.batch_size", "2", "--data.image_size", "64"]


def _config(tmp_path: Path, name: str = "run", **model) -> Path:
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(tmp_path / name),
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {"model": "tiny:llava", "max_new_tokens": 2, "strategies": SWEEP, **model},
        "data": {"benchmark": "shapes", "limit": 6, "batch_size": 2, "image_size": 64},
        "tradeoff": {"plot": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _points(folder: Path) -> list[dict]:
    points = json.loads((folder / "tradeoff.json").read_text())["points"]
    return [{k: v for k, v in p.items() if k not in LATENCY} for p in points]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- one folder for everything -----------------------------------------------------------------------------


def test_default_root_dir_moves_every_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the shipped config's own folder (results/demo) would land here
    run = tmp_path / "elsewhere"
    strategies = json.dumps(SWEEP)
    command = ["test", "--config", str(ROOT / "configs" / "demo.yaml"), "--model.model", "tiny:llava"]
    command += ["--data.benchmark", "shapes"]  # small svlm-shapes images keep the tiny run fast
    command += [*SMALL, "--model.strategies", strategies, "--trainer.default_root_dir", str(run)]
    assert main(command) == 0
    assert not (tmp_path / "results").exists()
    for name in (
        "metrics.csv",
        "config.yaml",
        "tradeoff.csv",
        "tradeoff.json",
        "run.json",
        "journal/rank0.jsonl",
    ):
        assert (run / name).is_file(), name
    assert any((run / "overlays").rglob("*.png"))
    assert json.loads((run / "run.json").read_text())["state"] == "finished"
    assert not (run / LOCK_NAME).exists()


def test_a_logger_outside_the_run_folder_is_refused(tmp_path, capsys):
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "x")},
    }
    assert main(["test", "--config", str(_config(tmp_path)), "--trainer.logger", json.dumps(logger)]) == 1
    assert "is not the run folder" in capsys.readouterr().err


# -- two runs, one folder ----------------------------------------------------------------------------------


def test_a_second_run_into_a_busy_folder_names_the_holder(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
        (tmp_path / "run" / LOCK_NAME).write_text(json.dumps(lock))
        assert main(["test", "--config", str(_config(tmp_path))]) == 1
        err = capsys.readouterr().err
        assert f"is in use by another svlm run (pid {holder.pid} on {socket.gethostname()}" in err, err
        assert "2026-01-01T00:00:00" in err
        assert not (tmp_path / "run" / "journal").exists()
    finally:
        holder.kill()
        holder.wait()
    # once its holder is gone the lock is stale: taken over with a message
    assert main(["test", "--config", str(_config(tmp_path))]) == 0
    assert "taking over the lock" in capsys.readouterr().err
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_two_runs_in_one_process_are_refused_too(tmp_path):
    first = RunFolder(tmp_path, "first").open()
    try:
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):
            RunFolder(tmp_path, "second").open()
    finally:
        first.release()
    RunFolder(tmp_path, "third").open().release()


def test_lock_is_exclusive_between_folder_objects(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = RunFolder(tmp_path, "first").open()
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "first"
        info["pid"] = holder.pid  # as if another process held it
        (tmp_path / LOCK_NAME).write_text(json.dumps(info))
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
            RunFolder(tmp_path, "second").open()
    finally:
        holder.kill()
        holder.wait()
    first.release()


# -- a rerun without resume --------------------------------------------------------------------------------


def test_a_rerun_is_refused_unless_overwrite_and_then_replaces_everything(tmp_path, capsys):
    config = str(_config(tmp_path))
    run = tmp_path / "run"
    assert main(["test", "--config", config]) == 0
    first = _files(run)
    other = json.dumps(["dense", {"strategy": "fastv", "budget": 0.6, "label": "other"}])
    capsys.readouterr()
    assert main(["test", "--config", config, "--model.strategies", other]) == 1
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "--overwrite" in err, err
    assert _files(run) == first  # untouched
    assert main(["test", "--config", config, "--model.strategies", other, "--overwrite", "true"]) == 0
    assert [p["label"] for p in _points(run)] == ["dense", "other"]
    assert "random-0.5" not in (run / "metrics.csv").read_text()
    assert not (run / ".svlm-previous").exists()
    config_yaml = yaml.safe_load((run / "config.yaml").read_text())
    assert config_yaml["model"]["strategies"][1]["label"] == "other"


def test_a_bad_argument_leaves_the_earlier_run_untouched(tmp_path, capsys):
    config = str(_config(tmp_path))
    run = tmp_path / "run"
    assert main(["test", "--config", config]) == 0
    first = _files(run)
    too_big = json.dumps(["dense", {"strategy": "random", "budget": 1000}])
    for how in (["--overwrite", "true"], ["--model.resume", "true"]):
        assert main(["test", "--config", config, "--model.strategies", too_big, *how]) == 1
        assert "budget=1000 is larger than the number of visual tokens" in capsys.readouterr().err
        assert _files(run) == first
        assert not (run / ".svlm-previous").exists()


def test_a_killed_replacement_is_undone_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tradeoff.csv").write_text("old\n")
    folder = RunFolder(run, "new", overwrite=True).open()
    assert not (run / "tradeoff.csv").exists()
    (run / "config.yaml").write_text("new\n")  # the new run wrote this, then was killed (no abort)
    folder._locked = False  # a SIGKILL runs no clean-up: the lock file stays behind
    run_folder._HELD.clear()  # (with our pid, but no live RunFolder of this process holds it)
    with pytest.raises(RunFolderError, match="holds an earlier run"):
        RunFolder(run, "third").open()  # the stale lock is taken over; the earlier run is restored first
    assert (run / "tradeoff.csv").read_text() == "old\n" and not (run / "config.yaml").exists()


def test_stale_temporary_files_are_removed_at_the_start(tmp_path):
    (tmp_path / "overlays").mkdir()
    stale = [tmp_path / ".tradeoff.csv.abc123.tmp", tmp_path / "overlays" / ".sample_000.png.x.tmp"]
    for path in stale:
        path.write_text("partial")
    (tmp_path / "notes.tmp").write_text("mine")
    RunFolder(tmp_path, "run", resume=True).open().release()
    assert not any(p.exists() for p in stale)
    assert (tmp_path / "notes.tmp").exists()


# -- resume trusts only matching, intact work --------------------------------------------------------------


def test_resume_refuses_changed_weights(tmp_path, monkeypatch, capsys):
    config = str(_config(tmp_path))
    assert main(["test", "--config", config]) == 0
    first = _files(tmp_path / "run")
    original = svlm.models.load_vlm

    def retrained(*args, **kwargs):
        model, processor, family = original(*args, **kwargs)
        for p in model.parameters():
            p.data.mul_(1.01)
        return model, processor, family

    monkeypatch.setattr("svlm.module.load_vlm", retrained)
    capsys.readouterr()
    assert main(["test", "--config", config, "--model.resume", "true"]) == 1
    err = capsys.readouterr().err
    assert "Cannot resume" in err and "weights:" in err, err
    assert _files(tmp_path / "run") == first


def test_resume_recomputes_edited_records(tmp_path, capsys):
    config = str(_config(tmp_path))
    run = tmp_path / "run"
    assert main(["test", "--config", config]) == 0
    clean = _points(run)
    journal = run / "journal" / "rank0.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    lines[0]["answers"] = ["yes"] * len(lines[0]["answers"])  # answers replaced
    lines[1]["stats"]["samples"] = -25
    lines[2]["stats"]["prefill_flops"] = 1e30
    lines[3]["stats"]["budget"] = float("nan")
    lines[4]["checksum"] = lines[4]["checksum"][::-1]
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert len(read_journal(run / "journal")[0]) == len(lines) - 5
    assert main(["test", "--config", config, "--model.resume", "true"]) == 0
    assert _points(run) == clean


def test_resume_without_a_header_is_refused(tmp_path, capsys):
    config = str(_config(tmp_path))
    assert main(["test", "--config", config]) == 0
    (tmp_path / "run" / "journal" / HEADER_NAME).unlink()
    capsys.readouterr()
    assert main(["test", "--config", config, "--model.resume", "true"]) == 1
    assert "has no valid header.json" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    config = str(_config(tmp_path))
    original = VLMEvaluator.evaluate_batch

    def evaluate_batch(self, batch, batch_idx):
        if batch_idx == 1:
            signal.raise_signal(signal.SIGINT)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VLMEvaluator, "evaluate_batch", evaluate_batch)
    handler = signal.getsignal(signal.SIGINT)
    # Ctrl-C as in a terminal, also where the suite runs in the background (which ignores SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit):
            main(["test", "--config", config])
    finally:
        signal.signal(signal.SIGINT, handler)
    err = capsys.readouterr().err
    assert "Resume with:" in err and f"svlm test --config {config} --model.resume true" in err, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["state"] == "interrupted"
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_ckpt_path_last_without_a_checkpoint(tmp_path):
    assert run_folder.checkpoint_path("last", tmp_path) is None  # an empty folder: a fresh start
    (tmp_path / "metrics.csv").write_text("step\n")  # a run that stopped before its first checkpoint
    with pytest.raises(RunFolderError, match="no .*last.ckpt' to resume"):
        run_folder.checkpoint_path("last", tmp_path)
    with pytest.raises(RunFolderError, match="does not exist"):
        run_folder.checkpoint_path(str(tmp_path / "nope.ckpt"), tmp_path)


def test_two_real_runs_into_one_folder(tmp_path, capsys):
    """The issue's case: a second `svlm test` into the folder of a running one stops, naming it."""
    config = _config(tmp_path)
    command = [sys.executable, "-m", "svlm", "test", "--config", str(config), "--data.limit", "20"]
    env = {k: v for k, v in os.environ.items() if k != "SVLM_IMPORT"}  # plug-ins another test may have left
    first = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        lock = tmp_path / "run" / LOCK_NAME
        for _ in range(1200):
            if lock.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert lock.exists(), first.stderr.read() if first.poll() is not None else "no lock"
        # held still while the second run tries the folder: on an idle machine the first would otherwise
        # finish its few batches before the second gets there (a finished run is refused differently)
        first.send_signal(signal.SIGSTOP)
        try:
            assert first.poll() is None, "the first run ended before the second could try its folder"
            assert main(["test", "--config", str(config)]) == 1
        finally:
            first.send_signal(signal.SIGCONT)
        assert f"in use by another svlm run (pid {first.pid}" in capsys.readouterr().err
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    records, skipped = read_journal(tmp_path / "run" / "journal")
    assert skipped == 0 and len(records) == 2 * 10  # 2 points x 10 batches, nothing overwritten

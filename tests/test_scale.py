"""Scale-out: evaluation under Lightning DDP gives exactly the single-process points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from svlm.cli import main
from svlm.data import VLMDataModule, get_benchmark
from svlm.data.datamodule import BatchShardSampler
from svlm.journal import read_journal
from svlm.metrics import metric_for, update_from_batch
from svlm.module import PointStats

ROOT = Path(__file__).resolve().parents[1]
LATENCY = {"prefill_latency_s", "generate_latency_s", "prefill_latency", "generate_latency", "checksum"}


@pytest.mark.parametrize(("n", "batch_size", "world"), [(7, 2, 2), (8, 2, 3), (5, 5, 1), (9, 4, 3)])
def test_batch_shard_sampler_keeps_whole_batches(n, batch_size, world):
    shards = [list(BatchShardSampler(range(n), batch_size, world, r)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))  # each sample once, no padding
    batches = [list(range(b, min(b + batch_size, n))) for b in range(0, n, batch_size)]
    for rank, shard in enumerate(shards):
        assert [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)] == batches[rank::world]
        assert len(BatchShardSampler(range(n), batch_size, world, rank)) == len(shard)


def test_datamodule_gives_each_rank_whole_global_batches():
    def batches(world: int, rank: int) -> list[list[str]]:
        dm = VLMDataModule("shapes", limit=5, batch_size=2, image_size=32)
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
        return [b["ids"] for b in dm.test_dataloader()]

    single = batches(1, 0)
    assert [len(b) for b in single] == [2, 2, 1]
    assert batches(2, 0) == [single[0], single[2]] and batches(2, 1) == [single[1]]
    dm = VLMDataModule("shapes", limit=5, batch_size=2, image_size=32)
    assert [b["indices"] for b in dm.test_dataloader()] == [[0, 1], [2, 3], [4]]


def _synthetic_batches(benchmark: str, n_batches: int = 5, size: int = 3) -> list[tuple[list[str], dict]]:
    """(predictions, batch) pairs with every kind of outcome; MME image pairs straddle batches (ranks)."""
    cats = list(get_benchmark(benchmark).categories or ["a", "b"])
    out = []
    for b in range(n_batches):
        preds, batch = [], {"answers": [], "categories": [], "image_ids": [], "choices": []}
        for j in range(size):
            k = b * size + j
            if benchmark in ("pope", "mme"):
                truth = ["yes", "no"][k % 2]
                preds.append([truth, "no", "yes", "maybe"][k % 4])
                batch["answers"].append([truth])
            elif benchmark == "vqav2":
                preds.append(["two", "2", "3"][k % 3])
                batch["answers"].append(["2"] * (k % 4) + ["3"] * (10 - k % 4))
            else:
                preds.append(["red", "blue"][k % 2])
                batch["answers"].append(["red"] if k % 3 else ["blue"])
            batch["categories"].append(cats[k % len(cats)])
            batch["image_ids"].append(str(k // 2))
            batch["choices"].append(None)
        out.append((preds, batch))
    return out


@pytest.mark.parametrize("benchmark", ["shapes", "pope", "mme", "vqav2"])
def test_metric_states_reduce_to_the_single_process_values(benchmark):
    """The metrics' DDP reductions (sum / cat, as ``merge_state`` applies them) lose nothing."""
    single, ranks = metric_for(benchmark), [metric_for(benchmark), metric_for(benchmark)]
    stats, rank_stats = PointStats(), [PointStats(), PointStats()]
    for b, (preds, batch) in enumerate(_synthetic_batches(benchmark)):
        update_from_batch(single, preds, batch)
        update_from_batch(ranks[b % 2], preds, batch)
        for s in (stats, rank_stats[b % 2]):
            s.update(samples=len(preds), batches=1, budget=64.5 * len(preds), prefill_flops=1.25e9 * (b + 1))
    for name in ranks[0].keys(keep_base=True):
        ranks[0][name].merge_state(ranks[1][name])
    rank_stats[0].merge_state(rank_stats[1])
    expected = {k: float(v) for k, v in single.compute().items()}
    assert {k: float(v) for k, v in ranks[0].compute().items()} == pytest.approx(expected, rel=1e-6)
    assert any(v > 0 for v in expected.values()) and rank_stats[0].compute() == stats.compute()


def _config(tmp_path: Path) -> Path:
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(tmp_path / "single"),
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "model": "tiny:llava",
            "max_new_tokens": 2,
            "latency_warmup": False,
            "strategies": [
                "dense",
                {"strategy": "random", "budget": 32},
                {"strategy": "fastv", "budget": 0.6},
            ],
        },
        "data": {"benchmark": "shapes", "limit": 6, "batch_size": 2, "image_size": 64},
        "tradeoff": {"plot": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _no_latency(obj):
    if isinstance(obj, dict):
        return {k: _no_latency(v) for k, v in obj.items() if k not in LATENCY}
    if isinstance(obj, list):
        return [_no_latency(v) for v in obj]
    return obj


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_svlm_test_under_ddp_matches_a_single_process(tmp_path):
    config = _config(tmp_path)
    assert main(["test", "--config", str(config)]) == 0

    two = tmp_path / "two"
    command = [sys.executable, "-m", "svlm", "test", "--config", str(config), "--trainer.devices", "2"]
    command += ["--trainer.strategy", "ddp", "--trainer.default_root_dir", str(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # one thread, like this process
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    assert proc.stdout.count("results: ") == 1  # the table is printed once (rank 0)

    single = json.loads((tmp_path / "single" / "tradeoff.json").read_text())["points"]
    ddp = json.loads((two / "tradeoff.json").read_text())["points"]
    assert [(p["samples"], p["batches"]) for p in ddp] == [(6, 3)] * 3  # no padded duplicates
    assert _no_latency(ddp) == _no_latency(single)

    # per-sample answers and costs of every (point, batch) are the same; rank 1 did the middle batch
    one, _ = read_journal(tmp_path / "single" / "journal")
    both, _ = read_journal(two / "journal")
    assert _no_latency(both) == _no_latency(one) and len(one) == 3 * 3
    lines = [len((two / "journal" / f"rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert lines == [2 * 3, 1 * 3]

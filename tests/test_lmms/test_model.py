"""``lmms-eval --model svlm``: registration, batching, refusals, and the offline end-to-end proof.

The proof exports each generated benchmark as a local lmms-eval task, runs lmms-eval's CLI with its shipped
model (dense and SparseVLM) and ``svlm test`` on the same samples, and requires the same accuracy and the
same cost report: svlm-scenes with the default model (22 layers) at budget 64, svlm-shapes with
svlm-shapes-llava at 65, the smallest SparseVLM reaches on its 8 layers (it first prunes after layer 1, so
the first two layers alone average 64.8 visual tokens; 64 is refused).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402

from svlm.data import load_benchmark  # noqa: E402
from svlm.lmms.model import SVLM  # noqa: E402
from svlm.lmms.synthetic_task import doc_to_text, doc_to_visual, write_task  # noqa: E402

BIN = Path(sys.executable).parent
N, BATCH = 24, 8
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_svlm_is_registered_through_the_entry_point():
    assert get_model("svlm") is SVLM


def _requests(n: int, gen_kwargs: dict) -> tuple[list[Instance], dict]:
    rows = load_benchmark("shapes", split="test", limit=n)
    docs = [rows.raw[i] for i in range(n)]
    reqs = [
        Instance(
            request_type="generate_until",
            arguments=(doc_to_text(d), dict(gen_kwargs), doc_to_visual, i, "svlm_shapes", "test"),
            idx=0,
            metadata={"task": "svlm_shapes", "doc_id": i, "repeats": 1},
        )
        for i, d in enumerate(docs)
    ]
    return reqs, {"svlm_shapes": {"test": docs}}


@pytest.fixture(scope="module")
def sparse_lm():
    return SVLM(
        pretrained="zoo:svlm-shapes-llava", strategy="sparsevlm", budget=96, dtype="float32", batch_size=3
    )


def test_batches_answer_like_single_requests(sparse_lm):
    reqs, task_dict = _requests(5, {"max_new_tokens": 4, "until": ["\n"]})
    sparse_lm.task_dict = task_dict
    batched = sparse_lm.generate_until(reqs)  # batches of 3 + 2, left-padded
    sparse_lm.batch_size_per_gpu = 1
    try:
        alone = sparse_lm.generate_until(reqs)
    finally:
        sparse_lm.batch_size_per_gpu = 3
    assert batched == alone and all(batched)
    rep = sparse_lm.task_reports()["svlm_shapes"]
    assert rep["samples"] == 10 and rep["point"] == "sparsevlm-96"
    assert (
        rep["budget"] == pytest.approx(96, abs=0.5)
        and 0 < rep["flops_ratio"] < 1
        and rep["kv_cache_bytes"] > 0
    )


def test_a_task_without_a_limit_gets_the_model_default(sparse_lm):
    reqs, sparse_lm.task_dict = _requests(1, {"max_new_tokens": 1})
    sparse_lm.generate_until(reqs)
    assert sparse_lm.engine.max_new_tokens == 1
    reqs, sparse_lm.task_dict = _requests(1, {})
    sparse_lm.generate_until(reqs)
    assert sparse_lm.engine.max_new_tokens == 16  # not the previous task's limit


def test_refusals_name_the_problem(sparse_lm):
    reqs, sparse_lm.task_dict = _requests(1, {"max_new_tokens": 4, "temperature": 0.7, "do_sample": True})
    with pytest.raises(ValueError, match="decodes greedily"):
        sparse_lm.generate_until(reqs)
    with pytest.raises(NotImplementedError, match="generate_until only"):
        sparse_lm.loglikelihood(reqs)
    with pytest.raises(ValueError, match="batch_size 'auto' is not supported"):
        SVLM(pretrained="tiny:llava", batch_size="auto")
    with pytest.raises(ValueError, match="strategy 'dense' takes no budget"):
        SVLM(pretrained="tiny:llava", budget=64)


def _lmms_eval(task_dir: Path, out: Path, model: str, task: str, model_args: str) -> tuple[float, dict]:
    args = [
        str(BIN / "lmms-eval"), "--model", "svlm", "--model_args",
        f"pretrained={model},dtype=float32,cpu_threads=1,report={out}/svlm_report.json,{model_args}",
        "--include_path", str(task_dir), "--tasks", task, "--batch_size", str(BATCH),
        "--output_path", str(out),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results,) = glob.glob(str(out / "*" / "*_results.json"))
    scores = json.loads(Path(results).read_text())
    report = json.loads((out / "svlm_report.json").read_text())[task]
    assert scores["throughput"]["avg_svlm_budget"] == pytest.approx(report["budget"])  # next to the scores
    return scores["results"][task]["exact_match,none"], report


@pytest.mark.parametrize(
    ("benchmark", "model", "budget"),
    [("scenes", "zoo:svlm-scenes-llava", 64), ("shapes", "zoo:svlm-shapes-llava", 65)],
)
def test_lmms_eval_end_to_end_equals_svlm_test(tmp_path, benchmark, model, budget):
    task_dir = tmp_path / "task"
    task = write_task(task_dir, benchmark, limit=N).stem
    cmd = [
        str(BIN / "svlm"), "test", "--model.model", model, "--model.dtype", "float32",
        "--model.max_new_tokens", "4", "--model.cpu_threads", "1",
        "--model.strategies", f"[dense, {{strategy: sparsevlm, budget: {budget}}}]",
        "--data.benchmark", benchmark, "--data.split", "test", "--data.limit", str(N),
        "--data.batch_size", str(BATCH), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "svlm"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    points = {p["label"]: p for p in json.loads((tmp_path / "svlm" / "tradeoff.json").read_text())["points"]}

    for label, args in (
        ("dense", "strategy=dense"),
        (f"sparsevlm-{budget}", f"strategy=sparsevlm,budget={budget}"),
    ):
        accuracy, report = _lmms_eval(task_dir, tmp_path / label, model, task, args)
        ours = points[label]
        assert accuracy == pytest.approx(ours["accuracy"]), label
        assert report["samples"] == N and report["point"] == label
        for key in ("budget", "budget_output", "flops_ratio", "kv_cache_bytes"):
            assert report[key] == pytest.approx(ours[key], rel=1e-6), (label, key)
    print({label: (p["accuracy"], p["budget"], p["flops_ratio"]) for label, p in points.items()})
    assert points["dense"]["accuracy"] >= 0.5  # the shipped model answers (a trained model, not a random one)

"""``svlm bench``: runs end to end on a tiny model; its arithmetic; the engine fast paths it relies on."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

import svlm
from svlm.bench import ROW_COLUMNS, bench, cache_bytes, efficiency, format_table, paired_speedup
from svlm.engine import session as session_module


def test_speedup_and_efficiency_arithmetic():
    # per-round ratios 2, 4, 3 -> median 3; a drifting round does not drag the median
    assert paired_speedup([2.0, 8.0, 3.0], [1.0, 2.0, 1.0]) == 3.0
    assert paired_speedup([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert math.isnan(paired_speedup([], []))
    # 6x faster while doing 8x fewer FLOPs -> 75% of the FLOPs limit
    assert efficiency(6.0, dense_flops=800.0, sparse_flops=100.0) == pytest.approx(0.75)
    assert efficiency(1.0, 100.0, 100.0) == 1.0
    assert math.isnan(efficiency(2.0, 100.0, 0.0))
    with pytest.raises(ValueError):
        paired_speedup([1.0, 2.0], [1.0])


def test_cache_bytes_counts_keys_and_values(make_tiny_vlm):
    config = make_tiny_vlm("llava").model.config
    cache = DynamicCache(config=config)
    k = torch.zeros(2, 4, 10, 16)
    cache.update(k, k.clone(), layer_idx=0)
    assert cache_bytes(cache) == 2 * k.numel() * 4
    assert cache_bytes(object()) is None


def test_format_table_marks_missing_values():
    text = format_table(
        [{"a": "x", "b": 1.5}, {"a": "yy", "b": float("nan")}], [("a", "A", "{}"), ("b", "B", "{:.1f}")]
    )
    assert text.splitlines() == ["A     B", "x   1.5", "yy    -"]


def test_bench_writes_json_and_csv(tmp_path, capsys):
    out = tmp_path / "bench" / "bench.json"
    rows = bench(
        model="tiny:llava",
        strategies=["dense", "random", "fastv"],
        budgets=[64],
        batch_sizes=[2],
        batch_strategies=["random"],
        max_new_tokens=2,
        repeats=1,
        warmup=0,
        output=out,
        progress=False,
        steady_memory=False,
    )
    data = json.loads(out.read_text())
    assert set(data) == {"meta", "rows", "decoder_ceiling", "decode_floor", "comparison", "notes", "targets"}
    floor = data["decode_floor"]["speed"]  # what a decoding step reads, and how fast this machine reads it
    assert floor["weight_bytes"] > 0 and floor["read_gbps"] > 0
    assert floor["weights_read_ms"] == pytest.approx(1e3 * floor["weight_bytes"] / (floor["read_gbps"] * 1e9))
    ceiling = data["decoder_ceiling"]  # the model's own decoder on 600 vs 24 + 64 tokens, no svlm
    assert (ceiling["full_tokens"], ceiling["kept_tokens"]) == (600, 88)
    assert ceiling["efficiency"] == pytest.approx(ceiling["speedup"] / ceiling["flops_speedup"])
    assert list(ceiling["layer_ms"]) == ["1", "16", "32", "64", "88", "128", "256", "600"]
    assert all(ms > 0 for ms in ceiling["layer_ms"].values())
    assert list(ceiling["linear_ms"]) == list(ceiling["layer_ms"])  # the GEMM share of each layer cost
    assert all(ms > 0 for ms in ceiling["linear_ms"].values())
    labels = [r["label"] for r in data["rows"]]
    assert labels == ["hf", "dense", "random-64", "fastv-64", "hf@b2", "random-64@b2"]
    assert [r["label"] for r in rows] == labels
    by = {r["label"]: r for r in data["rows"]}
    assert "BudgetError" in by["fastv-64"]["error"]  # infeasible on 4 layers: recorded, the run goes on
    hf, random = by["hf"], by["random-64"]
    assert hf["prefill_speedup"] == 1.0 and hf["flops_speedup"] == 1.0 and hf["budget"] == 576
    assert random["budget"] == 64 and random["flops_ratio"] < 0.3
    assert random["efficiency"] == pytest.approx(random["prefill_speedup"] / random["flops_speedup"])
    assert random["flops_speedup"] == pytest.approx(random["dense_prefill_gflops"] / random["prefill_gflops"])
    assert random["scoring_s"] > 0 and random["scoring_share"] == pytest.approx(
        random["scoring_s"] / hf["prefill_s"]
    )
    assert 0 < random["kv_cache_mb"] < hf["kv_cache_mb"] / 4  # measured on the cache decoding starts from
    for row in (hf, random):
        assert 0 < row["prefill_s"] <= row["ttft_s"] <= row["generate_s"]
        assert row["decode_tok_s"] > 0
        assert 0 < row["decode_floor"] < 1  # a tiny model's step is all per-op work, not memory traffic
    assert by["random-64@b2"]["batch_size"] == 2 and by["random-64@b2"]["batch_gain"] > 0
    assert data["meta"]["num_threads"] == 1 and data["meta"]["max_new_tokens"] == 2
    assert any(t["target"].startswith("random-64: prefill speedup") for t in data["targets"])

    with open(out.with_suffix(".csv")) as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == ROW_COLUMNS
        csv_rows = list(reader)
    assert [r["label"] for r in csv_rows] == labels
    assert float(csv_rows[2]["prefill_speedup"]) == pytest.approx(random["prefill_speedup"])
    printed = capsys.readouterr().out
    assert "random-64" in printed and "targets:" in printed and "fastv-64: not run" in printed


def test_bench_rejects_bad_options():
    with pytest.raises(ValueError, match="repeats"):
        bench(model="tiny:llava", repeats=0, progress=False)
    with pytest.raises(ValueError, match="timer"):
        bench(model="tiny:llava", timer="gpu", progress=False)
    with pytest.raises(ValueError, match="compare_keep"):
        bench(model="tiny:llava", compare_keep=25, progress=False)
    with pytest.raises(ValueError, match="Unknown strategy|randm"):
        bench(model="tiny:llava", strategies=["randm"], progress=False)


#: Where `make bench` puts the PyPI package (never into .venv); the real-package tests skip without it.
SPARSEVLM_PATH = Path(__file__).resolve().parents[1] / ".venv-sparsevlm"
needs_pypi_sparsevlm = pytest.mark.skipif(
    not (SPARSEVLM_PATH / "sparsevlm" / "__init__.py").is_file(),
    reason="PyPI sparsevlm not in .venv-sparsevlm (make bench puts it there)",
)


def _comparison(tmp_path, **kwargs) -> dict:
    """A one-round bench of the PyPI comparison (random at keep 0.25 on the tiny Qwen2.5-VL)."""
    out = tmp_path / "bench.json"
    kwargs.setdefault("compare_sparsevlm_path", str(SPARSEVLM_PATH))
    bench(
        model="tiny:llava",
        strategies=["dense"],
        max_new_tokens=2,
        repeats=1,
        warmup=0,
        compare_sparsevlm=True,
        compare_model="tiny:qwen2_5_vl",
        compare_strategies=["random"],
        output=out,
        progress=False,
        steady_memory=False,
        **kwargs,
    )
    return json.loads(out.read_text())


@needs_pypi_sparsevlm
def test_comparison_with_pypi_sparsevlm(tmp_path):
    data = _comparison(tmp_path)
    rows = {r["label"]: r for r in data["comparison"]}
    assert list(rows) == ["hf", "hf-eager", "sparsevlm-pypi", "random-0.25"]
    pypi, ours = rows["sparsevlm-pypi"], rows["random-0.25"]
    assert pypi["speedup_vs_pypi"] == 1.0 and pypi["attn_implementation"] == "eager"
    assert pypi["kv_cache_mb"] < rows["hf"]["kv_cache_mb"]  # it prunes the cache after a dense prefill
    assert ours["budget"] == pytest.approx(144, abs=1) and ours["speedup_vs_pypi"] > 0
    assert any("position 15" in note for note in data["notes"])
    assert "sparsevlm" not in sys.modules  # it ran in a process of its own
    assert data["meta"]["weight_layout"] == "input_major"  # auto on CPU, applied to every model alike


@needs_pypi_sparsevlm
def test_comparison_at_several_output_lengths(tmp_path):
    data = _comparison(tmp_path, compare_new_tokens=[1, 3], weight_layout="native")
    groups = [(r["label"], r["new_tokens"]) for r in data["comparison"]]
    labels = ["hf", "hf-eager", "sparsevlm-pypi", "random-0.25"]
    assert groups == [(label, n) for n in (1, 3) for label in labels]
    for row in data["comparison"]:
        assert row["speedup_vs_pypi"] > 0 and row["generate_speedup"] > 0  # each against its own length
        assert (row["decode_tok_s"] is None or math.isnan(row["decode_tok_s"])) == (row["new_tokens"] == 1)
    targets = [t["target"] for t in data["targets"] if "PyPI" in t["target"]]
    assert targets == [
        f"random-0.25, prefill + {n} new tokens: >= 3x faster than PyPI sparsevlm" for n in (1, 3)
    ]
    assert data["meta"]["weight_layout"] == "native"


def test_scoring_time_is_reported(make_tiny_vlm, images, questions):
    tiny = make_tiny_vlm("llava")
    inputs = tiny.inputs(images[:1], questions[:1])
    sparse = svlm.sparsify(tiny.model, "fastv", k=1, budget=200)
    sparse.generate(**inputs, max_new_tokens=2)
    assert 0 < sparse.last_report.scoring_seconds < 1
    # the session keeps no reference to the call's inputs (KV cache, pixels) once the call returns
    assert sparse._session.call_inputs == {} and sparse._session.ctx is None


def test_scoring_from_cached_keys_equals_recomputed_rotary(make_tiny_vlm, images, questions, monkeypatch):
    """The engine scores from the keys the KV cache holds instead of rotating every key again."""
    tiny = make_tiny_vlm("qwen2_5_vl", num_key_value_heads=2)
    inputs = tiny.inputs(images, questions)
    pairs = []
    attention = session_module.PruningSession._attention

    def both(self, idx, seq, rows, rows_valid, *rest):
        fast = attention(self, idx, seq, rows, rows_valid, *rest)
        pairs.append(self._cached_keys(idx, seq, self.captured[idx]["q"]) is not None)
        with monkeypatch.context() as m:
            m.setattr(session_module.PruningSession, "_cached_keys", lambda *a: None)
            slow = attention(self, idx, seq, rows, rows_valid, *rest)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
        return fast

    monkeypatch.setattr(session_module.PruningSession, "_attention", both)
    svlm.sparsify(tiny.model, "sparsevlm", budget=0.3).generate(**inputs, max_new_tokens=1)
    assert pairs and all(pairs)


def test_linear_cost_ms_times_every_layer_per_pass_and_reports_per_layer() -> None:
    from torch import nn

    from svlm.bench import linear_cost_ms

    calls = []

    layers = [nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8, bias=False)) for _ in range(4)]
    ticks = iter(range(1000))

    def clock() -> float:
        calls.append(1)
        return float(next(ticks))  # each timed pass spans exactly one tick

    result = linear_cost_ms(layers, [1, 5], 3, clock, torch.device("cpu"), torch.float32)
    assert list(result) == ["1", "5"]
    assert result == {"1": pytest.approx(1e3 / 4), "5": pytest.approx(1e3 / 4)}
    assert len(calls) == 2 * 3 * 2  # start and stop of 3 repeats at 2 sizes


def test_bench_help_is_short_and_keeps_its_lines(capsys):
    from svlm.bench import bench_parser

    text = bench_parser().format_help()
    description = text[text.index("Measure") : text.index("options:")]
    assert "Args:" not in description and "compare_keep:" not in description  # not the docstring's wall
    assert len(description.splitlines()) < 15
    assert "\n  svlm bench --config configs/bench.yaml" in description  # examples stay one per line
    assert "--compare_keep" in text  # every option still has its own help


def test_bench_times_fast_execution_modes_against_dense_in_the_same_mode(tmp_path):
    """`executions: [eager, static]`: each mode its own rows, dense of the same mode at every batch size,
    mode_speedup against it; the fast-mode targets appear; eager rows keep their labels."""
    out = tmp_path / "bench.json"
    bench(
        model="tiny:llava",
        strategies=["dense", "random"],
        budgets=[64],
        batch_sizes=[2],
        batch_strategies=["random"],
        executions=["eager", "static"],
        max_new_tokens=2,
        repeats=1,
        warmup=0,
        output=out,
        progress=False,
        steady_memory=False,
        decoder_check=False,
    )
    data = json.loads(out.read_text())
    labels = [(r["label"], r["execution"]) for r in data["rows"]]
    assert labels == [  # one group per mode, timed (and saved) one after the other
        ("hf", "eager"),
        ("dense", "eager"),
        ("random-64", "eager"),
        ("hf@b2", "eager"),
        ("random-64@b2", "eager"),
        ("dense+static", "static"),
        ("random-64+static", "static"),
        ("dense+static@b2", "static"),
        ("random-64+static@b2", "static"),
    ]
    by = {r["label"]: r for r in data["rows"]}
    assert all("error" not in r for r in data["rows"])
    assert by["dense+static"]["mode_speedup"] == 1.0 and by["random-64+static"]["mode_speedup"] > 0
    assert by["random-64+static"]["budget"] == by["random-64"]["budget"] == 64  # padding is not counted
    assert by["random-64+static@b2"]["batch_gain"] > 0  # against random-64+static at batch 1
    fast = ["dense+static", "random-64+static", "random-64+static@b2"]  # those with an eager counterpart
    assert all(by[k]["tokens_match_eager"] == 1.0 for k in fast)  # the same ids as eager
    assert "tokens_match_eager" not in by["random-64"]
    assert data["meta"]["executions"] == ["eager", "static"]
    targets = [t["target"] for t in data["targets"]]
    assert {"target": "fast modes generate eager's tokens (worst row's share)", "value": 1.0} in [
        {k: t[k] for k in ("target", "value")} for t in data["targets"]
    ]
    assert "random-64+static: prefill >= 2.5x faster than dense, same mode" in targets
    assert "random-64+static: decoding >= 0.5 of the memory-bandwidth floor" in targets
    assert not any(t.startswith("random-64+static: prefill speedup / FLOPs") for t in targets)
    with pytest.raises(ValueError, match="executions: unknown mode 'fast'"):
        bench(model="tiny:llava", executions=["fast"], progress=False)

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import svlm
from svlm.cli import main, parse_config, strategies_table

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **model) -> Path:
    results = tmp_path / "results" / "run"
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(results),
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(results), "name": "", "version": ""},
            },
            "callbacks": [{"class_path": "svlm.callbacks.KeptTokenOverlay", "init_args": {"num_samples": 1}}],
        },
        "model": {
            "model": "tiny:llava",
            "max_new_tokens": 2,
            "strategies": ["dense", {"strategy": "random", "budget": [64, 32]}],
            **model,
        },
        "data": {"benchmark": "shapes", "limit": 4, "batch_size": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_parse_config_valid(tmp_path):
    cfg = parse_config(_config(tmp_path))
    assert cfg.model.model == "tiny:llava" and cfg.model.benchmark == "shapes"  # linked from data
    assert cfg.tradeoff.filename == "tradeoff"


def test_parse_config_errors(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'random'"):
        parse_config(_config(tmp_path, strategies=["randm"]))
    with pytest.raises(ValueError, match="unknown argument"):
        parse_config(_config(tmp_path, strategies=[{"strategy": "random", "budget": 8, "kwargs": {"k": 1}}]))
    with pytest.raises(Exception, match="max_new_tokenz"):
        parse_config(_config(tmp_path, max_new_tokenz=3))
    with pytest.raises(FileNotFoundError):
        parse_config(tmp_path / "missing.yaml")


def test_parse_bench_config(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("model: tiny:llava\nbudgets: [64]\nrepeats: 1\n")
    assert parse_config(path).budgets == [64.0]
    path.write_text("model: tiny:llava\nrepeatz: 1\n")
    with pytest.raises(Exception, match="repeatz"):
        parse_config(path)


def test_svlm_test_end_to_end(tmp_path, capsys):
    assert main(["test", "--config", str(_config(tmp_path))]) == 0
    out = tmp_path / "results" / "run"
    printed = capsys.readouterr().out
    assert "random-32" in printed and "exact_match" in printed
    with open(out / "tradeoff.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["dense", "random-64", "random-32"]
    assert [float(r["budget"]) for r in rows] == [576.0, 64.0, 32.0]
    assert json.loads((out / "tradeoff.json").read_text())["points"][0]["strategy"] == "dense"
    assert (out / "tradeoff.png").stat().st_size > 10_000
    assert (out / "config.yaml").exists() and (out / "metrics.csv").exists()
    assert sorted(p.parent.name for p in (out / "overlays").rglob("*.png")) == ["random-32", "random-64"]
    # re-running into the same folder replaces the run only when asked
    assert main(["test", "--config", str(_config(tmp_path)), "--data.limit", "2"]) == 1
    assert main(["test", "--config", str(_config(tmp_path)), "--data.limit", "2", "--overwrite", "true"]) == 0
    with open(out / "tradeoff.csv") as f:
        assert {r["samples"] for r in csv.DictReader(f)} == {"2"}


def test_svlm_bench(tmp_path, capsys):
    output = tmp_path / "bench.json"
    args = ["bench", "--model", "tiny:llava", "--strategies", "[dense, random]", "--budgets", "[64]"]
    assert main([*args, "--repeats", "1", "--max_new_tokens", "1", "--output", str(output)]) == 0
    rows = json.loads(output.read_text())["rows"]
    assert [r["label"] for r in rows] == ["hf", "dense", "random-64"]
    assert rows[2]["budget"] == 64 and rows[2]["flops_ratio"] < 0.3 and rows[0]["prefill_speedup"] == 1.0
    assert "random-64" in capsys.readouterr().out


def test_strategies_helper(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    methods, _, oracles = out.strip().partition("\n\n")
    lines = methods.splitlines()
    assert [line.split()[0] for line in lines] == svlm.available_strategies()
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # every strategy has a description
    assert oracles.splitlines()[0].startswith("Upper bounds, not methods")
    assert [line.split()[0] for line in oracles.splitlines()[1:]] == ["evidence_oracle"]
    assert strategies_table() == out.strip()
    assert main(["strategies", "extra"]) == 2


def test_python_dash_m_svlm():
    proc = subprocess.run(
        [sys.executable, "-m", "svlm", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "test" in proc.stdout and "svlm strategies" in proc.stdout
    assert proc.stdout.startswith("usage: svlm ")  # not `__main__.py`


def test_lightning_tips_and_leafspec_warning_are_silenced():
    """Lines that say nothing about the run: Lightning's install tips and its deprecated LeafSpec use."""
    import logging
    import warnings

    from lightning.pytorch.utilities._pytree import _tree_flatten

    from svlm.cli import quiet_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        _tree_flatten(1)  # Lightning builds a torch LeafSpec here
    assert [str(w.message) for w in caught] == []
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tip = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "💡 Tip: try installing x", None, None)
    other = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "GPU available: False", None, None)
    assert not logger.filter(tip) and logger.filter(other)


def test_cache_out_does_not_touch_the_deprecated_alias(monkeypatch):
    """Reading a model output's cache never goes through transformers' deprecated `past_key_values` alias,
    which logs a warning once per process."""
    import torch
    import transformers.utils.generic as generic
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from svlm.engine.cache import cache_out

    warned = []
    monkeypatch.setattr(generic.logger, "warning_once", lambda msg, *a, **k: warned.append(msg))
    output = CausalLMOutputWithPast(logits=torch.zeros(1, 1, 2))
    assert cache_out(output) is None and warned == []

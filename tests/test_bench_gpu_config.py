"""configs/bench_gpu.yaml: parses, and a CPU-sized copy of it runs end to end, so the GPU run (whose
device time is scarce) cannot fail on a typo or a combination of options no CPU test runs."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import yaml

import svlm.cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "bench_gpu.yaml"
SIZES = {"hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size"}


def _cpu_sized(spec: str) -> str:
    """The same spec at tiny widths (the same depth, so every schedule is as feasible), built on the CPU."""
    family, _, query = spec.partition("?")
    keys = {k: v for k, v in parse_qsl(query) if k not in SIZES and k != "init_device"}
    return f"{family}?{urlencode(keys)}" if keys else family


def _fake_sparsevlm(folder: Path) -> Path:
    (folder / "sparsevlm").mkdir(parents=True)
    (folder / "sparsevlm" / "__init__.py").write_text(
        "def sparsevlm_generate(model, processor, inputs, n_vis, keep_n_vis, max_new_tokens=256, **kw):\n"
        "    return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)\n"
    )
    return folder


def test_gpu_config_names_the_7b_shapes():
    cfg = yaml.safe_load(CONFIG.read_text())
    llava = dict(parse_qsl(cfg["model"].partition("?")[2]))
    qwen = dict(parse_qsl(cfg["compare_model"].partition("?")[2]))
    assert cfg["model"].startswith("tiny:llava?") and cfg["compare_model"].startswith("tiny:qwen2_5_vl?")
    assert llava == {
        "num_layers": "32",
        "hidden_size": "4096",
        "num_attention_heads": "32",
        "intermediate_size": "11008",
        "initializer_range": "0.02",
        "init_device": "cuda",
    }
    assert qwen == {
        "num_layers": "28",
        "hidden_size": "3584",
        "num_attention_heads": "28",
        "num_key_value_heads": "4",
        "intermediate_size": "18944",
        "initializer_range": "0.02",
        "init_device": "cuda",
    }
    assert (cfg["device"], cfg["dtype"]) == ("cuda", "bfloat16")
    assert (cfg["batch_size"], cfg["batch_sizes"]) == (1, [8, 32])
    assert cfg["budgets"] == [192, 128, 64] and cfg["compare_sparsevlm"] is True
    assert cfg["executions"] == ["eager", "cuda_graphs"]


def test_a_cpu_sized_copy_of_the_gpu_config_runs_end_to_end(tmp_path, capsys):
    cfg = yaml.safe_load(CONFIG.read_text())
    out = tmp_path / "bench_gpu.json"
    args = [
        "bench",
        "--config",
        str(CONFIG),
        "--model",
        _cpu_sized(cfg["model"]),
        "--compare_model",
        _cpu_sized(cfg["compare_model"]),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--batch_sizes",
        "[2]",
        "--executions",
        "[eager, static]",  # cuda_graphs replays what static runs (tests/test_engine/test_execution.py)
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--progress",
        "false",
        "--compare_sparsevlm_path",
        str(_fake_sparsevlm(tmp_path / "sparsevlm-env")),
        "--output",
        str(out),
    ]
    assert svlm.cli.main(args) == 0
    data = json.loads(out.read_text())
    labels = [r["label"] for r in data["rows"]]
    expected = ["hf", "dense"] + [
        f"{name}-{budget}" for name in cfg["strategies"] if name != "dense" for budget in cfg["budgets"]
    ]
    pruning = [name for name in cfg["strategies"] if name != "dense"]
    fast = ["dense+static"] + [f"{name}-{budget}+static" for name in pruning for budget in cfg["budgets"]]
    expected += ["hf@b2"] + [f"{name}-64@b2" for name in cfg["batch_strategies"]] + fast
    expected += ["dense+static@b2"] + [f"{name}-64+static@b2" for name in cfg["batch_strategies"]]
    assert labels == expected
    for row in data["rows"]:  # at the GPU model's depth only a schedule's own infeasibility may stop a row
        assert "error" not in row or row["error"].startswith("BudgetError"), row
    assert all("error" not in r for r in data["rows"] if r["batch_size"] > 1)
    compare = [r["label"] for r in data["comparison"]]
    svlm_rows = [f"{s}-0.25" for s in cfg["compare_strategies"]] + [
        f"{s}-0.25+static" for s in cfg["compare_strategies"]
    ]
    assert compare == ["hf", "hf-eager", "sparsevlm-pypi", *svlm_rows]
    assert all("error" not in r for r in data["comparison"])


def test_the_readme_gpu_command_parses():
    """The one-line command README "Speed on a GPU" gives the lead: its bench options all exist."""
    import shlex

    from svlm.bench import bench_parser

    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "svlm bench --config configs/bench_gpu.yaml" in x)
    assert "--target /tmp/sparsevlm .whl/sparsevlm/" in line and "--target /tmp/site .whl/*.whl" in line
    options = line.split("python3 -m svlm bench", 1)[1].split("2>&1")[0].replace('"$OUT', '"/tmp/out')
    cfg = bench_parser().parse_args(shlex.split(options.replace("configs/", f"{ROOT}/configs/")))
    assert cfg.compare_sparsevlm_path == "/tmp/sparsevlm" and str(cfg.output).startswith("/tmp/out/")
    assert cfg.model.endswith("init_device=cuda") and cfg.device == "cuda"

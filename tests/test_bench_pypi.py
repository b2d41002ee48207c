"""The PyPI ``sparsevlm`` comparison runs in a process of its own and never touches the project's venv."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svlm.bench import bench
from svlm.bench.pypi import sparsevlm_missing

ROOT = Path(__file__).resolve().parents[1]

FAKE_GENERATE = """
from kernels.token_scorer import MARKER  # its own top-level `kernels`, as sparsevlm 0.1.3 imports it


def sparsevlm_generate(model, processor, inputs, n_vis, keep_n_vis, max_new_tokens=256, target_layer=2,
                       device="cuda"):
    assert MARKER == "fake sparsevlm kernels", MARKER
    if FAIL:
        raise RuntimeError("fake sparsevlm failed")
    print("noise on stdout must not break the protocol")
    return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
"""


def _fake_sparsevlm(folder: Path, fail: bool = False) -> Path:
    """A folder laid out as ``pip install --target`` leaves sparsevlm 0.1.3: ``sparsevlm/`` and a clashing
    top-level ``kernels/``."""
    (folder / "sparsevlm").mkdir(parents=True)
    (folder / "kernels").mkdir()
    (folder / "sparsevlm" / "__init__.py").write_text(f"FAIL = {fail}\n" + FAKE_GENERATE)
    (folder / "kernels" / "__init__.py").write_text("")
    (folder / "kernels" / "token_scorer.py").write_text('MARKER = "fake sparsevlm kernels"\n')
    return folder


def _run(tmp_path: Path, path: Path, **kwargs) -> dict:
    out = tmp_path / "bench.json"
    bench(
        model="tiny:llava",
        strategies=["dense"],
        max_new_tokens=2,
        repeats=1,
        warmup=0,
        compare_sparsevlm=True,
        compare_model="tiny:qwen2_5_vl",
        compare_strategies=["random"],
        compare_sparsevlm_path=str(path),
        decoder_check=False,
        output=out,
        progress=False,
        steady_memory=False,
        **kwargs,
    )
    return json.loads(out.read_text())


def test_comparison_runs_the_package_in_a_worker_process(tmp_path):
    kernels_before = sys.modules.get("kernels")
    data = _run(tmp_path, _fake_sparsevlm(tmp_path / "env"))
    rows = {r["label"]: r for r in data["comparison"]}
    assert list(rows) == ["hf", "hf-eager", "sparsevlm-pypi", "random-0.25"]
    pypi = rows["sparsevlm-pypi"]
    assert "error" not in pypi, pypi.get("error")
    assert pypi["speedup_vs_pypi"] == 1.0 and 0 < pypi["prefill_s"] <= pypi["generate_s"]
    assert pypi["peak_mem_mb"] >= 0 and rows["random-0.25"]["speedup_vs_pypi"] > 0
    assert any("runs" in note or "fails" in note for note in data["notes"])  # the SDPA probe, in the worker
    # nothing of the package came into this process: not sparsevlm, not its `kernels`
    assert "sparsevlm" not in sys.modules
    assert sys.modules.get("kernels") is kernels_before
    import transformers.integrations.hub_kernels  # noqa: F401  still Hugging Face's


def test_a_failing_package_call_is_recorded_in_its_row(tmp_path):
    data = _run(tmp_path, _fake_sparsevlm(tmp_path / "env", fail=True))
    rows = {r["label"]: r for r in data["comparison"]}
    assert "fake sparsevlm failed" in rows["sparsevlm-pypi"]["error"]
    assert "error" not in rows["random-0.25"]  # the other rows go on


def test_a_missing_package_skips_the_comparison_with_the_command_to_fix_it(tmp_path):
    assert sparsevlm_missing(tmp_path / "nowhere") is not None
    data = _run(tmp_path, tmp_path / "nowhere")
    assert data["comparison"] == []
    assert "pip install --no-deps --target" in data["notes"][0]


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_bench_never_installs_sparsevlm_into_the_project_venv():
    """`make bench` puts the PyPI package (whose top-level `kernels` would overwrite Hugging Face's, which
    transformers imports) into a folder of its own and points the bench at it."""
    venv = "/tmp/some-project-venv"
    lines = subprocess.run(
        ["make", "-n", "-B", "bench", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    commands = [c.strip() for line in lines for c in re.split(r"&&|\|\||;", line)]
    installs = [c for c in commands if "pip install" in c and "sparsevlm" in c]
    assert installs, lines
    for command in installs:
        assert "--target .venv-sparsevlm" in command and f"--target {venv}" not in command, command
    assert any("--compare_sparsevlm_path .venv-sparsevlm" in c for c in commands)

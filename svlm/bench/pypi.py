"""The PyPI ``sparsevlm`` comparison: rows on one Qwen2.5-VL model next to the PyPI package."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from svlm.bench.pypi_worker import PYPI_LABEL
from svlm.bench.rows import make_row
from svlm.bench.runners import Case, cast_pixels, hf_runner, make_inputs, svlm_runner
from svlm.bench.stats import median, paired_speedup
from svlm.bench.timing import Run, Runner
from svlm.engine.layout import set_linear_layout

__all__ = [
    "COMPARE_MODEL",
    "PYPI_LABEL",
    "PypiWorker",
    "RemoteRunner",
    "comparison_notes",
    "comparison_rows",
    "comparison_runners",
    "sparsevlm_missing",
]

#: ~103M-parameter Qwen2.5-VL-shaped random model with 576 visual tokens (the comparison's default).

COMPARE_MODEL = "tiny:qwen2_5_vl?num_layers=32&hidden_size=512&num_attention_heads=8&intermediate_size=1376"


class PypiWorker:
    """A process that runs the PyPI package (:mod:`svlm.bench.pypi_worker`); never imported here.

    It loads its own eager copy of the comparison model (same spec, dtype and seed, so the same weights)
    with the interpreter of this process, and imports ``sparsevlm`` from ``sparsevlm_path`` only there.
    """

    def __init__(self, setup: dict[str, Any], python: str | None = None) -> None:
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [python or sys.executable, "-m", "svlm.bench.pypi_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.info = self._ask(setup)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.process.wait()
            self._log.seek(0)
            tail = "".join(self._log.read().splitlines(keepends=True)[-5:]).strip()
            raise RuntimeError(f"the PyPI sparsevlm worker exited (code {self.process.returncode}): {tail}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"PyPI sparsevlm worker: {answer.get('error')}")
        return answer

    def run(self, new_tokens: int) -> Run:
        return Run(**self._ask({"cmd": "run", "new_tokens": new_tokens})["run"])

    def memory_mb(self, new_tokens: int) -> float:
        return float(self._ask({"cmd": "memory", "new_tokens": new_tokens})["peak_mem_mb"])

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.process.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.process.stdin.flush()
                self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass
class RemoteRunner(Runner):
    """A row timed in the worker process; ``model`` and ``inputs`` are this process's eager copy, used only
    for the row's FLOPs and token counts."""

    worker: PypiWorker | None = None

    def run(self) -> Run:
        assert self.worker is not None
        return self.worker.run(self.new_tokens)

    def memory_mb(self) -> float:
        assert self.worker is not None
        return self.worker.memory_mb(self.new_tokens)


def sparsevlm_missing(path: str | os.PathLike[str]) -> str | None:
    """Why the PyPI package cannot run from ``path``, or None if it is there."""
    if (Path(path) / "sparsevlm" / "__init__.py").is_file():
        return None
    return (
        f"the PyPI package sparsevlm is not in {str(path)!r} (make bench puts it there: "
        f"pip install --no-deps --target {path} sparsevlm==0.1.3)"
    )


def comparison_runners(
    spec: str,
    dtype: str,
    dev: torch.device,
    lengths: Sequence[int],
    keep: float,
    strategies: list[str],
    image_size: int | None,
    question: str,
    layout: str = "native",
    sparsevlm_path: str = ".venv-sparsevlm",
    num_threads: int | None = None,
    timer: str = "wall",
    steady_memory: bool = False,
    executions: Sequence[str] = ("eager",),
) -> tuple[list[Runner], Any, PypiWorker]:
    """Rows on one Qwen2.5-VL model: dense SDPA (reference), dense eager, the PyPI package (in a
    :class:`PypiWorker`, which the caller closes), svlm, once per output length in ``lengths``; every copy
    of the model gets the same weight ``layout``; svlm's rows run in each of ``executions``."""
    from svlm.models import load_vlm

    sdpa, processor, family = load_vlm(spec, dtype, dev, "sdpa")
    if family not in ("qwen2_5_vl", "qwen2_vl"):
        raise ValueError(
            f"compare_model must be a Qwen2.5-VL (or Qwen2-VL) model, as the PyPI sparsevlm package supports "
            f"only those; {spec!r} is a {family!r} model."
        )
    eager, _, _ = load_vlm(spec, dtype, dev, "eager")  # same weights (same files or seed), eager attention
    for copy in (sdpa, eager):
        set_linear_layout(copy, layout)
    inputs = cast_pixels(make_inputs(processor, 1, image_size, question, dev), sdpa)
    worker = PypiWorker(
        {
            "model": spec,
            "dtype": dtype,
            "device": str(dev),
            "layout": layout,
            "image_size": image_size,
            "question": question,
            "keep": keep,
            "sparsevlm_path": str(sparsevlm_path),
            "num_threads": num_threads,
            "timer": timer,
            "steady_memory": steady_memory,
        }
    )
    runners: list[Runner] = []
    for n in lengths:
        case = Case("comparison", sdpa, inputs, dev, 1, int(n), "sdpa")
        eager_case = Case("comparison", eager, inputs, dev, 1, int(n), "eager")
        runners += [
            hf_runner(case),
            hf_runner(eager_case, "hf-eager"),
            eager_case.runner(
                PYPI_LABEL,
                PYPI_LABEL,
                None,
                budget_target=keep,
                token_forward=1,
                kind=RemoteRunner,
                worker=worker,
            ),
        ]
        for mode in executions:  # svlm's rows in every execution mode of the run
            suffix = "" if mode == "eager" else f"+{mode}"
            runners += [
                svlm_runner(case, f"{name}-{keep:g}{suffix}", name, keep, mode) for name in strategies
            ]
    return runners, inputs, worker


def comparison_rows(runners: list[Runner]) -> list[dict[str, Any]]:
    """One group of rows per output length, each against ``hf`` and the PyPI package at that length."""
    rows = []
    for n in dict.fromkeys(r.new_tokens for r in runners):
        rows += _comparison_group([r for r in runners if r.new_tokens == n])
    return rows


def _comparison_group(runners: list[Runner]) -> list[dict[str, Any]]:
    reference = runners[0]
    pypi = next((r for r in runners if r.label == PYPI_LABEL and r.runs), None)
    dense_s = median([x.prefill_s for x in reference.runs])
    rows = []
    for runner in runners:
        row = make_row(runner, reference, dense_s)
        if pypi is not None and runner.runs:
            row["speedup_vs_pypi"] = paired_speedup(
                [x.generate_s for x in pypi.runs], [x.generate_s for x in runner.runs]
            )
            row["prefill_speedup_vs_pypi"] = paired_speedup(
                [x.prefill_s for x in pypi.runs], [x.prefill_s for x in runner.runs]
            )
        rows.append(row)
    return rows


def comparison_notes(
    inputs: Any, runners: list[Runner], keep: float, error: str | None, sdpa: str | None
) -> list[str]:
    if error is not None:
        return [f"PyPI sparsevlm comparison skipped: {error}."]
    if not runners or inputs is None:
        return []
    ids = inputs["input_ids"][0]
    image_id = int(runners[0].model.config.image_token_id)
    positions = (ids == image_id).nonzero().flatten()
    n_vis = int(positions.numel())
    first = int(positions[0]) if n_vis else -1
    notes = [
        f"PyPI sparsevlm: sparsevlm_generate(model, processor, inputs, n_vis={n_vis}, "
        f"keep_n_vis={max(1, round(n_vis * keep))}, max_new_tokens=..., device=...) on an eager copy of the "
        "same model in a process of its own (it reads output_attentions, which only eager attention gives): "
        "a full eager prefill that materialises every layer's attention weights, then the KV cache of every "
        "layer is cut to the kept tokens and generate() re-feeds the last prompt token.",
        f"PyPI sparsevlm scores attention[:, :, n_vis:, :n_vis], i.e. assumes the image tokens open the "
        f"prompt; with this chat template they start at position {first}, so it ranks a window shifted by "
        f"{first} tokens. This does not change its cost (same shapes), only which tokens it keeps.",
        "svlm rows prune inside the prefill (fewer tokens through the layers), at budget = keep share x "
        "visual tokens as the mean over layers; the PyPI package's prefill is dense (dense FLOPs).",
    ]
    if sdpa is not None:
        notes.append(f"PyPI sparsevlm on the SDPA model (probed once in this run): {sdpa}")
    return notes

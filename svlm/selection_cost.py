"""What selection costs next to the prefill it shortens, and whether the rows-attention kernel pays.

``python -m svlm.selection_cost --out DIR`` builds LLaVA-1.5-7B's decoder shape (random weights, built on
the GPU), then for every registered strategy at budgets 192/128/64 and batch sizes 1 and 8 measures
``Report.scoring_seconds`` (the strategy's prepare, attention rows, select and the gathers) as a share of
the dense prefill's wall time. It then times the head-mean rows-attention kernel against its PyTorch
reference on realistic shapes. Results are written to ``DIR/selection_cost.json`` after every row, so an
interrupted run still leaves what it measured. ``--tiny`` runs the same code on a 4-layer model and toy
shapes (how the CPU test suite checks this module).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import svlm
from svlm.kernels import rows_attention
from svlm.models import _parse_tiny
from svlm.testing import random_image, tiny_vlm
from svlm.testing.discipline import CallCounter, SyncCounter

LLAVA_7B = (
    "tiny:llava?num_layers=32&hidden_size=4096&num_attention_heads=32&intermediate_size=11008"
    "&initializer_range=0.02"
)
TINY = "tiny:llava?num_layers=4"
QUESTION = "What colour is the square in the top left corner? Answer with a single word."
#: (batch, heads, kv heads, rows, keys, head dim): the issue's two realistic shapes (GQA at batch 8,
#: Qwen2.5-VL-7B-like), LLaVA-1.5-7B's scoring shapes, a toy.
KERNEL_SHAPES = [
    (8, 32, 8, 40, 640, 128),
    (1, 28, 4, 60, 3000, 128),
    (1, 32, 32, 1, 600, 128),  # FastV / PyramidDrop on LLaVA-1.5-7B: the last token
    (8, 32, 32, 20, 600, 128),  # SparseVLM's raters on LLaVA-1.5-7B at batch 8
    (1, 4, 4, 4, 128, 64),
]
TINY_KERNEL_SHAPES = [(2, 4, 2, 3, 50, 16)]
ACCEPTABLE_SHARE = 0.03


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Results:
    """A JSON document rewritten after every addition."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"selection": [], "kernel": []}

    def add(self, key: str, row: dict[str, Any]) -> None:
        self.data[key].append(row)
        self.save()
        print(json.dumps(row), flush=True)

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def build(spec: str, device: torch.device, dtype: torch.dtype):
    """The tiny random model of ``spec``, constructed directly on ``device`` (a 7B init on a CPU takes
    minutes), in ``dtype``."""
    family, kwargs = _parse_tiny(spec)
    kwargs.setdefault("init_device", device)
    vlm = tiny_vlm(family, dtype=dtype, **kwargs)
    vlm.model.to(device)
    return vlm


def measure_selection(
    results: Results, spec: str, device: torch.device, dtype: torch.dtype, batches: list[int],
    budgets: list[float], repeats: int,
) -> None:  # fmt: skip
    vlm = build(spec, device, dtype)
    strategies = [name for name in svlm.available_strategies() if name != "dense"]
    for batch in batches:
        images = [random_image(i) for i in range(batch)]
        inputs = vlm.inputs(images, [QUESTION] * batch)
        dense = svlm.sparsify(vlm.model, "dense")
        with torch.no_grad():
            dense(**inputs)  # warm-up
            dense_s = _median_seconds(functools.partial(dense, **inputs), device, repeats)
        with torch.no_grad(), SyncCounter() as syncs, CallCounter() as calls:
            dense(**inputs)
        row = {"batch": batch, "strategy": "dense", "prefill_ms": dense_s * 1e3}
        results.add("selection", {**row, "syncs": syncs.total, "torch_calls": calls.total})
        for name in strategies:
            for budget in budgets:
                row: dict[str, Any] = {"batch": batch, "strategy": name, "budget": budget}
                try:
                    sparse = svlm.sparsify(vlm.model, name, budget=budget)
                    with torch.no_grad():
                        sparse(**inputs)  # warm-up (and Triton compilation)
                        scoring, totals = [], []
                        for _ in range(repeats):
                            totals.append(_median_seconds(functools.partial(sparse, **inputs), device, 1))
                            scoring.append(sparse.last_report.scoring_seconds)
                        with SyncCounter() as syncs, CallCounter() as calls:
                            sparse(**inputs)  # not timed: what svlm's own code asked of torch
                    row.update(
                        syncs=syncs.total,
                        torch_calls=calls.total,
                        prefill_ms=statistics.median(totals) * 1e3,
                        selection_ms=statistics.median(scoring) * 1e3,
                        share=statistics.median(scoring) / dense_s,
                        budget_measured=sparse.last_report.budget,
                    )
                    row["ok"] = row["share"] <= ACCEPTABLE_SHARE
                except Exception as error:  # noqa: BLE001 - one failing row must not end the run
                    row["error"] = f"{type(error).__name__}: {error}"[:500]
                results.add("selection", row)
    del vlm
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_kernel(
    results: Results, shapes: list[tuple[int, ...]], device: torch.device, repeats: int
) -> None:
    for b, h, kvh, r, n, d in shapes:
        gen = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(b, h, r, d, device=device, generator=gen)
        k = torch.randn(b, kvh, n, d, device=device, generator=gen)
        slots = torch.randint(n // 2, n, (b, r), device=device, generator=gen)
        valid = torch.ones(b, n, dtype=torch.bool, device=device)
        scale = d**-0.5
        row: dict[str, Any] = {"shape": {"b": b, "heads": h, "kv_heads": kvh, "rows": r, "keys": n, "d": d}}
        paths = {"reference": False, "auto": None}
        if rows_attention.triton_available() and device.type == "cuda":
            paths["triton"] = True
        ref = rows_attention.rows_attention_reference(q, k, slots, valid, scale)
        for label, use in paths.items():
            call = functools.partial(
                rows_attention.head_mean_rows_attention, q, k, slots, valid, scale, use_triton=use
            )
            try:
                out = call()
                row[f"{label}_max_error"] = float((out - ref).abs().max())
                call()
                row[f"{label}_ms"] = _median_seconds(call, device, repeats) * 1e3
            except Exception as error:  # noqa: BLE001
                row[f"{label}_error"] = f"{type(error).__name__}: {error}"[:500]
        row["auto_choice"] = rows_attention.auto_choice(q, k)
        results.add("kernel", row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for selection_cost.json")
    parser.add_argument("--tiny", action="store_true", help="a 4-layer model and toy shapes (CPU check)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-selection", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "selection_cost.json")
    results.data["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results.data["acceptable_share"] = ACCEPTABLE_SHARE
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    spec = TINY if args.tiny else LLAVA_7B
    results.data["model"] = spec
    kernel_shapes = TINY_KERNEL_SHAPES if args.tiny else KERNEL_SHAPES
    measure_kernel(results, kernel_shapes, device, args.repeats if args.tiny else 50)
    if not args.skip_selection:
        batches = [int(x) for x in args.batches.split(",")]
        budgets = [0.7] if args.tiny else [192, 128, 64]
        measure_selection(results, spec, device, dtype, batches, budgets, args.repeats)
    rows = [r for r in results.data["selection"] if "share" in r]
    results.data["worst_share"] = max((r["share"] for r in rows), default=None)
    results.data["failed"] = [r for r in results.data["selection"] if "error" in r]
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

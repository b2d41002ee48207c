"""Check a calibrated schedule against SparseVLM's default schedule for the same budget on held-out data.

    python -m svlm.calibrate.compare --schedule results/calib/schedule.yaml            # test split
    python -m svlm.calibrate.compare --schedule S --budget 64 --limit 200 --output results/calib/compare.json

Runs the dense model, ``sparsevlm`` with ``budget=B`` (same pruning layers) and the schedule on the same
batches and prints budget, FLOPs, fidelity to dense (KL at the answer position, cosine of the last token's
final hidden state) and accuracy, then the acceptance checks of issue 7: higher fidelity, equal or higher
accuracy, same or lower FLOPs, budget within 5% of the target. ``--check`` exits with status 1 if one fails.
The model, budget and benchmark default to what the schedule file recorded at calibration.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from svlm.calibrate.evaluation import PointTally, batch_result, relative_to_dense
from svlm.calibrate.fidelity import generate_answer, tokenize
from svlm.calibrate.schedule import read_schedule
from svlm.strategies.sparsevlm import DEFAULT_LAYERS, SparseVLM

__all__ = ["acceptance", "compare", "main"]

BUDGET_TOLERANCE = 0.05


def acceptance(points: Sequence[dict[str, Any]], budget: float, objective: str = "kl") -> dict[str, bool]:
    """Issue 7's checks of the ``calibrated`` point against the ``sparsevlm`` (default) point."""
    by = {p["strategy"]: p for p in points}
    cal, base = by["calibrated"], by["sparsevlm"]
    key = "kl" if objective == "kl" else "cosine_distance"
    acc_cal, acc_base = cal.get("accuracy", math.nan), base.get("accuracy", math.nan)
    return {
        f"fidelity ({objective}) higher than default": cal[key] < base[key],
        "accuracy equal or higher": (
            not (math.isfinite(acc_cal) and math.isfinite(acc_base)) or acc_cal >= acc_base - 1e-12
        ),
        "FLOPs same or lower": cal["prefill_flops"] <= base["prefill_flops"] * (1 + 1e-9),
        f"budget within {BUDGET_TOLERANCE:.0%} of {budget:g}": abs(cal["budget"] - budget)
        <= BUDGET_TOLERANCE * budget,
    }


def compare(
    schedule: str | Path,
    budget: float | None = None,
    model: str | None = None,
    benchmark: str | None = None,
    split: str = "test",
    limit: int | None = 200,
    batch_size: int = 8,
    max_new_tokens: int = 4,
    dtype: str = "auto",
    device: str = "auto",
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate dense, the default schedule and ``schedule``; returns points, checks and settings."""
    from svlm.data import VLMDataModule
    from svlm.metrics import metric_for
    from svlm.models import load_vlm, resolve_device

    data = read_schedule(schedule, strategy="sparsevlm")
    recorded = data["metrics"]
    budget = budget if budget is not None else recorded.get("budget_target")
    model = model or recorded.get("model")
    benchmark = benchmark or recorded.get("benchmark") or "shapes"
    if budget is None or model is None:
        raise ValueError(f"Schedule {str(schedule)!r} records no budget/model; pass --budget and --model.")
    objective = recorded.get("objective", "kl")
    vlm, processor, _ = load_vlm(model, dtype, resolve_device(device), attn_implementation)
    device_t = next(vlm.parameters()).device
    datamodule = VLMDataModule(benchmark, split=split, limit=limit, batch_size=batch_size, seed=seed)
    layers = data["params"].get("layers", list(DEFAULT_LAYERS))
    strategies = {
        "dense": "dense",
        "sparsevlm": SparseVLM(budget=budget, layers=layers, version=recorded.get("version", "v2")),
        "calibrated": SparseVLM(schedule=str(schedule)),
    }
    labels = {"dense": "dense", "sparsevlm": f"sparsevlm-{budget:g}", "calibrated": "calibrated"}
    tallies = {
        k: PointTally(labels[k], k, None if k == "dense" else float(budget), metric_for(benchmark))
        for k in strategies
    }
    for batch in datamodule.test_dataloader():
        inputs = tokenize(processor, batch, device_t)
        dense = None
        for key, strategy in strategies.items():
            torch.manual_seed(seed)
            answers, answer, report = generate_answer(vlm, processor, inputs, strategy, max_new_tokens)
            answer = answer.cpu()
            dense = answer if dense is None else dense
            tallies[key].add(batch_result(answers, answer, dense, report), batch)
    points = relative_to_dense([t.point() for t in tallies.values()])
    for p in points:
        p.update(model=model, benchmark=benchmark, split=split)
    return {
        "schedule": str(schedule),
        "model": model,
        "benchmark": benchmark,
        "split": split,
        "budget": float(budget),
        "objective": objective,
        "points": points,
        "checks": acceptance(points, float(budget), objective),
    }


def format_result(result: dict[str, Any]) -> str:
    cols = [
        ("label", "point", "{}"),
        ("budget", "budget", "{:.2f}"),
        ("flops_ratio", "flops", "{:.4f}"),
        ("prefill_tflops", "TFLOPs", "{:.5f}"),
        ("kl", "KL", "{:.4f}"),
        ("cosine", "cosine", "{:.4f}"),
        ("accuracy", "accuracy", "{:.4f}"),
        ("samples", "n", "{}"),
    ]

    def cell(p: dict[str, Any], key: str, fmt: str) -> str:
        v = p.get(key)
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

    rows = [[h for _, h, _ in cols]] + [[cell(p, k, f) for k, _, f in cols] for p in result["points"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.append("")
    lines += [f"[{'ok' if ok else 'FAIL'}] {name}" for name, ok in result["checks"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m svlm.calibrate.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--schedule", required=True, help="Schedule file written by `svlm fit`.")
    parser.add_argument(
        "--budget", type=float, help="Budget of the default schedule (default: the schedule's)."
    )
    parser.add_argument("--model", help="Model (default: the one the schedule was calibrated on).")
    parser.add_argument("--benchmark", help="Benchmark (default: the schedule's, else shapes).")
    parser.add_argument("--split", default="test", help="Held-out split (default: test).")
    parser.add_argument("--limit", type=int, default=200, help="Samples (default 200).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attn-implementation", default="sdpa")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="Write the points and checks as JSON (atomically).")
    parser.add_argument(
        "--check", action="store_true", help="Exit with status 1 if an acceptance check fails."
    )
    args = parser.parse_args(argv)
    result = compare(
        args.schedule,
        budget=args.budget,
        model=args.model,
        benchmark=args.benchmark,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn_implementation,
        seed=args.seed,
    )
    print(f"{result['model']} on {result['benchmark']}/{result['split']}, budget {result['budget']:g}")
    print(format_result(result))
    if args.output is not None:
        from svlm.results import atomic_write_json

        atomic_write_json(args.output, result)
        print(f"results: {args.output.resolve()}")
    return 1 if args.check and not all(result["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Turning measured runs into rows: FLOPs, speed-ups against the reference, efficiency, batch gains."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from svlm.bandwidth import decode_floor_share
from svlm.bench.stats import efficiency, median, paired_speedup
from svlm.bench.timing import Runner

__all__ = ["ROW_COLUMNS", "add_flops", "make_row", "speed_rows", "visual_counts"]

#: Columns of the CSV (and keys of each JSON row), in order.

ROW_COLUMNS: tuple[str, ...] = (
    "section",
    "label",
    "strategy",
    "budget_target",
    "batch_size",
    "execution",
    "new_tokens",
    "attn_implementation",
    "budget",
    "budget_output",
    "visual_tokens",
    "prefill_s",
    "prefill_cpu_s",
    "ttft_s",
    "decode_tok_s",
    "decode_floor",
    "generate_s",
    "per_sample_prefill_s",
    "peak_mem_mb",
    "kv_cache_mb",
    "prefill_gflops",
    "dense_prefill_gflops",
    "flops_ratio",
    "flops_speedup",
    "flops_speedup_causal",
    "prefill_speedup",
    "generate_speedup",
    "efficiency",
    "efficiency_causal",
    "scoring_s",
    "scoring_share",
    "batch_gain",
    "mode_speedup",
    "mode_efficiency",
    "tokens_match_eager",
    "execution_note",
    "speedup_vs_pypi",
    "prefill_speedup_vs_pypi",
    "error",
)


def _flops(config: Any, tokens: Sequence[Sequence[int]], inputs: Mapping[str, Any], extra: float) -> tuple:
    """(FLOPs, causal FLOPs) of a prefill with ``tokens[sample][layer]`` tokens, summed over samples."""
    from svlm import flops

    total = causal = extra
    for b, per_layer in enumerate(tokens):
        vision = flops.vision_kwargs(config, dict(inputs), b)
        total += flops.prefill_flops(config, per_layer, **vision).total
        causal += flops.prefill_flops(config, per_layer, causal=True, **vision).total
    return total, causal


def _dense_tokens(inputs: Mapping[str, Any], num_layers: int) -> list[list[int]]:
    mask = inputs.get("attention_mask")
    ids = inputs["input_ids"]
    counts = mask.sum(-1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
    return [[int(n)] * num_layers for n in counts]


def add_flops(runner: Runner) -> None:
    config, inputs = runner.model.config, runner.inputs
    num_layers = int(config.get_text_config(decoder=True).num_hidden_layers)
    dense, dense_causal = _flops(config, _dense_tokens(inputs, num_layers), inputs, 0.0)
    report = runner.report
    if report is None:  # reference rows (and the PyPI package, whose prefill is dense) run dense FLOPs
        runner.flops = (dense, dense, dense_causal, dense_causal)
        return
    sparse, sparse_causal = _flops(config, report.tokens, inputs, report.scoring_flops)
    runner.flops = (sparse, dense, sparse_causal, dense_causal)


def visual_counts(model: nn.Module, inputs: Mapping[str, Any]) -> list[int]:
    from svlm.adapters import adapter_for

    return [int(n) for n in adapter_for(model).visual_mask(inputs["input_ids"]).sum(-1).tolist()]


def make_row(runner: Runner, reference: Runner | None, dense_prefill_s: float) -> dict[str, Any]:
    runs = runner.runs
    row: dict[str, Any] = {
        "section": runner.section,
        "label": runner.label,
        "strategy": runner.strategy,
        "budget_target": runner.budget_target,
        "batch_size": runner.batch,
        "execution": runner.execution,
        "new_tokens": runner.new_tokens,
        "attn_implementation": runner.attn_implementation,
    }
    if runner.error is not None:
        row["error"] = runner.error
        return row
    prefill = [r.prefill_s for r in runs]
    row.update(
        prefill_s=median(prefill),
        prefill_cpu_s=median([r.prefill_cpu_s for r in runs]),
        ttft_s=median([r.ttft_s for r in runs]),
        decode_tok_s=median([r.decode_tok_s for r in runs]),
        generate_s=median([r.generate_s for r in runs]),
        per_sample_prefill_s=median(prefill) / runner.batch,
        peak_mem_mb=runner.peak_mem_mb,
        kv_cache_mb=(runs[-1].kv_bytes / 2**20) if runs and runs[-1].kv_bytes is not None else None,
    )
    if runner.weight_bytes is not None and runs:
        row["decode_floor"] = decode_floor_share(
            runner.weight_bytes, runs[-1].kv_bytes, runner.read_gbps, row["decode_tok_s"], runner.batch
        )
    if runner.report is None:  # reference rows and the PyPI package: every visual token enters every layer
        visual = visual_counts(runner.model, runner.inputs)
        row["budget"] = sum(visual) / len(visual)
    else:
        row.update(
            budget=runner.report.budget,
            budget_output=runner.report.budget_output,
            visual_tokens=runner.report.visual_tokens[0],
        )
        row["scoring_s"] = median([r.scoring_s for r in runs])
        row["scoring_share"] = row["scoring_s"] / dense_prefill_s if dense_prefill_s > 0 else math.nan
    if runner.flops is not None:
        sparse, dense, sparse_causal, dense_causal = runner.flops
        row.update(
            prefill_gflops=sparse / 1e9,
            dense_prefill_gflops=dense / 1e9,
            flops_ratio=sparse / dense,
            flops_speedup=dense / sparse,
            flops_speedup_causal=dense_causal / sparse_causal,
        )
    if reference is not None and reference.runs:
        row["prefill_speedup"] = paired_speedup([r.prefill_s for r in reference.runs], prefill)
        row["generate_speedup"] = paired_speedup(
            [r.generate_s for r in reference.runs], [r.generate_s for r in runs]
        )
        if runner.flops is not None:
            sparse, dense, sparse_causal, dense_causal = runner.flops
            row["efficiency"] = efficiency(row["prefill_speedup"], dense, sparse)
            row["efficiency_causal"] = efficiency(row["prefill_speedup"], dense_causal, sparse_causal)
    return row


def tokens_match(reference: Any, output: Any, new_tokens: int) -> float:
    """Share of the new tokens of ``output`` equal to ``reference``'s (same prompts): 1.0 when a fast
    execution mode generated exactly what eager did; NaN when either is missing."""
    if not isinstance(reference, torch.Tensor) or not isinstance(output, torch.Tensor):
        return math.nan
    if reference.shape != output.shape:
        return 0.0
    a, b = reference[:, -new_tokens:], output[:, -new_tokens:]
    return float((a == b).float().mean())


def speed_rows(runners: list[Runner], main_batch: int) -> list[dict[str, Any]]:
    """Rows of the speed table: speed-ups against ``hf`` at the same batch size, against svlm's ``dense`` in
    the same execution mode and batch size (``mode_speedup``, ``mode_efficiency``: fair to a fast mode, which
    speeds up the dense model too), batching gains against the same point at ``main_batch``."""
    references = {r.batch: r for r in runners if r.strategy == "hf"}
    dense = {(r.execution, r.batch): r for r in runners if r.strategy == "dense"}
    by_label = {(r.strategy, r.budget_target, r.execution): r for r in runners if r.batch == main_batch}
    by_point = {(r.strategy, r.budget_target, r.batch): r for r in runners if r.execution == "eager"}
    rows = []
    for runner in runners:
        reference = references.get(runner.batch)
        dense_s = median([x.prefill_s for x in reference.runs]) if reference else math.nan
        row = make_row(runner, reference, dense_s)
        same_mode = dense.get((runner.execution, runner.batch))
        if runner.strategy != "hf" and same_mode is not None and same_mode.runs and runner.runs:
            row["mode_speedup"] = paired_speedup(
                [x.prefill_s for x in same_mode.runs], [x.prefill_s for x in runner.runs]
            )
            if runner.flops is not None:
                sparse, full = runner.flops[0], runner.flops[1]
                row["mode_efficiency"] = efficiency(row["mode_speedup"], full, sparse)
        failed = getattr(getattr(runner.sparse, "_executor", None), "capture_errors", None)
        if failed:
            row["execution_note"] = f"{len(failed)} CUDA graph capture(s) failed, ran without: {failed[0]}"
        eager = by_point.get((runner.strategy, runner.budget_target, runner.batch))
        if runner.execution != "eager" and eager is not None:
            row["tokens_match_eager"] = tokens_match(eager.last_output, runner.last_output, runner.new_tokens)
        base = by_label.get((runner.strategy, runner.budget_target, runner.execution))
        if runner.batch != main_batch and base is not None and base.runs and runner.runs:
            per_sample_base = [x.prefill_s / base.batch for x in base.runs]
            per_sample = [x.prefill_s / runner.batch for x in runner.runs]
            row["batch_gain"] = paired_speedup(per_sample_base, per_sample)
        rows.append(row)
    return rows

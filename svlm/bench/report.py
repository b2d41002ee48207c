"""Printing a bench run: the tables, the decoder and bandwidth lines, notes and targets."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import platform
import re
from collections.abc import Sequence

import torch

from svlm.results import format_table

__all__ = ["COMPARE_COLUMNS", "SPEED_COLUMNS", "device_name", "print_results", "versions"]


SPEED_COLUMNS = [
    ("label", "label", "{}"),
    ("batch_size", "b", "{}"),
    ("budget", "budget", "{:.1f}"),
    ("prefill_s", "prefill_s", "{:.4f}"),
    ("prefill_cpu_s", "cpu_s", "{:.4f}"),
    ("ttft_s", "ttft_s", "{:.4f}"),
    ("decode_tok_s", "decode_tok/s", "{:.1f}"),
    ("decode_floor", "mem_floor", "{:.2f}"),
    ("generate_s", "generate_s", "{:.4f}"),
    ("peak_mem_mb", "peak_MB", "{:.1f}"),
    ("kv_cache_mb", "kv_MB", "{:.2f}"),
    ("prefill_gflops", "GFLOPs", "{:.2f}"),
    ("flops_speedup", "flops_x", "{:.2f}"),
    ("prefill_speedup", "prefill_x", "{:.2f}"),
    ("efficiency", "eff", "{:.3f}"),
    ("efficiency_causal", "eff_causal", "{:.3f}"),
    ("scoring_share", "scoring", "{:.2%}"),
    ("generate_speedup", "generate_x", "{:.2f}"),
    ("batch_gain", "batch_gain", "{:.2f}"),
    ("mode_speedup", "x_dense", "{:.2f}"),
    ("tokens_match_eager", "=eager", "{:.2f}"),
]
COMPARE_COLUMNS = [
    ("label", "label", "{}"),
    ("new_tokens", "new", "{}"),
    ("attn_implementation", "attn", "{}"),
    ("budget", "budget", "{:.1f}"),
    ("prefill_s", "prefill_s", "{:.4f}"),
    ("ttft_s", "ttft_s", "{:.4f}"),
    ("decode_tok_s", "decode_tok/s", "{:.1f}"),
    ("decode_floor", "mem_floor", "{:.2f}"),
    ("generate_s", "generate_s", "{:.4f}"),
    ("peak_mem_mb", "peak_MB", "{:.1f}"),
    ("kv_cache_mb", "kv_MB", "{:.2f}"),
    ("flops_speedup", "flops_x", "{:.2f}"),
    ("generate_speedup", "vs_hf_sdpa", "{:.2f}"),
    ("speedup_vs_pypi", "vs_pypi", "{:.2f}"),
    ("prefill_speedup_vs_pypi", "prefill_vs_pypi", "{:.2f}"),
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "svlm", "sparsevlm"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def print_results(
    meta: dict,
    rows: list[dict],
    comparison: list[dict],
    targets: list[dict],
    notes: list[str],
    ceiling: dict | None,
    floor: dict | None = None,
) -> None:
    print(
        f"svlm bench: {meta['model']} ({meta['family']}, {meta['parameters'] / 1e6:.1f}M params, "
        f"{meta['prompt_tokens']} prompt tokens) on {meta['device']} ({meta['device_name']}), "
        f"{meta['num_threads']} thread(s), {meta['dtype']}, {meta['max_new_tokens']} new tokens, "
        f"{meta['timer']} clock, median of {meta['repeats']} interleaved rounds; load average "
        f"{_load(meta['load_average_start'])} -> {_load(meta['load_average_end'])}"
    )
    print(format_table([r for r in rows if "error" not in r], SPEED_COLUMNS))
    for r in rows:
        if "error" in r:
            print(f"  {r['label']}: not run ({r['error']})")
        elif r.get("execution_note"):
            print(f"  {r['label']}: {r['execution_note']}")
    if ceiling is not None:
        print(
            f"decoder alone (no svlm): {ceiling['kept_tokens']} vs {ceiling['full_tokens']} tokens runs "
            f"{ceiling['speedup']:.2f}x faster for {ceiling['flops_speedup']:.2f}x fewer FLOPs "
            f"({ceiling['flops_speedup_causal']:.2f}x causal): efficiency ceiling "
            f"{ceiling['efficiency']:.3f} ({ceiling['efficiency_causal']:.3f} causal)"
        )
        costs = ", ".join(f"{n}: {ms:.2f}" for n, ms in ceiling.get("layer_ms", {}).items())
        print(f"decoder alone, ms per layer by tokens per sample: {costs}")
        gemms = ", ".join(f"{n}: {ms:.2f}" for n, ms in ceiling.get("linear_ms", {}).items())
        if gemms:
            print(f"  of which its linear layers' GEMMs: {gemms}")
    for section, f in (floor or {}).items():
        print(
            f"decoding ({section}): a step reads {f['weight_bytes'] / 1e6:.1f} MB of weights plus the KV "
            f"cache; a probe that size reads at {f['read_gbps']:.1f} GB/s ({meta['num_threads']} thread(s)), "
            f"{f['weights_read_ms']:.2f} ms for the weights. mem_floor = memory-bound step time / measured"
        )
    if comparison:
        print("\nPyPI sparsevlm vs svlm (same Qwen2.5-VL model, same keep ratio, end-to-end generate):")
        print(format_table([r for r in comparison if "error" not in r], COMPARE_COLUMNS))
        for r in comparison:
            if "error" in r:
                print(f"  {r['label']}: not run ({r['error']})")
    for note in notes:
        print(f"  note: {note}")
    print("\ntargets:")
    for t in targets:
        value = t["value"]
        shown = f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else str(value)
        print(f"  [{'met' if t['met'] else 'NOT met'}] {t['target']}: {shown}")
    print(f"bench time: {meta['seconds']:.0f} s")


def _load(values: Sequence[float] | None) -> str:
    return "-" if values is None else "/".join(f"{v:.1f}" for v in values)

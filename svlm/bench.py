"""``svlm bench``: wall-clock prefill, time to first token, decoding speed, memory and FLOPs of strategies.

    svlm bench --config configs/bench.yaml                       # what `make bench` runs (CPU, ~100M model)
    svlm bench --model tiny:llava --strategies '[dense, random]' --budgets '[64]' --repeats 1

What is measured, per row (one strategy at one budget and batch size, or a reference model):

* ``prefill_s``: from the start of the vision encoder (transformers 5's ``generate`` runs it before the
  first forward) to the end of the first forward: vision tower, projector, all decoder layers, every svlm
  hook, the last position's logits. ``ttft_s``: from the ``generate`` call until the first new token
  exists; ``decode_tok_s``: new tokens per second after it; ``generate_s``: the whole call. Every call
  produces exactly ``max_new_tokens`` tokens (``min_new_tokens`` is set), so rows are comparable.
* ``decode_floor``: the share of its memory-bandwidth limit that decoding reaches: the time one step would
  take if it only read the language model's weights and the KV cache at the machine's measured read
  bandwidth, over the measured step time (:mod:`svlm.bandwidth`).
* ``peak_mem_mb``: memory the call needs beyond what was allocated before it. CUDA:
  ``max_memory_allocated``; CPU (Linux): growth of the peak resident set (``VmHWM``) after returning freed
  heap to the system (``malloc_trim``), measured in a separate, untimed run.
* ``kv_cache_mb``: bytes allocated for the KV cache that decoding starts from (measured on the cache
  object's storages; svlm's cache already holds the slots it reserved for the ``max_new_tokens``).
* ``flops_speedup``: analytic dense / sparse prefill FLOPs (svlm's convention: the full n x n attention
  rectangle, as ``FlopCounterMode`` counts it); ``efficiency`` = ``prefill_speedup / flops_speedup``: how
  close the measured speed-up comes to the FLOPs limit. ``efficiency_causal`` uses FLOPs that count only
  the causal half of attention, which is what SDPA's causal kernels execute.
* ``scoring_s`` / ``scoring_share``: time svlm spends choosing and gathering tokens
  (``Report.scoring_seconds``: the strategy's ``prepare``, attention rows, ``select`` and the gather) and
  its share of the dense prefill.

Timing discipline: every row is first run ``warmup`` times, then the rows are run round-robin
(``repeats`` rounds, alternating direction) so that slow drift of a shared machine hits all rows alike;
medians are reported, and speed-ups are medians of per-round ratios against the reference row of the same
round. ``num_threads`` (default 1) is applied with ``torch.set_num_threads`` for the whole run and restored
afterwards: on a small shared CPU, one intra-op thread gives the most repeatable numbers. On CPU the
allocator is made steady first (:func:`steady_allocator`): otherwise whether a row pays page faults for
its activations depends on what ran before it. ``prefill_cpu_s`` (process CPU time of the prefill) shows
contention: with one thread it is close to ``prefill_s`` on an idle machine; ``timer: cpu`` times
everything by CPU time instead, which leaves out the waiting on a busy machine.

The optional comparison runs the PyPI package ``sparsevlm`` (``pip install 'svlm[bench]'``) next to svlm
on one Qwen2.5-VL model, at the same keep ratio, in the same rounds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.metadata
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from svlm.bandwidth import decode_floor_share, decode_weight_bytes, read_bandwidth_gbps
from svlm.engine.cache import cache_in, cache_out
from svlm.engine.layout import resolve_layout, set_linear_layout
from svlm.results import format_table

__all__ = [
    "COMPARE_MODEL",
    "ROW_COLUMNS",
    "bench",
    "bench_parser",
    "cache_bytes",
    "efficiency",
    "format_table",
    "paired_speedup",
]

DEFAULT_QUESTION = "What is shown in the image? Answer the question using a single word or phrase."
#: ~103M-parameter Qwen2.5-VL-shaped random model with 576 visual tokens (the comparison's default).
COMPARE_MODEL = "tiny:qwen2_5_vl?num_layers=32&hidden_size=512&num_attention_heads=8&intermediate_size=1376"
PYPI_LABEL = "sparsevlm-pypi"
#: Token counts at which ``decoder_ceiling`` also times the decoder (``layer_ms``), below the full prompt.
LAYER_COST_TOKENS: tuple[int, ...] = (1, 16, 32, 64, 128, 256)
TIMERS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}

#: Columns of the CSV (and keys of each JSON row), in order.
ROW_COLUMNS: tuple[str, ...] = (
    "section",
    "label",
    "strategy",
    "budget_target",
    "batch_size",
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
    "speedup_vs_pypi",
    "prefill_speedup_vs_pypi",
    "error",
)


# -- pure helpers (unit-tested) ---------------------------------------------------------------------------


def paired_speedup(reference: Sequence[float], measured: Sequence[float]) -> float:
    """Median over rounds of ``reference[r] / measured[r]``: robust to drift that hits a whole round."""
    ratios = [a / b for a, b in zip(reference, measured, strict=True) if b > 0 and math.isfinite(a / b)]
    return statistics.median(ratios) if ratios else math.nan


def efficiency(speedup: float, dense_flops: float, sparse_flops: float) -> float:
    """``speedup / (dense_flops / sparse_flops)``: 1.0 means the run is exactly as much faster as it does
    fewer FLOPs; below 1, fixed costs or slower small kernels eat part of the saving."""
    if not (sparse_flops > 0 and dense_flops > 0) or not math.isfinite(speedup):
        return math.nan
    return speedup / (dense_flops / sparse_flops)


def cache_bytes(cache: Any) -> int | None:
    """Bytes allocated for the key and value tensors of a transformers cache (``None`` if it has no
    layers): whole storages, so that spare slots behind a view (svlm's ``BufferedLayer``) count too."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    storages: dict[int, int] = {}
    for layer in layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor) and tensor.numel():
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


# -- measuring one call ---------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Run:
    """Timestamps and sizes of one timed ``generate``-like call."""

    prefill_s: float = math.nan
    prefill_cpu_s: float = math.nan
    ttft_s: float = math.nan
    generate_s: float = math.nan
    decode_tok_s: float = math.nan
    kv_bytes: int | None = None
    scoring_s: float = math.nan


def _vision_tower(model: nn.Module) -> nn.Module | None:
    """The vision encoder of a transformers VLM (``visual`` in Qwen, ``vision_tower`` in LLaVA)."""
    for owner in (getattr(model, "model", None), model):
        for name in ("visual", "vision_tower"):
            module = getattr(owner, name, None)
            if isinstance(module, nn.Module):
                return module
    return None


class _ForwardClock:
    """Records the top-level forward calls of one generation, and when the vision encoder starts.

    The pre-hook is prepended (it runs before svlm's hooks); the matching post-hook is registered from
    inside it, i.e. after svlm's, so a forward's time includes all of svlm's work on it. ``generate`` of
    transformers 5 runs the vision encoder before the first forward (``get_image_features``), so the
    prefill starts with whichever comes first.
    """

    def __init__(self, model: nn.Module, device: torch.device, clock: Callable[[], float]) -> None:
        self.model, self.device, self.clock = model, device, clock
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.cpu_starts: list[float] = []
        self.cpu_ends: list[float] = []
        self.kv_after_prefill: int | None = None
        self.kv_first_step: int | None = None
        self.vision_start: float | None = None
        self.vision_cpu_start: float | None = None
        self._handles: list[Any] = []
        self._post: Any = None

    def __enter__(self) -> _ForwardClock:
        self._handles.append(
            self.model.register_forward_pre_hook(self._start, with_kwargs=True, prepend=True)
        )
        tower = _vision_tower(self.model)
        if tower is not None:
            self._handles.append(tower.register_forward_pre_hook(self._vision, prepend=True))
        return self

    def _vision(self, module: nn.Module, args: tuple) -> None:
        if self.vision_start is None and not self.ends:  # only the prefill's (first) encoder call
            _sync(self.device)
            self.vision_start, self.vision_cpu_start = self.clock(), time.process_time()

    @property
    def prefill_start(self) -> tuple[float, float]:
        """(clock, CPU time) at the start of the prefill: the vision encoder's or the first forward's."""
        if self.vision_start is not None and self.vision_start < self.starts[0]:
            return self.vision_start, self.vision_cpu_start
        return self.starts[0], self.cpu_starts[0]

    def __exit__(self, *exc: object) -> None:
        for handle in [*self._handles, self._post]:
            if handle is not None:
                handle.remove()
        self._handles.clear()
        self._post = None

    def _start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(self.starts) == 1:  # the cache decoding starts from (after any pruning between the calls)
            self.kv_first_step = cache_bytes(cache_in(kwargs))
        _sync(self.device)
        self.starts.append(self.clock())
        self.cpu_starts.append(time.process_time())
        self._post = module.register_forward_hook(self._end, with_kwargs=True, always_call=True)

    def _end(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        _sync(self.device)
        self.ends.append(self.clock())
        self.cpu_ends.append(time.process_time())
        self._post.remove()
        self._post = None
        if len(self.ends) == 1:
            self.kv_after_prefill = cache_bytes(cache_out(output))


@dataclass
class _Runner:
    """One row: a callable that generates ``new_tokens`` tokens for ``batch`` samples."""

    label: str
    section: str
    strategy: str
    call: Callable[[], Any]
    model: nn.Module
    inputs: Any
    device: torch.device
    batch: int
    new_tokens: int
    budget_target: float | None = None
    attn_implementation: str = "sdpa"
    sparse: Any = None  # svlm.SparseModel for svlm rows
    token_forward: int = 0  # index of the forward that yields the first new token
    flops: tuple[float, float, float, float] | None = None  # sparse, dense, sparse causal, dense causal
    runs: list[Run] = field(default_factory=list)
    peak_mem_mb: float = math.nan
    report: Any = None
    error: str | None = None
    clock: Callable[[], float] = time.perf_counter
    weight_bytes: int | None = None  # what one decoding step reads of the model's weights
    read_gbps: float = math.nan  # the machine's measured read bandwidth

    def run(self) -> Run:
        with _ForwardClock(self.model, self.device, self.clock) as clock:
            _sync(self.device)
            start = self.clock()
            self.call()
            _sync(self.device)
            end = self.clock()
        out = Run(generate_s=end - start)
        if clock.ends:
            start_s, start_cpu = clock.prefill_start
            out.prefill_s = clock.ends[0] - start_s
            out.prefill_cpu_s = clock.cpu_ends[0] - start_cpu
        if len(clock.ends) > self.token_forward:
            first = clock.ends[self.token_forward]
            out.ttft_s = first - start
            if self.new_tokens > 1 and end > first:
                out.decode_tok_s = self.batch * (self.new_tokens - 1) / (end - first)
        out.kv_bytes = clock.kv_first_step if clock.kv_first_step is not None else clock.kv_after_prefill
        if self.sparse is not None and self.sparse.last_report is not None:
            self.report = self.sparse.last_report
            out.scoring_s = float(getattr(self.report, "scoring_seconds", math.nan))
        return out


# -- memory ---------------------------------------------------------------------------------------------

_LIBC: Any = None


def _malloc_trim() -> None:
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        _LIBC = ctypes.CDLL(name) if name else False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def steady_allocator() -> bool:
    """Keep freed CPU memory in the process (glibc only); returns whether it was applied.

    By default glibc hands large freed blocks back to the kernel and the next call faults them in again,
    zeroed. Whether a run pays for that depends on what ran before it (in one process the dense Hugging
    Face model was ~12% slower than the same model under svlm for this reason alone), so every timed row
    would carry allocator noise. A fixed mmap threshold (32 MiB) and a 1 GiB trim threshold make every
    row reuse its memory after warm-up. The memory measurement still trims first (``malloc_trim``).
    """
    _malloc_trim()  # loads libc
    if not _LIBC or not hasattr(_LIBC, "mallopt"):
        return False
    return bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    )


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"/proc/self/status has no {key}")
    return int(match.group(1)) * 1024


def memory_method(device: torch.device) -> str:
    """How ``peak_mem_mb`` is measured on ``device`` (recorded in the JSON)."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated - memory_allocated before the call"
    if os.path.exists("/proc/self/clear_refs"):
        return "peak RSS growth (VmHWM reset via /proc/self/clear_refs, after malloc_trim)"
    return "unavailable on this platform"


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Extra memory (MiB) that ``fn()`` needs at its peak; NaN where it cannot be measured."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        _malloc_trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _proc_status("VmRSS")
    except OSError:
        fn()
        return math.nan
    fn()
    return max(0, _proc_status("VmHWM") - base) / 2**20


# -- FLOPs ----------------------------------------------------------------------------------------------


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


def _runner_flops(runner: _Runner) -> None:
    config, inputs = runner.model.config, runner.inputs
    num_layers = int(config.get_text_config(decoder=True).num_hidden_layers)
    dense, dense_causal = _flops(config, _dense_tokens(inputs, num_layers), inputs, 0.0)
    report = runner.report
    if report is None:  # reference rows (and the PyPI package, whose prefill is dense) run dense FLOPs
        runner.flops = (dense, dense, dense_causal, dense_causal)
        return
    sparse, sparse_causal = _flops(config, report.tokens, inputs, report.scoring_flops)
    runner.flops = (sparse, dense, sparse_causal, dense_causal)


# -- building the rows ----------------------------------------------------------------------------------


def _visual_counts(model: nn.Module, inputs: Mapping[str, Any]) -> list[int]:
    from svlm.adapters import adapter_for

    return [int(n) for n in adapter_for(model).visual_mask(inputs["input_ids"]).sum(-1).tolist()]


def _label(name: str, budget: float | None, batch: int, main_batch: int) -> str:
    label = name if budget is None else f"{name}-{budget:g}"
    return label if batch == main_batch else f"{label}@b{batch}"


def _inputs(processor: Any, batch: int, image_size: int | None, question: str, device: torch.device) -> Any:
    from svlm.testing import random_image

    size = (image_size, image_size) if image_size else (336, 336)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    images = [random_image(seed=i, size=size) for i in range(batch)]
    return processor(images=images, text=[prompt] * batch, padding=True, return_tensors="pt").to(device)


def _cast_pixels(inputs: Any, model: nn.Module) -> Any:
    dtype = next(model.parameters()).dtype
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs and inputs[key].is_floating_point():
            inputs[key] = inputs[key].to(dtype)
    return inputs


def _generate_kwargs(new_tokens: int) -> dict[str, Any]:
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}


@dataclass
class _Case:
    """What the rows of one table share: the model, its inputs, and how much to generate."""

    section: str
    model: nn.Module
    inputs: Any
    device: torch.device
    batch: int
    new_tokens: int
    attn_implementation: str

    def runner(self, label: str, strategy: str, call: Callable[[], Any], **kwargs: Any) -> _Runner:
        return _Runner(
            label=label,
            section=self.section,
            strategy=strategy,
            call=call,
            model=self.model,
            inputs=self.inputs,
            device=self.device,
            batch=self.batch,
            new_tokens=self.new_tokens,
            attn_implementation=self.attn_implementation,
            **kwargs,
        )


def _hf_runner(case: _Case, label: str = "hf") -> _Runner:
    """The unwrapped Hugging Face model: the reference of every speed-up."""
    model, inputs, kwargs = case.model, case.inputs, _generate_kwargs(case.new_tokens)
    return case.runner(label, "hf", lambda: model.generate(**inputs, **kwargs))


def _svlm_runner(case: _Case, label: str, name: str, budget: float | None) -> _Runner:
    import svlm

    strategy = svlm.build_strategy(name) if budget is None else svlm.build_strategy(name, budget=budget)
    sparse = svlm.sparsify(case.model, strategy)
    inputs, kwargs = case.inputs, _generate_kwargs(case.new_tokens)

    def call() -> Any:
        return sparse.generate(**inputs, **kwargs)

    return case.runner(label, name, call, budget_target=budget, sparse=sparse)


def _import_pypi_sparsevlm() -> Callable[..., Any]:
    """``sparsevlm.sparsevlm_generate`` from the PyPI package.

    sparsevlm 0.1.3 ships a second top-level package named ``kernels``; any other ``kernels`` earlier on
    ``sys.path`` (an earlier ``kernels`` package) would shadow it. The package's own copy
    is imported from its install location, and whatever ``kernels`` was imported before is put back.
    """
    if "sparsevlm" not in sys.modules:
        root = str(importlib.metadata.distribution("sparsevlm").locate_file(""))
        saved = {k: v for k, v in sys.modules.items() if k == "kernels" or k.startswith("kernels.")}
        for key in saved:
            del sys.modules[key]
        sys.path.insert(0, root)
        try:
            import sparsevlm  # noqa: F401
        finally:
            sys.path.remove(root)
            for key in [k for k in sys.modules if k == "kernels" or k.startswith("kernels.")]:
                del sys.modules[key]
            sys.modules.update(saved)
    from sparsevlm import sparsevlm_generate

    return sparsevlm_generate


def _pypi_runner(case: _Case, processor: Any, keep: float) -> _Runner:
    """The PyPI ``sparsevlm`` package's own entry point, called as its README shows (batch 1 only)."""
    sparsevlm_generate = _import_pypi_sparsevlm()

    model, inputs, device = case.model, case.inputs, case.device
    n_vis = int((inputs["input_ids"][0] == int(model.config.image_token_id)).sum())
    keep_n_vis = max(1, round(n_vis * keep))

    def call() -> Any:
        model.generation_config.min_new_tokens = case.new_tokens  # it passes no generate kwargs; same length
        return sparsevlm_generate(
            model,
            processor,
            inputs,
            n_vis=n_vis,
            keep_n_vis=keep_n_vis,
            max_new_tokens=case.new_tokens,
            device=str(device),
        )

    # token_forward=1: after pruning the cache it re-feeds the last prompt token through generate()
    return case.runner(PYPI_LABEL, PYPI_LABEL, call, budget_target=keep, token_forward=1)


# -- measuring a group of rows --------------------------------------------------------------------------


def _measure(runners: list[_Runner], warmup: int, repeats: int, progress: Any, device) -> None:
    """Warm up every row, run the rounds interleaved (alternating order), then one memory run per row.

    A row whose call raises (e.g. a budget its strategy cannot meet on this model) records the error and
    drops out; the other rows go on.
    """

    def attempt(runner: _Runner, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as err:  # recorded in the row, not fatal for the benchmark
            runner.error = f"{type(err).__name__}: {err}"
            runner.runs.clear()
        finally:
            progress.update(1)

    for runner in runners:
        for _ in range(warmup):
            if runner.error is None:
                attempt(runner, runner.run)
    for rnd in range(repeats):
        for runner in runners if rnd % 2 == 0 else runners[::-1]:
            if runner.error is None:
                attempt(runner, lambda r=runner: r.runs.append(r.run()))

    def memory(r: _Runner) -> None:
        r.peak_mem_mb = peak_memory_mb(r.run, device)

    for runner in runners:
        if runner.error is None:
            attempt(runner, lambda r=runner: memory(r))


def _row(runner: _Runner, reference: _Runner | None, dense_prefill_s: float) -> dict[str, Any]:
    runs = runner.runs
    row: dict[str, Any] = {
        "section": runner.section,
        "label": runner.label,
        "strategy": runner.strategy,
        "budget_target": runner.budget_target,
        "batch_size": runner.batch,
        "new_tokens": runner.new_tokens,
        "attn_implementation": runner.attn_implementation,
    }
    if runner.error is not None:
        row["error"] = runner.error
        return row
    prefill = [r.prefill_s for r in runs]
    row.update(
        prefill_s=_median(prefill),
        prefill_cpu_s=_median([r.prefill_cpu_s for r in runs]),
        ttft_s=_median([r.ttft_s for r in runs]),
        decode_tok_s=_median([r.decode_tok_s for r in runs]),
        generate_s=_median([r.generate_s for r in runs]),
        per_sample_prefill_s=_median(prefill) / runner.batch,
        peak_mem_mb=runner.peak_mem_mb,
        kv_cache_mb=(runs[-1].kv_bytes / 2**20) if runs and runs[-1].kv_bytes is not None else None,
    )
    if runner.weight_bytes is not None and runs:
        row["decode_floor"] = decode_floor_share(
            runner.weight_bytes, runs[-1].kv_bytes, runner.read_gbps, row["decode_tok_s"], runner.batch
        )
    if runner.report is None:  # reference rows and the PyPI package: every visual token enters every layer
        visual = _visual_counts(runner.model, runner.inputs)
        row["budget"] = sum(visual) / len(visual)
    else:
        row.update(
            budget=runner.report.budget,
            budget_output=runner.report.budget_output,
            visual_tokens=runner.report.visual_tokens[0],
        )
        row["scoring_s"] = _median([r.scoring_s for r in runs])
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


# -- output ---------------------------------------------------------------------------------------------

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


def _target(name: str, value: float, threshold: float, higher: bool = True) -> dict[str, Any]:
    met = math.isfinite(value) and (value >= threshold if higher else value <= threshold)
    return {"target": name, "value": value, "threshold": threshold, "met": bool(met)}


def _targets(
    rows: list[dict], comparison: list[dict], seconds: float, budget: float | None, main_batch: int
) -> list[dict]:
    """The issue's speed targets, computed from this run's rows."""
    out = []
    main = [r for r in rows if r.get("batch_size") == main_batch and r.get("efficiency") is not None]
    for r in main:
        if budget is not None and r.get("budget_target") == budget and r["strategy"] != "dense":
            out.append(_target(f"{r['label']}: prefill speedup / FLOPs ratio >= 0.9", r["efficiency"], 0.9))
    shares = [r["scoring_share"] for r in main if r.get("scoring_share") is not None]
    if shares:
        worst = max(shares)
        out.append(_target("scoring <= 3% of dense prefill (worst row)", worst, 0.03, higher=False))
    for r in rows:
        if r.get("batch_gain") is not None and r["strategy"] != "hf":
            out.append(_target(f"{r['label']}: per-sample prefill faster than batch 1", r["batch_gain"], 1.0))
    for r in comparison:
        if r.get("speedup_vs_pypi") is not None and r["label"] != PYPI_LABEL and r["strategy"] != "hf":
            what = f"{r['label']}, prefill + {r['new_tokens']} new tokens"
            out.append(_target(f"{what}: >= 3x faster than PyPI sparsevlm", r["speedup_vs_pypi"], 3.0))
            out.append(_target(f"{what}: >= 2x faster than dense SDPA", r["generate_speedup"], 2.0))
    out.append(_target("benchmark wall time (s) < 600", seconds, 600.0, higher=False))
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "svlm", "sparsevlm"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 (or null for torch's default), got {num_threads}")
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -- the command ----------------------------------------------------------------------------------------


def bench(
    model: str = "tiny:llava",
    strategies: list[str] | None = None,
    budgets: list[float] | None = None,
    batch_size: int = 1,
    batch_sizes: list[int] | None = None,
    batch_strategies: list[str] | None = None,
    image_size: int | None = None,
    question: str = DEFAULT_QUESTION,
    max_new_tokens: int = 8,
    repeats: int = 5,
    warmup: int = 1,
    num_threads: int | None = 1,
    timer: Literal["wall", "cpu"] = "wall",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    device: str = "auto",
    weight_layout: str = "auto",
    compare_sparsevlm: bool = False,
    compare_model: str = COMPARE_MODEL,
    compare_keep: float = 0.25,
    compare_strategies: list[str] | None = None,
    compare_new_tokens: list[int] | None = None,
    output: Path | None = None,
    steady_memory: bool = True,
    decoder_check: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Measure prefill, time to first token, decoding speed, memory, KV cache and FLOPs of strategies.

    The unwrapped Hugging Face model (row ``hf``) is the reference of every speed-up; ``dense`` is svlm's
    no-pruning run (its gap to ``hf`` is the wrapper's overhead). Every other strategy runs at every budget.
    Rows are warmed up, then timed round-robin; medians are reported (see the module docstring).

    Args:
        model: Hugging Face id, local folder, ``zoo:<name>`` or ``tiny:<family>[?key=value&...]``.
        strategies: Strategy names or class paths (default: dense and every registered strategy).
        budgets: Target mean visual tokens per layer of the pruning strategies (default 192, 128, 64).
        batch_size: Images per call in the main table.
        batch_sizes: Further batch sizes, timed in the same rounds, to compare per-sample cost with
            ``batch_size`` (rows ``<label>@b<N>``; the reference ``hf`` runs at each size too).
        batch_strategies: Strategies run at ``batch_sizes`` (at the smallest budget; default: all).
        image_size: Side of the synthetic square images in pixels (default 336; Qwen models resize).
        question: Prompt text for every sample.
        max_new_tokens: Tokens generated by every call (``min_new_tokens`` is set to the same value).
        repeats: Timed rounds (medians reported).
        warmup: Untimed calls per row before the rounds.
        num_threads: ``torch.set_num_threads`` for the run (restored afterwards); null keeps torch's default.
        timer: ``wall`` (wall-clock, the default) or ``cpu`` (CPU time of this process, CPU only): with one
            thread, ``cpu`` leaves out the time spent waiting for other jobs on a shared machine.
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        weight_layout: How linear weights are stored (:func:`svlm.set_linear_layout`), applied alike to every
            model of the run (reference, svlm rows and the PyPI comparison): ``auto`` (``input_major`` on
            CPU, where MKL runs few-row GEMMs faster on it, ``native`` elsewhere), ``native`` or
            ``input_major``. Values and results are the same either way; only speed differs.
        compare_sparsevlm: Also run the PyPI package ``sparsevlm`` (``pip install 'svlm[bench]'``) on
            ``compare_model`` next to dense SDPA, dense eager and svlm at the same keep ratio.
        compare_model: A Qwen2.5-VL model spec for the comparison (default: ~100M random, 576 visual tokens).
        compare_keep: Share of visual tokens kept in the comparison (svlm budget = this fraction).
        compare_strategies: svlm strategies in the comparison (default: sparsevlm).
        compare_new_tokens: Output lengths of the comparison, each timed as its own group of rows against
            ``hf`` at that length (default: ``[max_new_tokens]``): decoding runs at about the same speed in
            both packages once their caches are pruned, so the advantage shrinks as outputs get longer.
        output: JSON file for the results (written atomically, with a CSV of all rows next to it).
        steady_memory: On CPU with glibc, keep freed memory in the process for the whole run (see
            :func:`steady_allocator`) so that no row pays page faults another row does not.
        decoder_check: Also time the model's own language model alone on the full prompt and on the
            prompt with ``min(budgets)`` visual tokens (:func:`decoder_ceiling`): the efficiency the
            decoder layers themselves allow, whatever does the pruning.
        progress: Show a tqdm progress bar on stderr.
    """
    from tqdm.auto import tqdm

    import svlm
    from svlm.models import load_vlm, resolve_device
    from svlm.results import atomic_write_csv, atomic_write_json

    if repeats < 1 or batch_size < 1 or warmup < 0 or max_new_tokens < 1:
        raise ValueError(
            "repeats, batch_size and max_new_tokens must be >= 1 and warmup >= 0; got "
            f"repeats={repeats}, batch_size={batch_size}, max_new_tokens={max_new_tokens}, warmup={warmup}"
        )
    extra_batches = [b for b in dict.fromkeys(batch_sizes or []) if b != batch_size]
    if any(b < 1 for b in extra_batches):
        raise ValueError(f"batch_sizes must be >= 1, got {batch_sizes}")
    if timer not in TIMERS:
        raise ValueError(f"timer must be one of {', '.join(TIMERS)}, got {timer!r}")
    layout = resolve_layout(weight_layout, resolve_device(device))
    compare_lengths = list(dict.fromkeys(compare_new_tokens or [max_new_tokens]))
    if any(int(n) < 1 for n in compare_lengths):
        raise ValueError(f"compare_new_tokens must all be >= 1, got {compare_new_tokens}")
    if not 0 < compare_keep < 1:
        raise ValueError(f"compare_keep is a share of visual tokens in (0, 1), got {compare_keep}")
    names = list(dict.fromkeys(strategies or ["dense", *svlm.available_strategies()]))
    for name in names:  # unknown names and arguments fail before any model loads
        if name == "dense":
            svlm.build_strategy(name)
        else:
            svlm.build_strategy(name, budget=64)
    budgets = list(budgets or [192, 128, 64])
    pypi_error = None
    if compare_sparsevlm:
        try:
            importlib.metadata.version("sparsevlm")
        except importlib.metadata.PackageNotFoundError:
            pypi_error = "the PyPI package sparsevlm is not installed (pip install 'svlm[bench]')"
    started = time.perf_counter()
    dev = resolve_device(device)
    if timer == "cpu" and dev.type != "cpu":
        raise ValueError(f"timer='cpu' measures CPU time and needs device='cpu', got device={str(dev)!r}")
    load_avg = os.getloadavg() if hasattr(os, "getloadavg") else None
    steady = steady_allocator() if steady_memory and dev.type == "cpu" else False

    with _threads(num_threads):
        vlm, processor, family = load_vlm(model, dtype, dev, attn_implementation)
        set_linear_layout(vlm, layout)
        inputs = {b: _inputs(processor, b, image_size, question, dev) for b in [batch_size, *extra_batches]}
        for batch_inputs in inputs.values():
            _cast_pixels(batch_inputs, vlm)
        runners: list[_Runner] = []
        for b in [batch_size, *extra_batches]:
            case = _Case("speed", vlm, inputs[b], dev, b, max_new_tokens, attn_implementation)
            runners.append(_hf_runner(case, _label("hf", None, b, batch_size)))
            points = [(n, None) if n == "dense" else (n, x) for n in names for x in budgets]
            if b != batch_size:
                points = [(n, min(budgets)) for n in batch_strategies or names if n != "dense"]
            for name, budget in dict.fromkeys(points):
                runners.append(_svlm_runner(case, _label(name, budget, b, batch_size), name, budget))
        compare_runners: list[_Runner] = []
        compare_inputs = pypi_sdpa = None
        if compare_sparsevlm and pypi_error is None:
            compare_runners, compare_inputs, pypi_sdpa = _comparison_runners(
                compare_model,
                dtype,
                dev,
                compare_lengths,
                compare_keep,
                compare_strategies or ["sparsevlm"],
                image_size,
                question,
                layout,
            )
        for runner in runners + compare_runners:
            runner.clock = TIMERS[timer]
        total = (warmup + repeats + 1) * (len(runners) + len(compare_runners))
        bar = tqdm(total=total, desc="svlm bench", disable=not progress, file=sys.stderr)
        with bar, torch.inference_mode():
            _measure(runners, warmup, repeats, bar, dev)
            if compare_runners:
                _measure(compare_runners, warmup, repeats, bar, dev)
            ceiling = None
            if decoder_check:
                prompt = int(inputs[batch_size]["input_ids"].shape[1])
                visual = _visual_counts(vlm, inputs[batch_size])[0]
                kept = prompt - visual + int(min(budgets))
                ceiling = decoder_ceiling(vlm, prompt, kept, repeats, TIMERS[timer], dev)
            floor = _decode_floor(runners + compare_runners, repeats, TIMERS[timer], dev)

        for runner in runners + compare_runners:
            if runner.error is None:
                _runner_flops(runner)
        rows = _rows(runners, batch_size)
        comparison = _comparison_rows(compare_runners) if compare_runners else []

    seconds = time.perf_counter() - started
    targets = _targets(rows, comparison, seconds, min(budgets), batch_size)
    meta = {
        "model": model,
        "family": family,
        "parameters": sum(p.numel() for p in vlm.parameters()),
        "device": str(dev),
        "device_name": _device_name(dev),
        "cpu_count": os.cpu_count(),
        "num_threads": num_threads if num_threads is not None else torch.get_num_threads(),
        "dtype": str(next(vlm.parameters()).dtype),
        "attn_implementation": attn_implementation,
        "weight_layout": layout,
        "prompt_tokens": int(inputs[batch_size]["input_ids"].shape[1]),
        "max_new_tokens": max_new_tokens,
        "timer": timer,
        "repeats": repeats,
        "warmup": warmup,
        "memory": memory_method(dev),
        "steady_allocator": steady,
        "load_average_start": load_avg,
        "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "seconds": seconds,
        "versions": _versions(),
        "command": "svlm " + " ".join(sys.argv[1:]) if sys.argv and "svlm" in sys.argv[0] else None,
    }
    notes = _comparison_notes(compare_inputs, compare_runners, compare_keep, pypi_error, pypi_sdpa)
    _print(meta, rows, comparison, targets, notes, ceiling, floor)
    if output is not None:
        output = Path(output)
        result = {
            "meta": meta,
            "rows": rows,
            "decoder_ceiling": ceiling,
            "decode_floor": floor,
            "comparison": comparison,
            "notes": notes,
            "targets": targets,
        }
        atomic_write_json(output, result)
        atomic_write_csv(output.with_suffix(".csv"), rows + comparison, columns=ROW_COLUMNS)
        print(f"results: {output.resolve()} (+ {output.with_suffix('.csv').name})")
    return rows


def _decode_floor(
    runners: list[_Runner], repeats: int, clock: Callable[[], float], device: torch.device
) -> dict[str, Any]:
    """Give every row what :func:`svlm.bandwidth.decode_floor_share` needs: its model's decode weight
    bytes and the read bandwidth of a probe that size (measured once per size); returns the JSON's
    ``decode_floor`` entry, per section."""
    from svlm.adapters import adapter_for

    weights: dict[int, int] = {}
    gbps: dict[int, float] = {}
    out: dict[str, Any] = {}
    for runner in runners:
        key = id(runner.model)
        if key not in weights:
            weights[key] = decode_weight_bytes(runner.model, adapter_for(runner.model).language_model)
        size = weights[key]
        if size not in gbps:
            gbps[size] = read_bandwidth_gbps(size, max(3, repeats), clock, device)
        runner.weight_bytes, runner.read_gbps = size, gbps[size]
        out.setdefault(
            runner.section,
            {
                "weight_bytes": size,
                "read_gbps": gbps[size],
                "weights_read_ms": 1e3 * size / (gbps[size] * 1e9),
            },
        )
    return out


def _rows(runners: list[_Runner], main_batch: int) -> list[dict[str, Any]]:
    """Rows of the speed table: speed-ups against ``hf`` at the same batch size, batching gains against the
    same strategy and budget at ``main_batch``."""
    references = {r.batch: r for r in runners if r.strategy == "hf"}
    by_label = {(r.strategy, r.budget_target): r for r in runners if r.batch == main_batch}
    rows = []
    for runner in runners:
        reference = references.get(runner.batch)
        dense_s = _median([x.prefill_s for x in reference.runs]) if reference else math.nan
        row = _row(runner, reference, dense_s)
        base = by_label.get((runner.strategy, runner.budget_target))
        if runner.batch != main_batch and base is not None and base.runs and runner.runs:
            per_sample_base = [x.prefill_s / base.batch for x in base.runs]
            per_sample = [x.prefill_s / runner.batch for x in runner.runs]
            row["batch_gain"] = paired_speedup(per_sample_base, per_sample)
        rows.append(row)
    return rows


# -- what the decoder itself allows ----------------------------------------------------------------------


def decoder_ceiling(
    model: nn.Module, full: int, kept: int, repeats: int, clock: Callable[[], float], device: torch.device
) -> dict[str, float]:
    """How much faster the model's own language model (no svlm at all) runs on ``kept`` tokens than on
    ``full`` tokens, against the FLOPs ratio of the two: the best ``efficiency`` any pruning method that
    calls these decoder layers can reach on this machine (small GEMMs and per-op overheads are its own).

    ``layer_ms`` is the same decoder's cost per layer at a range of token counts (one sample): where it
    stops falling as tokens get fewer, a layer costs what reading its weights and launching its ops cost,
    which bounds the efficiency of any schedule that leaves few tokens in many layers. ``linear_ms`` is the
    part of it spent in the layers' ``nn.Linear`` GEMMs alone (see :func:`linear_cost_ms`).
    """
    from svlm import flops
    from svlm.adapters import adapter_for

    adapter = adapter_for(model)
    lm = adapter.language_model
    config = model.config
    dtype = next(model.parameters()).dtype
    hidden = int(config.get_text_config(decoder=True).hidden_size)
    layers = int(config.get_text_config(decoder=True).num_hidden_layers)
    sizes = sorted({full, kept, *(n for n in LAYER_COST_TOKENS if n < full)})
    states = {n: torch.randn(1, n, hidden, device=device, dtype=dtype) for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for n in sizes:  # warm-up
        lm(inputs_embeds=states[n])
    for _ in range(repeats):
        for n in sizes:
            _sync(device)
            start = clock()
            lm(inputs_embeds=states[n])
            _sync(device)
            times[n].append(clock() - start)

    def decoder_flops(n: int, causal: bool) -> float:
        return flops.prefill_flops(
            config, [n] * layers, include_vision=False, include_lm_head=False, causal=causal
        ).total

    speedup = paired_speedup(times[full], times[kept])
    ratio = decoder_flops(full, False) / decoder_flops(kept, False)
    ratio_causal = decoder_flops(full, True) / decoder_flops(kept, True)
    return {
        "full_tokens": full,
        "kept_tokens": kept,
        "full_s": _median(times[full]),
        "kept_s": _median(times[kept]),
        "speedup": speedup,
        "flops_speedup": ratio,
        "flops_speedup_causal": ratio_causal,
        "efficiency": speedup / ratio,
        "efficiency_causal": speedup / ratio_causal,
        "layer_ms": {str(n): 1e3 * _median(times[n]) / layers for n in sizes},
        "linear_ms": linear_cost_ms(adapter.decoder_layers, sizes, repeats, clock, device, dtype),
    }


@torch.no_grad()
def linear_cost_ms(
    layers: Sequence[nn.Module],
    sizes: Sequence[int],
    repeats: int,
    clock: Callable[[], float],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Milliseconds per layer that the ``nn.Linear`` modules of ``layers`` take alone at each token count
    (``F.linear`` on random rows, weights as stored, every layer in turn so the weights stream from memory
    as in a forward pass); median over ``repeats``. The rest of ``layer_ms`` is attention, norms, rotary
    embeddings, activations and per-op dispatch."""
    linears = [[m for m in layer.modules() if isinstance(m, nn.Linear)] for layer in layers]
    widths = {m.in_features for group in linears for m in group}
    result = {}
    for n in sizes:
        rows = {w: torch.randn(n, w, device=device, dtype=dtype) for w in widths}

        def one_pass(rows: dict[int, torch.Tensor] = rows) -> None:
            for group in linears:
                for m in group:
                    F.linear(rows[m.in_features], m.weight, m.bias)

        one_pass()  # warm-up
        times = []
        for _ in range(max(1, repeats)):
            _sync(device)
            start = clock()
            one_pass()
            _sync(device)
            times.append(clock() - start)
        result[str(n)] = 1e3 * _median(times) / max(1, len(linears))
    return result


# -- the PyPI comparison --------------------------------------------------------------------------------


def _comparison_runners(
    spec: str,
    dtype: str,
    dev: torch.device,
    lengths: Sequence[int],
    keep: float,
    strategies: list[str],
    image_size: int | None,
    question: str,
    layout: str = "native",
) -> tuple[list[_Runner], Any, str]:
    """Rows on one Qwen2.5-VL model: dense SDPA (reference), dense eager, the PyPI package, svlm, once per
    output length in ``lengths``; both copies of the model get the same weight ``layout``."""
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
    inputs = _cast_pixels(_inputs(processor, 1, image_size, question, dev), sdpa)
    runners = []
    for n in lengths:
        case = _Case("comparison", sdpa, inputs, dev, 1, int(n), "sdpa")
        eager_case = _Case("comparison", eager, inputs, dev, 1, int(n), "eager")
        runners += [
            _hf_runner(case),
            _hf_runner(eager_case, "hf-eager"),
            _pypi_runner(eager_case, processor, keep),
        ]
        runners += [_svlm_runner(case, f"{name}-{keep:g}", name, keep) for name in strategies]
    return runners, inputs, _probe_pypi_on_sdpa(runners[0], processor, keep)


def _probe_pypi_on_sdpa(case: _Runner, processor: Any, keep: float) -> str:
    """Whether the PyPI package runs on the SDPA model (its README allows sdpa): one untimed call."""
    probe = _Case(case.section, case.model, case.inputs, case.device, 1, 1, case.attn_implementation)
    try:
        _pypi_runner(probe, processor, keep).call()
    except Exception as err:
        return f"fails with {type(err).__name__}: {err}".strip()
    finally:
        case.model.generation_config.min_new_tokens = None
    return "runs"


def _comparison_rows(runners: list[_Runner]) -> list[dict[str, Any]]:
    """One group of rows per output length, each against ``hf`` and the PyPI package at that length."""
    rows = []
    for n in dict.fromkeys(r.new_tokens for r in runners):
        rows += _comparison_group([r for r in runners if r.new_tokens == n])
    return rows


def _comparison_group(runners: list[_Runner]) -> list[dict[str, Any]]:
    reference = runners[0]
    pypi = next((r for r in runners if r.label == PYPI_LABEL and r.runs), None)
    dense_s = _median([x.prefill_s for x in reference.runs])
    rows = []
    for runner in runners:
        row = _row(runner, reference, dense_s)
        if pypi is not None and runner.runs:
            row["speedup_vs_pypi"] = paired_speedup(
                [x.generate_s for x in pypi.runs], [x.generate_s for x in runner.runs]
            )
            row["prefill_speedup_vs_pypi"] = paired_speedup(
                [x.prefill_s for x in pypi.runs], [x.prefill_s for x in runner.runs]
            )
        rows.append(row)
    return rows


def _comparison_notes(
    inputs: Any, runners: list[_Runner], keep: float, error: str | None, sdpa: str | None
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
        f"keep_n_vis={max(1, round(n_vis * keep))}, max_new_tokens=..., device=...) on the eager copy of the "
        "same model (it reads output_attentions, which only eager attention returns): "
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


def _print(
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


def bench_parser() -> Any:
    """The jsonargparse parser of ``svlm bench`` (``--config`` plus one option per :func:`bench` argument)."""
    import inspect

    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="svlm bench", description=inspect.getdoc(bench), exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="Path to a YAML config of these options.")
    parser.add_function_arguments(bench, as_positional=False)
    return parser


def main(args: Sequence[str]) -> int:
    """``svlm bench [options]``: parse, run, exit code 0."""
    parser = bench_parser()  # errors raise jsonargparse's ArgumentError; svlm.cli.main prints them
    cfg = parser.parse_args(list(args))
    cfg = parser.instantiate_classes(cfg).as_dict()
    cfg.pop("config", None)
    bench(**cfg)
    return 0

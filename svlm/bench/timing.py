"""The timing loop: one timed call (:class:`Runner`), its clock hooks, and the interleaved rounds.

Every row is first run ``warmup`` times, then the rows are run round-robin (``repeats`` rounds, alternating
direction) so that slow drift of a shared machine hits all rows alike; one untimed memory run per row ends it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from svlm.bench.memory import cache_bytes, peak_memory_mb
from svlm.engine.cache import cache_in, cache_out

__all__ = ["TIMERS", "ForwardClock", "Run", "Runner", "measure", "sync"]


TIMERS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def sync(device: torch.device) -> None:
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


class ForwardClock:
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

    def __enter__(self) -> ForwardClock:
        self._handles.append(
            self.model.register_forward_pre_hook(self._start, with_kwargs=True, prepend=True)
        )
        tower = _vision_tower(self.model)
        if tower is not None:
            self._handles.append(tower.register_forward_pre_hook(self._vision, prepend=True))
        return self

    def _vision(self, module: nn.Module, args: tuple) -> None:
        if self.vision_start is None and not self.ends:  # only the prefill's (first) encoder call
            sync(self.device)
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
        sync(self.device)
        self.starts.append(self.clock())
        self.cpu_starts.append(time.process_time())
        self._post = module.register_forward_hook(self._end, with_kwargs=True, always_call=True)

    def _end(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        sync(self.device)
        self.ends.append(self.clock())
        self.cpu_ends.append(time.process_time())
        self._post.remove()
        self._post = None
        if len(self.ends) == 1:
            self.kv_after_prefill = cache_bytes(cache_out(output))


@dataclass
class Runner:
    """One row: a callable that generates ``new_tokens`` tokens for ``batch`` samples."""

    label: str
    section: str
    strategy: str
    call: Callable[[], Any] | None
    model: nn.Module
    inputs: Any
    device: torch.device
    batch: int
    new_tokens: int
    budget_target: float | None = None
    attn_implementation: str = "sdpa"
    execution: str = "eager"  # how svlm runs the decoder layers (svlm.sparsify's execution)
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
    last_output: torch.Tensor | None = None  # the ids the last call generated

    def run(self) -> Run:
        with ForwardClock(self.model, self.device, self.clock) as clock:
            sync(self.device)
            start = self.clock()
            assert self.call is not None
            output = self.call()
            sync(self.device)
            end = self.clock()
        if isinstance(output, torch.Tensor):  # generated ids: fast modes are checked against eager's
            self.last_output = output
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

    def memory_mb(self) -> float:
        """Extra memory (MiB) one call needs at its peak (an untimed run)."""
        return peak_memory_mb(self.run, self.device)


def measure(runners: list[Runner], warmup: int, repeats: int, progress: Any, device) -> None:
    """Warm up every row, run the rounds interleaved (alternating order), then one memory run per row.

    A row whose call raises (e.g. a budget its strategy cannot meet on this model) records the error and
    drops out; the other rows go on.
    """

    def attempt(runner: Runner, fn: Callable[[], Any]) -> None:
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

    def memory(r: Runner) -> None:
        r.peak_mem_mb = r.memory_mb()

    for runner in runners:
        if runner.error is None:
            attempt(runner, lambda r=runner: memory(r))

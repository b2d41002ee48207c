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

The optional comparison runs the PyPI package ``sparsevlm`` next to svlm on one Qwen2.5-VL model, at the
same keep ratio, in the same rounds; the package runs in a process of its own (:mod:`svlm.bench.pypi_worker`).

Where things are: :mod:`~svlm.bench.command` (``bench()``), :mod:`~svlm.bench.timing` (the timing loop),
:mod:`~svlm.bench.runners` (what each row calls), :mod:`~svlm.bench.memory`, :mod:`~svlm.bench.decoder` (the
decoder-alone probe), :mod:`~svlm.bench.floor` (memory-bandwidth floor of decoding), :mod:`~svlm.bench.pypi`
(the PyPI comparison), :mod:`~svlm.bench.rows` (rows, FLOPs, speed-ups), :mod:`~svlm.bench.targets`,
:mod:`~svlm.bench.report` (printing), :mod:`~svlm.bench.cli` (``svlm bench``).
"""

from svlm.bench.cli import bench_parser, main
from svlm.bench.command import bench
from svlm.bench.decoder import decoder_ceiling, linear_cost_ms
from svlm.bench.memory import cache_bytes, peak_memory_mb, steady_allocator
from svlm.bench.pypi import COMPARE_MODEL
from svlm.bench.rows import ROW_COLUMNS
from svlm.bench.stats import efficiency, paired_speedup
from svlm.results import format_table

__all__ = [
    "COMPARE_MODEL",
    "ROW_COLUMNS",
    "bench",
    "bench_parser",
    "cache_bytes",
    "decoder_ceiling",
    "efficiency",
    "format_table",
    "linear_cost_ms",
    "main",
    "paired_speedup",
    "peak_memory_mb",
    "steady_allocator",
]

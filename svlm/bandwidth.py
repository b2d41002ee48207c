"""The memory-bandwidth floor of decoding: how fast a decoding step could be if it only read memory.

A decoding step runs every decoder layer on one new token per sample, so its GEMMs are matrix-vector
products that read each weight once and do two FLOPs per weight read: the step is bound by how fast the
language model's weights (and the KV cache) stream from memory, not by FLOPs. ``svlm bench`` reports, per
row, ``decode_floor`` = (bytes one step must read / the machine's measured read bandwidth) / the measured
step time. 1.0 would be a step that costs only its memory traffic; the rest of a step is per-op work
(norms, rotary embeddings, attention, dispatch) that FLOPs and bytes do not show.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["decode_floor_share", "decode_weight_bytes", "read_bandwidth_gbps"]

#: Probes smaller than this are timed as several back-to-back reductions per repeat, so that each timed
#: span is long enough for the clock; the probe is at most ``MAX_PROBE_BYTES``.
TIMED_BYTES = 64 << 20
MAX_PROBE_BYTES = 1 << 30


def decode_weight_bytes(model: nn.Module, language_model: nn.Module) -> int:
    """Bytes of parameters one decoding step reads: the language model's (its decoder layers and final
    norm) and the output head's, but not the input embedding table, of which a step reads one row per
    sample. A table tied to the output head is read in full by the head and counted once."""
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    skip = {embedding.weight.data_ptr()} if embedding is not None else set()
    seen: dict[int, int] = {}
    modules = [language_model] + ([head] if head is not None else [])
    for module in modules:
        for param in module.parameters():
            ptr = param.data_ptr()
            if module is language_model and ptr in skip:
                continue
            seen[ptr] = param.numel() * param.element_size()
    return sum(seen.values())


@torch.no_grad()
def read_bandwidth_gbps(nbytes: int, repeats: int, clock: Callable[[], float], device: torch.device) -> float:
    """Read bandwidth (GB/s, 1e9 bytes) of reductions over a buffer of ``nbytes`` (at least 1 MiB, at most
    ``MAX_PROBE_BYTES``), with the run's thread count; median of ``repeats`` after a warm-up. Sized like
    the model's weights, the probe sees the cache level a decoding step reads them from: a model that fits
    in cache is read from there at every step, one that does not from memory."""
    size = min(max(int(nbytes), 1 << 20), MAX_PROBE_BYTES)
    buffer = torch.ones(size // 4, dtype=torch.float32, device=device)
    passes = max(1, math.ceil(TIMED_BYTES / buffer.nbytes))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    buffer.sum()  # warm-up: pages are touched, kernels chosen
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        start = clock()
        for _ in range(passes):
            buffer.sum()
        sync(device)
        times.append((clock() - start) / passes)
    elapsed = statistics.median(times)
    return buffer.nbytes / elapsed / 1e9 if elapsed > 0 else math.nan


def decode_floor_share(
    weight_bytes: int, kv_bytes: int | None, gbps: float, decode_tok_s: float, batch: int
) -> float:
    """Memory-bound step time / measured step time. A step reads the weights once for the whole batch and
    the KV cache (``kv_bytes``: what the cache holds when decoding starts, ``None`` counts as 0); it makes
    ``batch`` tokens, so the measured step is ``batch / decode_tok_s`` seconds."""
    if not (gbps > 0 and decode_tok_s > 0 and batch > 0) or not math.isfinite(decode_tok_s):
        return math.nan
    floor_s = (weight_bytes + (kv_bytes or 0)) / (gbps * 1e9)
    return floor_s / (batch / decode_tok_s)

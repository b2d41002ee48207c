"""Memory: peak memory of a call, KV-cache bytes, and a steady CPU allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import re
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["cache_bytes", "memory_method", "peak_memory_mb", "steady_allocator"]


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
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
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

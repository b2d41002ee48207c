"""The memory-bandwidth floor of decoding: what a step reads, and how fast this machine reads it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from svlm.bandwidth import decode_weight_bytes, read_bandwidth_gbps
from svlm.bench.timing import Runner

__all__ = ["decode_floor"]


def decode_floor(
    runners: list[Runner], repeats: int, clock: Callable[[], float], device: torch.device
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

"""Pure arithmetic of the bench: paired speed-ups, efficiency, medians."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["efficiency", "median", "paired_speedup"]


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


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan

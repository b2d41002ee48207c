"""The unpruned baseline."""

from __future__ import annotations

from svlm.strategies.base import Strategy
from svlm.strategies.registry import register_strategy


@register_strategy("dense")
class Dense(Strategy):
    """No pruning: the model runs exactly as transformers runs it (the reference of every curve)."""

    def __init__(self) -> None:
        super().__init__(budget=None)

    def extra_repr(self) -> str:
        return ""

"""Pruning strategies. Importing this package registers the built-in ones."""

from svlm.strategies import (  # noqa: F401  (registration)
    dense,
    divprune,
    evidence_oracle,
    fastv,
    pooling,
    pyramiddrop,
    random,
    sparsevlm,
    visionzip,
    vtc_cls,
)
from svlm.strategies.base import (
    BudgetError,
    LayerView,
    PrefillContext,
    Selection,
    Strategy,
    keep_top_visual,
    pack_merged,
    parse_budget,
    schedule_counts,
)
from svlm.strategies.registry import available_strategies, build_strategy, register_strategy, strategy_class

__all__ = [
    "BudgetError",
    "LayerView",
    "PrefillContext",
    "Selection",
    "Strategy",
    "available_strategies",
    "build_strategy",
    "keep_top_visual",
    "pack_merged",
    "parse_budget",
    "register_strategy",
    "schedule_counts",
    "strategy_class",
]

"""svlm: training-free visual-token pruning for Hugging Face vision-language models."""

from svlm.adapters import FAMILIES, adapter_for
from svlm.engine.cache import PrunedCache
from svlm.engine.layout import linear_layout, set_linear_layout
from svlm.report import Report
from svlm.sparse import SparseModel, sparsify
from svlm.strategies import (
    BudgetError,
    LayerView,
    PrefillContext,
    Selection,
    Strategy,
    available_strategies,
    build_strategy,
    keep_top_visual,
    register_strategy,
    schedule_counts,
)

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "BudgetError",
    "LayerView",
    "PrefillContext",
    "PrunedCache",
    "Report",
    "Selection",
    "SparseModel",
    "Strategy",
    "adapter_for",
    "available_strategies",
    "build_strategy",
    "keep_top_visual",
    "linear_layout",
    "register_strategy",
    "schedule_counts",
    "set_linear_layout",
    "sparsify",
]

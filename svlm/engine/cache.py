"""A ``DynamicCache`` that remembers how long the prompt was before pruning.

Each layer's cache holds only the tokens that layer saw, so after pre-LLM pruning even layer 0 holds fewer
entries than the prompt had. transformers derives decode positions and mask sizes from
``get_seq_length()``; this cache answers with the *logical* length (original prompt + generated tokens),
so positions continue after the original prompt whatever was pruned.

transformers 5.24 renamed the cache argument and output field ``past_key_values`` to ``cache``;
``CACHE_KWARG``, ``cache_in`` and ``cache_out`` let svlm work with either spelling.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaModel

# the keyword transformers' models take their KV cache by (and return it as)
CACHE_KWARG: str = (
    "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
)


def cache_in(kwargs: dict[str, Any]) -> Any:
    """The KV cache passed in a model or layer call's keyword arguments (either spelling), or None."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def cache_out(output: Any) -> Any:
    """The KV cache a model returned (``output.cache`` or ``output.past_key_values``), or None."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


class PrunedCache(DynamicCache):
    """Per-layer physical caches of different lengths behind the logical length transformers expects."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pruned_tokens: list[int] = []  # per layer: prompt tokens dropped before that layer

    def set_pruned(self, pruned_tokens: list[int]) -> None:
        self.pruned_tokens = list(pruned_tokens)

    def _offset(self, layer_idx: int) -> int:
        return self.pruned_tokens[layer_idx] if layer_idx < len(self.pruned_tokens) else 0

    def physical_length(self, layer_idx: int) -> int:
        return super().get_seq_length(layer_idx)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        length = super().get_seq_length(layer_idx)
        return length + self._offset(layer_idx) if length else length

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        kv_length, kv_offset = super().get_mask_sizes(query_length, layer_idx)
        return kv_length + self._offset(layer_idx) if self.physical_length(
            layer_idx
        ) else kv_length, kv_offset

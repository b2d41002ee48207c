"""A ``DynamicCache`` that remembers how long the prompt was before pruning, in buffers that grow in place.

Each layer's cache holds only the tokens that layer saw, so after pre-LLM pruning even layer 0 holds fewer
entries than the prompt had. transformers derives decode positions and mask sizes from
``get_seq_length()``; this cache answers with the *logical* length (original prompt + generated tokens),
so positions continue after the original prompt whatever was pruned.

transformers 5.24 renamed the cache argument and output field ``past_key_values`` to ``cache``;
``CACHE_KWARG``, ``cache_in`` and ``cache_out`` let svlm work with either spelling.

transformers' ``DynamicLayer`` appends with ``torch.cat``, i.e. every decoding step copies the layer's whole
cache. :class:`BufferedLayer` keeps spare slots behind its keys and values and writes each new token into
them; on the 32-layer benchmark model (one CPU thread) that saved 3 ms of a ~47 ms step with 168 cached
tokens and 12 ms with 600. Like ``DynamicLayer`` it stores the prompt's keys and values as they come, so
the prefill copies nothing; the first append moves them into the buffer.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
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
    fields = getattr(output, "__dataclass_fields__", None)
    if cache is None and (fields is None or "past_key_values" in fields):  # the old name, where it is a field
        cache = getattr(output, "past_key_values", None)  # (else a deprecated alias that logs a warning)
    return cache


class BufferedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of larger buffers, so appending writes only
    the new tokens instead of copying the whole cache.

    ``keys``/``values`` keep ``DynamicLayer``'s meaning (``[batch, heads, length, head_dim]``, the cached
    tokens only); they are strided views whose rows are contiguous, which SDPA, eager and FlashAttention
    read as they are. The first update (the prompt) is stored as it comes, as ``DynamicLayer`` does, so a
    prefill copies nothing; the first append moves it into a buffer with room for ``reserve`` tokens after
    the prompt (``generate`` passes ``max_new_tokens``, so the cache ends exactly as large as transformers'
    own). Anything that replaces ``keys``/``values`` (``crop`` keeps the view; ``reorder_cache``,
    ``batch_select_indices``, offloading make new tensors) is noticed at the next ``update``, which then
    starts a new buffer; a full buffer grows by a quarter (at least ``min_spare`` slots).
    """

    min_spare = 16
    _layer_type = None  # never registered in transformers' layer-type mapping: DynamicCache stays as it is

    def __init__(self, reserve: int = 0) -> None:
        super().__init__()
        self.reserve = max(0, int(reserve))

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.get_seq_length()
        new = old + key_states.shape[-2]
        if old == 0 and self._key_buffer is None:  # the prompt: kept as it is until the first append
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        if not self._fits(key_states, value_states, new):
            self._grow(key_states, value_states, old, new)
        self._key_buffer[..., old:new, :].copy_(key_states)
        self._value_buffer[..., old:new, :].copy_(value_states)
        self.keys = self._key_buffer[..., :new, :]
        self.values = self._value_buffer[..., :new, :]
        return self.keys, self.values

    def _fits(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int) -> bool:
        """Whether the current buffers still back ``keys``/``values`` and have room for ``length`` slots."""
        kb, vb = getattr(self, "_key_buffer", None), getattr(self, "_value_buffer", None)
        if kb is None or vb is None or kb.shape[-2] < length:
            return False
        for buffer, states, cached in ((kb, key_states, self.keys), (vb, value_states, self.values)):
            if buffer.shape[:2] != states.shape[:2] or buffer.shape[-1] != states.shape[-1]:
                return False
            if buffer.dtype != states.dtype or buffer.device != states.device:
                return False
            if cached.numel() and (
                cached.data_ptr() != buffer.data_ptr() or cached.stride() != buffer.stride()
            ):
                return False
        return True

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, old: int, length: int) -> None:
        if getattr(self, "_key_buffer", None) is None and self.reserve:  # the first buffer: prompt + reserve
            capacity = max(length, old + self.reserve)
        else:
            capacity = length + max(self.min_spare, length // 4)
        buffers = []
        for states, cached in ((key_states, self.keys), (value_states, self.values)):
            b, h, _, d = states.shape
            buffer = states.new_empty(b, h, capacity, d)
            if old:
                buffer[..., :old, :].copy_(cached)
            buffers.append(buffer)
        self._key_buffer, self._value_buffer = buffers

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


class PrunedCache(DynamicCache):
    """Per-layer physical caches of different lengths behind the logical length transformers expects.

    Full-attention layers are :class:`BufferedLayer` (sliding-window layers stay transformers' own), each
    with room for ``reserve_tokens`` more tokens after its first update.
    """

    def __init__(self, *args, reserve_tokens: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.layers = [_buffered(layer, reserve_tokens) for layer in self.layers]
        if self.layer_class_to_replicate is DynamicLayer:
            self.layer_class_to_replicate = functools.partial(BufferedLayer, reserve_tokens)
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


def _buffered(layer: object, reserve: int = 0) -> object:
    """An empty plain ``DynamicLayer`` becomes a :class:`BufferedLayer`; any other layer is kept."""
    if type(layer) is DynamicLayer and not layer.is_initialized:
        return BufferedLayer(reserve)
    return layer

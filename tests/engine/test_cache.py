"""The cache-keyword shim: svlm reads the KV cache under transformers' old and new spellings."""

from __future__ import annotations

import inspect

from transformers import LlamaConfig
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel

from svlm.engine.cache import CACHE_KWARG, PrunedCache, cache_in, cache_out


def test_cache_kwarg_is_what_the_installed_transformers_takes() -> None:
    assert CACHE_KWARG in inspect.signature(LlamaModel.forward).parameters


def test_cache_is_found_under_either_spelling() -> None:
    cache = PrunedCache(config=LlamaConfig(num_hidden_layers=2))
    assert cache_in({"cache": cache}) is cache
    assert cache_in({"past_key_values": cache, "use_cache": True}) is cache
    assert cache_in({"input_ids": None}) is None
    output = BaseModelOutputWithPast(**{CACHE_KWARG: cache})
    assert cache_out(output) is cache
    assert cache_out(BaseModelOutputWithPast()) is None

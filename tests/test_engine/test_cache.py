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


# -- BufferedLayer: appends in place, same contents as transformers' DynamicLayer -------------------------

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, DynamicLayer  # noqa: E402

from svlm.engine.cache import BufferedLayer  # noqa: E402


def _kv(n: int, seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, n, 4, generator=g), torch.randn(batch, 3, n, 4, generator=g)


def test_buffered_layer_matches_dynamic_layer_and_writes_in_place() -> None:
    buffered, plain = BufferedLayer(reserve=7), DynamicLayer()
    pointers = set()
    for step, n in enumerate([7, 1, 1, 3, 1, 1]):
        k, v = _kv(n, step)
        got, expected = buffered.update(k, v), plain.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        assert buffered.get_seq_length() == plain.get_seq_length()
        if step == 0:  # the prompt is stored as it comes: the prefill copies nothing
            assert got[0] is k and got[1] is v
        else:
            pointers.add(buffered.keys.data_ptr())
    assert len(pointers) == 1  # 14 tokens fit the first buffer (7 + 7 reserved): one move, then in place


def test_buffered_layer_grows_and_survives_transformers_edits() -> None:
    layer, plain = BufferedLayer(), DynamicLayer()
    for step in range(40):  # past the first buffer: grows, keeps every token
        k, v = _kv(1 if step else 5, step)
        layer.update(k, v)
        plain.update(k, v)
    assert torch.equal(layer.keys, plain.keys) and torch.equal(layer.values, plain.values)
    for edit in (
        lambda c: c.crop(-3),
        lambda c: c.batch_select_indices(torch.tensor([1])),
        lambda c: c.batch_repeat_interleave(2),
        lambda c: c.reorder_cache(torch.tensor([1, 0])),
    ):
        edit(layer)
        edit(plain)
        k, v = _kv(2, 99, batch=plain.keys.shape[0])
        assert torch.equal(layer.update(k, v)[0], plain.update(k, v)[0])
        assert torch.equal(layer.values, plain.values)
    layer.reset()
    assert layer.get_seq_length() == 0
    k, v = _kv(4, 5)
    assert torch.equal(layer.update(k, v)[0], k)


def test_pruned_cache_uses_buffered_layers_without_touching_transformers() -> None:
    before = dict(DYNAMIC_LAYER_TYPE_MAPPING)
    cache = PrunedCache(config=LlamaConfig(num_hidden_layers=3))
    assert [type(layer) for layer in cache.layers] == [BufferedLayer] * 3
    lazy = PrunedCache(reserve_tokens=5).layer_class_to_replicate()  # lazily created layers too
    assert type(lazy) is BufferedLayer and lazy.reserve == 5
    assert DYNAMIC_LAYER_TYPE_MAPPING == before  # no process-wide registration


@pytest.mark.parametrize("strategy", ["dense", "fastv"])
@torch.no_grad()
def test_generate_with_buffered_cache_equals_transformers_cache(make_tiny_vlm, images, questions, strategy):
    """Greedy tokens and every step's scores are the same whether the layers append by buffer or by cat."""
    import svlm
    import svlm.engine.cache as cache_module

    tiny = make_tiny_vlm("qwen2_5_vl")
    inputs = tiny.inputs(images, questions)
    sparse = svlm.sparsify(tiny.model, strategy, **({} if strategy == "dense" else {"budget": 0.6}))
    kwargs = {"max_new_tokens": 6, "do_sample": False, "output_scores": True, "return_dict_in_generate": True}
    buffered = sparse.generate(**inputs, **kwargs)
    original = cache_module._buffered
    cache_module._buffered = lambda layer, reserve=0: layer  # transformers' own DynamicLayer
    try:
        plain = sparse.generate(**inputs, **kwargs)
    finally:
        cache_module._buffered = original
    assert torch.equal(buffered.sequences, plain.sequences)
    for a, b in zip(buffered.scores, plain.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_reserve_sizes_the_first_buffer_exactly() -> None:
    layer = BufferedLayer(reserve=3)
    k, v = _kv(10, 0)
    layer.update(k, v)
    assert layer.keys.data_ptr() == k.data_ptr()  # the prompt as it came
    layer.update(*_kv(1, 1))  # the first append moves it into the buffer
    pointer = layer.keys.data_ptr()
    assert layer.keys.untyped_storage().nbytes() == k[..., :1, :].numel() * 13 * 4  # 10 + 3 slots
    for step in range(2):
        layer.update(*_kv(1, step + 2))
    assert layer.keys.data_ptr() == pointer and layer.get_seq_length() == 13  # no copy for the reserved
    layer.update(*_kv(1, 9))
    assert layer.keys.data_ptr() != pointer and layer.get_seq_length() == 14  # then it grows


@torch.no_grad()
def test_generate_reserves_max_new_tokens(make_tiny_vlm, images, questions) -> None:
    """svlm's generate sizes every layer's buffer for the prompt it kept plus max_new_tokens: no regrowth,
    and the cache holds no more than transformers' own would at the end."""
    import svlm
    from svlm.bench import cache_bytes

    tiny = make_tiny_vlm("llava")
    inputs = tiny.inputs(images, questions)
    sparse = svlm.sparsify(tiny.model, "fastv", budget=0.6)
    out = sparse.generate(
        **inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True
    )
    cache = cache_out(out)
    for layer in cache.layers:
        assert layer.keys.shape[-2] == layer._key_buffer.shape[-2] - 1  # the last token is never cached
    expected = sum(
        2 * layer.keys[..., :1, :].numel() * 4 * (layer.keys.shape[-2] + 1) for layer in cache.layers
    )
    assert cache_bytes(cache) == expected

"""svlm.flops against torch's FlopCounterMode on tiny models of every family (eager attention).

The models are built here from transformers configs (no hub, no svlm.testing) so that the accounting is
checked against the real modeling code: vision tower, projector/merger, decoder layers and lm_head.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from svlm import flops
from svlm.engine.cache import CACHE_KWARG, cache_out

# On transformers 5.23 the analytic count equals FlopCounterMode exactly for every family, so the check is
# tight enough to catch a single missing token (e.g. CLIP's CLS). A future transformers version that adds
# small matmuls (e.g. RoPE frequency products) may need this widened; the project target is 5%.
REL_TOL = 1e-6

IMAGE_TOKEN = 100
QWEN_IMAGE, QWEN_VIDEO, QWEN_START, QWEN_END = 101, 102, 103, 104

LLAMA_TEXT = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
CLIP_VISION = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=56,
    patch_size=14,
)
QWEN_TEXT = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    bos_token_id=1,
    eos_token_id=2,
    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
)
QWEN_IDS = dict(
    image_token_id=QWEN_IMAGE,
    video_token_id=QWEN_VIDEO,
    vision_start_token_id=QWEN_START,
    vision_end_token_id=QWEN_END,
)


def measured(model: torch.nn.Module, **inputs) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()


def assert_close(analytic: float, counted: int, rel: float = REL_TOL) -> None:
    assert counted > 0
    assert analytic == pytest.approx(counted, rel=rel), (
        f"analytic {analytic:.6g} vs FlopCounterMode {counted}"
    )


def text_ids(length: int, image_slice: slice, image_token: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 100, (1, length), generator=gen)
    ids[0, image_slice] = image_token
    return ids


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def llava():
    torch.manual_seed(0)
    cfg = LlavaConfig(text_config=LLAMA_TEXT, vision_config=CLIP_VISION, image_token_index=IMAGE_TOKEN)
    return LlavaForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def llava_next():
    torch.manual_seed(0)
    cfg = LlavaNextConfig(
        text_config=LLAMA_TEXT,
        vision_config=CLIP_VISION,
        image_token_index=IMAGE_TOKEN,
        image_grid_pinpoints=[[56, 56], [56, 112], [112, 56], [112, 112]],
    )
    return LlavaNextForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def qwen2_vl():
    torch.manual_seed(0)
    vision = dict(
        depth=2,
        embed_dim=32,
        hidden_size=64,
        num_heads=4,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    cfg = Qwen2VLConfig(text_config=QWEN_TEXT, vision_config=vision, **QWEN_IDS)
    return Qwen2VLForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def qwen2_5_vl():
    torch.manual_seed(0)
    vision = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=48,
        out_hidden_size=64,
        num_heads=4,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,  # 2x2 merged tokens per window: partial windows on the grids below
        fullatt_block_indexes=[1],
    )
    cfg = Qwen2_5_VLConfig(text_config=QWEN_TEXT, vision_config=vision, **QWEN_IDS)
    return Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()


def qwen_inputs(model, grids: list[tuple[int, int, int]], n_text: int = 10) -> tuple[dict, int]:
    """input_ids with one <vision_start><image_pad>*k block per image, pixel patches and mm_token_type_ids."""
    vc = model.config.vision_config
    merge, patch, tp = vc.spatial_merge_size, vc.patch_size, vc.temporal_patch_size
    pieces, n_patches = [], 0
    for t, h, w in grids:
        pieces.append(torch.tensor([QWEN_START] + [QWEN_IMAGE] * (t * h * w // merge**2) + [QWEN_END]))
        n_patches += t * h * w
    text = torch.randint(10, 100, (n_text,), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([text[:3], *pieces, text[3:]])[None]
    type_ids = (ids == QWEN_IMAGE).int()
    gen = torch.Generator().manual_seed(2)
    inputs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(n_patches, 3 * tp * patch * patch, generator=gen),
        image_grid_thw=torch.tensor(grids),
        mm_token_type_ids=type_ids,
    )
    return inputs, ids.shape[1]


# --------------------------------------------------------------------------- full forward, per family
def test_llava_forward_matches_flop_counter(llava):
    length = 30
    pixel_values = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    ids = text_ids(length, slice(5, 5 + 16), IMAGE_TOKEN)  # (56/14)^2 = 16 image tokens
    counted = measured(llava, input_ids=ids, pixel_values=pixel_values)
    est = flops.prefill_flops(llava.config, [length] * 2, family="llava", include_lm_head="all")
    assert_close(est.total, counted)
    assert est.vision > 0 and est.projector > 0 and est.scoring == 0


def test_llava_batch_is_sum_of_samples(llava):
    length = 24
    pixel_values = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    ids = torch.cat([text_ids(length, slice(2, 18), IMAGE_TOKEN)] * 2)
    counted = measured(llava, input_ids=ids, pixel_values=pixel_values)
    one = flops.prefill_flops(llava.config, [length] * 2, include_lm_head="all")
    assert_close(sum([one, one]).total, counted)


def test_llava_next_forward_matches_flop_counter(llava_next):
    image_size = (50, 100)  # (height, width) -> base image + 2 crops
    crops = flops.llava_next_num_crops(llava_next.config, image_size)
    assert crops == 3
    gen = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, crops, 3, 56, 56, generator=gen)
    sizes = torch.tensor([image_size])
    with torch.no_grad():
        feats = llava_next.model.get_image_features(pixel_values, sizes).pooler_output
    n_image = sum(f.shape[0] for f in feats)  # unpadded grid + newlines + base image
    length = n_image + 12
    ids = text_ids(length, slice(4, 4 + n_image), IMAGE_TOKEN)
    counted = measured(llava_next, input_ids=ids, pixel_values=pixel_values, image_sizes=sizes)

    by_sizes = flops.prefill_flops(
        llava_next.config, [length] * 2, include_lm_head="all", image_sizes=[image_size]
    )
    by_crops = flops.prefill_flops(
        llava_next.config, [length] * 2, include_lm_head="all", num_vision_patches=crops
    )
    assert by_sizes.total == by_crops.total
    assert_close(by_sizes.total, counted)


def test_qwen2_vl_forward_matches_flop_counter(qwen2_vl):
    grids = [(1, 4, 6)]
    inputs, length = qwen_inputs(qwen2_vl, grids)
    counted = measured(qwen2_vl, **inputs)
    est = flops.prefill_flops(
        qwen2_vl.config, [length] * 2, family="qwen2_vl", include_lm_head="all", image_grid_thw=grids
    )
    assert_close(est.total, counted)


@pytest.mark.parametrize("grids", [[(1, 6, 8)], [(1, 6, 8), (1, 4, 4)]], ids=["one_image", "two_images"])
def test_qwen2_5_vl_forward_matches_flop_counter(qwen2_5_vl, grids):
    inputs, length = qwen_inputs(qwen2_5_vl, grids)
    counted = measured(qwen2_5_vl, **inputs)
    est = flops.prefill_flops(
        qwen2_5_vl.config, [length] * 2, include_lm_head="all", image_grid_thw=torch.tensor(grids)
    )
    assert_close(est.total, counted)


def test_qwen2_5_vl_windows_are_counted(qwen2_5_vl):
    """Window attention must be cheaper than full attention in the non-full blocks, and match the tower."""
    grids = [(1, 6, 8)]
    inputs, _ = qwen_inputs(qwen2_5_vl, grids)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        qwen2_5_vl.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    vision, merger = flops.vision_flops(qwen2_5_vl.config, image_grid_thw=grids)
    assert_close(vision + merger, counter.get_total_flops(), rel=REL_TOL)

    all_full = qwen2_5_vl.config.vision_config.to_dict()
    all_full["fullatt_block_indexes"] = [0, 1, 2]
    cfg_full = Qwen2_5_VLConfig(text_config=QWEN_TEXT, vision_config=all_full, **QWEN_IDS)
    vision_full, _ = flops.vision_flops(cfg_full, image_grid_thw=grids)
    assert vision_full > vision


# ---------------------------------------------------------- batches: vision_kwargs assigns images to samples
def _pad_to(ids: torch.Tensor, length: int) -> torch.Tensor:
    filler = torch.randint(10, 100, (length - ids.shape[1],), generator=torch.Generator().manual_seed(3))
    return torch.cat([ids[0], filler])[None]


def _batch_matches(model, inputs: dict, length: int) -> None:
    counted = measured(model, **inputs)
    per_sample = [
        flops.prefill_flops(
            model.config, [length] * 2, include_lm_head="all", **flops.vision_kwargs(model.config, inputs, b)
        )
        for b in range(inputs["input_ids"].shape[0])
    ]
    assert_close(sum(per_sample).total, counted)


def test_qwen_batch_with_uneven_images(qwen2_5_vl):
    samples = [qwen_inputs(qwen2_5_vl, [(1, 6, 8), (1, 4, 4)]), qwen_inputs(qwen2_5_vl, [(1, 4, 6)])]
    length = max(n for _, n in samples)
    ids = torch.cat([_pad_to(inp["input_ids"], length) for inp, _ in samples])
    inputs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.cat([inp["pixel_values"] for inp, _ in samples]),
        image_grid_thw=torch.cat([inp["image_grid_thw"] for inp, _ in samples]),
        mm_token_type_ids=(ids == QWEN_IMAGE).int(),
    )
    assert flops.vision_kwargs(qwen2_5_vl.config, inputs, 1) == {"image_grid_thw": [(1, 4, 6)]}
    _batch_matches(qwen2_5_vl, inputs, length)


def test_llava_next_batch_with_different_sizes(llava_next):
    sizes = [(50, 100), (56, 56)]  # 3 crops and 2 crops
    crops = [flops.llava_next_num_crops(llava_next.config, s) for s in sizes]
    assert crops == [3, 2]
    pixel_values = torch.randn(2, max(crops), 3, 56, 56, generator=torch.Generator().manual_seed(0))
    size_tensor = torch.tensor(sizes)
    with torch.no_grad():
        feats = llava_next.model.get_image_features(pixel_values, size_tensor).pooler_output
    n_image = [f.shape[0] for f in feats]
    length = max(n_image) + 10
    ids = torch.cat([text_ids(length, slice(2, 2 + n), IMAGE_TOKEN) for n in n_image])
    inputs = dict(input_ids=ids, pixel_values=pixel_values, image_sizes=size_tensor)
    assert flops.vision_kwargs(llava_next.config, inputs, 1) == {"image_sizes": [[56, 56]]}
    _batch_matches(llava_next, inputs, length)


def test_vision_kwargs_llava_and_text_only(llava, qwen2_vl):
    ids = torch.cat([text_ids(30, slice(5, 21), IMAGE_TOKEN), text_ids(30, slice(0, 0), IMAGE_TOKEN)])
    assert flops.vision_kwargs(llava.config, {"input_ids": ids}, 0) == {"num_vision_patches": 1}
    assert flops.vision_kwargs(llava.config, {"input_ids": ids}, 1) == {"num_vision_patches": 0}
    text_only = flops.prefill_flops(llava.config, [30, 30], num_vision_patches=0)
    assert text_only.vision == 0 and text_only.projector == 0
    inputs, _ = qwen_inputs(qwen2_vl, [(1, 4, 6)])
    inputs["image_grid_thw"] = torch.tensor([[1, 4, 4]])  # placeholders no longer match the grid
    with pytest.raises(ValueError, match="cannot match image_grid_thw"):
        flops.vision_kwargs(qwen2_vl.config, inputs, 0)
    with pytest.raises(ValueError, match="out of range"):
        flops.vision_kwargs(qwen2_vl.config, inputs, 3)


# --------------------------------------------------------------------- decoder layer with pruned counts
def _count_layer(config: LlamaConfig, n_queries: int, n_keys: int) -> int:
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(config, layer_idx=0).eval()
    rope = LlamaRotaryEmbedding(config)
    cache = DynamicCache(config=config)
    past = n_keys - n_queries
    with torch.no_grad():
        if past:
            hidden = torch.randn(1, past, config.hidden_size)
            pos = torch.arange(past)[None]
            layer(hidden, position_embeddings=rope(hidden, pos), **{CACHE_KWARG: cache}, use_cache=True)
        hidden = torch.randn(1, n_queries, config.hidden_size)
        pos = torch.arange(past, n_keys)[None]
        embeddings = rope(hidden, pos)
        with FlopCounterMode(display=False) as counter:
            layer(hidden, position_embeddings=embeddings, **{CACHE_KWARG: cache}, use_cache=True)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("n_queries", "n_keys"), [(1, 1), (7, 7), (40, 40), (113, 113), (1, 57), (5, 64), (32, 33)]
)
@pytest.mark.parametrize(
    "shape",
    [
        dict(num_attention_heads=4, num_key_value_heads=4),
        dict(num_attention_heads=4, num_key_value_heads=1),
        dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24),  # head_dim != hidden / heads
    ],
    ids=["mha", "mqa", "gqa_head_dim"],
)
def test_decoder_layer_formula(n_queries, n_keys, shape):
    text = {k: v for k, v in LLAMA_TEXT.items() if k not in ("num_attention_heads", "num_key_value_heads")}
    config = LlamaConfig(**text, **shape, attn_implementation="eager")
    counted = _count_layer(config, n_queries, n_keys)
    assert_close(flops.decoder_layer_flops(n_queries, n_keys, config), counted, rel=REL_TOL)


def test_pruned_prefill_is_sum_of_layers(llava):
    tokens = [40, 13]
    est = flops.prefill_flops(llava.config, tokens, include_vision=False, include_lm_head=False)
    text = llava.config.text_config
    assert est.decoder == [flops.decoder_layer_flops(n, n, text) for n in tokens]
    assert est.total == est.decoder_total and est.vision == 0
    dense = flops.prefill_flops(llava.config, [40, 40], include_vision=False, include_lm_head=False)
    assert est.total < dense.total


# ---------------------------------------------------------------------------------------------- decode
def test_decode_matches_flop_counter(llava):
    prompt, steps = 26, 3
    ids = text_ids(prompt, slice(3, 19), IMAGE_TOKEN)
    pixel_values = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    counted = 0
    with torch.no_grad():
        out = llava(input_ids=ids, pixel_values=pixel_values, use_cache=True)
        cache = cache_out(out)
        for _ in range(steps):
            token = out.logits[:, -1:].argmax(-1)
            with FlopCounterMode(display=False) as counter:
                out = llava(input_ids=token, **{CACHE_KWARG: cache}, use_cache=True)
            counted += counter.get_total_flops()
    est = flops.decode_flops(llava.config, [prompt] * 2, steps)
    assert est.vision == 0 and est.projector == 0
    assert_close(est.total, counted, rel=REL_TOL)


def test_decode_uses_each_layers_cache_length(llava):
    text = llava.config.text_config
    est = flops.decode_flops(llava.config, [50, 10], 4, include_lm_head=False)
    for layer, kv in enumerate([50, 10]):
        expected = sum(flops.decoder_layer_flops(1, kv + i + 1, text) for i in range(4))
        assert est.decoder[layer] == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------- kv cache
def test_kv_cache_bytes_matches_dynamic_cache(llava):
    length = 22
    ids = text_ids(length, slice(2, 18), IMAGE_TOKEN)
    pixel_values = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        cache = cache_out(llava(input_ids=ids, pixel_values=pixel_values, use_cache=True))
    real = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert flops.kv_cache_bytes(llava.config, [length] * 2, torch.float32) == real
    assert flops.kv_cache_bytes(llava.config, [length] * 2, "bf16") == real // 2
    assert flops.kv_cache_bytes(llava.config, [length, 5], 2) < real // 2


# --------------------------------------------------------------------------------------------- misc
def test_rows_scoring_matmul_matches_flop_counter():
    rows, keys, heads, head_dim = 6, 50, 4, 16
    q, k = torch.randn(1, heads, rows, head_dim), torch.randn(1, heads, keys, head_dim)
    with FlopCounterMode(display=False) as counter:
        torch.matmul(q, k.transpose(-1, -2)).softmax(-1)
    est = flops.rows_scoring_flops(rows, keys, heads, head_dim)
    softmax = 3 * rows * keys * heads
    assert est - softmax == counter.get_total_flops()
    # Per-sample shares of a batch total may be fractional; negative counts are user errors.
    assert flops.rows_scoring_flops(rows / 4, keys, heads, head_dim) == pytest.approx(est / 4)
    with pytest.raises(ValueError, match="n_keys"):
        flops.rows_scoring_flops(rows, -1, heads, head_dim)


def test_causal_counts_visible_pairs(llava):
    text = llava.config.text_config
    n = 20
    full = flops.decoder_layer_flops(n, n, text)
    causal = flops.decoder_layer_flops(n, n, text, causal=True)
    per_pair = flops.decoder_layer_flops(1, 2, text) - flops.decoder_layer_flops(1, 1, text)
    assert full - causal == pytest.approx(per_pair * (n * n - n * (n + 1) / 2))
    # One query against a cache: causal and full agree.
    assert flops.decoder_layer_flops(1, 30, text, causal=True) == flops.decoder_layer_flops(1, 30, text)


def test_mlp_matrices_and_field_formula():
    gated = LlamaConfig(**LLAMA_TEXT)
    assert flops.mlp_num_matrices(gated) == 3
    classic = SimpleNamespace(
        model_type="opt",
        hidden_act="relu",
        hidden_size=64,
        intermediate_size=256,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=100,
    )
    assert flops.mlp_num_matrices(classic) == 2
    # For MHA and a 2-matrix MLP our count is exactly twice the literature's multiply-add formula.
    tokens = [100, 30]
    ours = sum(flops.decoder_layer_flops(n, n, classic) for n in tokens)
    assert ours == pytest.approx(2 * flops.field_decoder_flops(tokens, classic))


def test_breakdown_sum_and_json(llava):
    a = flops.prefill_flops(llava.config, [30, 20], scoring_flops=1000.0)
    b = flops.decode_flops(llava.config, [30, 20], 5)
    both = a + b
    assert both.total == pytest.approx(a.total + b.total)
    assert both.decoder == [x + y for x, y in zip(a.decoder, b.decoder, strict=True)]
    assert sum([a, b]).total == both.total
    data = json.loads(json.dumps(both.to_dict()))
    assert data["total"] == pytest.approx(both.total) and data["scoring"] == 1000.0
    lm_last = flops.prefill_flops(llava.config, [30, 20], include_lm_head="last").lm_head
    lm_all = flops.prefill_flops(llava.config, [30, 20], include_lm_head="all").lm_head
    assert lm_all == 20 * lm_last


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tokens_per_layer=[10]), "2 decoder layers"),
        (dict(tokens_per_layer=[10, -1]), "non-negative integer"),
        (dict(tokens_per_layer=[10, 10], family="gemma"), "valid families"),
        (dict(tokens_per_layer=[10, 10], family="qwen2_vl"), "does not match"),
        (dict(tokens_per_layer=[10, 10], include_lm_head="first"), "include_lm_head"),
    ],
)
def test_errors_name_the_bad_value(llava, kwargs, match):
    with pytest.raises(ValueError, match=match):
        flops.prefill_flops(llava.config, **kwargs)


def test_missing_image_geometry_errors(llava_next, qwen2_vl):
    with pytest.raises(ValueError, match="num_vision_patches"):
        flops.prefill_flops(llava_next.config, [10, 10])
    with pytest.raises(ValueError, match="image_grid_thw"):
        flops.prefill_flops(qwen2_vl.config, [10, 10])
    with pytest.raises(ValueError, match="unknown dtype"):
        flops.kv_cache_bytes(qwen2_vl.config, [10, 10], "float17")
    # Without the vision tower no geometry is needed.
    assert flops.prefill_flops(qwen2_vl.config, [10, 10], include_vision=False).vision == 0

"""The tiny offline models: every family runs forward and generate, with realistic visual-token counts."""

from __future__ import annotations

import pytest
import torch

from svlm.testing import FAMILIES, REFERENCE_IMAGE_SIZE, random_image, tiny_tokenizer, tiny_vlm

# Visual tokens for the reference (336 x 336) image; see svlm/testing/models.py for the derivations.
EXPECTED_VISUAL_TOKENS = {"llava": 576, "llava_next": 336, "qwen2_vl": 576, "qwen2_5_vl": 576}


def test_families_cover_expected():
    assert set(FAMILIES) == set(EXPECTED_VISUAL_TOKENS)


def test_visual_token_count(tiny):
    assert tiny.num_visual_tokens == EXPECTED_VISUAL_TOKENS[tiny.family]
    batch = tiny.inputs([random_image(0, REFERENCE_IMAGE_SIZE)], ["What is shown?"])
    assert int((batch["input_ids"] == tiny.image_token_id).sum()) == tiny.num_visual_tokens


def test_model_is_eval_and_float32(tiny):
    assert not tiny.model.training
    assert all(p.dtype == torch.float32 for p in tiny.model.parameters())


def test_batch_is_left_padded(tiny, images, questions):
    batch = tiny.inputs(images, questions)
    assert tiny.tokenizer.padding_side == "left"
    mask = batch["attention_mask"]
    assert bool(mask[:, -1].all()), "the last position must be a real token in every row"
    assert bool((mask == 0).any()), "questions of different lengths must need padding"
    padded = batch["input_ids"][mask == 0]
    assert bool((padded == tiny.tokenizer.pad_token_id).all())


def test_forward_batch(tiny, images, questions):
    batch = tiny.inputs(images, questions)
    with torch.no_grad():
        logits = tiny.model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, tiny.model.config.text_config.vocab_size)
    assert bool(torch.isfinite(logits).all())


def test_batched_forward_matches_single(tiny, images, questions):
    """Left padding must not change what a sample computes: last-token logits equal the unbatched ones."""
    batch = tiny.inputs(images, questions)
    with torch.no_grad():
        batched = tiny.model(**batch).logits[:, -1]
        for i in range(len(images)):
            single = tiny.model(**tiny.inputs(images[i : i + 1], questions[i : i + 1])).logits[0, -1]
            torch.testing.assert_close(batched[i], single, atol=1e-4, rtol=1e-4)


def test_generate_greedy_batch(tiny, images, questions):
    batch = tiny.inputs(images, questions)
    prompt_len = batch["input_ids"].shape[1]
    with torch.no_grad():
        ids = tiny.model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert ids.shape[0] == 2 and prompt_len < ids.shape[1] <= prompt_len + 4
    assert torch.equal(ids[:, :prompt_len], batch["input_ids"])
    texts = tiny.tokenizer.batch_decode(ids[:, prompt_len:], skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize("qwen_family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_inputs_have_grid_and_token_types(qwen_family, make_tiny_vlm, images, questions):
    tiny = make_tiny_vlm(qwen_family)
    batch = tiny.inputs(images, questions)
    assert batch["image_grid_thw"].shape == (2, 3)
    token_types = batch["mm_token_type_ids"]
    assert torch.equal(token_types.bool(), batch["input_ids"] == tiny.image_token_id)
    merged = batch["image_grid_thw"].prod(-1) // 4
    assert torch.equal(token_types.sum(-1), merged)


def test_llava_next_inputs_have_image_sizes(make_tiny_vlm, images, questions):
    tiny = make_tiny_vlm("llava_next")
    batch = tiny.inputs(images, questions)
    assert batch["image_sizes"].tolist() == [[336, 336], [280, 392]]
    counts = (batch["input_ids"] == tiny.image_token_id).sum(-1).tolist()
    assert counts[0] == 336 and counts[1] != counts[0]  # unpadding depends on the aspect ratio


@pytest.mark.parametrize("family", FAMILIES)
def test_gqa(family, images, questions):
    vlm = tiny_vlm(family, num_layers=2, num_attention_heads=4, num_key_value_heads=2)
    text = vlm.model.config.text_config
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, 2)
    attn = vlm.model.get_decoder().layers[0].self_attn
    assert attn.k_proj.out_features == 2 * (text.hidden_size // text.num_attention_heads)
    with torch.no_grad():
        assert bool(torch.isfinite(vlm.model(**vlm.inputs(images, questions)).logits).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16(family, images, questions):
    vlm = tiny_vlm(family, num_layers=2, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in vlm.model.parameters())
    batch = vlm.inputs(images, questions)
    assert batch["pixel_values"].dtype == torch.bfloat16
    assert batch["input_ids"].dtype == torch.long
    with torch.no_grad():
        logits = vlm.model(**batch).logits
    assert logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits).all())


def test_dtype_keeps_weights():
    """Same seed, different dtype: the same weights up to rounding (dense comparisons across dtypes)."""
    w32 = tiny_vlm("llava", num_layers=1).model.lm_head.weight
    m16 = tiny_vlm("llava", num_layers=1, dtype=torch.bfloat16).model
    assert torch.equal(w32.to(torch.bfloat16), m16.lm_head.weight)
    assert m16.model.language_model.rotary_emb.inv_freq.dtype == torch.float32  # as from_pretrained leaves it
    assert m16.config.text_config.dtype == torch.bfloat16


def test_seed_determinism():
    a = tiny_vlm("qwen2_vl", num_layers=1, seed=3).model.state_dict()
    b = tiny_vlm("qwen2_vl", num_layers=1, seed=3).model.state_dict()
    c = tiny_vlm("qwen2_vl", num_layers=1, seed=4).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_seed_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_vlm("llava", num_layers=1)
    assert torch.equal(torch.rand(3), expected)


def test_eager_attention_matches_sdpa(family, images, questions):
    sdpa = tiny_vlm(family, num_layers=2)
    eager = tiny_vlm(family, num_layers=2, attn_implementation="eager")
    batch = sdpa.inputs(images, questions)
    real = batch["attention_mask"].bool()  # padded rows attend to nothing; backends disagree there
    with torch.no_grad():
        torch.testing.assert_close(
            eager.model(**batch).logits[real], sdpa.model(**batch).logits[real], atol=1e-4, rtol=1e-4
        )


def test_image_size_option():
    assert tiny_vlm("llava", num_layers=1, image_size=112).num_visual_tokens == 64
    assert tiny_vlm("qwen2_vl", num_layers=1, image_size=336).num_visual_tokens == 144


def test_mrope_section_matches_head_dim():
    vlm = tiny_vlm("qwen2_vl", num_layers=1, hidden_size=96, num_attention_heads=2)
    section = vlm.model.config.text_config.rope_parameters["mrope_section"]
    assert sum(section) == 96 // 2 // 2 and all(s > 0 for s in section)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "llama"}, "valid families"),
        ({"family": "llava", "image_size": 100}, "multiple of 14"),
        ({"family": "qwen2_vl", "image_size": 336 + 14}, "multiple of 28"),
        ({"family": "llava", "hidden_size": 66, "num_attention_heads": 4}, "multiple of num_attention_heads"),
        ({"family": "llava", "num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"family": "llava", "dtype": torch.int8}, "floating"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_vlm(**kwargs)


def test_inputs_length_mismatch(make_tiny_vlm):
    with pytest.raises(ValueError, match="one image per question"):
        make_tiny_vlm("llava").inputs([random_image(0)], ["a?", "b?"])


def test_chat_templates():
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it red?"}]}]
    render = {
        f: tiny_tokenizer(f).apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        for f in FAMILIES
    }
    assert render["llava"] == "USER: <image>\nIs it red? ASSISTANT:"
    assert render["llava_next"] == "[INST] <image>\nIs it red? [/INST]"
    assert render["qwen2_vl"] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is it red?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render["qwen2_5_vl"] == render["qwen2_vl"]


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_special_tokens(family):
    tok = tiny_tokenizer(family)
    specials = (
        ["<image>", "<s>", "</s>", "<pad>"]
        if family.startswith("llava")
        else [
            "<|image_pad|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|endoftext|>",
        ]
    )
    for token in specials:
        assert tok.tokenize(token) == [token]
    assert 1000 <= len(tok) <= 2000
    ids = tok("What colour is the square?").input_ids
    assert (ids[0] == tok.bos_token_id) == family.startswith("llava")  # Llama tokenizers prepend <s>
    assert tok.decode(ids, skip_special_tokens=True) == "What colour is the square?"
    assert len(tok.tokenize(" What colour is the square?")) <= 8  # word-level merges, not bytes


def test_tokenizer_is_fresh_copy():
    a, b = tiny_tokenizer("llava"), tiny_tokenizer("llava")
    a.padding_side = "right"
    assert b.padding_side == "left"


def test_random_image():
    a, b = random_image(5, size=(64, 48)), random_image(5, size=(64, 48))
    assert a.size == (64, 48) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != random_image(6, size=(64, 48)).tobytes()
    assert random_image(0).size == REFERENCE_IMAGE_SIZE
    with pytest.raises(ValueError, match="positive"):
        random_image(0, size=(0, 10))


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_save_and_reload(family, make_tiny_vlm, images, questions, tmp_path):
    """A saved tiny processor reloads into the same batch (qwen through the image-only class)."""
    from transformers import AutoProcessor

    from svlm.testing import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen2VLProcessor

    tiny = make_tiny_vlm(family)
    tiny.processor.save_pretrained(tmp_path)
    loader = {"qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor}
    reloaded = loader.get(family, AutoProcessor).from_pretrained(tmp_path)
    prompts = [tiny.prompt(q) for q in questions]
    assert (
        reloaded.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[0]}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        == prompts[0]
    )
    assert reloaded.tokenizer.padding_side == "left"
    expected = tiny.processor(images=images, text=prompts, padding=True, return_tensors="pt")
    got = reloaded(images=images, text=prompts, padding=True, return_tensors="pt")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_assert_matches_oracle_compares_kept_positions_only(make_tiny_vlm, images, questions):
    """The helper a strategy author calls: passes for a correct drop-only strategy although the full logit
    tensors differ (pruned positions have no output), fails naming the sample when a kept position differs,
    and refuses merging strategies."""
    import svlm
    from svlm.testing import assert_matches_oracle, oracle_logits

    tiny = make_tiny_vlm("llava")
    inputs = tiny.inputs(images, questions)
    sparse = svlm.sparsify(tiny.model, "fastv", budget=0.6)
    report = assert_matches_oracle(tiny.model, inputs, sparse)
    with torch.no_grad():
        full = (sparse(**inputs).logits - oracle_logits(tiny.model, inputs, report)).abs().max()
    assert full > 1.0  # what comparing everything gives: the helper is needed

    class Broken:  # a pruned run whose logits are off at one kept position of sample 1
        strategy, last_report = sparse.strategy, None

        def __call__(self, **kw):
            out = sparse(**kw)
            self.last_report = sparse.last_report
            last = self.last_report.info.num_layers - 1
            out.logits[1, self.last_report.positions(last, 1)[-1]] += 0.1
            return out

    with pytest.raises(AssertionError, match=r"Sample 1: pruned logits differ .* at 1 of \d+ kept positions"):
        assert_matches_oracle(tiny.model, inputs, Broken())
    with pytest.raises(ValueError, match="merges tokens"):
        assert_matches_oracle(tiny.model, inputs, svlm.sparsify(tiny.model, "visionzip", budget=0.5))


def test_init_device_cpu_is_the_default_build():
    a, b = tiny_vlm("llava", init_device="cpu").model, tiny_vlm("llava").model
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.gpu
def test_init_device_builds_on_the_gpu_deterministically():
    """What configs/bench_gpu.yaml relies on: 7B-shaped models are built on the GPU, same seed same weights,
    and the global CUDA generator is left alone."""
    state = torch.cuda.get_rng_state()
    a = tiny_vlm("qwen2_5_vl", init_device="cuda", dtype=torch.bfloat16).model
    b = tiny_vlm("qwen2_5_vl", init_device="cuda", dtype=torch.bfloat16).model
    assert {p.device.type for p in a.parameters()} == {"cuda"}
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert torch.equal(torch.cuda.get_rng_state(), state)

"""The core contract: exact pruning against the masked-key oracle, batching, generation, bookkeeping."""

from __future__ import annotations

import copy

import pytest
import torch

import svlm
from svlm.engine.cache import cache_out
from svlm.testing.oracle import oracle_logits

# Budgets as fractions work on every tiny family (their visual-token counts differ).
KWARGS = {"dense": {}, "fastv": {"budget": 0.6}, "random": {"budget": 0.5}, "sparsevlm": {"budget": 0.6}}


def strategy_kwargs(name: str) -> dict:
    return KWARGS.get(name, {"budget": 0.6})


def kept_logits_error(out: torch.Tensor, ref: torch.Tensor, report: svlm.Report) -> float:
    last = report.info.num_layers - 1
    errors = []
    for b in range(report.batch_size):
        pos = report.positions(last, b)
        errors.append((out[b, pos] - ref[b, pos]).abs().max().item())
    return max(errors)


@torch.no_grad()
def test_dense_reproduces_model(vlm, images, questions):
    inputs = vlm.inputs(images, questions)
    expected = vlm.model(**inputs).logits
    got = svlm.sparsify(vlm.model, "dense")(**inputs).logits
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", svlm.available_strategies())
@torch.no_grad()
def test_drop_only_strategies_match_masked_key_oracle(vlm, fp32_device, images, questions, name):
    sparse = svlm.sparsify(vlm.model, name, **strategy_kwargs(name))
    if not sparse.strategy.drops_only:
        pytest.skip(f"{name} merges tokens")
    inputs = vlm.inputs(images, questions)
    out = sparse(**inputs).logits
    report = sparse.last_report
    ref = oracle_logits(vlm.model, inputs, report)
    assert kept_logits_error(out, ref, report) < fp32_device.exact_tol
    n_visual = float((inputs["input_ids"] == vlm.model.config.image_token_id).sum(-1).float().mean())
    if name != "dense":
        assert report.budget < n_visual


@pytest.mark.parametrize("name", ["fastv", "random", "sparsevlm"])
@torch.no_grad()
def test_batch_equals_samples_alone(vlm, fp32_device, images, questions, name):
    kwargs = strategy_kwargs(name)
    tol = fp32_device.exact_tol
    batch = vlm.inputs(images, questions)
    out = svlm.sparsify(vlm.model, name, **kwargs)
    batch_logits = out(**batch).logits[:, -1]
    batch_report = out.last_report
    for b in range(len(images)):
        alone = vlm.inputs(images[b : b + 1], questions[b : b + 1])
        single = svlm.sparsify(vlm.model, name, **kwargs)
        logits = single(**alone).logits[:, -1]
        torch.testing.assert_close(logits[0], batch_logits[b], atol=tol, rtol=tol)
        assert single.last_report.visual_tokens[0] == batch_report.visual_tokens[b]


@pytest.mark.parametrize("name", ["fastv", "random", "sparsevlm"])
@torch.no_grad()
def test_generate_matches_oracle_at_every_step(vlm, fp32_device, images, questions, name):
    inputs = vlm.inputs(images, questions)
    tol = fp32_device.exact_tol
    sparse = svlm.sparsify(vlm.model, name, **strategy_kwargs(name))
    out = sparse.generate(
        **inputs,
        max_new_tokens=5,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        suppress_tokens=sparse.adapter.visual_token_ids(),  # a random model may emit placeholders
    )
    report = sparse.last_report
    prompt_len = inputs["input_ids"].shape[1]
    new = out.sequences.shape[1] - prompt_len
    full = dict(inputs)
    full["input_ids"] = out.sequences
    ones = torch.ones(len(images), new, dtype=inputs["attention_mask"].dtype, device=out.sequences.device)
    full["attention_mask"] = torch.cat([inputs["attention_mask"], ones], dim=1)
    if "mm_token_type_ids" in full:
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ones)], dim=1)
    ref = oracle_logits(vlm.model, full, report)
    steps = torch.stack(out.logits, dim=1)
    suppressed = torch.tensor(sparse.adapter.visual_token_ids(), device=steps.device)
    steps[..., suppressed] = ref[:, prompt_len - 1 : prompt_len - 1 + steps.shape[1]][..., suppressed]
    torch.testing.assert_close(
        steps, ref[:, prompt_len - 1 : prompt_len - 1 + steps.shape[1]], atol=tol, rtol=tol
    )
    assert torch.equal(
        steps.index_fill(-1, suppressed, float("-inf")).argmax(-1), out.sequences[:, prompt_len:]
    )
    assert report.decode_steps == new - 1
    assert 0 < report.decode_flops < report.dense_decode_flops


@torch.no_grad()
def test_model_is_left_unmodified(tiny, images, questions):
    model = tiny.model
    before = copy.deepcopy(model.state_dict())
    hooks_before = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    inputs = tiny.inputs(images, questions)
    sparse = svlm.sparsify(model, "sparsevlm", budget=0.5)
    sparse(**inputs)
    sparse.generate(**inputs, max_new_tokens=2, do_sample=False)
    hooks_after = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    assert hooks_after == hooks_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    torch.testing.assert_close(model(**inputs).logits, svlm.sparsify(model, "dense")(**inputs).logits)


@torch.no_grad()
def test_sampling_and_eos(vlm, images, questions):
    inputs = vlm.inputs(images, questions)
    sparse = svlm.sparsify(vlm.model, "fastv", budget=0.6)
    torch.manual_seed(0)
    sampled = sparse.generate(**inputs, max_new_tokens=4, do_sample=True, top_k=5)
    assert sampled.shape[0] == len(images)
    greedy = sparse.generate(**inputs, max_new_tokens=4, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    first = int(greedy[0, prompt])
    pad = vlm.model.generation_config.pad_token_id
    stopped = sparse.generate(
        **inputs, max_new_tokens=4, do_sample=False, eos_token_id=first, pad_token_id=pad
    )
    assert int(stopped[0, prompt]) == first
    assert bool((stopped[0, prompt + 1 :] == pad).all())


@torch.no_grad()
def test_report_accounting(vlm, images, questions):
    inputs = vlm.inputs(images, questions)
    sparse = svlm.sparsify(vlm.model, "random", budget=0.5)
    sparse(**inputs)
    report = sparse.last_report
    visual = torch.tensor(report.visual_tokens, dtype=torch.float)
    assert report.budget == pytest.approx(float(visual.mean()))
    n_visual = (vlm.model.config.image_token_id == inputs["input_ids"]).sum(-1)
    assert visual[:, 0].tolist() == [round(0.5 * int(n)) for n in n_visual]
    assert 0 < report.prefill_flops < report.dense_prefill_flops
    assert report.kv_cache_bytes < report.dense_kv_cache_bytes
    positions = report.positions(0, 0)
    assert positions.dtype == torch.long and torch.all(positions[1:] > positions[:-1])
    assert set(report.to_dict()) >= {"budget", "budget_output", "prefill_flops", "visual_tokens"}


def test_attention_implementations_agree(make_tiny_vlm, images, questions):
    eager = make_tiny_vlm("llava", attn_implementation="eager")
    sdpa = make_tiny_vlm("llava")
    inputs = sdpa.inputs(images, questions)
    with torch.no_grad():
        a = svlm.sparsify(eager.model, "fastv", budget=0.6)(**inputs).logits[:, -1]
        b = svlm.sparsify(sdpa.model, "fastv", budget=0.6)(**inputs).logits[:, -1]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_pre_llm_pruning_keeps_decode_positions(tiny, images, questions):
    """Pruning before layer 0 shrinks every layer's cache; decoding must still continue positions."""
    inputs = tiny.inputs(images, questions)
    sparse = svlm.sparsify(tiny.model, "random", budget=0.3, layer=-1)
    out = sparse.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    cache = cache_out(out)
    assert cache.get_seq_length() == out.sequences.shape[1] - 1
    assert cache.physical_length(0) < cache.get_seq_length()


@torch.no_grad()
def test_report_budget_ignores_text_only_samples_of_a_mixed_batch(make_tiny_vlm, images):
    tiny = make_tiny_vlm("llava")
    processor = tiny.processor
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text_only = [{"role": "user", "content": [{"type": "text", "text": "What colour is it?"}]}]
    prompts = [
        processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
        for c in (with_image, text_only)
    ]
    inputs = processor(images=images[:1], text=prompts, padding=True, return_tensors="pt")
    sparse = svlm.sparsify(tiny.model, "random", budget=64)
    sparse(**inputs)
    report = sparse.last_report
    assert report.budget_per_sample[1] == 0.0
    assert report.budget == pytest.approx(64.0, abs=1.0)  # the text-only sample's 0 is not averaged in
    assert report.budget_output <= report.budget

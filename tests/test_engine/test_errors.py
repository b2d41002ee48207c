"""User mistakes get a clear message naming the bad value and the valid ones."""

from __future__ import annotations

import pytest
import torch

import svlm


def test_unknown_strategy_suggests_a_name(tiny):
    message = r"Unknown strategy 'sparsevllm'. Did you mean 'sparsevlm'\? Valid strategies: dense"
    with pytest.raises(ValueError, match=message):
        svlm.sparsify(tiny.model, "sparsevllm")


def test_unknown_argument_lists_valid_ones(tiny):
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['budgte'\].*budget"):
        svlm.sparsify(tiny.model, "fastv", budgte=64)


def test_budget_larger_than_visual_tokens(tiny, images, questions):
    sparse = svlm.sparsify(tiny.model, "random", budget=100_000)
    with pytest.raises(svlm.BudgetError, match="budget=100000 is larger than the number of visual tokens"):
        sparse(**tiny.inputs(images, questions))


def test_non_positive_budget():
    with pytest.raises(svlm.BudgetError, match="budget=0 must be > 0"):
        svlm.build_strategy("random", budget=0)


def test_infeasible_budget_for_depth(tiny, images, questions):
    sparse = svlm.sparsify(tiny.model, "fastv", budget=0.05, k=2)
    with pytest.raises(svlm.BudgetError, match="cannot be met with pruning after layer 1"):
        sparse(**tiny.inputs(images, questions))


def test_pruning_layer_outside_model(tiny, images, questions):
    sparse = svlm.sparsify(tiny.model, "random", budget=0.5, layer=7)
    with pytest.raises(ValueError, match=r"Pruning layers \[7\] are outside this 4-layer model.*-1.*2"):
        sparse(**tiny.inputs(images, questions))


def test_unsupported_model():
    with pytest.raises(ValueError, match="Unsupported model type"):
        svlm.sparsify(torch.nn.Linear(2, 2), "dense")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):

        @svlm.register_strategy("fastv")
        class Another(svlm.Strategy):
            pass


def test_class_path_and_dict_configs(tiny):
    by_path = svlm.build_strategy("svlm.strategies.fastv.FastV", budget=0.5)
    by_dict = svlm.build_strategy({"class_path": "fastv", "init_args": {"budget": 0.5}})
    assert type(by_path) is type(by_dict) and by_dict.budget == 0.5
    with pytest.raises(ValueError, match="not a subclass of svlm.Strategy"):
        svlm.build_strategy("torch.nn.Linear")


def test_text_only_input_runs_dense_with_warning(tiny):
    tokenizer = tiny.processor.tokenizer
    inputs = dict(tokenizer(["a plain question"], return_tensors="pt"))
    sparse = svlm.sparsify(tiny.model, "sparsevlm", budget=0.5)
    with pytest.warns(UserWarning, match="no visual tokens"):
        with torch.no_grad():
            out = sparse(**inputs).logits
    torch.testing.assert_close(out, tiny.model(**inputs).logits)


def test_nan_pixels_are_refused(tiny, images, questions):
    inputs = dict(tiny.inputs(images, questions))
    inputs["pixel_values"] = inputs["pixel_values"].clone()
    inputs["pixel_values"].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="pixel_values contain 1 NaN/inf"):
        svlm.sparsify(tiny.model, "fastv", budget=0.6)(**inputs)


def test_image_tokens_must_match_images(tiny, images, questions):
    inputs = dict(tiny.inputs(images, questions))
    if tiny.family not in ("llava", "qwen2_vl", "qwen2_5_vl"):
        pytest.skip("llava_next token counts depend on the crops")
    ids = inputs["input_ids"].clone()
    image_pos = (ids[0] == tiny.model.config.image_token_id).nonzero()[0]
    ids[0, image_pos] = tiny.processor.tokenizer.pad_token_id or 0
    inputs["input_ids"] = ids
    with pytest.raises(ValueError, match=r"image tokens \(per sample: \[\d+, \d+\]\) but the images give"):
        svlm.sparsify(tiny.model, "fastv", budget=0.6)(**inputs)


def test_pixels_without_placeholders(tiny, images, questions):
    inputs = dict(tiny.inputs(images, questions))
    inputs["input_ids"] = inputs["input_ids"].masked_fill(
        inputs["input_ids"] == tiny.model.config.image_token_id, 0
    )
    with pytest.raises(ValueError, match="prompts hold no image tokens"):
        svlm.sparsify(tiny.model, "dense")(**inputs)


def test_non_finite_count_is_exact_and_never_fooled_by_overflow() -> None:
    import torch

    from svlm.engine.validation import non_finite_count

    values = torch.zeros(4, 5)
    assert non_finite_count(values) == 0
    values[1, 2], values[3, 0] = float("nan"), float("-inf")
    assert non_finite_count(values) == 2
    huge = torch.full((8,), 3e38)  # finite, but its float32 sum overflows: counted exactly, not reported
    assert non_finite_count(huge) == 0
    assert non_finite_count(torch.ones(3, dtype=torch.long)) == 0

"""Prompt characters located among a processed batch's token ids (left padding, image expansion)."""

from __future__ import annotations

import pytest

from svlm.data import VLMDataModule
from svlm.diagnostics.prompt_tokens import question_token_mask, token_at_char
from svlm.module import VLMEvaluator


@pytest.fixture(scope="module")
def evaluator() -> VLMEvaluator:
    ev = VLMEvaluator(model="tiny:llava", dtype="float32")
    ev.configure_model()
    return ev


def _prompts(evaluator, benchmark: str = "shapes"):
    data = VLMDataModule(benchmark=benchmark, split="test", limit=2, batch_size=2)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    inputs = evaluator.tokenize(batch)  # left-padded: the two rows differ in length before padding
    prompts = [
        evaluator.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        for conv in evaluator.conversations(batch)
    ]
    return batch, inputs, prompts


def test_question_mask_marks_exactly_the_question_tokens(evaluator):
    batch, inputs, prompts = _prompts(evaluator)
    tokenizer = evaluator.processor.tokenizer
    for i, prompt in enumerate(prompts):
        row = inputs["input_ids"][i].tolist()
        mask = question_token_mask(tokenizer, prompt, batch["questions"][i], row)
        assert mask is not None and len(mask) == len(row)
        marked = tokenizer.decode([t for t, m in zip(row, mask, strict=True) if m])
        assert marked.strip() == batch["questions"][i].strip()
        # a question that is not in the prompt, or ids that do not end like the prompt: not located
        assert question_token_mask(tokenizer, prompt, "not in this prompt", row) is None
        assert question_token_mask(tokenizer, prompt, batch["questions"][i], row[:-1] + [row[0]]) is None


def test_token_at_char_finds_the_token_holding_a_character(evaluator):
    batch, inputs, prompts = _prompts(evaluator)
    tokenizer = evaluator.processor.tokenizer
    for i, prompt in enumerate(prompts):
        row = inputs["input_ids"][i].tolist()
        question = batch["questions"][i]
        start = prompt.rfind(question)
        last_word = question.rstrip("?").split()[-1]
        char = start + question.rstrip("?").rfind(last_word) + len(last_word) - 1  # the last word's end
        pos = token_at_char(tokenizer, prompt, char, row)
        assert pos is not None and last_word.endswith(tokenizer.decode([row[pos]]).strip())
        assert token_at_char(tokenizer, prompt, len(prompt), row) is None
        assert token_at_char(tokenizer, prompt, char, row[:-1] + [row[0]]) is None

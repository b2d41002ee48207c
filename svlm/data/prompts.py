"""Prompt text and chat conversations, following the LLaVA-1.5 / lmms-eval evaluation conventions.

The instruction strings are what published LLaVA-1.5 / Qwen-VL numbers were measured with; changing them
changes accuracy, so they live in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def with_instruction(text: str, instruction: str | None = SHORT_ANSWER) -> str:
    """Append a benchmark instruction on its own line (lmms-eval's ``post_prompt = "\\n" + instruction``)."""
    text = text.strip()
    return f"{text}\n{instruction}" if instruction else text


def format_options(choices: Sequence[str]) -> str:
    """``A. first\\nB. second`` — the option block of LLaVA-1.5's ScienceQA / MMBench prompts."""
    if len(choices) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} choices are supported, got {len(choices)}")
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def multiple_choice_prompt(
    question: str, choices: Sequence[str], context: str | None = None, instruction: str | None = OPTION_LETTER
) -> str:
    """Context (if any), question, options, instruction — each on its own line."""
    parts = [context.strip()] if context and context.strip() else []
    parts += [question.strip(), format_options(choices)]
    return with_instruction("\n".join(parts), instruction)


def post_prompt(text: str, instruction: str = SHORT_ANSWER) -> str:
    """lmms-eval's ``{question}{post_prompt}``, ``post_prompt = "\\n" + instruction``: the text as it is."""
    return f"{text}\n{instruction}"


def scienceqa_prompt(question: str, choices: Sequence[str], hint: str | None) -> str:
    """lmms-eval's ScienceQA prompt: ``Context: {hint}`` (when the hint is non-empty), the question, the
    lettered options and the option-letter instruction, one per line, texts as they are."""
    context = f"Context: {hint}\n" if hint else ""
    return post_prompt(f"{context}{question}\n{format_options(choices)}", OPTION_LETTER)


MMBENCH_OPTIONS_HEADER = "There are several options:"


def mmbench_prompt(question: str, options: dict[str, str], hint: str | None) -> str:
    """lmms-eval's MMBench prompt: ``{hint} {question} There are several options:``, one ``A. text`` line
    per option in `options` (letter -> text), an empty line, the option-letter instruction. No hint: the
    line starts with the question."""
    lines = [MMBENCH_OPTIONS_HEADER] + [f"{k}. {v}" for k, v in sorted(options.items())]
    body = f"{question} " + "\n".join(lines)
    if hint is not None:
        body = f"{hint} {body}"
    return f"{body}\n{post_prompt('', OPTION_LETTER)}"


def build_conversation(prompt: str) -> list[dict[str, Any]]:
    """The single-turn, single-image conversation of the processor contract.

    ``processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)`` turns it into the
    model's prompt text; the image placeholder comes first, as in LLaVA-1.5 and Qwen2-VL training data.
    """
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

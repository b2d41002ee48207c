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


def build_conversation(prompt: str) -> list[dict[str, Any]]:
    """The single-turn, single-image conversation of the processor contract.

    ``processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)`` turns it into the
    model's prompt text; the image placeholder comes first, as in LLaVA-1.5 and Qwen2-VL training data.
    """
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

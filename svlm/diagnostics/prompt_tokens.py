"""Where a prompt's characters land among a processed batch's token ids.

The text after the image tokenises the same with or without the processor's image expansion, so a prompt's
own tokenisation (with character offsets, a fast tokenizer's ``offset_mapping``) lines up with the row of
``input_ids`` the processor made from it, counted from the end (batches are left-padded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["question_token_mask", "token_at_char"]


def _aligned_offsets(
    tokenizer: Any, prompt: str, input_ids: Sequence[int], char: int
) -> tuple[list[tuple[int, int]], int] | None:
    """Offsets of the prompt's tokens from the first one that reaches past ``char``, and how many positions
    of ``input_ids`` precede that token; ``None`` without offsets or when the two tokenisations differ."""
    try:
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizers have no offsets
        return None
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    first = next((i for i, (_, b) in enumerate(offsets) if b > char), len(ids))
    tail = len(ids) - first
    if tail <= 0 or tail > len(input_ids) or list(input_ids[len(input_ids) - tail :]) != ids[first:]:
        return None
    return offsets[first:], len(input_ids) - tail


def question_token_mask(
    tokenizer: Any, prompt: str, question: str, input_ids: Sequence[int]
) -> list[bool] | None:
    """Per position of ``input_ids`` (one processed, left-padded prompt): does the token overlap ``question``?

    ``None`` when the question is not in the prompt or the tokens cannot be lined up (see the module).
    """
    start = prompt.rfind(question)
    if start < 0 or not question:
        return None
    aligned = _aligned_offsets(tokenizer, prompt, input_ids, start)
    if aligned is None:
        return None
    offsets, before = aligned
    end = start + len(question)
    return [False] * before + [a < end and b > start for a, b in offsets]


def token_at_char(tokenizer: Any, prompt: str, char: int, input_ids: Sequence[int]) -> int | None:
    """The position in ``input_ids`` of the token holding the prompt's character ``char`` (or ``None``)."""
    if not 0 <= char < len(prompt):
        return None
    aligned = _aligned_offsets(tokenizer, prompt, input_ids, char)
    if aligned is None:
        return None
    offsets, before = aligned
    return before if offsets[0][0] <= char else None

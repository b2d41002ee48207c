"""The mix of derived training questions: a weighted cycle of question types, an answer drawn uniformly per
type, then an unseen question with that answer (svlm-shapes and svlm-scenes alike)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def weighted_types(
    question_types: Sequence[str], type_weights: dict[str, int] | None, only: set[str] | None
) -> list[str]:
    """The cycle of question types to draw from: each kept type ``type_weights[type]`` times (default 1)."""
    weights = type_weights or {}
    return [t for t in question_types if only is None or t in only for _ in range(weights.get(t, 1))]


def pick_by_type(
    by_type: dict[str, dict[str, list[T]]],
    types: Sequence[str],
    k: int,
    rng: random.Random,
    seen: set[str],
    text: Callable[[T], str],
    max_tries: int,
) -> list[tuple[str, T]]:
    """Up to ``k`` (answer, question) pairs: cycling over ``types`` from a random start, each draws an answer
    uniformly among those its type has (``by_type[type]``: answer -> questions), then a question with that
    answer whose ``text`` is not in ``seen`` yet (updated); gives up after ``max_tries`` draws."""
    picked: list[tuple[str, T]] = []
    start = rng.randrange(len(types))
    tries = 0
    while len(picked) < k and tries < max_tries:
        qtype = types[(start + tries) % len(types)]
        tries += 1
        answers = sorted(by_type[qtype])
        if not answers:
            continue
        answer = rng.choice(answers)
        options = [q for q in by_type[qtype][answer] if text(q) not in seen]
        if not options:
            continue
        q = options[rng.randrange(len(options))]
        seen.add(text(q))
        picked.append((answer, q))
    return picked

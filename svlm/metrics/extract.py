"""Pull the decision out of a free-form generation: yes/no (POPE, MME), option letters (multiple choice)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from svlm.metrics.normalize import normalize_answer

_YES_NO = re.compile(r"\b(yes|no)\b")


def strip_reasoning(text: str) -> str:
    """Keep what follows the last ``</think>`` (reasoning models put the answer after it)."""
    return text.rsplit("</think>", 1)[-1] if "</think>" in text else text


def extract_yes_no(text: str) -> str | None:
    """First standalone "yes" or "no" in the answer (lmms-eval's POPE rule), else None."""
    m = _YES_NO.search(strip_reasoning(str(text)).lower())
    return m.group(1) if m else None


def parse_mme_answer(text: str) -> str | None:
    """MME's rule: exact yes/no (dots dropped), "y"/"n", else "yes"/"no" within the first 4 characters."""
    t = strip_reasoning(str(text)).lower().strip().replace(".", "")
    if t in ("yes", "no"):
        return t
    if len(t) == 1:
        return {"y": "yes", "n": "no"}.get(t)
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return None


_LETTER_ONLY = re.compile(r"^[(\[]?([A-Z])[)\].:]?$")
_LETTER_LEAD = re.compile(r"^[(\[]?([A-Z])(?:[)\].:,]|\s*[-–]\s)")
_LETTER_PHRASE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:)?\s*(?:option\s*)?[(\[]?([A-Z])[)\]]?(?![A-Za-z])", re.IGNORECASE
)


def extract_choice(text: str, choices: Sequence[str] | None = None, max_letters: int = 5) -> str | None:
    """Option letter chosen by a free-form answer, or None when it names none (or several) of the options.

    Tried in order: a bare letter ("B", "(B)", "B."), the text of exactly one option ("Sketch"), a leading
    letter with a separator ("B. Sketch", "B) ..."), "the answer is B" / "option B", a leading "B " (not for
    "A"/"I", which open ordinary sentences), then a single option text contained in the answer.
    """
    t = strip_reasoning(str(text)).strip()
    if not t:
        return None
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices) if choices else max_letters]

    m = _LETTER_ONLY.match(t)
    if m and m.group(1) in letters:
        return m.group(1)
    norm_choices = [normalize_answer(c) for c in choices] if choices else []
    nt = normalize_answer(t)
    exact = [letters[i] for i, c in enumerate(norm_choices) if c and c == nt]
    if len(exact) == 1:
        return exact[0]
    m = _LETTER_LEAD.match(t)
    if m and m.group(1) in letters:
        return m.group(1)
    m = _LETTER_PHRASE.search(t)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    m = re.match(r"^([A-Z])\s", t)
    if m and m.group(1) in letters and m.group(1) not in "AI":
        return m.group(1)
    if norm_choices:
        padded = f" {nt} "
        found = [letters[i] for i, c in enumerate(norm_choices) if c and f" {c} " in padded]
        if len(found) == 1:
            return found[0]
    return None

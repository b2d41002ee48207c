"""Answer normalisation of the official VQA evaluation (VQAv2 / TextVQA / EvalAI), re-implemented.

Steps, in the official order: newlines/tabs -> spaces; punctuation removed or turned into spaces (removed
outright when the text has a thousands separator like "1,000" or the mark touches a space); periods not
followed by a digit dropped; lower-case; number words -> digits; articles dropped; apostrophe-less
contractions restored.
"""

from __future__ import annotations

import itertools
import re

# the punctuation marks the official evaluation handles (apostrophes, colons and periods are treated apart)
PUNCTUATION: tuple[str, ...] = tuple(';/[]"{}()=+\\_->< @`,?!'.replace(" ", ""))
NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

_THOUSANDS = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")

# Canonical contractions. Every spelling with some apostrophes left out maps back to the canonical one
# ("dont" -> "don't", "couldntve" / "couldn'tve" -> "couldn't've"). As in the official list, a few spellings
# that are common words without the apostrophe are not restored (its, lets, id, ill, hell, were), while
# "well", "wed", "shed", "shell" and "hed" are.
_CANONICAL_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he'll he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't
mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd she'd've she's
should've shouldn't shouldn't've she'll somebody'd somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd there'd've
there're there's they'd they'd've they'll they're they've 'twas wasn't we'd we'd've we'll we've weren't
what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll
why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're
you've
""".split()
_NOT_RESTORED = frozenset({"its", "lets", "id", "ill", "hell", "were"})


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for canonical in _CANONICAL_CONTRACTIONS:
        slots = [i for i, ch in enumerate(canonical) if ch == "'"]
        for keep in itertools.product((True, False), repeat=len(slots)):
            if all(keep):
                continue
            drop = {s for s, k in zip(slots, keep, strict=True) if not k}
            variant = "".join(ch for i, ch in enumerate(canonical) if i not in drop)
            if variant not in _NOT_RESTORED:
                table.setdefault(variant, canonical)
    return table


CONTRACTIONS: dict[str, str] = _contraction_table()


def strip_punctuation(text: str) -> str:
    """The official `processPunctuation`: marks become spaces, or vanish next to a space / in "1,000"."""
    out = text
    glue = _THOUSANDS.search(text) is not None
    for p in PUNCTUATION:
        if glue or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def normalize_words(text: str) -> str:
    """The official `processDigitArticle`: lower-case, number words -> digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """Normalise a predicted or ground-truth answer the way the official VQA evaluation does."""
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return normalize_words(strip_punctuation(text))

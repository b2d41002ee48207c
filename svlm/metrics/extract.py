"""Pull the decision out of a free-form generation: yes/no (POPE, MME), option letters (multiple choice).

The defaults reproduce lmms-eval 0.7.3's task rules (its POPE, MME, ScienceQA-IMG and MMBench scoring);
svlm's more lenient readers stay available as named options (`extract_yes_no`, `extract_choice`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from svlm.metrics.normalize import normalize_answer

_YES_NO = re.compile(r"\b(yes|no)\b")

#: The reasoning blocks lmms-eval 0.7.3 cuts from every answer before scoring (--reasoning_tags default).
REASONING_TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def strip_reasoning(text: str, tags: Sequence[tuple[str, str]] = REASONING_TAGS) -> str:
    """The answer without its reasoning blocks, stripped of surrounding whitespace (as lmms-eval scores it).

    Each complete ``<think>...</think>`` block is cut out; a closing tag without an opening one (a chat
    template that pre-fills ``<think>``) keeps only what follows the last closing tag.
    """
    out = str(text)
    for start, end in tags:
        while start in out and end in out:
            i = out.find(start)
            j = out.find(end, i)
            if j < 0:
                break
            out = out[:i] + out[j + len(end) :]
        if end in out and start not in out:
            out = out.rsplit(end, 1)[-1]
    return out.strip()


def pope_answer(text: str) -> str:
    """lmms-eval's POPE reading: the whole answer, lower-cased and stripped ("yes." is neither yes nor no)."""
    return strip_reasoning(text).lower().strip()


def extract_yes_no(text: str) -> str | None:
    """svlm's lenient yes/no reading: the first standalone "yes" or "no" word, else None.

    ("Yes, there is a dog." -> "yes"; lmms-eval's POPE rule, `pope_answer`, reads it as neither.)
    """
    m = _YES_NO.search(strip_reasoning(text).lower())
    return m.group(1) if m else None


def parse_mme_answer(text: str) -> str | None:
    """MME's rule (lmms-eval's too): exact yes/no (dots dropped), "y"/"n", else "yes"/"no" within the first
    4 characters; None for anything else."""
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
    """svlm's lenient option reader (the ``lenient`` rule of `MultipleChoiceAccuracy`): the letter chosen by
    a free-form answer, or None when it names none (or several) of the options.

    Tried in order: a bare letter ("B", "(B)", "B."), a leading letter with a separator ("B. Sketch",
    "B) ..."), the text of exactly one option ("Sketch"), "the answer is B" / "option B", a leading "B " (not
    for "A"/"I", which open ordinary sentences), then a single option text contained in the answer.
    """
    t = strip_reasoning(str(text)).strip()
    if not t:
        return None
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices) if choices else max_letters]

    m = _LETTER_ONLY.match(t)
    if m and m.group(1) in letters:
        return m.group(1)
    # a leading "A." is the letter, never the article of an option text ("A. dog" is A, not option "dog")
    m = _LETTER_LEAD.match(t)
    if m and m.group(1) in letters:
        return m.group(1)
    norm_choices = [normalize_answer(c) for c in choices] if choices else []
    nt = normalize_answer(t)
    exact = [letters[i] for i, c in enumerate(norm_choices) if c and c == nt]
    if len(exact) == 1:
        return exact[0]
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


def scienceqa_letter(text: str) -> str | None:
    """lmms-eval's ScienceQA reading (LLaVA's): the answer is one character (any case), or starts with an
    upper-case letter and a period ("B. dog"); returns that letter lower-cased, else None."""
    t = strip_reasoning(text)
    if len(t) == 1:
        return t.lower()
    if len(t) >= 2 and t[0].isupper() and t[1] == ".":
        return t[0].lower()
    return None


# --------------------------------------------------------------------------------------- MMBench (lmms-eval)

_MMBENCH_LETTERS = "ABCDE"  # the letters a bare-letter answer may name, whatever the question's options
_MMBENCH_TEXT_LETTERS = "ABCD"  # the options whose text an answer may quote
_API_FAILURE = "Failed to obtain answer via API"
# token shapes of a letter, tried in order after a bare one: "B." "B," "B:" "B)" "B)." "(B)" "(B)." ":B" ...
_AFFIXES: tuple[tuple[str, str], ...] = (
    ("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
    (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."),
)  # fmt: skip


def _mmbench_letter_token(answer: str) -> str | None:
    """The one option letter that stands as a whitespace-separated token of the answer, alone or with one of
    `_AFFIXES`. A bare "A" in an answer of more than three words is taken for the article, not the option."""
    if _API_FAILURE in answer:
        return None
    tokens = answer.split()
    bare = [c for c in _MMBENCH_LETTERS if c in tokens]
    if len(bare) == 1 and not ("A" in tokens and len(tokens) > 3):
        return bare[0]
    for prefix, suffix in _AFFIXES:
        hits = [c for c in _MMBENCH_LETTERS if f"{prefix}{c}{suffix}" in tokens]
        if len(hits) == 1:
            return hits[0]
    return None


def _mmbench_option_text(answer: str, options: Mapping[str, str]) -> str | None:
    """The one option (A-D) whose text, lower-cased, occurs in the lower-cased answer."""
    low = answer.lower()
    hits = [k for k in _MMBENCH_TEXT_LETTERS if k in options and str(options[k]).lower() in low]
    return hits[0] if len(hits) == 1 else None


_CHOICE_PHRASES: tuple[str, ...] = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
    "答えは",
)  # fmt: skip


def _mmbench_static_letter(answer: str, letters: Sequence[str]) -> str | None:
    """lmms-eval's API-free MCQ extraction (``mmbench_en_dev_static``): every way a letter can appear is a
    candidate ranked by how telling its shape is (whole answer starts / ends with it > after "the answer is"
    > "(B)" > "B." > "B:" > "B)" > "B "), the later occurrence winning a tie; a letter anywhere is the last
    resort."""
    text = answer.strip()
    if not text:
        return None
    letters = list(letters) or list("ABCDEFGH")
    for mark in ",.!?;:'\"":
        text = text.strip(mark)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter), in the order they are looked for
    for rank, shape in ((6, "({})"), (5, "{}."), (4, "{}:"), (3, "{})"), (2, "{} ")):
        found += [(rank, text.rfind(shape.format(c)), c) for c in letters if shape.format(c) in text]
    low = text.lower()
    for phrase in _CHOICE_PHRASES:
        at = low.find(phrase)
        if at >= 0:
            after = at + len(phrase)
            found += [(7, text.find(c, after), c) for c in letters if text.find(c, after) >= 0]
    core = text.strip()
    found += [(10, 0, c) for c in letters if core.startswith(c) and (len(core) == 1 or not core[1].isalpha())]
    found += [
        (9, len(text) - 1, c)
        for c in letters
        if core.endswith(c) and (len(core) == 1 or not core[-2].isalpha())
    ]
    if not found:
        found = [(0, text.rfind(c), c) for c in letters if c in text]
    if not found:
        return None
    return max(found, key=lambda f: (f[0], f[1]))[2]


def mmbench_choice(text: str, options: Mapping[str, str | None]) -> str | None:
    """lmms-eval's MMBench reading of an answer (its ``mmbench_en_dev_static`` rules): a letter token
    ("B", "(B)", "I think it's B"), else the one option text quoted ("Photograph" for option "Photo"), else
    the API-free letter extraction. `options` maps letters to option texts (None/NaN for absent ones).

    lmms-eval's ``mmbench_en_dev`` asks a GPT judge instead of the last step; the two agree on every answer
    that names a letter token or quotes one option.
    """
    answer = strip_reasoning(text)
    present = {k: str(v) for k, v in options.items() if not _absent(v)}
    letter = _mmbench_letter_token(answer) or _mmbench_option_text(answer, present)
    if letter:
        return letter
    return _mmbench_static_letter(answer, sorted(k for k in present if k in _MMBENCH_TEXT_LETTERS))


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)

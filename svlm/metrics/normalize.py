"""Answer normalisation of the official VQA evaluation (VQAv2 / TextVQA / EvalAI), re-implemented.

Steps, in the official order: newlines/tabs -> spaces; punctuation removed or turned into spaces (removed
outright when the text has a thousands separator like "1,000" or the mark touches a space); periods not
followed by a digit dropped; lower-case; number words -> digits; articles dropped; apostrophe-less
contractions restored.
"""

from __future__ import annotations

import re
import string

# the punctuation marks the official evaluation handles (apostrophes, colons and periods are treated apart)
PUNCTUATION: tuple[str, ...] = tuple(';/[]"{}()=+\\_->< @`,?!'.replace(" ", ""))
_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)
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

# digits on both sides of one or more commas ("1,000"): then punctuation is deleted, never spaced
_THOUSANDS = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD = re.compile(r"\.(?!\d)")
# The official scripts pass re.UNICODE (= 32) where `re.sub` takes its count: only the first 32 periods go.
_PERIOD_LIMIT = 32

# The contraction table of the official VQA evaluation as lmms-eval 0.7.3 ships it ("variant>canonical"),
# quirks included: its capitalised keys never match (words are lower-cased first) and it maps
# "somebody'd" to "somebodyd". Any other spelling is left as it is.
_CONTRACTION_PAIRS = """
aint>ain't arent>aren't cant>can't couldve>could've couldnt>couldn't couldn'tve>couldn't've
couldnt've>couldn't've didnt>didn't doesnt>doesn't dont>don't hadnt>hadn't hadnt've>hadn't've
hadn'tve>hadn't've hasnt>hasn't havent>haven't hed>he'd hed've>he'd've he'dve>he'd've hes>he's
howd>how'd howll>how'll hows>how's Id've>I'd've I'dve>I'd've Im>I'm Ive>I've isnt>isn't itd>it'd
itd've>it'd've it'dve>it'd've itll>it'll let's>let's maam>ma'am mightnt>mightn't
mightnt've>mightn't've mightn'tve>mightn't've mightve>might've mustnt>mustn't mustve>must've
neednt>needn't notve>not've oclock>o'clock oughtnt>oughtn't ow's'at>'ow's'at 'ows'at>'ow's'at
'ow'sat>'ow's'at shant>shan't shed've>she'd've she'dve>she'd've she's>she's shouldve>should've
shouldnt>shouldn't shouldnt've>shouldn't've shouldn'tve>shouldn't've somebody'd>somebodyd
somebodyd've>somebody'd've somebody'dve>somebody'd've somebodyll>somebody'll somebodys>somebody's
someoned>someone'd someoned've>someone'd've someone'dve>someone'd've someonell>someone'll
someones>someone's somethingd>something'd somethingd've>something'd've something'dve>something'd've
somethingll>something'll thats>that's thered>there'd thered've>there'd've there'dve>there'd've
therere>there're theres>there's theyd>they'd theyd've>they'd've they'dve>they'd've theyll>they'll
theyre>they're theyve>they've twas>'twas wasnt>wasn't wed've>we'd've we'dve>we'd've weve>we've
werent>weren't whatll>what'll whatre>what're whats>what's whatve>what've whens>when's whered>where'd
wheres>where's whereve>where've whod>who'd whod've>who'd've who'dve>who'd've wholl>who'll whos>who's
whove>who've whyll>why'll whyre>why're whys>why's wont>won't wouldve>would've wouldnt>wouldn't
wouldnt've>wouldn't've wouldn'tve>wouldn't've yall>y'all yall'll>y'all'll y'allll>y'all'll
yall'd've>y'all'd've y'alld've>y'all'd've y'all'dve>y'all'd've youd>you'd youd've>you'd've
you'dve>you'd've youll>you'll youre>you're youve>you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split(">") for pair in _CONTRACTION_PAIRS.split())


def strip_punctuation(text: str) -> str:
    """The official `processPunctuation`: marks become spaces, or vanish next to a space / in "1,000"."""
    out = text
    glue = _THOUSANDS.search(text) is not None
    for p in PUNCTUATION:
        if glue or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def normalize_words(text: str) -> str:
    """The official `processDigitArticle`: lower-case, number words -> digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """Normalise an answer the way the official VQAv2 evaluation (and lmms-eval's vqav2 task) does."""
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return normalize_words(strip_punctuation(text))


def evalai_answer(text: str) -> str:
    """EvalAI's answer processor (TextVQA; lmms-eval's textvqa task): `normalize_answer` after lower-casing,
    deleting "," and "?" and splitting a possessive "'s" off its word ("man's" -> "man 's")."""
    text = str(text).lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(text)


def strip_case_punctuation(text: str) -> str:
    """Lower-case and delete every ASCII punctuation mark (lmms-eval's ``exact_match`` with ignore_case and
    ignore_punctuation: GQA). Articles, number words and spaces are left alone."""
    return str(text).lower().translate(_ASCII_PUNCTUATION)

"""Fixed prediction sets that pin svlm's default scoring and prompts to lmms-eval 0.7.3's.

Each `Case` holds dataset rows as lmms-eval's task functions receive them (``doc``s, without images), one
prediction per row, and lmms-eval 0.7.3's own scores for them, recorded as literals under lmms-eval's metric
names. ``tests/test_metrics_lmms.py`` checks svlm against the literals (base suite, no lmms-eval needed);
``tests/test_lmms/`` feeds the same rows and predictions to lmms-eval's ``process_results`` and aggregation
and checks both (lmms tier, ``make test-lmms``). The rows cover the corners where the rules used to differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from PIL import Image

from svlm.data.benchmarks import get_benchmark
from svlm.data.datamodule import collate_samples
from svlm.metrics.factory import metric_for, update_from_batch


@dataclass(frozen=True)
class Case:
    """benchmark: svlm's name; task: lmms-eval's task name; docs/preds: rows and one answer each;
    expected: lmms-eval 0.7.3's scores by its metric name; prompt0: lmms-eval's prompt for ``docs[0]``."""

    benchmark: str
    task: str
    docs: list[dict[str, Any]]
    preds: list[str]
    expected: dict[str, float]
    prompt0: str
    notes: str = ""
    svlm_keys: dict[str, str] = field(default_factory=dict)  # lmms-eval metric name -> svlm result key


SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def _gqa() -> Case:
    rows = [  # (prediction, answer)
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("a dog", "dog"),  # articles count: 0 (svlm's VQA rule said 1)
        ("two", "2"),  # number words count: 0
        ("T-shirt", "t-shirt"),
        ("t shirt", "t-shirt"),  # punctuation is deleted, not spaced: 0
        ("tshirt", "t-shirt"),  # ... so this is right: 1
        ("man's", "mans"),
        ("<think>red or blue?</think> Red", "red"),  # reasoning stripped before scoring
        ("  left ", "left"),
        ("The table", "table"),
        ("no", "yes"),
    ]
    docs = [
        {
            "id": f"g{k}",
            "imageId": f"n{k}",
            "question": f"What is object {k}? ",
            "answer": a,
            "types": {"structural": "query"},
        }
        for k, (_, a) in enumerate(rows)
    ]
    return Case(
        "gqa",
        "gqa",
        docs,
        [p for p, _ in rows],
        {"exact_match": 7 / 12},
        "What is object 0? " + SHORT,
        svlm_keys={"exact_match": "exact_match"},
    )


def _pope() -> Case:
    rows = [  # (prediction, ground truth)
        ("Yes", "yes"),
        ("yes.", "yes"),  # the whole answer must be yes/no: neither
        ("No", "yes"),
        ("Yes, there is a dog.", "yes"),  # neither (svlm's first-word rule said yes)
        ("<think>no?</think>yes", "yes"),
        ("no", "no"),
        (" NO ", "no"),
        ("yes", "no"),
        ("I cannot tell", "no"),
        ("No.", "no"),
    ]
    docs = [
        {"question_id": str(k), "question": f" Is there a thing {k} in the image? ", "answer": gt,
         "image_source": f"im{k}", "category": "random"}
        for k, (_, gt) in enumerate(rows)
    ]  # fmt: skip
    tp, fp, fn = 2, 1, 1
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return Case(
        "pope",
        "pope",
        docs,
        [p for p, _ in rows],
        {
            "pope_accuracy": 4 / 10,
            "pope_precision": precision,
            "pope_recall": recall,
            "pope_f1_score": 2 * precision * recall / (precision + recall),
            "pope_yes_ratio": 5 / 10,  # ground-truth yes
        },
        "Is there a thing 0 in the image?" + SHORT,
        svlm_keys={
            "pope_accuracy": "pope_accuracy",
            "pope_precision": "pope_precision",
            "pope_recall": "pope_recall",
            "pope_f1_score": "pope_f1",
            "pope_yes_ratio": "pope_yes_ratio",
        },
    )


def _mme() -> Case:
    rows = [  # (prediction, answer, subtask, image): two questions per image
        ("Yes.", "Yes", "existence", "e/1.png"),
        ("No", "No", "existence", "e/1.png"),  # image 1: both right
        ("y", "Yes", "existence", "e/2.png"),
        ("Yes it is", "No", "existence", "e/2.png"),  # image 2: one right
        ("No, it is not.", "No", "count", "c/1.png"),
        ("maybe", "Yes", "count", "c/1.png"),  # image 3: one right (unreadable answer)
        ("<think>no</think>Yes", "Yes", "code_reasoning", "r/1.png"),
        ("n", "No", "code_reasoning", "r/1.png"),  # image 4: both right
    ]
    docs = [
        {"question_id": img, "question": f"Is it {k}? Please answer yes or no.", "answer": a, "category": c}
        for k, (_, a, c, img) in enumerate(rows)
    ]
    # existence: (1 + 0.75) ... per image acc + acc+: image 1 200, image 2 50 -> 125; count 50; code 200
    return Case(
        "mme",
        "mme",
        docs,
        [p for p, *_ in rows],
        {"mme_perception_score": 175.0, "mme_cognition_score": 200.0},
        "Is it 0?" + SHORT,
        svlm_keys={"mme_perception_score": "mme_perception", "mme_cognition_score": "mme_cognition"},
    )


def _textvqa() -> Case:
    rows = [  # (prediction, 10 human answers)
        ("red,white", ["red white"] * 10),  # "," is deleted first: "redwhite" -> 0
        ("1000 2000", ["1,000-2,000"] * 10),  # the humans' "1,000-2,000" -> "1000 2000": 1
        ("Coca-Cola", ["coca cola"] * 4 + ["coke"] * 6),
        ("two", ["2"] * 3 + ["3"] * 7),  # 3 of 10: 0.9
        ("Dont", ["don't"] * 10),
        ("man's", ["man 's"] * 2 + ["man"] * 8),  # "'s" split off: 2 of 10 -> 0.6
        ("What?", ["what"] * 10),
        ("<think>hmm</think> Nike", ["nike"] * 10),
        ("the sign", ["sign"] * 1 + ["stop"] * 9),  # 1 of 10: 0.3
        ("somebody'd", ["somebodyd"] * 10),  # the official table's reversed entry
    ]
    docs = [
        {"question_id": k, "question": f"what does the SIGN {k} say?", "answers": a, "image_id": f"t{k}"}
        for k, (_, a) in enumerate(rows)
    ]
    return Case(
        "textvqa",
        "textvqa_val",
        docs,
        [p for p, _ in rows],
        {"exact_match": (0 + 1 + 1 + 0.9 + 1 + 0.6 + 1 + 1 + 0.3 + 1) / 10},
        "What does the sign 0 say?" + SHORT,
        svlm_keys={"exact_match": "vqa_accuracy"},
    )


def _vqav2() -> Case:
    rows = [  # (prediction, 10 human answers)
        ("Two.", ["2"] * 10),
        ("yes", ["yes"] * 3 + ["no"] * 7),  # 0.9
        ("red,white", ["red white"] * 10),  # VQAv2 keeps "," out of its processing: spaced -> 1
        ("1,000", ["1000"] * 10),
        ("The dog", ["dog"] * 2 + ["cat"] * 8),  # 0.6
        ("t-shirt", ["t shirt"] * 10),
        ("No", ["yes"] * 10),
        ("<think>x</think>blue", ["blue"] * 4 + ["navy"] * 6),
    ]
    docs = [
        {
            "question_id": k,
            "question": f"What is {k}? ",
            "image_id": k,
            "answer_type": "other",
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(ans)
            ],
        }
        for k, (_, ans) in enumerate(rows)
    ]
    return Case(
        "vqav2",
        "vqav2_val",
        docs,
        [p for p, _ in rows],
        {"exact_match": (1 + 0.9 + 1 + 1 + 0.6 + 1 + 0 + 1) / 8},
        "What is 0? " + SHORT,
        svlm_keys={"exact_match": "vqa_accuracy"},
    )


def _scienceqa() -> Case:
    preds = ["B", "b", "B.", "B. dog", "(B)", "The answer is B", "A. dog", "dog", " B ", "<think>A?</think>B"]
    docs = [
        {"id": f"s{k}", "question": "Which animal barks?", "choices": ["cat", "dog", "cow"], "answer": 1,
         "hint": "" if k else "Pets live at home.", "subject": "natural science"}
        for k in range(len(preds))
    ]  # fmt: skip
    return Case(
        "scienceqa_img",
        "scienceqa_img",
        docs,
        preds,
        {"exact_match": 6 / 10},  # "(B)", "The answer is B", "A. dog" (answer B) and "dog" are wrong
        "Context: Pets live at home.\nWhich animal barks?\nA. cat\nB. dog\nC. cow" + LETTER,
        svlm_keys={"exact_match": "mc_accuracy"},
    )


def _mmbench_doc(index: int, answer: str, options: list[str], hint: str | None = None) -> dict[str, Any]:
    letters = "ABCD"
    return {
        "index": index,
        "question": f"Question {index % 1_000_000}?",
        "hint": hint,
        **{letters[i]: (options[i] if i < len(options) else None) for i in range(4)},
        "answer": answer,
        "category": "image_style",
        "L2-category": "coarse_perception",
        "source": "svlm",
        "split": "dev",
    }


def _mmbench() -> Case:
    rotations = [["Photo", "Sketch", "Oil paint", "Digital art"][k:] + ["Photo", "Sketch", "Oil paint",
                 "Digital art"][:k] for k in range(4)]  # fmt: skip
    rows = []  # (prediction, doc)
    # question 1: all four rotations right -> 1
    for k, opts in enumerate(rotations):
        letter = "ABCD"[opts.index("Photo")]
        rows.append((letter, _mmbench_doc(1 + k * 1_000_000, letter, opts, hint="A picture.")))
    # question 2: three of four rotations right -> 0 (svlm's per-row rule said 0.75)
    for k, opts in enumerate(rotations):
        letter = "ABCD"[opts.index("Sketch")]
        pred = letter if k < 3 else "ABCD"[(opts.index("Sketch") + 1) % 4]
        rows.append((pred, _mmbench_doc(2 + k * 1_000_000, letter, opts)))
    # question 3: answered by quoting option text ("Photograph" contains "Photo") -> 1
    rows.append(("Photograph", _mmbench_doc(3, "A", ["Photo", "Sketch", "Painting"])))
    # question 4: "I think it's B" -> 1
    rows.append(("I think it's B", _mmbench_doc(4, "B", ["cat", "dog"])))
    # question 5: only the API-free extraction reads "answer:C" -> 1
    rows.append(("answer:C", _mmbench_doc(5, "C", ["x", "y", "z"])))
    # question 6: a letter with no option behind it ("E") is read, and wrong -> 0
    rows.append(("E", _mmbench_doc(6, "A", ["x", "y", "z"])))
    # question 7: two option texts quoted, no letter: the fallback finds none of A-C in "red and blue" -> 0
    rows.append(("red and blue", _mmbench_doc(7, "A", ["red", "blue", "green"])))
    return Case(
        "mmbench",
        "mmbench_en_dev_static",
        [d for _, d in rows],
        [p for p, _ in rows],
        {"gpt_eval_score": 100 * 4 / 7},
        "A picture. Question 1? There are several options:\nA. Photo\nB. Sketch\nC. Oil paint\n"
        "D. Digital art\n" + LETTER,
        notes="mmbench_en_dev (GPT judge) agrees on every row here: each names a letter token or one option",
        svlm_keys={"gpt_eval_score": "mmbench_circular"},
    )


def cases() -> list[Case]:
    """One case per benchmark svlm loads (fresh copies: lmms-eval's functions mutate their docs)."""
    return [_gqa(), _pope(), _mme(), _textvqa(), _vqav2(), _scienceqa(), _mmbench()]


def svlm_samples(case: Case) -> list[Any]:
    """The case's rows through svlm's own loader (the benchmark's normaliser), with a dummy image each."""
    spec = get_benchmark(case.benchmark)
    ds = SimpleNamespace(split=spec.split)
    image = Image.new("RGB", (4, 4))
    return [spec.normalise({**doc, "image": image}, i, ds) for i, doc in enumerate(case.docs)]  # type: ignore[arg-type]


def svlm_scores(case: Case) -> dict[str, float]:
    """svlm's default metric on the case, under lmms-eval's metric names (`Case.svlm_keys`)."""
    batch = collate_samples(svlm_samples(case))
    metric = metric_for(case.benchmark, per_category=False)
    update_from_batch(metric, case.preds, batch)
    out: Mapping[str, Any] = metric.compute()
    return {lmms: float(out[ours]) for lmms, ours in case.svlm_keys.items()}

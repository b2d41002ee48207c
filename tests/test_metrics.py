"""Metrics against the official scoring rules, with hand-computed expected values."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics import MetricCollection

from svlm.data import UnknownBenchmarkError, available_benchmarks, get_benchmark
from svlm.metrics import (
    ExactMatch,
    MMEScore,
    MultipleChoiceAccuracy,
    POPEMetrics,
    VQAAccuracy,
    available_metrics,
    build_metric,
    extract_choice,
    extract_yes_no,
    metric_for,
    normalize_answer,
    parse_mme_answer,
    update_from_batch,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs.", "2 dogs"),
        ("The Red!", "red"),
        ("1,000", "1000"),
        ("yes, it is", "yes it is"),
        ("top-left", "top left"),
        ("3.5", "3.5"),
        ("Dont know", "don't know"),
        ("none", "0"),
        ("  an apple\n", "apple"),
        ("couldnt've", "couldn't've"),
        ("(B)", "b"),
    ],
)
def test_official_vqa_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def _humans(k: int, answer: str = "red", other: str = "blue") -> list[str]:
    return [answer] * k + [other] * (10 - k)


@pytest.mark.parametrize(("k", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_official_leave_one_out(k, expected):
    # official: mean over the 10 leave-one-out subsets of min(#matches / 3, 1). With 3 of 10 humans agreeing
    # the 3 subsets that drop one of them see only 2 matches: (3 * 2/3 + 7 * 1) / 10 = 0.9 (the simplified
    # min(k / 3, 1) would say 1.0); 2 of 10 gives (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    assert vqa_accuracy("red", _humans(k)) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    answers = ["2", "2", "two", "two", "3", "3", "3", "3", "3", "3"]
    assert vqa_accuracy("Two.", answers) == pytest.approx(1.0)  # 4 humans said 2 once normalised
    assert vqa_accuracy("three", answers) == pytest.approx(1.0)
    assert vqa_accuracy("The answer is 3", answers) == 0.0
    # one reference: no other human to agree with, so 0 (lmms-eval's leave-one-out, taken literally)
    assert vqa_accuracy("Canon", ["canon"]) == 0.0


def test_vqa_metric_accumulates_over_batches_and_categories():
    m = VQAAccuracy(categories=("number", "other"))
    m.update(["red", "2"], [_humans(2), _humans(10, "2")], categories=["other", "number"])
    m.update(["blue"], [_humans(3)], categories=["yes/no"])  # unknown category: counted overall only
    out = m.compute()
    assert out["vqa_accuracy"].item() == pytest.approx((0.6 + 1.0 + 1.0) / 3)  # "blue" said by 7 humans
    assert out["vqa_accuracy/other"].item() == pytest.approx(0.6)
    assert out["vqa_accuracy/number"].item() == pytest.approx(1.0)
    assert set(out) == {"vqa_accuracy", "vqa_accuracy/other", "vqa_accuracy/number"}


def test_exact_match():
    preds, answers = ["The Red.", "top left", "square", "Three"], [["red"], ["top-left"], "circle", ["3"]]
    m = ExactMatch(rule="vqa")  # svlm-shapes: articles, number words, hyphens normalised
    m.update(preds, answers)
    assert m.compute().item() == pytest.approx(0.75)
    lmms = ExactMatch()  # lmms-eval's GQA: only case and punctuation are ignored
    assert lmms.score(preds, answers) == [0.0, 0.0, 0.0, 0.0]
    assert lmms.score(["Red.", "TOP-LEFT"], [["red"], ["top-left"]]) == [1.0, 1.0]
    assert ExactMatch().score(["Yes"], [["no"]]) == [0.0]
    with pytest.raises(ValueError, match=r"unknown exact-match rule 'loose'; valid: \['lmms_eval', 'vqa'\]"):
        ExactMatch(rule="loose")


@pytest.mark.parametrize(
    ("pred", "choices", "letter"),
    [
        ("B", ["cat", "dog"], "B"),
        ("(B)", ["cat", "dog"], "B"),
        ("b.", ["cat", "dog"], None),  # lower-case letters are words, not options
        ("C. Digital art", ["Oil Paint", "Sketch", "Digital art"], "C"),
        ("B) Sketch", ["Oil Paint", "Sketch", "Digital art"], "B"),
        ("The answer is C.", ["Oil Paint", "Sketch", "Digital art"], "C"),
        ("Answer: (B)", ["x", "y", "z"], "B"),
        ("Sketch", ["Oil Paint", "Sketch", "Digital art"], "B"),
        ("A dog", ["cat", "dog"], "B"),  # the text of option B, not letter A
        ("A. dog", ["cat", "dog"], "A"),  # letter A with its separator (was read as option B's text)
        ("A", ["cat", "dog"], "A"),
        ("D", ["cat", "dog"], None),  # no option D
        (
            "It is a sketch, not digital art",
            ["Oil Paint", "Sketch", "Digital art"],
            None,
        ),  # two options named
        ("I am not sure", ["cat", "dog"], None),
        ("<think>A or B?</think>B", ["cat", "dog"], "B"),
        ("", ["cat", "dog"], None),
    ],
)
def test_extract_choice(pred, choices, letter):
    assert extract_choice(pred, choices) == letter


def test_multiple_choice_accuracy():
    m = MultipleChoiceAccuracy(categories=("style",), rule="lenient")
    choices = [["Oil Paint", "Sketch", "Digital art"]] * 4
    preds, answers = ["B", "Sketch", "The answer is A", "C"], ["B", ["B"], ["B"], ["Digital art"]]
    m.update(preds, answers, choices=choices, categories=["style", "style", "scene", "scene"])
    out = m.compute()
    assert out["mc_accuracy"].item() == pytest.approx(0.75)  # answer text "Digital art" -> letter C
    assert out["mc_accuracy/style"].item() == 1.0
    # lmms-eval's ScienceQA rule (the default): only "B" / "b" / "B. ..." name option B
    assert MultipleChoiceAccuracy().score(preds, answers, choices) == [1.0, 0.0, 0.0, 1.0]
    assert MultipleChoiceAccuracy().score(["A. dog"], ["B"], [["cat", "dog"]]) == [0.0]
    assert MultipleChoiceAccuracy(rule="lenient").score(["A. dog"], ["B"], [["cat", "dog"]]) == [0.0]


@pytest.mark.parametrize(
    ("pred", "label"),
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("Yes, there is a dog in the image.", "yes"),
        ("There is no dog.", "no"),
        ("<think>yes? no</think> No", "no"),
        ("I cannot tell", None),
        ("Nope", None),
    ],
)
def test_extract_yes_no(pred, label):
    assert extract_yes_no(pred) == label


def test_pope_known_confusion_matrix():
    # ground truth yes x5: 4 answered yes (TP), 1 no (FN); ground truth no x5: 2 yes (FP), 3 no (TN)
    gts = ["yes"] * 5 + ["no"] * 5
    preds = ["Yes"] * 4 + ["No"] + ["Yes, there is."] * 2 + ["no"] * 3
    m = POPEMetrics(rule="first_word")  # svlm's lenient reading: "Yes, there is." is a yes
    m.update(preds, gts)
    out = {k: v.item() for k, v in m.compute().items()}
    precision, recall = 4 / 6, 4 / 5
    assert out == pytest.approx(
        {
            "pope_accuracy": 0.7,
            "pope_precision": precision,
            "pope_recall": recall,
            "pope_f1": 2 * precision * recall / (precision + recall),
            "pope_yes_ratio": 0.5,  # ground-truth yes (lmms-eval's definition)
            "pope_pred_yes_ratio": 0.6,  # predicted yes (POPE's bias indicator)
        }
    )
    # an answer without yes/no is wrong: accuracy drops; precision and recall leave it out (lmms-eval)
    m.update(["I am not sure"], [["yes"]])
    out = {k: v.item() for k, v in m.compute().items()}
    assert out["pope_accuracy"] == pytest.approx(7 / 11)
    assert out["pope_recall"] == pytest.approx(4 / 5)
    assert out["pope_precision"] == pytest.approx(4 / 6)
    assert out["pope_yes_ratio"] == pytest.approx(6 / 11)
    assert out["pope_pred_yes_ratio"] == pytest.approx(6 / 11)
    # lmms-eval's reading (the default): "Yes, there is." is neither yes nor no
    lmms = POPEMetrics()
    lmms.update(preds, gts)
    out = {k: v.item() for k, v in lmms.compute().items()}
    assert out["pope_accuracy"] == pytest.approx(0.7) and out["pope_precision"] == 1.0


def test_pope_per_category_and_bad_ground_truth():
    m = POPEMetrics(categories=("adversarial", "random"))
    m.update(["yes", "yes", "no"], ["yes", "no", "no"], categories=["adversarial", "adversarial", "random"])
    out = m.compute()
    assert out["pope_accuracy/adversarial"].item() == pytest.approx(0.5)
    assert out["pope_precision/adversarial"].item() == pytest.approx(0.5)
    assert out["pope_accuracy/random"].item() == 1.0 and out["pope_f1/random"].item() == 0.0  # no positives
    with pytest.raises(ValueError, match="POPE ground truth must be 'yes' or 'no', got 'maybe'"):
        m.update(["yes"], ["maybe"])


@pytest.mark.parametrize(
    ("pred", "label"),
    [
        ("Yes.", "yes"),
        ("y", "yes"),
        ("N", "no"),
        ("No, it is not.", "no"),
        ("Yes it is", "yes"),
        ("maybe", None),
    ],
)
def test_parse_mme_answer(pred, label):
    assert parse_mme_answer(pred) == label


def _mme_updates():
    """existence: image 1 both right, image 2 one right -> acc 3/4, acc+ 1/2 -> 125; OCR: both right -> 200;
    code_reasoning: both wrong -> 0. Perception 325, cognition 0."""
    rows = [
        ("Yes", "yes", "existence", "e1.png"),
        ("No", "no", "existence", "e1.png"),
        ("Yes", "yes", "existence", "e2.png"),
        ("Yes", "no", "existence", "e2.png"),
        ("yes", "yes", "OCR", "o1.png"),
        ("no", "no", "OCR", "o1.png"),
        ("No", "yes", "code_reasoning", "c1.png"),
        ("I don't know", "no", "code_reasoning", "c1.png"),
    ]
    preds, answers, cats, imgs = map(list, zip(*rows, strict=True))
    return preds, answers, cats, imgs


def test_mme_official_score():
    preds, answers, cats, imgs = _mme_updates()
    m = MMEScore()
    # the two questions of image e2 arrive in different batches
    m.update(preds[:3], answers[:3], categories=cats[:3], image_ids=imgs[:3])
    m.update(preds[3:], answers[3:], categories=cats[3:], image_ids=imgs[3:])
    out = {k: v.item() for k, v in m.compute().items()}
    assert out == pytest.approx(
        {
            "mme/existence": 125.0,
            "mme/OCR": 200.0,
            "mme/code_reasoning": 0.0,
            "mme_perception": 325.0,
            "mme_cognition": 0.0,
            "mme_total": 325.0,
        }
    )


def test_mme_pairs_across_ranks_via_state_merge():
    # simulate two DDP ranks that each saw one question of every image: pairing happens after the gather
    preds, answers, cats, imgs = _mme_updates()
    ranks = [MMEScore(), MMEScore()]
    for r, m in enumerate(ranks):
        m.update(preds[r::2], answers[r::2], categories=cats[r::2], image_ids=imgs[r::2])
    ranks[0].merge_state(ranks[1])
    assert ranks[0].compute()["mme_perception"].item() == pytest.approx(325.0)


def test_mme_input_errors():
    with pytest.raises(ValueError, match="needs categories"):
        MMEScore().update(["yes"], ["yes"])
    with pytest.raises(ValueError, match=r"unknown MME subtask\(s\) \['colour'\]; valid: \['existence'"):
        MMEScore().update(["yes"], ["yes"], categories=["colour"], image_ids=["x"])


def test_sum_states_merge_like_ddp():
    a, b, whole = ExactMatch(categories=("x",)), ExactMatch(categories=("x",)), ExactMatch(categories=("x",))
    preds, gts, cats = ["a", "b", "c", "d"], ["a", "x", "c", "y"], ["x", "x", "y", "x"]
    a.update(preds[:1], gts[:1], categories=cats[:1])
    b.update(preds[1:], gts[1:], categories=cats[1:])
    whole.update(preds, gts, categories=cats)
    a.merge_state(b)
    assert {k: v.item() for k, v in a.compute().items()} == {k: v.item() for k, v in whole.compute().items()}


def _oracle_batch(benchmark: str) -> tuple[list[str], dict]:
    """A two-sample batch in the DataModule format whose predictions are all right."""
    spec = get_benchmark(benchmark)
    cat = spec.categories[0] if spec.categories else None
    image_ids = ["i0", "i0"]
    if spec.metric in ("mc_accuracy", "mmbench"):
        answers, preds, choices = [["B"], ["A"]], ["B", "A. first"], [["first", "second"]] * 2
        image_ids = [7, 1_000_007]  # MMBench: one question and its rotated copy
    elif spec.metric in ("pope", "mme"):
        answers, preds, choices = [["yes"], ["no"]], ["Yes", "No"], [None, None]
    elif spec.metric in ("vqa_accuracy", "textvqa_accuracy"):
        answers, preds, choices = [["red"] * 10, ["2"] * 10], ["Red", "2"], [None, None]
    else:
        answers, preds, choices = [["red"], ["2"]], ["Red", "2"], [None, None]
    batch = {"answers": answers, "choices": choices, "categories": [cat, cat], "image_ids": image_ids}
    return preds, batch


@pytest.mark.parametrize("benchmark", available_benchmarks())
def test_metric_for_every_benchmark_scores_oracle_answers_perfectly(benchmark):
    metrics = metric_for(benchmark)
    assert isinstance(metrics, MetricCollection)
    preds, batch = _oracle_batch(benchmark)
    update_from_batch(metrics, preds, batch)
    out = {k: v.item() for k, v in metrics.compute().items()}
    assert all(math.isfinite(v) for v in out.values())
    kind = get_benchmark(benchmark).metric
    if kind == "pope":
        assert out["pope_accuracy"] == 1.0 and out["pope_f1"] == 1.0 and out["pope_yes_ratio"] == 0.5
    elif kind == "mme":
        assert out["mme_total"] == 200.0  # one subtask, one image, both questions right
    elif kind == "mmbench":
        assert out == {"mmbench_circular": 100.0}  # x100, like lmms-eval
    else:
        key = {"vqa_exact_match": "exact_match", "textvqa_accuracy": "vqa_accuracy"}.get(kind, kind)
        assert out[key] == pytest.approx(1.0) and (kind == key or kind not in out)


def test_metric_for_names_and_errors():
    assert set(available_metrics()) == {
        "exact_match",
        "vqa_exact_match",
        "vqa_accuracy",
        "textvqa_accuracy",
        "mc_accuracy",
        "mmbench",
        "pope",
        "mme",
    }
    assert {get_benchmark(b).metric for b in available_benchmarks()} <= set(available_metrics())
    keys = set(metric_for("shapes").keys())
    assert keys == {"exact_match"}
    plain = metric_for("gqa", per_category=False)
    plain.update(["yes"], [["yes"]])
    assert set(plain.compute()) == {"exact_match"}
    with pytest.raises(UnknownBenchmarkError, match="Did you mean 'mmbench'"):
        metric_for("mmbenc")
    with pytest.raises(ValueError, match="Unknown metric 'f1'"):
        build_metric("f1")


def test_update_from_batch_filters_fields_for_a_single_metric():
    m = VQAAccuracy()
    update_from_batch(
        m, ["red"], {"answers": [_humans(4)], "choices": [None], "image_ids": ["x"], "ids": ["1"]}
    )
    assert m.compute().item() == 1.0
    with pytest.raises(ValueError, match="batch has no 'answers'"):
        update_from_batch(m, ["red"], {"questions": ["?"]})
    with pytest.raises(ValueError, match="got 2 predictions but 1 answer lists"):
        m.update(["a", "b"], [["a"]])


def test_metrics_move_devices_and_reset():
    m = metric_for("mme").to(torch.device("cpu"))
    preds, answers, cats, imgs = _mme_updates()
    m.update(preds, answers, categories=cats, image_ids=imgs)
    assert m.compute()["mme_total"].item() == pytest.approx(325.0)
    m.reset()
    m.update(["yes"], ["yes"], categories=["OCR"], image_ids=["a"])
    assert m.compute()["mme_total"].item() == pytest.approx(200.0)

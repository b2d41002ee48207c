"""Per-sample-scored accuracies (VQA accuracy, exact match, multiple choice), overall and per category.

All states are fixed-size sums (`dist_reduce_fx="sum"`), so results are exact under DDP. Each metric also
exposes `score(...)`, the per-sample values it accumulates, for prediction logs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torchmetrics import Metric

from svlm.metrics.extract import extract_choice, scienceqa_letter, strip_reasoning
from svlm.metrics.normalize import evalai_answer, normalize_answer, strip_case_punctuation

#: How answers are normalised before VQA accuracy: ``vqav2`` (official VQAv2; lmms-eval's vqav2 task) or
#: ``evalai`` (EvalAI's processor, which also drops "," and "?" and splits "'s"; lmms-eval's textvqa task).
VQAProcessor = Literal["vqav2", "evalai"]
_PROCESSORS: dict[str, Callable[[str], str]] = {"vqav2": normalize_answer, "evalai": evalai_answer}
#: Exact-match rules: ``lmms_eval`` (ignore case and punctuation: lmms-eval's GQA) or ``vqa`` (svlm's: the
#: full VQA normalisation, so "a dog" = "dog", "two" = "2", "t-shirt" = "t shirt"; svlm-shapes).
ExactMatchRule = Literal["lmms_eval", "vqa"]
_EXACT_RULES: dict[str, Callable[[str], str]] = {"lmms_eval": strip_case_punctuation, "vqa": normalize_answer}
#: Multiple-choice rules: ``lmms_eval`` (lmms-eval's ScienceQA: the answer is the letter, or starts "B.") or
#: ``lenient`` (svlm's `extract_choice`: "(B)", "The answer is B", the option's text, ...).
ChoiceRule = Literal["lmms_eval", "lenient"]


def _check_choice(kind: str, value: str, valid: dict | tuple) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {sorted(valid)}")


AnswerLists = Sequence[Sequence[str]] | Sequence[str]


def as_answer_lists(answers: AnswerLists) -> list[list[str]]:
    """Accept one answer per sample (``["red", ...]``) or a list per sample (``[["red", "crimson"]]``)."""
    return [[a] if isinstance(a, str) else [str(x) for x in a] for a in answers]


def vqa_accuracy(pred: str, answers: Sequence[str], processor: VQAProcessor = "vqav2") -> float:
    """Official VQA accuracy: mean over the leave-one-out subsets of min(#matching humans / 3, 1).

    With 10 human answers: 0 matches -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >= 4 -> 1.0. Predictions and human
    answers are both normalised by `processor` (see `VQAProcessor`). As in lmms-eval, a single reference
    answer has no other humans to agree with and scores 0; no answers score 0.
    """
    _check_choice("VQA processor", processor, _PROCESSORS)
    if not answers:
        return 0.0
    norm = _PROCESSORS[processor]
    p = norm(strip_reasoning(pred))
    gts = [norm(a) for a in answers]
    hits = sum(g == p for g in gts)
    return sum(min(1.0, (hits - (g == p)) / 3.0) for g in gts) / len(gts)


def exact_match(pred: str, answers: Sequence[str], rule: ExactMatchRule = "lmms_eval") -> float:
    """1.0 when the prediction equals any answer once both are normalised by `rule` (see `ExactMatchRule`)."""
    _check_choice("exact-match rule", rule, _EXACT_RULES)
    norm = _EXACT_RULES[rule]
    p = norm(strip_reasoning(pred))
    return float(any(p == norm(a) for a in answers))


class CategorizedMean(Metric):
    """Mean of per-sample scores, overall and for each of a fixed list of categories.

    `compute()` returns a scalar tensor, or with `categories` a dict ``{name: overall, "name/<cat>": ...}``
    holding the categories seen so far. Samples whose category is not in the list count only overall.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    name = "mean"

    def __init__(self, categories: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.categories: tuple[str, ...] = tuple(categories or ())
        self._index = {c: i + 1 for i, c in enumerate(self.categories)}
        n = len(self.categories) + 1
        self.add_state("score_sum", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")

    def _accumulate(self, scores: Sequence[float], categories: Sequence[str | None] | None) -> None:
        if categories is not None and len(categories) != len(scores):
            raise ValueError(f"got {len(scores)} predictions but {len(categories)} categories")
        s = torch.as_tensor(list(scores), dtype=self.score_sum.dtype, device=self.score_sum.device)
        self.score_sum[0] += s.sum()
        self.count[0] += len(scores)
        if self.categories and categories is not None:
            idx = [(j, self._index[c]) for j, c in enumerate(categories) if c in self._index]
            if idx:
                rows = torch.tensor([j for j, _ in idx], device=s.device)
                cols = torch.tensor([k for _, k in idx], device=s.device)
                self.score_sum.index_add_(0, cols, s[rows])
                self.count.index_add_(0, cols, torch.ones_like(s[rows]))

    def compute(self) -> torch.Tensor | dict[str, torch.Tensor]:
        means = self.score_sum / self.count.clamp(min=1)
        if not self.categories:
            return means[0]
        out = {self.name: means[0]}
        for c, k in self._index.items():
            if self.count[k] > 0:
                out[f"{self.name}/{c}"] = means[k]
        return out


def _check_lengths(preds: Sequence[str], answers: Sequence) -> None:
    if isinstance(preds, str):
        raise TypeError("preds must be a sequence of strings (one per sample), got a single string")
    if len(preds) != len(answers):
        raise ValueError(f"got {len(preds)} predictions but {len(answers)} answer lists")


class VQAAccuracy(CategorizedMean):
    """VQAv2 / TextVQA accuracy (`vqa_accuracy` with `processor`), with optional per-category means."""

    name = "vqa_accuracy"

    def __init__(
        self, categories: Sequence[str] | None = None, processor: VQAProcessor = "vqav2", **kwargs
    ) -> None:
        _check_choice("VQA processor", processor, _PROCESSORS)
        super().__init__(categories, **kwargs)
        self.processor = processor

    def score(self, preds: Sequence[str], answers: AnswerLists) -> list[float]:
        _check_lengths(preds, answers)
        return [
            vqa_accuracy(p, a, self.processor) for p, a in zip(preds, as_answer_lists(answers), strict=True)
        ]

    def update(
        self, preds: Sequence[str], answers: AnswerLists, categories: Sequence[str] | None = None
    ) -> None:
        self._accumulate(self.score(preds, answers), categories)


class ExactMatch(CategorizedMean):
    """Exact match against any accepted answer under `rule` (``lmms_eval``: GQA; ``vqa``: svlm-shapes)."""

    name = "exact_match"

    def __init__(
        self, categories: Sequence[str] | None = None, rule: ExactMatchRule = "lmms_eval", **kwargs
    ) -> None:
        _check_choice("exact-match rule", rule, _EXACT_RULES)
        super().__init__(categories, **kwargs)
        self.rule = rule

    def score(self, preds: Sequence[str], answers: AnswerLists) -> list[float]:
        _check_lengths(preds, answers)
        return [exact_match(p, a, self.rule) for p, a in zip(preds, as_answer_lists(answers), strict=True)]

    def update(
        self, preds: Sequence[str], answers: AnswerLists, categories: Sequence[str] | None = None
    ) -> None:
        self._accumulate(self.score(preds, answers), categories)


class MultipleChoiceAccuracy(CategorizedMean):
    """Accuracy of the option letter read from a free-form answer under `rule` (see `ChoiceRule`; default:
    lmms-eval's ScienceQA rule, `scienceqa_letter`).

    `answers` hold the correct letter ("B"); a correct option *text* is mapped to its letter via `choices`.
    An answer naming no option, or several, is wrong.
    """

    name = "mc_accuracy"

    def __init__(
        self, categories: Sequence[str] | None = None, rule: ChoiceRule = "lmms_eval", **kwargs
    ) -> None:
        _check_choice("multiple-choice rule", rule, ("lmms_eval", "lenient"))
        super().__init__(categories, **kwargs)
        self.rule = rule

    def score(
        self,
        preds: Sequence[str],
        answers: AnswerLists,
        choices: Sequence[Sequence[str] | None] | None = None,
    ) -> list[float]:
        _check_lengths(preds, answers)
        choices = choices if choices is not None else [None] * len(preds)
        out = []
        for p, a, ch in zip(preds, as_answer_lists(answers), choices, strict=True):
            target = a[0].strip() if a else ""
            if ch and len(target) != 1:
                target = extract_choice(target, ch) or target
            if self.rule == "lmms_eval":
                out.append(float(scienceqa_letter(p) == target.lower()))
            else:
                out.append(float(extract_choice(p, ch) == target.upper()))
        return out

    def update(
        self,
        preds: Sequence[str],
        answers: AnswerLists,
        choices: Sequence[Sequence[str] | None] | None = None,
        categories: Sequence[str] | None = None,
    ) -> None:
        self._accumulate(self.score(preds, answers, choices), categories)

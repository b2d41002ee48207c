"""POPE: accuracy, precision, recall, F1 and yes-ratio of yes/no answers ("yes" is the positive class).

The default reproduces lmms-eval 0.7.3's POPE task: an answer counts only when it *is* "yes" or "no" (after
lower-casing and stripping), recall is TP / (TP + FN) over the answers that said "no" (an answer that is
neither leaves both recall terms alone), and ``pope_yes_ratio`` is the share of ground-truth "yes".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torchmetrics import Metric

from svlm.metrics.accuracy import AnswerLists, as_answer_lists
from svlm.metrics.extract import extract_yes_no, pope_answer

# confusion columns: ground truth x prediction, with a third prediction value for answers without yes/no
_TP, _FN, _YES_OTHER, _FP, _TN, _NO_OTHER = range(6)
KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "pred_yes_ratio")
#: How an answer is read: ``lmms_eval`` (the whole answer must be "yes"/"no": "Yes." is neither) or
#: ``first_word`` (svlm's lenient reading: the first standalone yes/no word, "Yes, there is a dog." -> yes).
POPERule = Literal["lmms_eval", "first_word"]
_RULES: dict[str, Callable[[str], str | None]] = {"lmms_eval": pope_answer, "first_word": extract_yes_no}


def pope_counts(preds: Sequence[str], answers: AnswerLists, rule: POPERule = "lmms_eval") -> list[int]:
    """Confusion column (see module constants) of each sample."""
    if rule not in _RULES:
        raise ValueError(f"unknown POPE rule {rule!r}; valid: {sorted(_RULES)}")
    read = _RULES[rule]
    cols = []
    for p, a in zip(preds, as_answer_lists(answers), strict=True):
        gt = a[0].strip().lower() if a else ""
        if gt not in ("yes", "no"):
            raise ValueError(f"POPE ground truth must be 'yes' or 'no', got {gt!r}")
        pred = read(p)
        if gt == "yes":
            cols.append({"yes": _TP, "no": _FN}.get(pred, _YES_OTHER))
        else:
            cols.append({"yes": _FP, "no": _TN}.get(pred, _NO_OTHER))
    return cols


def _rates(c: torch.Tensor) -> dict[str, torch.Tensor]:
    tp, fn, yes_other, fp, tn, no_other = c.unbind(-1)
    n = c.sum(-1).clamp(min=1)
    precision = tp / (tp + fp).clamp(min=1)
    recall = tp / (tp + fn).clamp(min=1)
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0
    )
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fn + yes_other) / n,
        "pred_yes_ratio": (tp + fp) / n,
    }


class POPEMetrics(Metric):
    """POPE scores from free-form answers, each read by `rule` (see `POPERule`; default lmms-eval's).

    An answer that is neither yes nor no is wrong; it lowers accuracy only (lmms-eval's precision and recall
    ignore it). ``pope_yes_ratio`` is lmms-eval's: the share of *ground-truth* "yes" (0.5 on the balanced
    set); ``pope_pred_yes_ratio`` is POPE's bias indicator, the share of *predicted* "yes". Returns
    ``pope_<key>`` for `KEYS`, plus ``pope_<key>/<category>`` with `categories` (POPE's adversarial /
    popular / random subsets).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, categories: Sequence[str] | None = None, rule: POPERule = "lmms_eval", **kwargs
    ) -> None:
        if rule not in _RULES:
            raise ValueError(f"unknown POPE rule {rule!r}; valid: {sorted(_RULES)}")
        super().__init__(**kwargs)
        self.rule = rule
        self.categories: tuple[str, ...] = tuple(categories or ())
        self._index = {c: i + 1 for i, c in enumerate(self.categories)}
        self.add_state("confusion", default=torch.zeros(len(self.categories) + 1, 6), dist_reduce_fx="sum")

    def score(self, preds: Sequence[str], answers: AnswerLists) -> list[float]:
        return [float(c in (_TP, _TN)) for c in pope_counts(preds, answers, self.rule)]

    def update(
        self, preds: Sequence[str], answers: AnswerLists, categories: Sequence[str] | None = None
    ) -> None:
        if len(preds) != len(answers):
            raise ValueError(f"got {len(preds)} predictions but {len(answers)} answers")
        cols = torch.tensor(
            pope_counts(preds, answers, self.rule), dtype=torch.long, device=self.confusion.device
        )
        ones = torch.ones(len(cols), device=self.confusion.device)
        self.confusion[0].index_add_(0, cols, ones)
        if self.categories and categories is not None:
            for col, cat in zip(cols.tolist(), categories, strict=True):
                if cat in self._index:
                    self.confusion[self._index[cat], col] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        rates = _rates(self.confusion)
        out = {f"pope_{k}": v[0] for k, v in rates.items()}
        for c, i in self._index.items():
            if self.confusion[i].sum() > 0:
                out.update({f"pope_{k}/{c}": v[i] for k, v in rates.items()})
        return out

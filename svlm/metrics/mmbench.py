"""MMBench's circular score, as lmms-eval 0.7.3 computes it (its API-free ``mmbench_en_dev_static`` rules).

MMBench asks each question several times with its options rotated: the original row has ``index`` < 1e6 and
its copies ``index + k * 1e6``. A question counts as right only if *every* copy present is answered right
(all-or-nothing), and only the original rows are counted: on MMBench-EN dev that is 1,164 questions over
4,329 rows. The score is reported x100, like lmms-eval's. Per-row accuracy (svlm's former rule) is
``MultipleChoiceAccuracy(rule="lenient")``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from svlm.metrics.accuracy import AnswerLists, as_answer_lists
from svlm.metrics.extract import mmbench_choice

CIRCULAR_OFFSET = 1_000_000


def mmbench_correct(pred: str, answer: str, choices: Sequence[str] | None) -> bool:
    """Whether `pred` picks `answer` (a letter) among `choices` (option texts, in letter order)."""
    options = {string.ascii_uppercase[i]: c for i, c in enumerate(choices or ())}
    return mmbench_choice(pred, options) == answer.strip().upper()


class MMBenchCircular(Metric):
    """Circular MMBench accuracy x100 (``mmbench_circular``).

    update needs each row's MMBench ``index`` (`image_ids`: the DataModule carries it there) and its
    option texts (`choices`). Copies of a question may land on different ranks: per-row results are
    gathered (``dist_reduce_fx="cat"``) and grouped only in `compute()`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def score(
        self,
        preds: Sequence[str],
        answers: AnswerLists,
        choices: Sequence[Sequence[str] | None] | None = None,
    ) -> list[float]:
        """Per-row correctness (before the circular grouping)."""
        if len(preds) != len(answers):
            raise ValueError(f"got {len(preds)} predictions but {len(answers)} answer lists")
        choices = choices if choices is not None else [None] * len(preds)
        return [
            float(mmbench_correct(p, a[0] if a else "", ch))
            for p, a, ch in zip(preds, as_answer_lists(answers), choices, strict=True)
        ]

    def update(
        self,
        preds: Sequence[str],
        answers: AnswerLists,
        choices: Sequence[Sequence[str] | None] | None = None,
        image_ids: Sequence[int | str] | None = None,
    ) -> None:
        if image_ids is None or len(image_ids) != len(preds):
            raise ValueError(
                "MMBenchCircular.update needs image_ids: each row's MMBench index, one per prediction"
            )
        try:
            index = [int(i) for i in image_ids]
        except (TypeError, ValueError):
            raise ValueError(f"MMBench indices must be integers, got {list(image_ids)[:3]}") from None
        dev = self.device
        self.correct.append(torch.tensor(self.score(preds, answers, choices), device=dev))
        self.index.append(torch.tensor(index, dtype=torch.long, device=dev))

    def compute(self) -> dict[str, torch.Tensor]:
        if not self.index:
            return {"mmbench_circular": torch.zeros((), device=self.device)}
        index, correct = dim_zero_cat(self.index), dim_zero_cat(self.correct).float()
        question = index % CIRCULAR_OFFSET
        keys, group = question.unique(return_inverse=True)
        all_right = torch.ones(len(keys), device=correct.device).scatter_reduce(
            0, group, correct, reduce="amin"
        )
        main = index < CIRCULAR_OFFSET
        if not bool(main.any()):
            return {"mmbench_circular": torch.zeros((), device=correct.device)}
        return {"mmbench_circular": all_right[group[main]].mean() * 100}

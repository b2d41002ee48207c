"""MME score: per subtask (accuracy + accuracy+) x 100, summed into perception (max 2000) and cognition (800).

accuracy is over questions; accuracy+ is over images and needs *every* question of the image right (MME asks
two per image, one "yes" and one "no"). Because the two questions of an image may land on different ranks,
the per-question results are gathered (`dist_reduce_fx="cat"`) and paired only in `compute()`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from svlm.metrics.accuracy import AnswerLists, as_answer_lists
from svlm.metrics.extract import parse_mme_answer

MME_PERCEPTION: tuple[str, ...] = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION: tuple[str, ...] = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


class MMEScore(Metric):
    """Official MME scoring from free-form answers (yes/no parsed with `parse_mme_answer`).

    update needs each sample's subtask (`categories`) and image id (`image_ids`: questions sharing it are
    paired). Returns ``mme_perception``, ``mme_cognition``, ``mme_total`` and ``mme/<subtask>`` for the
    subtasks seen; a group with no subtask seen scores 0.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, perception: Sequence[str] = MME_PERCEPTION, cognition: Sequence[str] = MME_COGNITION, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.perception, self.cognition = tuple(perception), tuple(cognition)
        self.subtasks = self.perception + self.cognition
        self._index = {c: i for i, c in enumerate(self.subtasks)}
        self.add_state("subtask", default=[], dist_reduce_fx="cat")
        self.add_state("image", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def score(self, preds: Sequence[str], answers: AnswerLists) -> list[float]:
        out = []
        for p, a in zip(preds, as_answer_lists(answers), strict=True):
            gt = a[0].strip().lower().rstrip(".") if a else ""
            if gt not in ("yes", "no"):
                raise ValueError(f"MME ground truth must be 'yes' or 'no', got {gt!r}")
            out.append(float(parse_mme_answer(p) == gt))
        return out

    def update(
        self,
        preds: Sequence[str],
        answers: AnswerLists,
        categories: Sequence[str] | None = None,
        image_ids: Sequence[str] | None = None,
    ) -> None:
        if categories is None or image_ids is None:
            raise ValueError("MMEScore.update needs categories (MME subtask) and image_ids (pairs questions)")
        if not len(preds) == len(answers) == len(categories) == len(image_ids):
            raise ValueError(
                f"length mismatch: {len(preds)} preds, {len(answers)} answers, {len(categories)} categories, "
                f"{len(image_ids)} image_ids"
            )
        unknown = sorted({c for c in categories if c not in self._index})
        if unknown:
            raise ValueError(f"unknown MME subtask(s) {unknown}; valid: {list(self.subtasks)}")
        dev = self.device
        self.correct.append(torch.tensor(self.score(preds, answers), device=dev))
        self.subtask.append(torch.tensor([self._index[c] for c in categories], dtype=torch.long, device=dev))
        self.image.append(
            torch.tensor(
                [_hash64(f"{c}/{i}") for c, i in zip(categories, image_ids, strict=True)], device=dev
            )
        )

    def compute(self) -> dict[str, torch.Tensor]:
        zero = torch.zeros((), device=self.device)
        out: dict[str, torch.Tensor] = {}
        if self.correct:
            correct, subtask, image = (dim_zero_cat(x) for x in (self.correct, self.subtask, self.image))
            for name, k in self._index.items():
                m = subtask == k
                if not m.any():
                    continue
                acc = correct[m].float().mean()
                _, inverse = image[m].unique(return_inverse=True)
                all_right = torch.ones(int(inverse.max()) + 1, device=correct.device)
                all_right = all_right.scatter_reduce(0, inverse, correct[m].float(), reduce="amin")
                out[f"mme/{name}"] = (acc + all_right.mean()) * 100
        perception = sum((out[f"mme/{c}"] for c in self.perception if f"mme/{c}" in out), zero)
        cognition = sum((out[f"mme/{c}"] for c in self.cognition if f"mme/{c}" in out), zero)
        return {
            "mme_perception": perception,
            "mme_cognition": cognition,
            "mme_total": perception + cognition,
            **out,
        }

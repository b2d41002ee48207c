"""The common sample schema every benchmark loader produces, and the errors the data layer raises.

One schema for all benchmarks keeps the DataModule, the prompts and the metrics model- and benchmark-agnostic:
a loader's only job is to map its dataset's own field names onto these keys.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from PIL import Image

AnswerType = Literal["open", "yesno", "choice"]
ANSWER_TYPES: tuple[str, ...] = ("open", "yesno", "choice")


class Sample(TypedDict):
    """One normalised benchmark sample.

    id: unique within the benchmark split.
    image: RGB PIL image.
    question: the raw question as the dataset states it (no options, no instruction).
    prompt: the text given to the model: question (+ context/hint, options) + the benchmark's instruction.
    answers: accepted answers; VQA-style benchmarks keep all (10) human answers, MCQ keeps the letter.
    answer_type: "open" (free text), "yesno", or "choice" (answer is a letter among `choices`).
    choices: option texts in letter order (A, B, ...) for "choice", else None.
    category: sub-task / category used for per-category scores (MME subtask, POPE split, ...), or None.
    image_id: id of the image; questions sharing it are paired (MME acc+).
    task: canonical benchmark name.
    """

    id: str
    image: Image.Image
    question: str
    prompt: str
    answers: list[str]
    answer_type: str
    choices: list[str] | None
    category: str | None
    image_id: str
    task: str


SAMPLE_KEYS: tuple[str, ...] = tuple(Sample.__annotations__)


class DataError(ValueError):
    """Base class for user-facing data errors (bad benchmark name, split, path, empty dataset)."""


class UnknownBenchmarkError(DataError, KeyError):
    """Raised for a benchmark name that is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written
        return str(self.args[0]) if self.args else ""


class SplitNotFoundError(DataError):
    """Raised when the requested split does not exist; the message names the valid splits."""


class EmptyDatasetError(DataError):
    """Raised when a split (after `limit`) has no samples."""


def make_sample(
    *,
    id: Any,
    image: Image.Image,
    question: str,
    prompt: str,
    answers: list[str],
    answer_type: str,
    task: str,
    choices: list[str] | None = None,
    category: str | None = None,
    image_id: Any = None,
) -> Sample:
    """Build a `Sample`, converting the image to RGB and checking the fields loaders most often get wrong."""
    if answer_type not in ANSWER_TYPES:
        raise DataError(f"answer_type {answer_type!r} is not one of {list(ANSWER_TYPES)}")
    if answer_type == "choice" and not choices:
        raise DataError(f"sample {id!r} of task {task!r} is multiple-choice but has no choices")
    if not isinstance(image, Image.Image):
        raise DataError(f"sample {id!r} of task {task!r} has no decoded image (got {type(image).__name__})")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return Sample(
        id=str(id),
        image=image,
        question=question,
        prompt=prompt,
        answers=[str(a) for a in answers],
        answer_type=answer_type,
        choices=list(choices) if choices is not None else None,
        category=None if category is None else str(category),
        image_id=str(id if image_id is None else image_id),
        task=task,
    )

"""Benchmark loaders: one normaliser per benchmark maps its dataset fields onto the common `Sample` schema.

Field names, sources and prompts equal lmms-eval 0.7.3's task definitions (its ``lmms-lab-encoder/<X>`` Hub
datasets and default prompts, LLaVA-1.5 conventions), so a local mirror of those repos (same parquet layout)
loads like the Hub name and the same model sees the same prompt in svlm and in lmms-eval.
Rows are normalised lazily in `BenchmarkDataset.__getitem__`: no `datasets.map` pass re-encodes images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from PIL import Image
from torch.utils.data import Dataset

from svlm.data import scenes, shapes
from svlm.data.loading import load_split
from svlm.data.prompts import (
    LETTERS,
    SHORT_ANSWER,
    mmbench_prompt,
    post_prompt,
    scienceqa_prompt,
    with_instruction,
)
from svlm.data.registry import Registry
from svlm.data.schema import DataError, EmptyDatasetError, Sample, SplitNotFoundError, make_sample
from svlm.metrics.mme import MME_COGNITION, MME_PERCEPTION

Normaliser = Callable[[dict[str, Any], int, "BenchmarkDataset"], Sample]

POPE_CATEGORIES: tuple[str, ...] = ("adversarial", "popular", "random")
GQA_STRUCTURAL: tuple[str, ...] = ("verify", "query", "choose", "logical", "compare")
VQA_ANSWER_TYPES: tuple[str, ...] = ("yes/no", "number", "other")


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to find and read one benchmark.

    hub: default Hub repo; config/split: its default config and evaluation split; train_split: the split used
    for calibration (`fit`) when none is given; metric: the `svlm.metrics` kind that scores it (one of
    `svlm.metrics.available_metrics()`); categories: known category values (per-category scores).
    """

    name: str
    normalise: Normaliser
    hub: str | None
    split: str
    metric: str = "exact_match"
    config: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    categories: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


BENCHMARKS: Registry[BenchmarkSpec] = Registry("benchmark")


def register_benchmark(spec: BenchmarkSpec) -> BenchmarkSpec:
    """Add a benchmark (research code can register its own); duplicate names or aliases are refused."""
    return BENCHMARKS.register(spec.name, spec, spec.aliases)


def available_benchmarks() -> list[str]:
    return BENCHMARKS.names()


def get_benchmark(name: str) -> BenchmarkSpec:
    """The spec of `name` (or an alias); unknown names raise `UnknownBenchmarkError` with suggestions."""
    return BENCHMARKS.get(name)


class BenchmarkDataset(Dataset):
    """A map-style dataset of normalised `Sample`s over one split of a `datasets.Dataset`."""

    def __init__(self, spec: BenchmarkSpec, raw: datasets.Dataset, split: str, source: str) -> None:
        self.spec = spec
        self.raw = raw
        self.split = split
        self.source = source
        self._images: datasets.Dataset | None = None  # GQA keeps images in a separate config
        self._image_index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i = i % len(self)
        row = self.raw[i]
        if isinstance(row.get("image"), str):  # jsonl/csv mirrors may store image paths
            row["image"] = self._open_image(row["image"])
        return self.spec.normalise(row, i, self)

    def _open_image(self, path: str) -> Image.Image:
        """Open an image a row names by path, relative to the data folder; a path that leads outside it
        (``../``, absolute, symlinks) is refused."""
        base = Path(self.source)
        root = base.parent if base.is_file() else base
        full = Path(path) if Path(path).is_absolute() else root / path
        if root.is_dir() and root.resolve() not in full.resolve().parents:
            raise DataError(
                f"{self.spec.name}: image path {path!r} points outside the data folder {str(root)!r}; "
                "rows may name images inside it only."
            )
        try:
            with Image.open(full) as im:
                return im.convert("RGB")
        except OSError as e:
            raise DataError(f"{self.spec.name}: cannot open image {str(full)!r}: {e}") from None

    def __repr__(self) -> str:
        name, n = self.spec.name, len(self)
        return f"BenchmarkDataset({name!r}, split={self.split!r}, n={n}, source={self.source!r})"

    def image_by_id(self, image_id: str):
        if self._images is None or self._image_index is None:
            raise DataError(f"{self.spec.name}: rows have no 'image' column and no image table was attached")
        try:
            return self._images[self._image_index[image_id]]["image"]
        except KeyError:
            raise DataError(f"{self.spec.name}: image {image_id!r} not found in the image table") from None

    def attach_images(self, images: datasets.Dataset, id_column: str = "id") -> None:
        self._images = images
        self._image_index = {str(k): j for j, k in enumerate(images[id_column])}


def _missing(value: Any) -> bool:
    return (
        value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", "nan")
    )


def _nan(value: Any) -> bool:
    """lmms-eval's test for an absent MMBench field: None, NaN or the string "nan" (an empty hint is kept)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == "nan"


# ----------------------------------------------------------------------------------------------- normalisers


def _gqa(row: dict, i: int, ds: BenchmarkDataset) -> Sample:
    image = row.get("image")
    if image is None:
        image = ds.image_by_id(str(row["imageId"]))
    types = row.get("types") or {}
    return make_sample(
        id=row["id"],
        image=image,
        question=row["question"],
        prompt=post_prompt(row["question"], SHORT_ANSWER),
        answers=[row["answer"]],
        answer_type="open",
        category=types.get("structural") if isinstance(types, dict) else None,
        image_id=row.get("imageId"),
        task="gqa",
    )


def _pope(row: dict, i: int, ds: BenchmarkDataset) -> Sample:
    return make_sample(
        id=row.get("question_id", row.get("id", i)),
        image=row["image"],
        question=row["question"].strip(),
        prompt=post_prompt(row["question"].strip(), SHORT_ANSWER),
        answers=[row["answer"].strip().lower()],
        answer_type="yesno",
        category=row.get("category"),
        image_id=row.get("image_source"),
        task="pope",
    )


_MME_SUFFIX = " Please answer yes or no."


def _mme(row: dict, i: int, ds: BenchmarkDataset) -> Sample:
    # lmms-eval swaps MME's own " Please answer yes or no." for the short-answer instruction
    question = row["question"].strip()
    prompt = post_prompt(question.replace(_MME_SUFFIX, ""), SHORT_ANSWER)
    return make_sample(
        id=f"{row['question_id']}#{i}",  # question_id is the image path, shared by the image's two questions
        image=row["image"],
        question=question,
        prompt=prompt,
        answers=[row["answer"].strip().lower().rstrip(".")],
        answer_type="yesno",
        category=row["category"],
        image_id=row["question_id"],
        task="mme",
    )


def _textvqa(row: dict, i: int, ds: BenchmarkDataset) -> Sample:
    return make_sample(
        id=row.get("question_id", i),
        image=row["image"],
        question=row["question"],
        # lmms-eval capitalises the question (which also lower-cases the rest: "What is CocaCola?" ->
        # "What is cocacola?")
        prompt=post_prompt(row["question"].capitalize(), SHORT_ANSWER),
        answers=list(row.get("answers") or []),
        answer_type="open",
        category=None,
        image_id=row.get("image_id"),
        task="textvqa",
    )


def _vqav2(row: dict, i: int, ds: BenchmarkDataset) -> Sample:
    answers = [a["answer"] if isinstance(a, dict) else a for a in (row.get("answers") or [])]
    if not answers and row.get("multiple_choice_answer"):
        answers = [row["multiple_choice_answer"]]
    return make_sample(
        id=row.get("question_id", i),
        image=row["image"],
        question=row["question"],
        prompt=post_prompt(row["question"], SHORT_ANSWER),
        answers=answers,
        answer_type="open",
        category=row.get("answer_type"),  # "yes/no" | "number" | "other": VQAv2's own breakdown
        image_id=row.get("image_id"),
        task="vqav2",
    )


def _scienceqa(row: dict, i: int, ds: BenchmarkDataset) -> Sample:
    choices = [str(c) for c in row["choices"]]
    answer = int(row["answer"])
    if not 0 <= answer < len(choices):
        raise DataError(f"scienceqa_img row {i}: answer index {answer} outside {len(choices)} choices")
    return make_sample(
        id=row.get("id", f"scienceqa-{ds.split}-{i}"),
        image=row["image"],
        question=row["question"],
        prompt=scienceqa_prompt(row["question"], choices, row.get("hint")),
        answers=[LETTERS[answer]],
        answer_type="choice",
        choices=choices,
        category=row.get("subject"),
        task="scienceqa_img",
    )


def _mmbench(row: dict, i: int, ds: BenchmarkDataset) -> Sample:
    choices = []
    for letter in LETTERS[:8]:
        if letter not in row or _missing(row[letter]):
            break
        choices.append(str(row[letter]))
    if not choices:
        raise DataError(f"mmbench row {i} (index {row.get('index')!r}) has no options in columns A, B, ...")
    # lmms-eval lists the options A-E that have a text and leaves out a missing ("nan") hint
    options = {k: str(row[k]) for k in LETTERS[:5] if row.get(k) and not _nan(row[k])}
    hint = None if _nan(row.get("hint")) else row["hint"]
    return make_sample(
        id=row.get("index", i),
        image=row["image"],
        question=row["question"],
        prompt=mmbench_prompt(row["question"], options, hint),
        answers=[str(row["answer"]).strip()],
        answer_type="choice",
        choices=choices,
        category=row.get("category"),
        image_id=row.get("index", i),  # the MMBench index: circular scoring groups the rotated copies by it
        task="mmbench",
    )


def _generated(task: str) -> Callable[[dict, int, BenchmarkDataset], Sample]:
    """Row -> Sample for svlm's generated benchmarks (svlm-shapes, svlm-scenes): one row layout for both."""

    def to_sample(row: dict, i: int, ds: BenchmarkDataset) -> Sample:
        return make_sample(
            id=row["id"],
            image=row["image"],
            question=row["question"],
            prompt=with_instruction(row["question"], SHORT_ANSWER),
            answers=list(row["answers"]),
            answer_type="yesno" if row["question_type"] == "exist" else "open",
            category=row["question_type"],
            image_id=row["id"],
            task=task,
        )

    return to_sample


# ------------------------------------------------------------------------------------------------- registry

for _spec in (
    BenchmarkSpec(
        "shapes", _generated("shapes"), hub=None, split="test", metric="vqa_exact_match", train_split="train",
        val_split="val",
        categories=shapes.QUESTION_TYPES, aliases=("svlm-shapes", "svlm_shapes"),
        description="synthetic grounded QA generated offline (svlm.data.shapes)",
        extra={"generated": True},
    ),
    BenchmarkSpec(
        "scenes", _generated("scenes"), hub=None, split="test", metric="vqa_exact_match", train_split="train",
        val_split="val",
        categories=scenes.QUESTION_TYPES, aliases=("svlm-scenes", "svlm_scenes"),
        description="cluttered synthetic scenes: text, relations, evidence annotations (svlm.data.scenes)",
        extra={"generated": True},
    ),
    BenchmarkSpec(
        "gqa", _gqa, hub="lmms-lab-encoder/GQA", config="testdev_balanced_instructions", split="testdev",
        metric="exact_match", categories=GQA_STRUCTURAL, extra={"image_config": "testdev_balanced_images"},
        description="GQA test-dev balanced, exact match (ignore case and punctuation)",
    ),
    BenchmarkSpec(
        "pope", _pope, hub="lmms-lab-encoder/POPE", split="test", metric="pope", categories=POPE_CATEGORIES,
        description="POPE object hallucination (adversarial/popular/random), yes/no",
    ),
    BenchmarkSpec(
        "mme", _mme, hub="lmms-lab-encoder/MME", split="test", metric="mme",
        categories=MME_PERCEPTION + MME_COGNITION,
        description="MME perception + cognition, yes/no pairs per image",
    ),
    BenchmarkSpec(
        "textvqa", _textvqa, hub="lmms-lab-encoder/textvqa", split="validation",
        metric="textvqa_accuracy", train_split="train",
        aliases=("text_vqa", "textvqa_val"), description="TextVQA val, VQA accuracy over 10 answers",
    ),
    BenchmarkSpec(
        "scienceqa_img", _scienceqa, hub="lmms-lab-encoder/ScienceQA", config="ScienceQA-IMG", split="test",
        metric="mc_accuracy", train_split="train", val_split="validation",
        aliases=("scienceqa", "sqa", "sqa_img", "scienceqa-img"),
        description="ScienceQA image subset, multiple choice",
    ),
    BenchmarkSpec(
        "mmbench", _mmbench, hub="lmms-lab-encoder/MMBench", config="en", split="dev", metric="mmbench",
        aliases=("mmbench_en", "mmbench_en_dev"),
        description="MMBench-EN dev, multiple choice, circular (all rotations right), x100",
    ),
    BenchmarkSpec(
        "vqav2", _vqav2, hub="lmms-lab-encoder/VQAv2", split="validation", metric="vqa_accuracy",
        categories=VQA_ANSWER_TYPES, aliases=("vqa_v2", "vqa2", "vqav2_val"),
        description="VQAv2 val, VQA accuracy over 10 answers",
    ),
):  # fmt: skip
    register_benchmark(_spec)


# -------------------------------------------------------------------------------------------------- loading


def _subset(raw: datasets.Dataset, limit: int | None, seed: int | None) -> datasets.Dataset:
    if limit is None or limit >= len(raw):
        return raw
    if seed is None:
        return raw.select(range(limit))
    return raw.shuffle(seed=seed).select(range(limit)).flatten_indices()


def load_benchmark(
    name: str,
    path: str | os.PathLike | None = None,
    split: str | None = None,
    *,
    config: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    image_size: int = 336,
    num_samples: int | None = None,
    cache_dir: str | None = None,
    shapes_kwargs: dict[str, Any] | None = None,
) -> BenchmarkDataset:
    """Load `split` of benchmark `name` as normalised samples.

    path: a Hub repo name or a local path (see `svlm.data.loading`); default: the Hub repo lmms-eval 0.7.3
        reads (``lmms-lab-encoder/<X>``).
    limit: keep the first `limit` rows, or `limit` random rows when `seed` is given (the first rows of GQA or
        MME are one category, so a seeded subset is the representative one).
    image_size, num_samples, shapes_kwargs: only for the generated "shapes" and "scenes" (`limit` is the
        number of samples; `shapes_kwargs` go to the generator).
    """
    spec = get_benchmark(name)
    split = split or spec.split
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of samples or None, got {limit}")
    if spec.name == "shapes" and path is None:
        try:
            split = shapes.resolve_split(split)
        except ValueError as e:
            raise SplitNotFoundError(str(e)) from None
        n = limit or num_samples or 500
        raw = shapes.build_shapes_dataset(
            split, n, seed=seed or 0, image_size=image_size, **(shapes_kwargs or {})
        )
        return BenchmarkDataset(spec, raw, split, source=f"{shapes.NAME}(seed={seed or 0})")
    if spec.name == "scenes" and path is None:
        try:
            split = scenes.resolve_split(split)
        except ValueError as e:
            raise SplitNotFoundError(str(e)) from None
        raw = scenes.build_scenes_dataset(
            split, limit or num_samples or 500, seed=seed or 0, image_size=image_size, **(shapes_kwargs or {})
        )
        return BenchmarkDataset(spec, raw, split, source=f"{scenes.NAME}(seed={seed or 0})")
    source = os.fspath(path) if path is not None else spec.hub
    if source is None:
        raise DataError(f"benchmark {spec.name!r} has no default source; pass path=")
    config = config if config is not None else spec.config
    try:
        raw = _subset(load_split(source, split, config, cache_dir=cache_dir), limit, seed)
    except EmptyDatasetError:
        raw = None
    if raw is None or len(raw) == 0:
        raise EmptyDatasetError(f"{spec.name} split {split!r} from {source!r} has no samples")
    ds = BenchmarkDataset(spec, raw, split, source=str(source))
    if spec.extra.get("image_config") and "image" not in raw.column_names:
        image_config = (config or "").replace("_instructions", "_images")
        if image_config == (config or ""):
            image_config = spec.extra["image_config"]
        _attach_images(ds, source, split, image_config, cache_dir)
    return ds


def _attach_images(ds: BenchmarkDataset, source: str, split: str, image_config: str, cache_dir) -> None:
    # GQA keeps questions and images in separate configs joined on imageId == id
    # ("<x>_instructions" -> "<x>_images"), in the same Hub repo or as a sibling folder of a local mirror.
    images = load_split(source, split, image_config, cache_dir=cache_dir)
    needed = set(map(str, ds.raw["imageId"]))
    ds.attach_images(images)
    missing = needed - set(ds._image_index or ())
    if missing:
        raise DataError(
            f"{ds.spec.name}: {len(missing)} image ids (e.g. {sorted(missing)[:3]}) "
            f"missing from {image_config!r}"
        )


def describe_benchmarks() -> list[dict[str, Any]]:
    """Name, default source/config/split, metric and description of every benchmark (for CLI listings)."""
    keys = ("name", "hub", "config", "split", "metric", "aliases", "description")
    return [{k: getattr(get_benchmark(n), k) for k in keys} for n in available_benchmarks()]


def is_generated(name: str) -> bool:
    """Whether benchmark `name` is generated offline from a seed (svlm-shapes, svlm-scenes)."""
    return bool(get_benchmark(name).extra.get("generated"))


def categories_of(name: str) -> Sequence[str] | None:
    return get_benchmark(name).categories

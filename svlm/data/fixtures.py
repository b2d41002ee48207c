"""Tiny offline mirrors of the lmms-lab benchmark repos, in their exact column names, types and file layout.

They let tests and smoke runs (`svlm test --data.benchmark gqa --data.path <mirror>`) exercise every loader
without network access. Contents are synthetic; only the format is real.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from svlm.data.benchmarks import get_benchmark

S = datasets.Value("string")
I64 = datasets.Value("int64")
SEQ = datasets.Sequence(S)
IMG = datasets.Image()


def _features(strings: str, **typed) -> datasets.Features:
    """String columns named in `strings` (space-separated) first, then the typed ones, in the Hub's order."""
    return datasets.Features({**{k: S for k in strings.split()}, **typed})


def _image(k: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(k)
    arr = np.broadcast_to(rng.integers(0, 256, size=3, dtype=np.uint8), (size, size, 3)).copy()
    arr[size // 4 : size // 2, size // 4 : size // 2] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return Image.fromarray(arr)


def _write(rows: list[dict], features: datasets.Features, file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(file))


def _gqa(root: Path, n: int) -> None:
    answers = ["yes", "no", "left", "red", "table", "2"]
    rows = [
        {
            "id": f"20{k:05d}",
            "imageId": f"n{k // 2:06d}",
            "question": f"Is the object number {k} on the left?",
            "answer": answers[k % len(answers)],
            "fullAnswer": f"The answer is {answers[k % len(answers)]}.",
            "isBalanced": True,
            "types": {"structural": ["verify", "query"][k % 2], "semantic": "rel", "detailed": "relS"},
        }
        for k in range(n)
    ]
    feats = _features(
        "id imageId question answer fullAnswer",
        isBalanced=datasets.Value("bool"),
        types={"structural": S, "semantic": S, "detailed": S},
    )
    _write(rows, feats, root / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet")
    ids = sorted({r["imageId"] for r in rows})
    imgs = [{"id": i, "image": _image(j)} for j, i in enumerate(ids)]
    _write(
        imgs, _features("id", image=IMG), root / "testdev_balanced_images" / "testdev-00000-of-00001.parquet"
    )


def _pope(root: Path, n: int) -> None:
    cats = ["adversarial", "popular", "random"]
    rows = [
        {
            "id": str(k),
            "question_id": str(k + 1),
            "question": f"Is there a {['dog', 'car', 'cup'][k % 3]} in the image?",
            "answer": ["yes", "no"][k % 2],
            "image_source": f"COCO_val2014_{k // 2:012d}",
            "image": _image(k),
            "category": cats[k % 3],
        }
        for k in range(n)
    ]
    feats = _features("id question_id question answer image_source", image=IMG, category=S)
    _write(rows, feats, root / "data" / "test-00000-of-00001.parquet")


def _mme(root: Path, n: int) -> None:
    cats = ["existence", "count", "OCR", "code_reasoning"]
    rows = []
    for k in range(max(n // 2, 1)):
        cat = cats[k % len(cats)]
        for answer in ("Yes", "No"):
            rows.append(
                {
                    "question_id": f"{cat}/{k:012d}.jpg",
                    "image": _image(k),
                    "question": f"Is there a {'cat' if answer == 'Yes' else 'dog'} in this image? "
                    "Please answer yes or no.",
                    "answer": answer,
                    "category": cat,
                }
            )
    feats = _features("question_id", image=IMG, question=S, answer=S, category=S)
    _write(rows, feats, root / "data" / "test-00000-of-00001.parquet")


def _textvqa(root: Path, n: int) -> None:
    rows = [
        {
            "image_id": f"{k:016x}",
            "question_id": 34602 + k,
            "question": "what is the brand of this camera?",
            "question_tokens": ["what", "is", "the", "brand", "of", "this", "camera"],
            "image": _image(k),
            "image_width": 32,
            "image_height": 32,
            "answers": ["nous les gosses"] * 3 + ["dakota"] * 7 if k % 2 else ["Canon"] * 10,
            "image_classes": ["Camera"],
            "set_name": "val",
            "ocr_tokens": ["canon", "dakota"],
        }
        for k in range(n)
    ]
    feats = _features(
        "image_id",
        question_id=I64,
        question=S,
        question_tokens=SEQ,
        image=IMG,
        image_width=I64,
        image_height=I64,
        answers=SEQ,
        image_classes=SEQ,
        set_name=S,
        ocr_tokens=SEQ,
    )
    _write(rows, feats, root / "data" / "validation-00000-of-00001.parquet")


def _scienceqa(root: Path, n: int) -> None:
    rows = [
        {
            "image": _image(k),
            "question": "Which of these states is farthest north?",
            "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"][: 2 + k % 3],
            "answer": k % 2,
            "hint": "" if k % 2 else "Figure: a map of the United States.",
            "task": "closed choice",
            "grade": "grade2",
            "subject": ["social science", "natural science"][k % 2],
            "topic": "geography",
            "category": "Geography",
            "skill": "Read a map: cardinal directions",
            "lecture": "Maps have four cardinal directions.",
            "solution": "To find the answer, look at the compass rose.",
        }
        for k in range(n)
    ]
    feats = _features(
        "",
        image=IMG,
        question=S,
        choices=SEQ,
        answer=datasets.Value("int8"),
        **{k: S for k in "hint task grade subject topic category skill lecture solution".split()},
    )
    _write(rows, feats, root / "ScienceQA-IMG" / "test-00000-of-00001.parquet")


def _mmbench(root: Path, n: int) -> None:
    rows = [
        {
            "index": str(241 + k),
            "question": "Which category does this image belong to?",
            "hint": "nan" if k % 3 == 0 else (None if k % 3 == 1 else "The image shows an outdoor scene."),
            "A": "Oil Paint",
            "B": "Sketch",
            "C": "Digital art",
            "D": None if k % 2 else "Photo",
            "answer": "ABC"[k % 3],
            "category": ["image_style", "image_scene"][k % 2],
            "image": _image(k),
            "source": "MMBench",
            "L2-category": "coarse_perception",
            "comment": "nan",
            "split": "dev",
        }
        for k in range(n)
    ]
    feats = _features(
        "index question hint A B C D answer category",
        image=IMG,
        **{k: S for k in ("source", "L2-category", "comment", "split")},
    )
    _write(rows, feats, root / "en" / "dev-00000-of-00001.parquet")


def _vqav2(root: Path, n: int) -> None:
    def answers(k: int) -> list[dict]:
        said = ["2"] * 2 + ["two"] * 2 + ["3"] * 6 if k % 2 else ["yes"] * 10
        return [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(said)]

    rows = [
        {
            "question_type": "how many" if k % 2 else "is the",
            "multiple_choice_answer": "3" if k % 2 else "yes",
            "answers": answers(k),
            "image_id": 262148 + k,
            "answer_type": "number" if k % 2 else "yes/no",
            "question_id": 262148000 + k,
            "question": "How many dogs are there?" if k % 2 else "Is the sky blue?",
            "image": _image(k),
        }
        for k in range(n)
    ]
    feats = _features(
        "question_type multiple_choice_answer",
        answers=[{"answer": S, "answer_confidence": S, "answer_id": I64}],
        image_id=I64,
        answer_type=S,
        question_id=I64,
        question=S,
        image=IMG,
    )
    _write(rows, feats, root / "data" / "validation-00000-of-00001.parquet")


_WRITERS = {
    "gqa": _gqa,
    "pope": _pope,
    "mme": _mme,
    "textvqa": _textvqa,
    "scienceqa_img": _scienceqa,
    "mmbench": _mmbench,
    "vqav2": _vqav2,
}


def fixture_benchmarks() -> list[str]:
    """Benchmarks that `write_benchmark_fixture` can mirror (all registered ones with a Hub source)."""
    return sorted(_WRITERS)


def write_benchmark_fixture(name: str, root: str | os.PathLike, num_samples: int = 6) -> Path:
    """Write a `num_samples`-row mirror of benchmark `name` under `root`; returns the path for `path=`."""
    spec = get_benchmark(name)
    if spec.name not in _WRITERS:
        raise ValueError(f"no fixture writer for {spec.name!r}; available: {fixture_benchmarks()}")
    out = Path(root) / spec.name
    _WRITERS[spec.name](out, num_samples)
    return out

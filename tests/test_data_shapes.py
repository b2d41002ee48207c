"""svlm-shapes: schema, determinism, disjoint splits, balance, and answers that agree with the drawn scene."""

from __future__ import annotations

import re
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from svlm.data import shapes
from svlm.data.shapes import build_shapes_dataset, generate_sample


@pytest.fixture(scope="module")
def test_set():
    return build_shapes_dataset("test", 200, seed=0)


def _key(row: dict) -> tuple:
    return row["question"], tuple((o["shape"], o["color"], o["position"]) for o in row["objects"])


def test_columns_and_types(test_set):
    assert set(test_set.column_names) == {
        "id", "image", "question", "answer", "answers", "question_type", "objects", "evidence",
    }  # fmt: skip
    row = test_set[3]
    assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB"
    assert row["image"].size == (336, 336)
    assert row["answers"][0] == row["answer"]
    assert row["question_type"] in shapes.QUESTION_TYPES
    assert row["id"] == "shapes-test-0-000003"
    assert len(set(test_set["id"])) == len(test_set)


def test_deterministic_and_prefix_stable(test_set):
    small = build_shapes_dataset("test", 12, seed=0)
    for i in range(12):
        a, b = small[i], test_set[i]
        assert _key(a) == _key(b) and a["answers"] == b["answers"]
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    other_seed = build_shapes_dataset("test", 12, seed=1)
    assert [_key(r) for r in other_seed] != [_key(test_set[i]) for i in range(12)]


def test_splits_use_disjoint_streams(test_set):
    train = build_shapes_dataset("train", 200, seed=0)
    val = build_shapes_dataset("validation", 200, seed=0)  # alias of "val"
    assert val[0]["id"].startswith("shapes-val-")
    scenes = [{_key(r) for r in ds} for ds in (train, val, test_set)]
    # identical (question, scene) pairs across splits would be a coincidence of independent draws
    assert (
        len(scenes[0] & scenes[2]) <= 2
        and len(scenes[1] & scenes[2]) <= 2
        and len(scenes[0] & scenes[1]) <= 2
    )
    assert not np.array_equal(np.asarray(train[0]["image"]), np.asarray(test_set[0]["image"]))


def test_answers_are_balanced_per_question_type():
    # 900 = 5 types x lcm(6 colours, 5 shapes, 4 counts, 2 yes/no, 9 positions): every answer equally often
    ds = build_shapes_dataset("val", 900, seed=3, image_size=64)
    counts = Counter(zip(ds["question_type"], ds["answer"], strict=True))
    for qtype, vocab in shapes.ANSWER_VOCAB.items():
        per_answer = {counts[(qtype, a)] for a in vocab}
        assert per_answer == {180 // len(vocab)}, (qtype, per_answer)


def _answer_from_scene(question: str, qtype: str, objects: list[dict]) -> str:
    """Answer the question from the scene metadata alone (an independent oracle)."""
    if qtype == "color":
        (shape,) = re.match(r"What color is the (\w+)\?", question).groups()
        matches = [o["color"] for o in objects if o["shape"] == shape]
        assert len(matches) == 1, "the asked shape must be unique"
        return matches[0]
    if qtype == "shape":
        (phrase,) = re.match(r"What shape is at the (.+) of the image\?", question).groups()
        (shape,) = [o["shape"] for o in objects if o["position"] == phrase.replace(" ", "-")]
        return shape
    if qtype == "count":
        (color,) = re.match(r"How many (\w+) shapes are there\?", question).groups()
        return str(sum(o["color"] == color for o in objects))
    if qtype == "exist":
        color, shape = re.match(r"Is there a (\w+) (\w+)\?", question).groups()
        return "yes" if any((o["color"], o["shape"]) == (color, shape) for o in objects) else "no"
    color, shape = re.match(r"Where is the (\w+) (\w+)\?", question).groups()
    (pos,) = [o["position"] for o in objects if (o["color"], o["shape"]) == (color, shape)]
    return pos


def test_answers_agree_with_the_scene(test_set):
    for row in test_set:
        assert _answer_from_scene(row["question"], row["question_type"], row["objects"]) == row["answer"]
        cells = [o["position"] for o in row["objects"]]
        assert len(cells) == len(set(cells)) and 2 <= len(cells) <= 5


def test_drawing_matches_metadata_and_regions_are_small(test_set):
    for row in list(test_set)[:60]:
        pixels = np.asarray(row["image"])
        for o in row["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 < x1 <= 336 and 0 <= y0 < y1 <= 336
            assert 36 <= x1 - x0 <= 50  # ~1/7 of the side: the answer sits in a few 14-px patches
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            assert tuple(pixels[cy, cx]) == shapes.COLORS[o["color"]], (row["id"], o)
            # the object sits inside its grid cell
            r, c = divmod(shapes.POSITIONS.index(o["position"]), shapes.GRID)
            assert c * 112 <= cx < (c + 1) * 112 and r * 112 <= cy < (r + 1) * 112
        for k in row["evidence"]:
            assert 0 <= k < len(row["objects"])


def test_image_size_noise_and_public_sample():
    plain = generate_sample(4, "train", seed=5, image_size=224)
    noisy = generate_sample(4, "train", seed=5, image_size=224, noise=6.0)
    assert plain["image"].size == (224, 224) and plain["image"].mode == "RGB"
    assert plain["question"] == noisy["question"] and plain["objects"] == noisy["objects"]
    assert not np.array_equal(np.asarray(plain["image"]), np.asarray(noisy["image"]))
    ds = build_shapes_dataset("train", 5, seed=5, image_size=224)
    assert np.array_equal(np.asarray(ds[4]["image"]), np.asarray(plain["image"]))


def test_generation_is_fast():
    start = time.perf_counter()
    ds = build_shapes_dataset("train", 1000, seed=0)
    elapsed = time.perf_counter() - start
    assert len(ds) == 1000
    assert elapsed < 15, f"1000 samples took {elapsed:.1f}s"  # ~0.6 s on a 2-core CPU


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"split": "holdout"},
            r"unknown svlm-shapes split 'holdout'; valid splits: \['test', 'train', 'val'\]",
        ),
        ({"num_samples": 0}, "num_samples must be >= 1"),
        ({"image_size": 16}, "image_size must be >= 32"),
        ({"shape_scale": 0.5}, "shape_scale must be in"),
        ({"max_objects": 2}, "max_objects must be >= 3"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    args = {"split": "test", "num_samples": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_shapes_dataset(**args)

"""svlm-scenes: determinism, balance, answers that agree with the drawn scene, evidence notes, loader."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from svlm.data import evidence, scenes
from svlm.data.benchmarks import get_benchmark, is_generated, load_benchmark
from svlm.data.datamodule import VLMDataModule
from svlm.data.scenes import build_scenes_dataset, generate_sample, questions_about, scene_objects


@pytest.fixture(scope="module")
def test_set():
    return build_scenes_dataset("test", 60, seed=0)


def _key(row: dict) -> tuple:
    return row["question"], tuple((o["shape"], o["color"], tuple(o["bbox"])) for o in row["objects"])


def test_columns_and_types(test_set):
    assert set(test_set.column_names) == {
        "id", "image", "question", "answer", "answers", "question_type", "objects", "evidence", "keyword_end",
    }  # fmt: skip
    row = test_set[5]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (336, 336)
    assert row["answers"][0] == row["answer"] and row["id"] == "scenes-test-0-000005"
    assert all(8 - 2 <= len(r) <= 20 for r in test_set["objects"])  # 8-20 planned, rarely one without room
    assert max(len(r) for r in test_set["objects"]) >= 16


def test_deterministic_and_prefix_stable(test_set):
    small = build_scenes_dataset("test", 8, seed=0)
    for i in range(8):
        assert _key(small[i]) == _key(test_set[i])
        assert np.array_equal(np.asarray(small[i]["image"]), np.asarray(test_set[i]["image"]))
    assert [_key(r) for r in build_scenes_dataset("test", 8, seed=1)] != [_key(test_set[i]) for i in range(8)]
    assert _key(generate_sample(0, "train")) != _key(test_set[0])


def test_answers_balanced_and_wording_varied(test_set):
    per_type = Counter(test_set["question_type"])
    assert set(per_type) == set(scenes.QUESTION_TYPES) and len(set(per_type.values())) == 1
    big = [generate_sample(i, "val") for i in range(0, 240)]
    for qtype, vocab in scenes.ANSWER_VOCAB.items():
        answers = Counter(s["answer"] for s in big if s["question_type"] == qtype)
        assert set(answers) <= set(vocab)
        assert len(answers) >= len(vocab) - (1 if qtype == "count" else 0), (qtype, answers)
    # several wordings per type, the key words at different places
    wordings = Counter((s["question_type"], s["question"].split()[0]) for s in big)
    assert all(sum(1 for t, _ in wordings if t == q) >= 3 for q in scenes.QUESTION_TYPES)
    assert len({s["keyword_end"] for s in big if s["question_type"] == "color"}) >= 4


def _cover(o: scenes.SceneObject, image: np.ndarray) -> np.ndarray:
    mask = scenes.silhouette(o, image.shape[0])
    return image[mask]


@pytest.mark.parametrize("index", range(36))
def test_answers_agree_with_the_scene(index):
    s = generate_sample(index, "test", seed=3)
    objs = scene_objects(s)
    ev = [objs[i] for i in s["evidence"]]
    qtype, answer, q = s["question_type"], s["answer"], s["question"]
    shapes_only = [o for o in objs if o.shape != scenes.CARD]
    if qtype == "color":
        (o,) = ev
        assert o.color == answer and f"{o.size} {o.shape}" in q
        assert sum((p.size, p.shape) == (o.size, o.shape) for p in shapes_only) == 1
    elif qtype == "shape":
        (o,) = ev
        assert o.shape == answer and f"{o.size} {o.color} shape" in q
        assert sum((p.size, p.color) == (o.size, o.color) for p in shapes_only) == 1
    elif qtype == "count":
        asked = next((c, sh) for c in scenes.COLORS for sh, pl in scenes.PLURALS.items() if f"{c} {pl}" in q)
        assert int(answer) == len(ev) == sum((p.color, p.shape) == asked for p in objs)
        # distractors of the asked colour and of the asked shape are in the scene
        assert any(p.color == asked[0] and p.shape != asked[1] for p in objs)
        assert any(p.shape == asked[1] and p.color != asked[0] for p in objs)
    elif qtype == "exist":
        present = any(f"{p.color} {p.shape}" in q for p in shapes_only)
        assert answer == ("yes" if present else "no") and ev
    elif qtype == "relation":
        a, b = ev
        assert q.index(f"{a.color} {a.shape}") >= 0 and f"{b.color} {b.shape}" in q
        (ax, ay), (bx, by) = a.centre, b.centre
        expected = {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}
        assert expected[answer]
        assert sum((p.color, p.shape) == (a.color, a.shape) for p in objs) == 1
    elif qtype == "text":
        (o,) = ev
        assert o.shape == scenes.CARD and o.text == answer and f"{o.color} card" in q
        assert sum(p.shape == scenes.CARD and p.color == o.color for p in objs) == 1
    # the question's objects are drawn on top: their colour shows on their own pixels
    image = np.asarray(s["image"]).astype(int)
    for o in ev:
        if o.shape != scenes.CARD:
            assert (np.abs(_cover(o, image) - scenes.COLORS[o.color]).sum(-1) < 40).mean() > 0.9
    assert q[: s["keyword_end"]].split()[-1] in {p.shape for p in ev} | {
        "shape",
        "card",
        *scenes.PLURALS.values(),
    }


def test_derived_questions_agree_with_the_scene():
    s = generate_sample(4, "train")
    qs = questions_about(s, np.random.default_rng(0))
    objs = scene_objects(s)
    assert {q.qtype for q in qs} >= {"color", "count", "exist", "text"}
    for q in qs:
        if q.qtype == "count":
            assert int(q.answer) == len(q.evidence)
        if q.qtype == "text":
            assert objs[q.evidence[0]].text == q.answer
        if q.qtype == "exist" and q.answer == "yes":
            assert all(f"{objs[i].color} {objs[i].shape}" in q.question for i in q.evidence)


def test_evidence_notes_find_the_image_after_processing():
    evidence.clear_notes()
    ds = build_scenes_dataset("val", 12, seed=0)
    assert evidence.num_notes() == 12
    from svlm.testing import tiny_vlm

    processor = tiny_vlm("llava", num_layers=1, image_size=224).processor  # CLIP resize + normalisation
    for i in (0, 7):
        row = ds[i]
        pixel_values = processor.image_processor([row["image"]], return_tensors="pt")["pixel_values"][0]
        note = evidence.find_note(pixel_values)
        grid = 16
        scores = evidence.evidence_scores(note, grid)
        objs = scene_objects(row)
        for j in row["evidence"]:
            x, y = objs[j].centre
            token = int(y / 336 * grid) * grid + int(x / 336 * grid)
            assert scores[token] >= 2.0  # each evidence object's centre token ranks first
        assert 0 < int((scores > 0).sum()) < grid * grid // 3
    noise = np.random.default_rng(0).integers(0, 255, (336, 336, 3), dtype=np.uint8)
    other = processor.image_processor([Image.fromarray(noise)], return_tensors="pt")["pixel_values"][0]
    with pytest.raises(LookupError, match="not an svlm-scenes image"):
        evidence.find_note(other)


def test_loader_and_datamodule():
    assert get_benchmark("svlm-scenes").name == "scenes" and is_generated("scenes")
    ds = load_benchmark("scenes", split="val", limit=6, seed=2, image_size=224)
    s = ds[0]
    assert s["task"] == "scenes" and s["image"].size == (224, 224)
    assert s["prompt"].endswith("Answer the question using a single word or phrase.")
    assert s["category"] in scenes.QUESTION_TYPES
    assert ds[3]["answer_type"] == "yesno"  # index 3 is an existence question
    dm = VLMDataModule("svlm-scenes", limit=6, batch_size=3)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["tasks"] == ["scenes"] * 3 and len(batch["images"]) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"image_size": 64}, "image_size"),
        ({"min_objects": 30, "max_objects": 8}, "min_objects"),
        ({"noise": -1}, "noise"),
        ({"split": "dev2"}, "valid splits"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_scenes_dataset(**kwargs)


def test_objects_sit_on_the_layout_grid(test_set):
    """Every object spans whole grid cells (at 336 px: whole 14-px patches), of its size's side."""
    cell = 336 // scenes.CELLS
    for row in test_set:
        for o in row["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            side = scenes.CARD_SIDE if o["shape"] == scenes.CARD else scenes.SIZES[o["size"]]
            assert x0 % cell == 0 and y0 % cell == 0, o
            assert (x1 + 1 - x0, y1 + 1 - y0) == (side * cell, side * cell), o


def test_digits_come_from_the_bitmap_font():
    """Ten distinct 5x7 glyphs; a card shows its digit's glyph: the ink, sampled at the glyph's pixel centres,
    spells the glyph (no font file, so every Pillow draws the same pixels)."""
    glyphs = list(scenes.GLYPHS.values())
    assert len(set(glyphs)) == 10 and all(len(g) == 7 and all(len(r) == 5 for r in g) for g in glyphs)
    from PIL import ImageDraw

    for digit in scenes.DIGITS:
        img = Image.new("RGB", (50, 70), (255, 255, 255))
        scenes.draw_digit(ImageDraw.Draw(img), digit, (0, 0, 50, 70), (0, 0, 0))
        ink = np.asarray(img)[5::10, 5::10, 0] < 128
        assert ["".join("#" if b else "." for b in r) for r in ink] == list(scenes.GLYPHS[digit])

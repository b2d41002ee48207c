"""svlm-scenes: cluttered synthetic scenes where which visual tokens a model keeps decides the answer.

svlm-shapes puts a few flat shapes on a blank background: most tokens are identical background, so any method
that keeps distinct tokens keeps every object. Here each image holds 8-20 objects of two sizes, overlapping,
on a textured, noisy background with grey clutter; a few objects are cards with a digit printed on them
(read it: the TextVQA kind). Questions ask about one object among many (colour, shape), count objects among
distractors of the same colour and of the same shape, check existence against near misses, compare two
objects' positions, or read a card, each type in several wordings with the words about the image at different
places. The image holds far more distinct content than 64 tokens can carry, and which tokens matter depends
on the question.

Every sample carries its scene (objects with bounding boxes) and its **evidence**: the indices of the objects
the question is about. The ``evidence_oracle`` strategy (``svlm.strategies.evidence_oracle``) keeps exactly
the tokens covering them: an upper bound for question-aware selection, not a method.

Determinism: sample ``i`` of (``split``, ``seed``) depends only on those three values and the generator
options, so a smaller ``num_samples`` gives a prefix of a larger one; splits use disjoint random streams.
Digits are drawn from a built-in 5x7 bitmap font (no font files, the same pixels with every Pillow version).

Objects sit on a 24x24 layout grid and their sides are whole cells (small shapes 2, large shapes and cards
3): at 336 px with 14-px patches, a visual token then sees one object's part, not slivers of several, so a
small tower trained from scratch on CPU can name what each token shows. Overlaps, clutter and texture stay.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageDraw

from svlm.data.shapes import COLORS, SHAPES, _polygon

NAME = "svlm-scenes"
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SPLIT_ALIASES = {"validation": "val", "dev": "val"}
_STREAM = 7_000_000  # keeps scenes' random streams apart from svlm-shapes'

#: the layout grid: objects are placed on it and their sides are whole cells, so at 336 px each cell is one
#: 14-px patch of a LLaVA-1.5-style tower (576 visual tokens) and a patch never mixes half of two objects
CELLS = 24
SIZES: dict[str, int] = {"small": 2, "large": 3}  # side in grid cells
CARD = "card"
CARD_SIDE = 3  # cells
DIGITS: tuple[str, ...] = tuple("0123456789")
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
}
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "exist", "relation", "text")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
ANSWER_VOCAB: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "count": ("0", "1", "2", "3"),
    "exist": ("yes", "no"),
    "relation": RELATIONS,
    "text": DIGITS,
}
SYNONYMS: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left", "on the left"),
    "right": ("right of", "to the right", "on the right"),
    "above": ("up", "over", "higher"),
    "below": ("down", "under", "lower", "beneath"),
    "cross": ("plus",),
    "0": ("none",),
}

# Paraphrases per type. ``{x}`` is the phrase that names the evidence; its end is the question's key word.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "What color is the {x}?",
        "What is the color of the {x}?",
        "The {x} is what color?",
        "Which color does the {x} have?",
        "Tell me the color of the {x}.",
    ),
    "shape": (
        "What shape is the {x}?",
        "Which shape is the {x}?",
        "What is the shape of the {x}?",
        "The {x} has which shape?",
    ),
    "count": (
        "How many {x} are there?",
        "Count the {x}.",
        "What is the number of {x} in the image?",
        "How many {x} can you see?",
    ),
    "exist": (
        "Is there a {x}?",
        "Can you see a {x} in the image?",
        "Does the image contain a {x}?",
        "Is a {x} present?",
    ),
    "relation": (
        "Where is the {x} relative to the {y}?",
        "Is the {x} left of, right of, above or below the {y}?",
        "Relative to the {y}, where is the {x}?",
        "In which direction from the {y} is the {x}?",
    ),
    "text": (
        "What number is on the {x}?",
        "Which digit is written on the {x}?",
        "Read the number on the {x}.",
        "The {x} shows which number?",
    ),
}


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: a shape (``size`` small/large) or a card (``shape`` "card", ``text`` its digit);
    ``bbox`` is (x0, y0, x1, y1) in pixels of the generated image."""

    shape: str
    color: str
    size: str
    bbox: tuple[int, int, int, int]
    text: str = ""

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Question:
    """A question about a scene: text, canonical answer, type, evidence object indices, and where in the text
    the words naming the (first) evidence object end (the key word SparseVLM-style raters should find)."""

    question: str
    answer: str
    qtype: str
    evidence: tuple[int, ...]
    keyword_end: int


def resolve_split(split: str) -> str:
    s = SPLIT_ALIASES.get(split, split)
    if s not in SPLITS:
        raise ValueError(f"unknown {NAME} split {split!r}; valid splits: {sorted(SPLITS)}")
    return s


def _rng(seed: int, split: str, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _STREAM + SPLITS[split], *key])


def _balanced_answer(seed: int, split: str, qtype: str, j: int) -> str:
    """Answer of the j-th question of `qtype`: each block of len(vocab) questions permutes the vocab."""
    vocab = ANSWER_VOCAB[qtype]
    block, pos = divmod(j, len(vocab))
    perm = _rng(seed, split, 1_000_003, QUESTION_TYPES.index(qtype), block).permutation(len(vocab))
    return vocab[perm[pos]]


def describe(o: dict | SceneObject, with_size: bool = True) -> str:
    """The phrase naming an object: "large red star", "red star" or "blue card"."""
    get = o.get if isinstance(o, dict) else lambda k: getattr(o, k)
    if get("shape") == CARD:
        return f"{get('color')} card"
    return f"{get('size')} {get('color')} {get('shape')}" if with_size else f"{get('color')} {get('shape')}"


def _phrase(template: str, x: str, y: str | None = None) -> tuple[str, int]:
    text = template.format(x=x, y=y) if y is not None else template.format(x=x)
    text = text.replace(" a orange", " an orange")
    return text, text.index(x) + len(x)


def _relation(a: tuple[float, float], b: tuple[float, float], margin: float) -> str | None:
    """Where a lies relative to b when one axis clearly dominates (else None)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= margin and abs(dy) <= 0.5 * abs(dx):
        return "left" if dx < 0 else "right"
    if abs(dy) >= margin and abs(dx) <= 0.5 * abs(dy):
        return "above" if dy < 0 else "below"
    return None


# ------------------------------------------------------------------------------------------- scene layout


def _specs(rng: np.random.Generator, qtype: str, answer: str, n: int) -> tuple[list[dict], Any]:
    """Object specs (shape, color, size, text) with the question's objects first, and the question's key:
    what the question asks about (resolved to text once the scene is laid out)."""
    colors, sizes = list(COLORS), list(SIZES)

    def any_shape(excl=lambda s: False) -> dict:
        for _ in range(200):
            d = {
                "shape": SHAPES[rng.integers(len(SHAPES))],
                "color": colors[rng.integers(len(colors))],
                "size": sizes[rng.integers(len(sizes))],
                "text": "",
            }
            if not excl(d):
                return d
        raise RuntimeError("no distractor fits the constraints")  # pragma: no cover

    head: list[dict] = []
    if qtype == "color":
        target = {**any_shape(), "color": answer}
        head = [target]
        excl = lambda d: (d["size"], d["shape"]) == (target["size"], target["shape"])  # noqa: E731
        key = ("one", target)
    elif qtype == "shape":
        target = {**any_shape(), "shape": answer}
        head = [target]
        excl = lambda d: (d["size"], d["color"]) == (target["size"], target["color"])  # noqa: E731
        key = ("one", target)
    elif qtype == "count":
        shape, color = SHAPES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))]
        head = [{**any_shape(), "shape": shape, "color": color} for _ in range(int(answer))]
        # near misses: the same colour in another shape, the same shape in another colour
        head += [any_shape(lambda d: d["color"] != color or d["shape"] == shape) for _ in range(2)]
        head += [any_shape(lambda d: d["shape"] != shape or d["color"] == color) for _ in range(2)]
        excl = lambda d: (d["shape"], d["color"]) == (shape, color)  # noqa: E731
        key = ("count", shape, color, int(answer))
    elif qtype == "exist":
        shape, color = SHAPES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))]
        miss_color = any_shape(lambda d: d["color"] != color or d["shape"] == shape)
        miss_shape = any_shape(lambda d: d["shape"] != shape or d["color"] == color)
        head = [miss_color, miss_shape]
        if answer == "yes":
            head.insert(0, {**any_shape(), "shape": shape, "color": color})
        excl = lambda d: (d["shape"], d["color"]) == (shape, color)  # noqa: E731
        key = ("exist", shape, color, answer == "yes")
    elif qtype == "relation":
        a = any_shape()
        b = any_shape(lambda d: (d["shape"], d["color"]) == (a["shape"], a["color"]))
        head = [a, b]
        excl = lambda d: (d["shape"], d["color"]) in {(a["shape"], a["color"]), (b["shape"], b["color"])}  # noqa: E731
        key = ("relation", answer)
    elif qtype == "text":
        card = {"shape": CARD, "color": colors[rng.integers(len(colors))], "size": "medium", "text": answer}
        head = [card]
        excl = lambda d: False  # noqa: E731
        key = ("text",)
    else:  # pragma: no cover - guarded by QUESTION_TYPES
        raise ValueError(qtype)
    # other cards (other colours, other digits) are distractors for every type
    used_colors = {card["color"] for card in head if card["shape"] == CARD}
    used_digits = {card["text"] for card in head if card["shape"] == CARD}
    cards = []
    for _ in range(int(rng.integers(1, 3))):
        card_color = [c for c in colors if c not in used_colors][rng.integers(len(colors) - len(used_colors))]
        digit = [d for d in DIGITS if d not in used_digits][rng.integers(len(DIGITS) - len(used_digits))]
        used_colors.add(card_color)
        used_digits.add(digit)
        cards.append({"shape": CARD, "color": card_color, "size": "medium", "text": digit})
    rest = [any_shape(excl) for _ in range(max(0, n - len(head) - len(cards)))]
    return head + cards + rest, key


def _place(
    rng: np.random.Generator, specs: list[dict], size: int, relation: str | None
) -> list[SceneObject | None]:
    """Top-left grid cells at random, keeping objects from hiding each other's centres (overlaps stay).
    Objects that find no room are left out (None); for a relation question the second object is placed so
    that the asked relation holds clearly."""
    cell = size / CELLS
    out: list[SceneObject | None] = []
    placed: list[tuple[float, float, float]] = []  # centre x, centre y, half side (pixels)
    for k, d in enumerate(specs):
        side = CARD_SIDE if d["shape"] == CARD else SIZES[d["size"]]
        h = side * cell / 2
        lo, hi = 0, CELLS - side  # top-left cells that keep the object inside the image
        spot = None
        for _ in range(300):
            gx, gy = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            if relation is not None and k == 0:  # leave room on the side the second object must go
                mid = (hi - lo) // 2
                if relation in ("left", "right"):
                    gx = int(rng.integers(lo, mid + 1) if relation == "left" else rng.integers(mid, hi + 1))
                else:
                    gy = int(rng.integers(lo, mid + 1) if relation == "above" else rng.integers(mid, hi + 1))
            cx, cy = (gx + side / 2) * cell, (gy + side / 2) * cell
            if relation is not None and k == 1:
                ax, ay, _ = placed[0]
                if _relation((ax, ay), (cx, cy), size * 0.2) != relation:
                    continue
            if all(math.hypot(cx - px, cy - py) >= 0.55 * (h + ph) for px, py, ph in placed):
                spot = (gx, gy)
                break
        if spot is None:
            if k < 2 and relation is not None:
                raise RuntimeError("could not place the relation's objects")  # pragma: no cover
            out.append(None)
            continue
        gx, gy = spot
        placed.append(((gx + side / 2) * cell, (gy + side / 2) * cell, h))
        # inclusive pixel box of the cells [gx, gx + side) x [gy, gy + side)
        bbox = (
            round(gx * cell),
            round(gy * cell),
            round((gx + side) * cell) - 1,
            round((gy + side) * cell) - 1,
        )
        out.append(SceneObject(d["shape"], d["color"], d["size"], bbox, d["text"]))
    return out


def _question(rng: np.random.Generator, qtype: str, answer: str, objects: list[SceneObject], key) -> Question:
    template = TEMPLATES[qtype][rng.integers(len(TEMPLATES[qtype]))]
    if qtype in ("color", "shape"):
        target = objects[0]
        x = f"{target.size} {target.shape}" if qtype == "color" else f"{target.size} {target.color} shape"
        text, end = _phrase(template, x)
        return Question(text, answer, qtype, (0,), end)
    if qtype == "count":
        _, shape, color, k = key
        text, end = _phrase(template, f"{color} {PLURALS[shape]}")
        evidence = tuple(i for i, o in enumerate(objects) if (o.shape, o.color) == (shape, color))
        return Question(text, str(len(evidence)), qtype, evidence, end)
    if qtype == "exist":
        _, shape, color, yes = key
        text, end = _phrase(template, f"{color} {shape}")
        match = tuple(i for i, o in enumerate(objects) if (o.shape, o.color) == (shape, color))
        if match:
            return Question(text, "yes", qtype, match, end)
        # a "no" is decided by the near misses (same colour or same shape) placed for it
        near = tuple(i for i, o in enumerate(objects[:2]) if o.shape == shape or o.color == color)
        return Question(text, "no", qtype, near, end)
    if qtype == "relation":
        a, b = objects[0], objects[1]
        text, end = _phrase(template, f"{a.color} {a.shape}", f"{b.color} {b.shape}")
        return Question(text, answer, qtype, (0, 1), end)
    if qtype == "text":
        text, end = _phrase(template, f"{objects[0].color} card")
        return Question(text, objects[0].text, qtype, (0,), end)
    raise ValueError(qtype)  # pragma: no cover


# -------------------------------------------------------------------------------------------- rendering


def background(rng: np.random.Generator, size: int, noise: float) -> np.ndarray:
    """A low-saturation textured background: a light base tone, smooth blotches, stripes, pixel noise."""
    base = rng.uniform(170, 230) + rng.uniform(-8, 8, size=3)
    coarse = rng.normal(0.0, 14.0, size=(6, 6, 1)).astype(np.float32)
    blotch = (
        np.asarray(
            Image.fromarray(((coarse[..., 0] + 64).clip(0, 255)).astype(np.uint8)).resize(
                (size, size), Image.Resampling.BICUBIC
            ),
            dtype=np.float32,
        )[..., None]
        - 64
    )
    axis = np.arange(size, dtype=np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(10, 30)
    phase = (axis[None, :] * math.cos(angle) + axis[:, None] * math.sin(angle)) * np.float32(
        2 * math.pi / period
    )
    stripes = 6.0 * np.sin(phase)[..., None]
    pixel_noise = rng.standard_normal(size=(size, size, 1), dtype=np.float32) * np.float32(noise)
    return (base[None, None, :].astype(np.float32) + blotch + stripes + pixel_noise).astype(np.float32)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """Grey specks and strokes: distinct tokens that carry nothing a question asks about."""
    for _ in range(int(rng.integers(15, 35))):
        g = int(rng.integers(60, 160))
        x, y = rng.uniform(0, size, size=2)
        r = rng.uniform(1.5, 5.0)
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(g, g, g))
        else:
            dx, dy = rng.uniform(-20, 20, size=2)
            draw.line((x, y, x + dx, y + dy), fill=(g, g, g), width=int(rng.integers(1, 3)))


#: 5x7 bitmap glyphs of the digits (rows top to bottom, "#" = ink)
GLYPHS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}


def draw_digit(
    draw: ImageDraw.ImageDraw, digit: str, box: tuple[float, float, float, float], ink: Any
) -> None:
    """Draw `digit` from the bitmap font, scaled to fill `box` (x0, y0, x1, y1) keeping the 5:7 aspect."""
    x0, y0, x1, y1 = box
    pixel = min((x1 - x0) / 5, (y1 - y0) / 7)
    left, top = (x0 + x1 - 5 * pixel) / 2, (y0 + y1 - 7 * pixel) / 2
    for r, row in enumerate(GLYPHS[digit]):
        for c, bit in enumerate(row):
            if bit == "#":
                px, py = left + c * pixel, top + r * pixel
                draw.rectangle((round(px), round(py), round(px + pixel) - 1, round(py + pixel) - 1), fill=ink)


def draw_object(draw: ImageDraw.ImageDraw, o: SceneObject, fill: Any, ink: Any = (20, 20, 20)) -> None:
    """Draw one object with colour `fill` (a card: a coloured frame, a white face and its digit in `ink`)."""
    if o.shape == CARD:
        x0, y0, x1, y1 = o.bbox
        draw.rectangle(o.bbox, fill=fill)
        m = max(2, round((x1 - x0) * 0.14))
        draw.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=(250, 250, 250) if ink is not None else fill)
        if ink is not None:
            draw_digit(draw, o.text, (x0 + m + 1, y0 + m + 1, x1 - m, y1 - m), ink)
    elif o.shape == "circle":
        draw.ellipse(o.bbox, fill=fill)
    elif o.shape == "square":
        draw.rectangle(o.bbox, fill=fill)
    else:
        draw.polygon(_polygon(o.shape, o.bbox), fill=fill)


def render(
    objects: list[SceneObject], size: int, rng: np.random.Generator, noise: float = 6.0
) -> Image.Image:
    """Textured background, clutter, then the objects in reverse order (the question's objects, first in the
    list, end up on top of any overlap)."""
    img = Image.fromarray(background(rng, size, noise).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, size)
    for o in reversed(objects):
        draw_object(draw, o, COLORS[o.color])
    return img


def silhouette(o: SceneObject, size: int) -> np.ndarray:
    """[size, size] bool: the pixels `o` covers when drawn alone."""
    img = Image.new("L", (size, size), 0)
    draw_object(ImageDraw.Draw(img), o, 255, ink=None)
    return np.asarray(img) > 0


# ------------------------------------------------------------------------------------------------- samples


def generate_sample(
    index: int,
    split: str = "test",
    seed: int = 0,
    image_size: int = 336,
    min_objects: int = 8,
    max_objects: int = 20,
    noise: float = 6.0,
) -> dict:
    """Sample `index` as a dict: RGB PIL `image`, question, answer(s), type, objects, evidence (see
    `build_scenes_dataset` for the columns)."""
    split = resolve_split(split)
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    answer = _balanced_answer(seed, split, qtype, index // len(QUESTION_TYPES))
    rng = _rng(seed, split, index)
    n = int(rng.integers(min_objects, max_objects + 1))
    specs, key = _specs(rng, qtype, answer, n)
    placed = _place(rng, specs, image_size, answer if qtype == "relation" else None)
    # objects that found no room are dropped; the question's objects come first and always fit in practice
    objects = [o for o in placed if o is not None]
    if qtype in ("color", "shape", "text") and placed[0] is None:  # pragma: no cover - never seen
        raise RuntimeError(f"{NAME}: the asked object of sample {index} found no room")
    q = _question(rng, qtype, answer, objects, key)
    image = render(objects, image_size, rng, noise)
    return {
        "id": f"scenes-{split}-{seed}-{index:06d}",
        "image": image,
        "question": q.question,
        "answer": q.answer,
        "answers": [q.answer, *SYNONYMS.get(q.answer, ())],
        "question_type": qtype,
        "objects": [
            {"shape": o.shape, "color": o.color, "size": o.size, "bbox": list(o.bbox), "text": o.text}
            for o in objects
        ],
        "evidence": list(q.evidence),
        "keyword_end": q.keyword_end,
    }


def _template_patterns() -> list[tuple[str, re.Pattern]]:
    out = []
    for qtype, templates in TEMPLATES.items():
        for t in templates:
            pattern = re.escape(t).replace(r"\{x\}", "(?P<x>.+?)").replace(r"\{y\}", "(?P<y>.+?)")
            out.append((qtype, re.compile(f"^{pattern}$")))
    return out


_PATTERNS = _template_patterns()


def phrase_start(question: str) -> int:
    """Where the words naming the first evidence object begin in a templated question (0 for other text)."""
    for _, pattern in _PATTERNS:
        m = pattern.match(question.replace(" an orange", " a orange"))
        if m:
            return m.start("x")
    return 0


def parse_question(question: str) -> tuple[str, int]:
    """(question type, end of the words naming the first evidence object) of a templated question;
    ("other", len(question)) for any other text."""
    for qtype, pattern in _PATTERNS:
        m = pattern.match(question.replace(" an orange", " a orange"))
        if m:
            end = m.end("x") + (1 if " an orange" in question[: m.end("x") + 1] else 0)
            return qtype, end
    return "other", len(question)


def scene_objects(sample: dict) -> list[SceneObject]:
    """A sample's ``objects`` column back as `SceneObject` values."""
    return [
        SceneObject(o["shape"], o["color"], o["size"], tuple(o["bbox"]), o.get("text") or "")
        for o in sample["objects"]
    ]


def questions_about(sample: dict, rng: np.random.Generator | None = None) -> list[Question]:
    """Every question the benchmark's templates can ask about ``sample``'s scene (one wording each, drawn
    with ``rng``; the first wording without it), with answers and evidence from the annotation: what a
    training recipe asks of a training image besides its own question."""
    objs = scene_objects(sample)
    pick = (lambda t: t[int(rng.integers(len(t)))]) if rng is not None else (lambda t: t[0])
    out: list[Question] = []
    shapes_only = [(i, o) for i, o in enumerate(objs) if o.shape != CARD]

    def count_of(pred) -> list[int]:
        return [i for i, o in enumerate(objs) if pred(o)]

    for i, o in shapes_only:
        if len(count_of(lambda p, o=o: p.shape == o.shape and p.size == o.size)) == 1:
            text, end = _phrase(pick(TEMPLATES["color"]), f"{o.size} {o.shape}")
            out.append(Question(text, o.color, "color", (i,), end))
        if len(count_of(lambda p, o=o: p.shape != CARD and p.color == o.color and p.size == o.size)) == 1:
            text, end = _phrase(pick(TEMPLATES["shape"]), f"{o.size} {o.color} shape")
            out.append(Question(text, o.shape, "shape", (i,), end))
    for shape in SHAPES:
        for color in COLORS:
            match = count_of(lambda p, s=shape, c=color: (p.shape, p.color) == (s, c))
            near = count_of(lambda p, s=shape, c=color: (p.shape == s) != (p.color == c) and p.shape != CARD)
            if len(match) <= 3 and (match or near):
                text, end = _phrase(pick(TEMPLATES["count"]), f"{color} {PLURALS[shape]}")
                out.append(Question(text, str(len(match)), "count", tuple(match), end))
            if match or near:
                text, end = _phrase(pick(TEMPLATES["exist"]), f"{color} {shape}")
                out.append(Question(text, "yes" if match else "no", "exist", tuple(match or near[:2]), end))
    unique = [
        (i, o)
        for i, o in shapes_only
        if len(count_of(lambda p, o=o: (p.shape, p.color) == (o.shape, o.color))) == 1
    ]
    margin = 0.2 * (max(o.bbox[2] for o in objs) if objs else 1)
    for i, a in unique:
        for j, b in unique:
            rel = _relation(a.centre, b.centre, margin) if i != j else None
            if rel is not None:
                text, end = _phrase(
                    pick(TEMPLATES["relation"]), f"{a.color} {a.shape}", f"{b.color} {b.shape}"
                )
                out.append(Question(text, rel, "relation", (i, j), end))
    for i, o in enumerate(objs):
        if o.shape == CARD:
            text, end = _phrase(pick(TEMPLATES["text"]), f"{o.color} card")
            out.append(Question(text, o.text, "text", (i,), end))
    return out


FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(mode="RGB"),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "question_type": datasets.Value("string"),
        "objects": [
            {
                "shape": datasets.Value("string"),
                "color": datasets.Value("string"),
                "size": datasets.Value("string"),
                "bbox": datasets.Sequence(datasets.Value("int32"), length=4),
                "text": datasets.Value("string"),
            }
        ],
        "evidence": datasets.Sequence(datasets.Value("int32")),
        "keyword_end": datasets.Value("int32"),
    }
)


def _png(img: Image.Image) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return {"bytes": buf.getvalue(), "path": None}


def build_scenes_dataset(
    split: str = "test",
    num_samples: int = 500,
    seed: int = 0,
    image_size: int = 336,
    *,
    min_objects: int = 8,
    max_objects: int = 20,
    noise: float = 6.0,
) -> datasets.Dataset:
    """Build `num_samples` svlm-scenes samples of `split` ("train", "val", "test") as a `datasets.Dataset`.

    Columns: id, image, question, answer (canonical), answers (canonical + accepted synonyms), question_type
    (color|shape|count|exist|relation|text), objects (shape, color, size, bbox, text per drawn object: shapes
    are small or large, cards are "medium" and carry a digit), evidence (indices into objects of those the
    question is about) and keyword_end (where the words naming the first evidence object end in the question).
    Each generated image is also noted for the evidence oracle (`svlm.strategies.evidence_oracle`).
    """
    from svlm.data.evidence import note_evidence

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if image_size < 112:
        raise ValueError(f"image_size must be >= 112 pixels, got {image_size}")
    if not 6 <= min_objects <= max_objects <= 30:
        raise ValueError(f"need 6 <= min_objects <= max_objects <= 30, got {min_objects}, {max_objects}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0 (std of the pixel noise), got {noise}")
    kwargs = dict(image_size=image_size, min_objects=min_objects, max_objects=max_objects, noise=noise)
    rows: dict[str, list] = {k: [] for k in FEATURES}
    split = resolve_split(split)
    for i in range(num_samples):
        s = generate_sample(i, split, seed, **kwargs)
        objs = scene_objects(s)
        asked = [objs[j] for j in s["evidence"]]
        note_evidence(
            s["image"],
            [silhouette(o, image_size) for o in asked],
            [(o.centre[0] / image_size, o.centre[1] / image_size) for o in asked],
        )
        s["image"] = _png(s["image"])
        for k in rows:
            rows[k].append(s[k])
    return datasets.Dataset.from_dict(rows, features=FEATURES, split=datasets.Split(split))

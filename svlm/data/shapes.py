"""svlm-shapes: a synthetic grounded-QA benchmark generated offline from a seed.

Each image holds a few small coloured shapes on a 3x3 grid over a plain (optionally noisy) background, and
each question is answered by looking at one small region (one shape: a few 14-px patches at 336 px), so a
pruning method that drops the wrong visual tokens loses the answer. Answers come from a small closed
vocabulary and are balanced per question type (each block of `len(vocabulary)` questions of a type uses every
answer once).

Determinism: sample `i` of (`split`, `seed`) depends only on those three values (not on `num_samples`), so a
smaller `num_samples` gives a prefix of a larger one, and splits use disjoint random streams.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image, ImageDraw

NAME = "svlm-shapes"
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SPLIT_ALIASES = {"validation": "val", "dev": "val"}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 200, 20),
    "purple": (148, 70, 189),
    "orange": (255, 127, 14),
}
GRID = 3
# row-major cell index -> canonical position word
POSITIONS: tuple[str, ...] = (
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)
POSITION_PHRASES = {p: p.replace("-", " ") for p in POSITIONS}
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "exist", "position")
COUNT_ANSWERS: tuple[str, ...] = ("0", "1", "2", "3")
YES_NO: tuple[str, ...] = ("yes", "no")

ANSWER_VOCAB: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "count": COUNT_ANSWERS,
    "exist": YES_NO,
    "position": POSITIONS,
}
# extra accepted spellings (metrics also normalise case, punctuation, articles and number words)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "top-left": ("upper left",),
    "top-right": ("upper right",),
    "bottom-left": ("lower left",),
    "bottom-right": ("lower right",),
    "top": ("top center", "top middle", "upper middle"),
    "bottom": ("bottom center", "bottom middle", "lower middle"),
    "left": ("middle left", "center left"),
    "right": ("middle right", "center right"),
    "center": ("middle", "centre"),
    "cross": ("plus",),
    "0": ("none",),
}


@dataclass(frozen=True)
class Shape:
    """One drawn object; `bbox` is (x0, y0, x1, y1) in pixels of the generated image."""

    shape: str
    color: str
    cell: int
    bbox: tuple[int, int, int, int]

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


def _rng(seed: int, split: str, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, SPLITS[split], *key])


def resolve_split(split: str) -> str:
    s = SPLIT_ALIASES.get(split, split)
    if s not in SPLITS:
        raise ValueError(f"unknown {NAME} split {split!r}; valid splits: {sorted(SPLITS)}")
    return s


def _balanced_answer(seed: int, split: str, qtype: str, j: int) -> str:
    """Answer of the j-th question of `qtype`: each block of len(vocab) questions permutes the vocab."""
    vocab = ANSWER_VOCAB[qtype]
    block, pos = divmod(j, len(vocab))
    perm = _rng(seed, split, 1_000_003, QUESTION_TYPES.index(qtype), block).permutation(len(vocab))
    return vocab[perm[pos]]


def _place(
    rng: np.random.Generator, specs: list[tuple[str, str, int]], size: int, scale: float
) -> list[Shape]:
    cell = size / GRID
    out = []
    for shape, color, c in specs:
        r, col = divmod(c, GRID)
        side = scale * size * rng.uniform(0.85, 1.0)
        slack = max(cell - side, 0.0) / 2 * 0.7
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (r + 0.5) * cell + rng.uniform(-slack, slack)
        h = side / 2
        bbox = (round(cx - h), round(cy - h), round(cx + h), round(cy + h))
        out.append(Shape(shape, color, c, bbox))
    return out


def _scene(
    rng: np.random.Generator, qtype: str, answer: str, min_objects: int, max_objects: int
) -> tuple[str, list[tuple[str, str, int]], list[int]]:
    """Question text, object specs (shape, color, cell) and indices of the objects that hold the answer."""
    combos = [(s, c) for s in SHAPES for c in COLORS]

    def pick(pred) -> tuple[str, str]:
        options = [sc for sc in combos if pred(*sc)]
        return options[rng.integers(len(options))]

    n = int(rng.integers(min_objects, max_objects + 1))
    if qtype == "count":
        n = max(n, int(answer), 1)
    cells = [int(c) for c in rng.permutation(GRID * GRID)[:n]]
    specs: list[tuple[str, str]] = []
    evidence: list[int] = []

    if qtype == "color":
        shape = SHAPES[rng.integers(len(SHAPES))]
        specs.append((shape, answer))
        specs += [pick(lambda s, c, shape=shape: s != shape) for _ in range(n - 1)]
        evidence = [0]
        question = f"What color is the {shape}?"
    elif qtype == "shape":
        specs.append((answer, list(COLORS)[rng.integers(len(COLORS))]))
        specs += [pick(lambda s, c: True) for _ in range(n - 1)]
        evidence = [0]
        question = f"What shape is at the {POSITION_PHRASES[POSITIONS[cells[0]]]} of the image?"
    elif qtype == "count":
        color = list(COLORS)[rng.integers(len(COLORS))]
        k = int(answer)
        specs += [pick(lambda s, c, color=color: c == color) for _ in range(k)]
        specs += [pick(lambda s, c, color=color: c != color) for _ in range(n - k)]
        evidence = list(range(k))
        question = f"How many {color} shapes are there?"
    elif qtype == "exist":
        shape, color = pick(lambda s, c: True)
        if answer == "yes":
            specs.append((shape, color))
            evidence = [0]
        else:
            # a near-miss distractor (same shape other colour, or same colour other shape) makes "no" harder
            if rng.random() < 0.5:
                specs.append(pick(lambda s, c, shape=shape, color=color: s == shape and c != color))
            else:
                specs.append(pick(lambda s, c, shape=shape, color=color: c == color and s != shape))
        specs += [pick(lambda s, c, shape=shape, color=color: (s, c) != (shape, color)) for _ in range(n - 1)]
        question = f"Is there a {color} {shape}?"
    elif qtype == "position":
        shape, color = pick(lambda s, c: True)
        specs.append((shape, color))
        specs += [pick(lambda s, c, shape=shape, color=color: (s, c) != (shape, color)) for _ in range(n - 1)]
        cells[0] = POSITIONS.index(answer)
        cells[1:] = [c for c in rng.permutation(GRID * GRID).tolist() if c != cells[0]][: n - 1]
        evidence = [0]
        question = f"Where is the {color} {shape}?"
    else:  # pragma: no cover - guarded by QUESTION_TYPES
        raise ValueError(qtype)
    return question, [(s, c, cell) for (s, c), cell in zip(specs, cells, strict=True)], evidence


def _polygon(kind: str, bbox: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = bbox
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if kind == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if kind == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if kind == "cross":
        t = r / 3
        return [
            (cx - t, y0), (cx + t, y0), (cx + t, cy - t), (x1, cy - t), (x1, cy + t), (cx + t, cy + t),
            (cx + t, y1), (cx - t, y1), (cx - t, cy + t), (x0, cy + t), (x0, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    raise ValueError(kind)


def render(objects: list[Shape], size: int, background: tuple[int, int, int], noise: float = 0.0, rng=None):
    """Draw `objects` on a `size` x `size` canvas; `noise` is the std of Gaussian pixel noise (0 = plain).

    Plain images are drawn in palette ("P") mode: exact colours, and ~5x faster to PNG-encode than RGB.
    """
    img = Image.new("P", (size, size), 0)
    palette = [*background, *(v for rgb in COLORS.values() for v in rgb)]
    img.putpalette(palette + [0] * (768 - len(palette)))
    draw = ImageDraw.Draw(img)
    index = {name: i + 1 for i, name in enumerate(COLORS)}
    for o in objects:
        fill = index[o.color]
        if o.shape == "circle":
            draw.ellipse(o.bbox, fill=fill)
        elif o.shape == "square":
            draw.rectangle(o.bbox, fill=fill)
        else:
            draw.polygon(_polygon(o.shape, o.bbox), fill=fill)
    if noise > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
        arr += rng.normal(0.0, noise, (size, size, 1)).astype(np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


def generate_sample(index: int, split: str = "test", seed: int = 0, **kwargs) -> dict:
    """One sample as a dict with an RGB PIL `image` (columns and options: see `build_shapes_dataset`)."""
    sample = _generate(index, split, seed, **kwargs)
    sample["image"] = sample["image"].convert("RGB")
    return sample


def _generate(
    index: int,
    split: str = "test",
    seed: int = 0,
    image_size: int = 336,
    min_objects: int = 2,
    max_objects: int = 5,
    shape_scale: float = 1 / 7,
    noise: float = 0.0,
) -> dict:
    split = resolve_split(split)
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    answer = _balanced_answer(seed, split, qtype, index // len(QUESTION_TYPES))
    rng = _rng(seed, split, index)
    question, specs, evidence = _scene(rng, qtype, answer, min_objects, max_objects)
    objects = _place(rng, specs, image_size, shape_scale)
    gray = int(rng.integers(228, 250))
    tint = rng.integers(-6, 7, size=3)
    background = tuple(int(np.clip(gray + t, 0, 255)) for t in tint)
    image = render(objects, image_size, background, noise, rng)
    return {
        "id": f"shapes-{split}-{seed}-{index:06d}",
        "image": image,
        "question": question,
        "answer": answer,
        "answers": [answer, *SYNONYMS.get(answer, ())],
        "question_type": qtype,
        "objects": [
            {"shape": o.shape, "color": o.color, "position": o.position, "bbox": list(o.bbox)}
            for o in objects
        ],
        "evidence": evidence,
    }


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
                "position": datasets.Value("string"),
                "bbox": datasets.Sequence(datasets.Value("int32"), length=4),
            }
        ],
        "evidence": datasets.Sequence(datasets.Value("int32")),
    }
)


def _png(img: Image.Image) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # lossless; level 1 is ~2x faster than the default
    return {"bytes": buf.getvalue(), "path": None}


def build_shapes_dataset(
    split: str = "test",
    num_samples: int = 500,
    seed: int = 0,
    image_size: int = 336,
    *,
    min_objects: int = 2,
    max_objects: int = 5,
    shape_scale: float = 1 / 7,
    noise: float = 0.0,
) -> datasets.Dataset:
    """Build `num_samples` svlm-shapes samples of `split` ("train", "val", "test") as a `datasets.Dataset`.

    Columns: id, image (datasets Image -> PIL), question, answer (canonical), answers (canonical + accepted
    synonyms), question_type (color|shape|count|exist|position), objects (shape, color, position, bbox per
    drawn object) and evidence (indices into objects of those that determine the answer).
    `shape_scale` is the shape side as a fraction of `image_size` (default 1/7: 48 px, ~3.4 patches of 14 px).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    if not 1 <= min_objects <= max_objects <= GRID * GRID:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {GRID * GRID}, got {min_objects}, {max_objects}"
        )
    if max_objects < 3:
        raise ValueError(f"max_objects must be >= 3 so that every count answer (0-3) fits, got {max_objects}")
    if not 0 < shape_scale <= 1 / GRID:
        raise ValueError(
            f"shape_scale must be in (0, {1 / GRID:.3f}] so shapes fit their cell, got {shape_scale}"
        )
    kwargs = dict(
        image_size=image_size,
        min_objects=min_objects,
        max_objects=max_objects,
        shape_scale=shape_scale,
        noise=noise,
    )
    rows: dict[str, list] = {k: [] for k in FEATURES}
    split = resolve_split(split)
    for i in range(num_samples):
        s = _generate(i, split, seed, **kwargs)
        s["image"] = _png(s["image"])
        for k in rows:
            rows[k].append(s[k])
    return datasets.Dataset.from_dict(rows, features=FEATURES, split=datasets.Split(split))

"""Per-patch labels from scene annotations: object coverage, colour and shape classes, counts, evidence
tokens, grid cells."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from svlm.data import shapes
from svlm.zoo.recipe import scenes_task
from svlm.zoo.recipe.config import PATCH_SIZE, POSITION_BANDS, SCENE_COUNT_CLASSES, VISION_COUNT_CLASSES
from svlm.zoo.recipe.questions import evidence_objects


def object_coverage(sample: dict, image_size: int, data_image_size: int) -> torch.Tensor:
    """[objects, visual tokens] share of each patch covered by each object's silhouette (rendered alone)."""
    if scenes_task.is_scenes(sample):
        return scenes_task.coverage(sample, image_size, data_image_size, PATCH_SIZE)
    grid = image_size // PATCH_SIZE
    out = []
    for o in sample["objects"]:
        obj = shapes.Shape(o["shape"], o["color"], shapes.POSITIONS.index(o["position"]), tuple(o["bbox"]))
        mask = shapes.render([obj], data_image_size, (0, 0, 0)).convert("L").resize((image_size, image_size))
        cover = torch.from_numpy(np.asarray(mask) > 0).float()
        out.append(cover.reshape(grid, PATCH_SIZE, grid, PATCH_SIZE).mean((1, 3)).flatten())
    return torch.stack(out) if out else torch.zeros(0, grid * grid)


def patch_labels(
    sample: dict,
    image_size: int,
    data_image_size: int,
    centre_only: bool = False,
    part_label: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per visual token: (shape, colour) class with 0 = background, from the scene annotation.

    A token is labelled with the object covering most of its patch (at least a quarter of it; svlm-scenes:
    the five shapes, then "card"). With
    ``centre_only`` the shape label is kept only on the patch holding each object's centre; the object's other
    patches get ``part_label`` (default -100: ignored by the loss).
    """
    grid = image_size // PATCH_SIZE
    cover = object_coverage(sample, image_size, data_image_size)
    shape_y = torch.zeros(grid * grid, dtype=torch.long)
    color_y = torch.zeros(grid * grid, dtype=torch.long)
    if len(cover):
        best, owner = cover.max(0)
        on = best >= 0.25
        objs = sample["objects"]
        names = scenes_task.SHAPE_CLASSES if scenes_task.is_scenes(sample) else shapes.SHAPES
        shape_ids = torch.tensor([names.index(o["shape"]) + 1 for o in objs])
        color_ids = torch.tensor([list(shapes.COLORS).index(o["color"]) + 1 for o in objs])
        shape_y = torch.where(on, shape_ids[owner], 0)
        color_y = torch.where(on, color_ids[owner], 0)
        if centre_only:
            keep = torch.zeros_like(on)
            keep[centre_tokens(sample, image_size, data_image_size)] = True
            shape_y = torch.where(keep | ~on, shape_y, part_label)
    return shape_y, color_y


def objects_per_colour(sample: dict) -> torch.Tensor:
    """How many objects of each colour of ``shapes.COLORS`` the image holds ([colours], long)."""
    colours = list(shapes.COLORS)
    counts = torch.zeros(len(colours), dtype=torch.long)
    for o in sample["objects"]:
        counts[colours.index(o["color"])] += 1
    return counts


def colour_count_labels(sample: dict, color_y: torch.Tensor) -> torch.Tensor:
    """Per visual token: how many objects of its colour the image holds, as a class (0: one ... 3: four or
    more), or -100 (ignored) on background tokens; ``color_y`` is `patch_labels`' colour class per token.
    svlm-scenes counts objects of the same colour *and* shape (its count questions name both)."""
    if scenes_task.is_scenes(sample):
        return kind_count_labels(sample, color_y)
    per_colour = torch.cat([torch.zeros(1, dtype=torch.long), objects_per_colour(sample)])  # 0: background
    counts = per_colour[color_y].clamp(max=VISION_COUNT_CLASSES) - 1
    return torch.where(color_y > 0, counts, -100)


def owners(sample: dict, image_size: int, data_image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per visual token: the object covering most of its patch, and whether it covers a quarter of it."""
    cover = object_coverage(sample, image_size, data_image_size)
    if not len(cover):
        n = (image_size // PATCH_SIZE) ** 2
        return torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
    best, owner = cover.max(0)
    return owner, best >= 0.25


def kind_count_labels(sample: dict, color_y: torch.Tensor) -> torch.Tensor:
    """svlm-scenes: per object token, how many objects of its colour and shape the image holds (0: one ... 3:
    four or more), -100 on background."""
    side = math.isqrt(len(color_y)) * PATCH_SIZE
    owner, on = owners(sample, side, int(sample["image"].size[0]))
    per_object = scenes_task.same_kind_counts(sample)
    counts = per_object[owner].clamp(max=VISION_COUNT_CLASSES) - 1 if len(per_object) else owner * 0
    return torch.where((color_y > 0) & on, counts, -100)


def digit_labels(sample: dict, image_size: int, data_image_size: int) -> torch.Tensor:
    """svlm-scenes: per visual token, 1 + the digit of the card covering it, 0 elsewhere."""
    owner, on = owners(sample, image_size, data_image_size)
    return scenes_task.digit_labels(owner, on, sample)


def size_labels(sample: dict, image_size: int, data_image_size: int) -> torch.Tensor:
    """svlm-scenes: per visual token, 1 + the size class of the shape covering it, 0 elsewhere, -100 on
    cards (the words "small"/"large" in "What color is the small star?")."""
    owner, on = owners(sample, image_size, data_image_size)
    return scenes_task.size_labels(owner, on, sample)


def scene_labels(sample: dict) -> torch.Tensor:
    """The image's scene summary: how many objects of each colour it holds, as a class per colour of
    ``shapes.COLORS`` (0, 1, 2, 3 = three or more)."""
    return objects_per_colour(sample).clamp(max=SCENE_COUNT_CLASSES - 1)


def centre_tokens(sample: dict, image_size: int, data_image_size: int) -> list[int]:
    """Per object: the visual token whose patch holds the object's centre."""
    grid = image_size // PATCH_SIZE
    scale = image_size / data_image_size
    out = []
    for o in sample["objects"]:
        x0, y0, x1, y1 = o["bbox"]
        col = min(int((x0 + x1) / 2 * scale // PATCH_SIZE), grid - 1)
        row = min(int((y0 + y1) / 2 * scale // PATCH_SIZE), grid - 1)
        out.append(row * grid + col)
    return out


def evidence_tokens(
    sample: dict,
    questions: Sequence[str | None],
    image_size: int,
    data_image_size: int,
    split: Sequence[bool] | None = None,
) -> list[torch.Tensor | None]:
    """Per question: a bool mask over the visual tokens marking its evidence objects' centre patches (where
    stage 1 put each object's shape), or None when the question is about no object (or is None: not
    supervised). A question marked in ``split`` that is about several objects gets one row per object
    instead, [objects, visual tokens] uint8 in the order the question names them: 2 at the object's centre
    token, 1 at the other tokens it covers more than a quarter of (a head that looks at one object should copy
    where it lies: all of its tokens agree on that, so the whole object is the target), 0 elsewhere."""
    grid = image_size // PATCH_SIZE
    centres = centre_tokens(sample, image_size, data_image_size)
    out: list[torch.Tensor | None] = []
    cover: torch.Tensor | None = None
    for k, question in enumerate(questions):
        idx = evidence_objects(sample, question) if question is not None else []
        if split is not None and split[k] and len(idx) > 1:
            if cover is None:
                cover = object_coverage(sample, image_size, data_image_size)
            mask = (cover[idx] > 0.25).to(torch.uint8)
            mask[torch.arange(len(idx)), [centres[i] for i in idx]] = 2
        else:
            mask = torch.zeros(grid * grid, dtype=torch.bool)
            mask[[centres[i] for i in idx]] = True
        out.append(mask if idx else None)
    return out


def cell_labels(image_size: int) -> torch.Tensor:
    """Per visual token: the 3x3 grid cell (0..8, row-major) its patch centre falls in."""
    grid = image_size // PATCH_SIZE
    centre = (torch.arange(grid) + 0.5) / grid
    band = (centre * shapes.GRID).long().clamp_max(shapes.GRID - 1)
    return (band[:, None] * shapes.GRID + band[None, :]).flatten()


def position_labels(image_size: int, bands: int = POSITION_BANDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per visual token: its row band and its column band (0..bands-1) of the token grid."""
    grid = image_size // PATCH_SIZE
    index = torch.arange(grid * grid)
    return (index // grid) * bands // grid, (index % grid) * bands // grid

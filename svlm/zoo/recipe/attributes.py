"""Attribute keeping: visual tokens must still name their objects' attributes where the decoder reads them.

The answer to "What color is the large star?" is copied by attention from the star's visual tokens at the
layers whose heads are told to find it (``attention_layers``). The tower names each patch's colour (99% by a
linear probe) and the projector alignment points every token at its colour word, but nothing in stage 2 asks
the decoder to keep that: on the first svlm-scenes model (projector trained in stage 2) a linear probe read a
token's colour from 87% of the projector's outputs and under half of the decoder's layer-5 inputs (where the
answer is copied from), and colour questions stayed at chance. This term adds linear heads (training only,
discarded with the run) that read, from the normalised hidden state of every kept visual token at the input
of chosen layers, attributes of the object covering it (colour, shape at each object's centre patch where
stage 1 put it, size, digit, how many objects of its kind the image holds) and where the token lies (row and
column band); their cross-entropy keeps those readable, so a head attending to the object can copy them to
the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from svlm.data import shapes
from svlm.zoo.recipe import scenes_task
from svlm.zoo.recipe.config import POSITION_BANDS, VISION_COUNT_CLASSES
from svlm.zoo.recipe.labels import (
    digit_labels,
    kind_count_labels,
    patch_labels,
    position_labels,
    size_labels,
)

#: attribute groups and their class counts (colour, shape, size, digit: class 0 is background or "no card";
#: count: objects of the token's colour and shape, 1, 2, 3, 4+; row, column: the token's band)
ATTRIBUTES: dict[str, int] = {
    "colour": 1 + len(shapes.COLORS),
    "shape": 1 + len(scenes_task.SHAPE_CLASSES),
    "size": 1 + len(scenes_task.SIZE_CLASSES),
    "digit": 1 + scenes_task.DIGIT_CLASSES,
    "count": VISION_COUNT_CLASSES,
    "row": POSITION_BANDS,
    "column": POSITION_BANDS,
    "row_coord": POSITION_BANDS,
    "column_coord": POSITION_BANDS,
}
#: groups read by a linear regression instead of a classifier: the band as a coordinate in [-1, 1]. A class
#: code of the bands lets a head copy where one object lies, but comparing two of them ("left of") is then
#: a nonlinear function of two codes; a coordinate read along one direction makes it a difference.
ORDINAL: frozenset[str] = frozenset({"row_coord", "column_coord"})


def parse_attribute_groups(
    spec: str, option: str = "attribute_groups", valid: Sequence[str] = tuple(ATTRIBUTES)
) -> list[str]:
    """``"colour,digit"`` -> ["colour", "digit"], checked against ``valid`` (errors name ``option``)."""
    groups = [g.strip() for g in spec.split(",") if g.strip()]
    bad = [g for g in groups if g not in valid]
    if bad or not groups:
        raise ValueError(f"{option} must name groups of {list(valid)}, got {spec!r}")
    return groups


#: what the position readout can ask of a looked-at object (`position_readout_groups`)
POSITION_GROUPS: tuple[str, ...] = ("row", "column", "row_coord", "column_coord")


def visual_attribute_labels(
    sample: dict, image_size: int, data_image_size: int, groups: Sequence[str] = tuple(ATTRIBUTES)
) -> torch.Tensor:
    """[visual tokens, len(groups)] class per token and attribute group (-100: not asked). Shape is asked
    at object centres and background only, size at shape patches only (-100 on cards), count at object
    patches only."""
    if not scenes_task.is_scenes(sample):
        raise ValueError("attribute keeping needs svlm-scenes samples (sizes and digits)")
    shape_y, colour_y = patch_labels(sample, image_size, data_image_size, centre_only=True)
    make = {
        "colour": lambda: colour_y,
        "shape": lambda: shape_y,
        "size": lambda: size_labels(sample, image_size, data_image_size),
        "digit": lambda: digit_labels(sample, image_size, data_image_size),
        "count": lambda: kind_count_labels(sample, colour_y),
        "row": lambda: position_labels(image_size)[0],
        "column": lambda: position_labels(image_size)[1],
        "row_coord": lambda: position_labels(image_size)[0],
        "column_coord": lambda: position_labels(image_size)[1],
    }
    return torch.stack([make[g]() for g in groups], dim=-1)


class AttributeProbes(torch.nn.Module):
    """One linear head per (layer, attribute group) on the decoder's normalised hidden states: a classifier,
    or for `ORDINAL` groups a regression onto the band as a coordinate in [-1, 1]."""

    def __init__(self, hidden_size: int, layers: Sequence[int], groups: Sequence[str] = tuple(ATTRIBUTES)):
        super().__init__()
        self.layers = list(layers)
        self.groups = list(groups)
        self.heads = torch.nn.ModuleDict(
            {
                str(layer): torch.nn.ModuleList(
                    torch.nn.Linear(hidden_size, 1 if g in ORDINAL else ATTRIBUTES[g]) for g in self.groups
                )
                for layer in self.layers
            }
        )

    def loss(self, layer: int, visual_hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over attribute groups at ``layer``: ``visual_hidden`` [b, k, hidden] and
        ``labels`` [b, k, groups] (-100 ignored)."""
        terms = []
        flat = visual_hidden.flatten(0, 1)
        for g, (name, head) in enumerate(zip(self.groups, self.heads[str(layer)], strict=True)):
            y = labels[..., g].flatten()
            asked = y >= 0
            # a masked mean instead of skipping groups with no label: no host sync on a GPU
            if name in ORDINAL:
                # squared error in band units / 2 (about a cross-entropy's scale at the start)
                error = (head(flat).float().squeeze(-1) - _coordinate(y, name)) * (ATTRIBUTES[name] - 1) / 2
                ce = 0.5 * error.square()
            else:
                ce = torch.nn.functional.cross_entropy(head(flat).float(), y.clamp_min(0), reduction="none")
            terms.append((ce * asked).sum() / asked.sum().clamp_min(1))
        return torch.stack(terms).mean()

    @torch.no_grad()
    def accuracy(self, layer: int, visual_hidden: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Per attribute group: the heads' accuracy on the tokens asked (object tokens for the object
        attributes, every token for row and column; a coordinate is right when it rounds to the band), for
        the logs."""
        out = {}
        for g, (name, head) in enumerate(zip(self.groups, self.heads[str(layer)], strict=True)):
            y = labels[..., g].flatten()
            asked = y >= 0 if name in ("row", "column", "count", *ORDINAL) else y > 0
            if bool(asked.any()):
                logits = head(visual_hidden.flatten(0, 1)[asked])
                if name in ORDINAL:
                    bands = ATTRIBUTES[name]
                    pred = ((logits.squeeze(-1) + 1) * (bands - 1) / 2).round().clamp(0, bands - 1).long()
                else:
                    pred = logits.argmax(-1)
                out[name] = float((pred == y[asked]).float().mean())
        return out


def _coordinate(bands: torch.Tensor, group: str) -> torch.Tensor:
    """Band indices as coordinates in [-1, 1] (negative labels, not asked, map outside and are masked)."""
    return bands.float() * 2 / (ATTRIBUTES[group] - 1) - 1

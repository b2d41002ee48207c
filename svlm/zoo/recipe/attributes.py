"""Attribute keeping: visual tokens must still name their objects' attributes where the decoder reads them.

The answer to "What color is the large star?" is copied by attention from the star's visual tokens at the
layers whose heads are told to find it (``attention_layers``). The tower names each patch's colour (99% by a
linear probe) and the projector alignment points every token at its colour word, but nothing in stage 2 asks
the decoder to keep that: on the first svlm-scenes model a linear probe read a token's colour from 77% of the
decoder's input tokens and 44% of layer 5's (where the answer is copied from), and colour questions stayed at
chance. This term adds linear heads (training only, discarded with the run) that read, from the normalised
hidden state of every kept visual token at the input of chosen layers, the colour, shape (at each object's
centre patch, where stage 1 put it), size and digit of the object covering it; their cross-entropy keeps
those attributes linearly readable, so a head attending to the object can copy them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from svlm.data import shapes
from svlm.zoo.recipe import scenes_task
from svlm.zoo.recipe.labels import digit_labels, patch_labels, size_labels

#: attribute groups and their class counts (class 0: background, or "not a card" for digits)
ATTRIBUTES: dict[str, int] = {
    "colour": 1 + len(shapes.COLORS),
    "shape": 1 + len(scenes_task.SHAPE_CLASSES),
    "size": 1 + len(scenes_task.SIZE_CLASSES),
    "digit": 1 + scenes_task.DIGIT_CLASSES,
}


def visual_attribute_labels(sample: dict, image_size: int, data_image_size: int) -> torch.Tensor:
    """[visual tokens, len(ATTRIBUTES)] class per token and attribute group (-100: not asked). Shape is asked
    at object centres and background only, size at shape patches only (-100 on cards)."""
    shape_y, colour_y = patch_labels(sample, image_size, data_image_size, centre_only=True)
    if not scenes_task.is_scenes(sample):
        raise ValueError("attribute keeping needs svlm-scenes samples (sizes and digits)")
    size_y = size_labels(sample, image_size, data_image_size)
    digit_y = digit_labels(sample, image_size, data_image_size)
    return torch.stack([colour_y, shape_y, size_y, digit_y], dim=-1)


class AttributeProbes(torch.nn.Module):
    """One linear head per (layer, attribute group) on the decoder's normalised hidden states."""

    def __init__(self, hidden_size: int, layers: Sequence[int]) -> None:
        super().__init__()
        self.layers = list(layers)
        self.heads = torch.nn.ModuleDict(
            {
                str(layer): torch.nn.ModuleList(torch.nn.Linear(hidden_size, n) for n in ATTRIBUTES.values())
                for layer in self.layers
            }
        )

    def loss(self, layer: int, visual_hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over attribute groups at ``layer``: ``visual_hidden`` [b, k, hidden] and
        ``labels`` [b, k, groups] (-100 ignored)."""
        terms = []
        for g, head in enumerate(self.heads[str(layer)]):
            y = labels[..., g].flatten()
            if bool((y >= 0).any()):
                logits = head(visual_hidden.flatten(0, 1)).float()
                terms.append(torch.nn.functional.cross_entropy(logits, y, ignore_index=-100))
        return torch.stack(terms).mean() if terms else visual_hidden.sum() * 0.0

    @torch.no_grad()
    def accuracy(self, layer: int, visual_hidden: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Per attribute group: the heads' accuracy on the object tokens asked (for logs)."""
        out = {}
        for (name, _), head in zip(ATTRIBUTES.items(), self.heads[str(layer)], strict=True):
            y = labels[..., ATTRIBUTES_INDEX[name]].flatten()
            asked = y > 0
            if bool(asked.any()):
                pred = head(visual_hidden.flatten(0, 1)[asked]).argmax(-1)
                out[name] = float((pred == y[asked]).float().mean())
        return out


ATTRIBUTES_INDEX = {name: i for i, name in enumerate(ATTRIBUTES)}

"""Checks of the inputs of one call, before any heavy work starts."""

from __future__ import annotations

from typing import Any

import torch

from svlm.adapters.base import Adapter


class InputError(ValueError):
    """Inputs that svlm cannot run (no input ids, non-finite pixels, image tokens that do not match)."""


def validate_inputs(adapter: Adapter, inputs: dict[str, Any]) -> None:
    """Raise :class:`InputError` with the bad value and what was expected."""
    input_ids = inputs.get("input_ids")
    if input_ids is None:
        raise InputError("svlm needs `input_ids` (visual tokens are located by their placeholder ids).")
    pixel_values = inputs.get("pixel_values")
    n_tokens = int(adapter.visual_mask(input_ids).sum())
    if pixel_values is None:
        if n_tokens:
            raise InputError(
                f"The prompts hold {n_tokens} image tokens but no pixel_values were given: "
                "pass the images through the processor with the text."
            )
        return
    if not bool(torch.isfinite(pixel_values).all()):
        bad = int((~torch.isfinite(pixel_values)).sum())
        raise InputError(
            f"pixel_values contain {bad} NaN/inf values; check the image loading and normalisation."
        )
    if n_tokens == 0:
        raise InputError(
            "pixel_values were given but the prompts hold no image tokens "
            f"(ids {adapter.visual_token_ids()}); use the processor's chat template so that images get "
            "placeholders."
        )
    expected = adapter.expected_visual_tokens(inputs)
    if expected is not None and expected != n_tokens:
        per_sample = adapter.visual_mask(input_ids).sum(-1).tolist()
        raise InputError(
            f"The prompts hold {n_tokens} image tokens (per sample: {per_sample}) but the images give "
            f"{expected} visual tokens; each image needs exactly one placeholder, expanded by the processor."
        )

"""Trained models for svlm, so offline runs have an accuracy axis without downloading weights.

``svlm-scenes-llava``, the default, is a small LLaVA-1.5-architecture model (CLIP vision tower, MLP
projector, 22-layer Llama decoder, 576 visual tokens at 336 px) trained on the synthetic svlm-scenes
benchmark by the recipe ``python -m svlm.zoo.train_default --benchmark scenes`` and continuations of it; its
``training_log.json`` records every stage, and ``python -m svlm.zoo.recipe.replay`` rebuilds it from there.
Load it like any saved checkpoint, or as ``zoo:svlm-scenes-llava`` in svlm's configs::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    path = svlm.zoo.default_model_path()
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)

``svlm-shapes-llava`` (``zoo:svlm-shapes-llava``, ``svlm.models.zoo_path("svlm-shapes-llava")``), the first
default, is the same architecture with an 8-layer decoder and 256 visual tokens, trained on svlm-shapes by
``python -m svlm.zoo.train_default``.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "svlm-scenes-llava"


def default_model_path() -> str:
    """Folder of the shipped default model (``save_pretrained`` layout), inside the installed package."""
    path = Path(__file__).resolve().parent / DEFAULT_MODEL_NAME
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"The default model is missing from {path}; reinstall svlm, or rebuild it from its log with "
            "`python -m svlm.zoo.recipe.replay` (README: svlm-scenes)."
        )
    return str(path)


__all__ = ["DEFAULT_MODEL_NAME", "default_model_path"]

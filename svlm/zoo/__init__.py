"""Trained models for svlm, so offline runs have an accuracy axis without downloading weights.

``svlm-shapes-llava`` is a small LLaVA-1.5-architecture model (CLIP vision tower, MLP projector, 8-layer
Llama decoder, 256 visual tokens) trained on the synthetic svlm-shapes benchmark by
``python -m svlm.zoo.train_default``, which saves it into this package folder. Load it like any saved
checkpoint, or as ``zoo:svlm-shapes-llava`` in svlm's configs::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    path = svlm.zoo.default_model_path()
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)

``svlm-scenes-llava`` (``zoo:svlm-scenes-llava``, ``svlm.models.zoo_path("svlm-scenes-llava")``) is the
same architecture at 336 px (576 visual tokens) with a 22-layer decoder, trained on svlm-scenes by
``python -m svlm.zoo.train_default --benchmark scenes``. It has not learned that benchmark yet (see the
README) and is shipped to run every strategy down to budget 64 offline and to be trained further
(``--init-from``); it is not the default.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "svlm-shapes-llava"


def default_model_path() -> str:
    """Folder of the shipped default model (``save_pretrained`` layout), inside the installed package."""
    path = Path(__file__).resolve().parent / DEFAULT_MODEL_NAME
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"The default model is missing from {path}; reinstall svlm or rebuild it with "
            "`python -m svlm.zoo.train_default`."
        )
    return str(path)


__all__ = ["DEFAULT_MODEL_NAME", "default_model_path"]

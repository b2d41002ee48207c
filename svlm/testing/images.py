"""Deterministic synthetic images: coloured blocks on a plain background."""

from __future__ import annotations

import numpy as np
from PIL import Image

PALETTE = (
    (220, 40, 40),  # red
    (40, 160, 60),  # green
    (40, 80, 220),  # blue
    (240, 210, 40),  # yellow
    (240, 140, 20),  # orange
    (140, 60, 180),  # purple
    (20, 20, 20),  # black
    (250, 250, 250),  # white
)


def random_image(seed: int, size: tuple[int, int] = (336, 336)) -> Image.Image:
    """An RGB image of ``size`` = (width, height) with 3-8 coloured rectangles, fully determined by ``seed``.

    Blocks give the vision tower spatial structure (edges, uniform regions) instead of white noise, so
    token-importance scores differ across positions as they do on real images.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"Image size must be positive (width, height), got {size!r}")
    rng = np.random.default_rng(seed)
    background = np.array(PALETTE[rng.integers(len(PALETTE))], dtype=np.uint8)
    pixels = np.broadcast_to(background, (height, width, 3)).copy()
    for _ in range(int(rng.integers(3, 9))):
        w = int(rng.integers(max(1, width // 8), max(2, width // 2)))
        h = int(rng.integers(max(1, height // 8), max(2, height // 2)))
        x = int(rng.integers(0, max(1, width - w)))
        y = int(rng.integers(0, max(1, height - h)))
        pixels[y : y + h, x : x + w] = PALETTE[rng.integers(len(PALETTE))]
    return Image.fromarray(pixels)

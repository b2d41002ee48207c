"""Where each generated image's evidence lies, for the evidence oracle.

A strategy sees the model's inputs (pixel values, token ids), not the dataset row, so the svlm-scenes
generator notes, for every image it makes, a fingerprint of the image and the area its evidence objects
cover. The oracle (`svlm.strategies.evidence_oracle`) finds an input image's note by fingerprint: the 8x8
block means of each channel, standardised per channel, so that the processor's resize and per-channel
normalisation do not change it; the nearest note must be much closer than any other image could be.

Notes live in this process only (a bounded, first-in first-out store): the oracle works on svlm-scenes
samples generated in the same process, which is how ``svlm test`` runs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

FINGERPRINT = 8  # blocks per side
COVER = 84  # resolution of the stored coverage map (336 px / 4)
MAX_NOTES = 20_000
MATCH_TOLERANCE = 0.25  # RMS distance between standardised fingerprints that still counts as the same image


@dataclass(frozen=True)
class EvidenceNote:
    """The evidence of one image: ``cover`` [COVER, COVER] share of each cell its evidence objects cover,
    ``centres`` [(x, y)] of each evidence object as fractions of the image side."""

    fingerprint: np.ndarray
    cover: np.ndarray
    centres: tuple[tuple[float, float], ...]


_NOTES: OrderedDict[bytes, EvidenceNote] = OrderedDict()
_MATRIX: dict[str, object] = {}


def _standardise(blocks: np.ndarray) -> np.ndarray:
    """[3, F, F] block means -> flat vector, each channel shifted to mean 0 and scaled to std 1."""
    flat = blocks.reshape(blocks.shape[0], -1).astype(np.float64)
    flat = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-6)
    return flat.flatten().astype(np.float32)


def block_means(arr: np.ndarray, blocks: int) -> np.ndarray:
    """[..., H, W] -> [..., blocks, blocks] block means (adaptive pooling when H, W do not divide)."""
    h, w = arr.shape[-2:]
    if h % blocks or w % blocks:
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        return (
            torch.nn.functional.adaptive_avg_pool2d(t.reshape(-1, 1, h, w), blocks)
            .reshape(*arr.shape[:-2], blocks, blocks)
            .numpy()
        )
    shaped = arr.reshape(*arr.shape[:-2], blocks, h // blocks, blocks, w // blocks)
    return shaped.mean(axis=(-3, -1), dtype=np.float32)


def image_fingerprint(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    return _standardise(block_means(arr, FINGERPRINT))


def tensor_fingerprint(pixel_values: torch.Tensor) -> np.ndarray:
    """Fingerprint of one processed image [3, H, W] (any per-channel affine normalisation, any resize)."""
    return _standardise(block_means(pixel_values.detach().float().cpu().numpy(), FINGERPRINT))


def note_evidence(image: Image.Image, masks: list[np.ndarray], centres: list[tuple[float, float]]) -> None:
    """Note `image`'s evidence: one full-resolution bool mask per evidence object and its centre (fractions
    of the image side)."""
    side = image.size[0]
    union = np.zeros((side, side), dtype=np.float32)
    for m in masks:
        union = np.maximum(union, m.astype(np.float32))
    cover = block_means(union, COVER)
    fp = image_fingerprint(image)
    key = fp.tobytes()
    _NOTES[key] = EvidenceNote(fp, cover.astype(np.float16), tuple(centres))
    _NOTES.move_to_end(key)
    while len(_NOTES) > MAX_NOTES:
        _NOTES.popitem(last=False)
    _MATRIX.clear()


def clear_notes() -> None:
    _NOTES.clear()
    _MATRIX.clear()


def num_notes() -> int:
    return len(_NOTES)


def find_note(pixel_values: torch.Tensor) -> EvidenceNote:
    """The note of the image `pixel_values` [3, H, W]; LookupError when no noted image matches."""
    if not _NOTES:
        raise LookupError(
            "no svlm-scenes evidence is noted in this process: the evidence oracle only runs on svlm-scenes "
            "samples generated in the same process (benchmark 'scenes')"
        )
    if "keys" not in _MATRIX:
        _MATRIX["keys"] = list(_NOTES)
        _MATRIX["matrix"] = np.stack([n.fingerprint for n in _NOTES.values()])
    fp = tensor_fingerprint(pixel_values)
    dist = np.sqrt(((_MATRIX["matrix"] - fp) ** 2).mean(1))  # type: ignore[operator]
    best = int(dist.argmin())
    if dist[best] > MATCH_TOLERANCE:
        raise LookupError(
            f"this image is not an svlm-scenes image generated in this process (closest fingerprint distance "
            f"{dist[best]:.3f} > {MATCH_TOLERANCE}): the evidence oracle needs the benchmark 'scenes'"
        )
    return _NOTES[_MATRIX["keys"][best]]  # type: ignore[index]


def evidence_scores(note: EvidenceNote, grid: int) -> torch.Tensor:
    """[grid * grid] (row-major tokens) score: 2 + covered share at each evidence object's centre token,
    the covered share elsewhere (0: no evidence on that patch)."""
    cover = torch.from_numpy(block_means(note.cover.astype(np.float32), grid)).flatten()
    for x, y in note.centres:
        col, row = min(int(x * grid), grid - 1), min(int(y * grid), grid - 1)
        cover[row * grid + col] += 2.0
    return cover

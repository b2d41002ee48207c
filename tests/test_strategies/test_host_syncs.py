"""Selection costs a constant number of host syncs: the count per forward must not grow with the batch size
or the number of visual tokens (no per-sample or per-token loop that reads tensor values on the host).

Counted on CPU by :class:`svlm.testing.discipline.SyncCounter` (``.item()``, ``.tolist()``, ``bool()``,
``int()``, ``nonzero``, boolean-mask indexing, ... called from svlm's own code)."""

from __future__ import annotations

import pytest
import torch

import svlm
from svlm.testing import random_image, tiny_vlm
from svlm.testing.discipline import SyncCounter

QUESTIONS = [
    "What colour is the square?",
    "How many blue blocks are there in the image? Answer with a single word.",
    "Is it red?",
    "Which shape is in the middle of the picture, a circle or a square?",
]
#: Two image sizes per family: different numbers of visual tokens (llava: 144 / 576, qwen2_vl: 144 / 576).
SIZES = {"llava": (168, 336), "qwen2_vl": (336, 672)}

VARIANTS: dict[str, list[dict]] = {
    "dense": [{}],
    "fastv": [{"budget": 0.6}, {"ratio": 0.5}],
    "pyramiddrop": [{"budget": 0.6}, {}],
    "random": [{"budget": 0.6}, {"budget": 0.6, "layer": 1}],
    "sparsevlm": [
        {"budget": 0.6},
        {"budget": 0.6, "recycle": True},
        {"rank_scale": 1.0},
        {"version": "v1", "positions": "original"},  # reference rank rule + recycling (Qwen: no renumbering)
        {"version": "v1.5", "positions": "original"},
    ],
    "visionzip": [{"budget": 0.6}],
    "divprune": [{"budget": 0.6}],
    "pooling": [{"budget": 0.6}],
    "vtc_cls": [{"budget": 0.6}],
}


def cases() -> list:
    params = []
    for name in svlm.available_strategies():
        for i, kwargs in enumerate(VARIANTS.get(name, [{"budget": 0.6}])):
            params.append(pytest.param(name, kwargs, id=f"{name}-{i}"))
    return params


@pytest.fixture(scope="module", params=sorted(SIZES))
def models(request: pytest.FixtureRequest) -> dict[int, svlm.testing.TinyVLM]:
    return {size: tiny_vlm(request.param, image_size=size) for size in SIZES[request.param]}


def count_syncs(vlm, name: str, kwargs: dict, batch: int) -> SyncCounter:
    images = [random_image(i + 1) for i in range(batch)]
    inputs = vlm.inputs(images, QUESTIONS[:batch])
    sparse = svlm.sparsify(vlm.model, name, **kwargs)
    with torch.no_grad(), SyncCounter() as counter:
        sparse(**inputs)
    return counter


@pytest.mark.parametrize(("name", "kwargs"), cases())
def test_syncs_do_not_grow_with_batch_or_tokens(models, name, kwargs):
    counts = {}
    for size, vlm in models.items():
        for batch in (1, 4):
            counts[(size, batch)] = count_syncs(vlm, name, kwargs, batch)
    totals = {key: counter.total for key, counter in counts.items()}
    largest = counts[max(counts)]
    assert len(set(totals.values())) == 1, (
        f"syncs by (visual tokens, batch): {totals}; sites: {largest.sites}"
    )


def test_counter_sees_the_usual_syncs():
    x = torch.arange(4, device="cpu")
    with SyncCounter() as counter:
        x.sum().item()
        bool(x.any())
        x.nonzero()
        x[x > 1]
        x.tolist()
    assert counter.total == 0  # called from the test module, not from svlm
    from svlm.engine.scoring import rows_from_mask

    with SyncCounter() as counter:
        rows_from_mask((x > 1).unsqueeze(0))
    assert counter.total == 1

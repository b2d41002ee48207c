"""Shared fixtures: tiny offline models of every family, built once per session.

Models from these fixtures are shared between tests: use them read-only (no weight edits, no hooks left
behind). A test that must change a model builds its own with ``svlm.testing.tiny_vlm`` (fast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from svlm.testing import FAMILIES, TinyVLM, random_image, tiny_vlm

# One intra-op thread: the tiny models gain little from more, and when several test processes share a small
# machine, OpenMP threads waiting on each other make forward passes 10-50x slower.
torch.set_num_threads(1)
# Exactness on CUDA is checked in true float32: no TF32 in cuDNN convolutions (the vision towers' patch
# embeddings) or matmuls, whose algorithm choice may differ between a batch and a sample alone.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

QUESTIONS = (
    "What colour is the square in the top left corner?",
    "How many blue blocks are there in the image? Answer with a single word.",
)


@pytest.fixture(scope="session")
def make_tiny_vlm() -> Callable[..., TinyVLM]:
    """``make_tiny_vlm(family, **kwargs)``: a cached ``tiny_vlm``; equal arguments give the same object."""
    cache: dict[tuple, TinyVLM] = {}

    def make(family: str, **kwargs) -> TinyVLM:
        key = (family, tuple(sorted(kwargs.items(), key=lambda item: item[0])))
        if key not in cache:
            cache[key] = tiny_vlm(family, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over every supported family."""
    return request.param


@pytest.fixture(scope="session")
def tiny(family: str, make_tiny_vlm: Callable[..., TinyVLM]) -> TinyVLM:
    """The default tiny model of ``family`` (4 layers, width 64, float32, SDPA)."""
    return make_tiny_vlm(family)


@pytest.fixture(scope="session")
def images() -> list:
    """Two different images; the second is not square (variable token counts for llava_next and qwen)."""
    return [random_image(1), random_image(2, size=(392, 280))]


@pytest.fixture(scope="session")
def questions() -> list[str]:
    """Two questions of different lengths, so a batch of two needs left padding."""
    return list(QUESTIONS)


@dataclass(frozen=True)
class Target:
    """Where a test runs: a device and a dtype, plus the tolerances that go with them."""

    device: str
    dtype: torch.dtype

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def exact_tol(self) -> float:
        """Max abs error of kept-token logits against the masked-key oracle (and batch against alone)."""
        return 1e-4 if not self.cuda else 1e-3

    @property
    def float32(self) -> bool:
        return self.dtype == torch.float32


_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TARGETS = [
    pytest.param(Target("cpu", torch.float32), id="cpu"),
    pytest.param(Target("cuda", torch.float32), id="cuda-fp32", marks=[pytest.mark.gpu, _NO_CUDA]),
    pytest.param(Target("cuda", torch.bfloat16), id="cuda-bf16", marks=[pytest.mark.gpu, _NO_CUDA]),
]


@pytest.fixture(scope="session", params=TARGETS)
def device(request: pytest.FixtureRequest) -> Target:
    """Parametrises a test over devices: ``cpu`` always; CUDA fp32 and bf16 (marked ``gpu``) when present."""
    return request.param


@pytest.fixture(scope="session")
def fp32_device(device: Target) -> Target:
    """``device``, skipping bf16: for checks of exactness (oracle, batch equals alone)."""
    if not device.float32:
        pytest.skip("exactness is checked in float32")
    return device


@pytest.fixture(scope="session")
def vlm(family: str, device: Target, make_tiny_vlm: Callable[..., TinyVLM]) -> TinyVLM:
    """The default tiny model of ``family`` on ``device`` (the CPU one is ``tiny`` itself)."""
    if not device.cuda:
        return make_tiny_vlm(family)
    made = make_tiny_vlm(family, dtype=device.dtype)  # its own cached copy (not ``tiny``)
    if made.model.device.type != device.device:
        made.model.to(device.device)
    return made

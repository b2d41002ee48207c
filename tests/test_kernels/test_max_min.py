"""DivPrune's greedy max-min selection: batched PyTorch and Triton paths against a per-sample greedy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from svlm.engine.scoring import rows_from_mask
from svlm.engine.sequence import gather_rows
from svlm.kernels import triton_available
from svlm.kernels.max_min import max_min_reference, max_min_select
from svlm.strategies.divprune import cosine_distances


def greedy(features: torch.Tensor, k: int) -> list[int]:
    """The definition, one sample at a time with Python loops."""
    dist = cosine_distances(features)
    if k == 0:
        return []
    chosen = [int(dist.sum(-1).argmax())]
    while len(chosen) < min(k, len(features)):
        nearest = dist[:, chosen].min(-1).values
        nearest[chosen] = -1
        chosen.append(int(nearest.argmax()))
    return sorted(chosen)


def batch(seed: int, n: int = 60, b: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, n, 8, generator=gen)
    hidden[:, 1::7] = hidden[:, ::7][:, : hidden[:, 1::7].shape[1]]  # duplicates: ties
    valid = torch.rand(b, n, generator=gen) > 0.3
    k = torch.randint(0, n, (b,), generator=gen)
    return hidden, valid, k


@pytest.mark.parametrize("seed", range(5))
def test_batched_greedy_matches_each_sample_alone(seed):
    hidden, valid, k = batch(seed)
    slots, ok = rows_from_mask(valid)
    chosen = max_min_reference(cosine_distances(gather_rows(hidden, slots)), ok, k) & ok
    for i in range(hidden.shape[0]):
        idx = valid[i].nonzero().squeeze(-1)
        expected = idx[greedy(hidden[i, idx], int(k[i]))]
        assert torch.equal(slots[i][chosen[i]].sort().values, expected)


SCRIPT = textwrap.dedent(
    """
    import torch
    from svlm.kernels.max_min import max_min_reference, max_min_triton
    gen = torch.Generator().manual_seed(0)
    for b, m in [(3, 40), (1, 5), (2, 130)]:
        x = torch.nn.functional.normalize(torch.randn(b, m, 6, generator=gen), dim=-1)
        dist = 1 - x @ x.transpose(1, 2)
        valid = torch.rand(b, m, generator=gen) > 0.2
        k = torch.randint(0, m, (b,), generator=gen)
        assert torch.equal(max_min_reference(dist, valid, k), max_min_triton(dist, valid, k)), (b, m)
    print("ok")
    """
)


@pytest.mark.skipif(not triton_available(), reason="triton is not installed (pip install 'svlm[triton]')")
def test_triton_kernel_matches_reference_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and triton_available()), reason="needs CUDA and triton")
@pytest.mark.parametrize(("b", "m"), [(1, 576), (8, 576), (2, 2880)])
def test_triton_kernel_matches_reference_on_cuda(b, m):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, m, 64, device="cuda", generator=gen)
    valid = torch.rand(b, m, device="cuda", generator=gen) > 0.1
    k = torch.full((b,), m // 3, device="cuda")
    dist = cosine_distances(x)
    expected = max_min_select(dist, valid, k, use_triton=False)
    assert torch.equal(max_min_select(dist, valid, k, use_triton=True), expected)

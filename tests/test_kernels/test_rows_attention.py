"""The Triton rows-attention kernel matches its PyTorch reference (run under TRITON_INTERPRET=1 on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from svlm.kernels import rows_attention_reference, triton_available

SCRIPT = textwrap.dedent(
    """
    import torch
    from svlm.kernels import head_mean_rows_attention, rows_attention_reference
    torch.manual_seed(0)
    shapes = [(2, 4, 2, 3, 100, 16), (1, 2, 2, 1, 7, 12), (3, 8, 1, 5, 130, 32), (2, 28, 4, 6, 150, 16)]
    for b, h, kvh, r, n, d in shapes:
        q = torch.randn(b, h, r, d)
        k = torch.randn(b, kvh, n, d)
        slots = torch.randint(0, n, (b, r))
        valid = torch.rand(b, n) > 0.2
        valid[:, 0] = True
        ref = rows_attention_reference(q, k, slots, valid, d ** -0.5)
        got = head_mean_rows_attention(q, k, slots, valid, d ** -0.5, use_triton=True, block_n=32)
        err = (ref - got).abs().max().item()
        assert err < 1e-5, (b, h, kvh, r, n, d, err)
    # keys in bfloat16 (read as they are), a row that sees no valid key, several key chunks
    q, k = torch.randn(1, 6, 2, 16), torch.randn(1, 3, 90, 16).bfloat16()
    valid = torch.ones(1, 90, dtype=torch.bool)
    valid[0, :10] = False
    slots = torch.tensor([[5, 89]])
    ref = rows_attention_reference(q, k, slots, valid, 0.25)
    got = head_mean_rows_attention(q, k, slots, valid, 0.25, use_triton=True, block_n=16)
    assert (ref - got).abs().max().item() < 1e-5 and got[0, 0].abs().sum() == 0
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


def test_reference_matches_per_head_softmax():
    torch.manual_seed(0)
    b, h, kvh, r, n, d = 2, 4, 2, 3, 20, 8
    q, k = torch.randn(b, h, r, d), torch.randn(b, kvh, n, d)
    slots = torch.tensor([[5, 10, 19], [0, 3, 19]])
    valid = torch.ones(b, n, dtype=torch.bool)
    got = rows_attention_reference(q, k, slots, valid, 0.5)
    k_full = k.repeat_interleave(h // kvh, dim=1)
    logits = torch.einsum("bhrd,bhnd->bhrn", q, k_full) * 0.5
    causal = torch.arange(n).view(1, 1, 1, n) <= slots.view(b, 1, r, 1)
    expected = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1).mean(1)
    torch.testing.assert_close(got, expected)
    assert torch.all(got[:, :, 11:][:, :2] == 0)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and triton_available()), reason="needs CUDA and triton")
@pytest.mark.parametrize(
    "shape", [(8, 32, 8, 40, 640, 128), (1, 28, 4, 60, 3000, 128), (2, 32, 32, 1, 600, 128)]
)
def test_triton_kernel_matches_reference_on_cuda(shape):
    from svlm.kernels import head_mean_rows_attention

    b, h, kvh, r, n, d = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, h, r, d, device="cuda", generator=gen)
    k = torch.randn(b, kvh, n, d, device="cuda", generator=gen)
    slots = torch.randint(0, n, (b, r), device="cuda", generator=gen)
    valid = torch.rand(b, n, device="cuda", generator=gen) > 0.1
    ref = rows_attention_reference(q, k, slots, valid, d**-0.5)
    got = head_mean_rows_attention(q, k, slots, valid, d**-0.5, use_triton=True)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    auto = head_mean_rows_attention(q, k, slots, valid, d**-0.5)
    torch.testing.assert_close(auto, ref, atol=1e-5, rtol=1e-4)

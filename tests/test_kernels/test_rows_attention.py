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
    for b, h, kvh, r, n, d in [(2, 4, 2, 3, 100, 16), (1, 2, 2, 1, 7, 12), (3, 8, 1, 5, 130, 32)]:
        q = torch.randn(b, h, r, d)
        k = torch.randn(b, kvh, n, d)
        slots = torch.randint(0, n, (b, r))
        valid = torch.rand(b, n) > 0.2
        valid[:, 0] = True
        ref = rows_attention_reference(q, k, slots, valid, d ** -0.5)
        got = head_mean_rows_attention(q, k, slots, valid, d ** -0.5, use_triton=True, block_n=32)
        err = (ref - got).abs().max().item()
        assert err < 1e-5, (b, h, kvh, r, n, d, err)
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

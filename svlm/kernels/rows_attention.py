"""Head-averaged attention probabilities of a few query rows against all keys.

The Triton kernel runs one program per (sample, row, head): a first pass over key blocks finds the
softmax max and normaliser online, a second pass writes ``p / heads`` into the [b, r, n] output with an
atomic add. Memory: the output only; no [heads, r, n] or [n, n] intermediate. GQA is handled by indexing
the key head ``head // group``. :func:`rows_attention_reference` is the PyTorch definition it must match.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

try:  # triton is optional
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None


@functools.cache
def triton_available() -> bool:
    return triton is not None


def rows_attention_reference(
    q_rows: torch.Tensor,
    keys: torch.Tensor,
    row_slots: torch.Tensor,
    key_valid: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """[b, r, n] head-mean softmax probabilities. ``q_rows`` [b, h, r, d] and ``keys`` [b, kv_h, n, d] are
    post-rotary; a row at slot s sees keys at slots <= s that are valid."""
    b, h, r, d = q_rows.shape
    n = keys.shape[2]
    group = h // keys.shape[1]
    q = q_rows.float().reshape(b, keys.shape[1], group * r, d)
    logits = torch.matmul(q, keys.float().transpose(-1, -2)).reshape(b, h, r, n) * scaling
    allowed = (
        torch.arange(n, device=keys.device).view(1, 1, n) <= row_slots.unsqueeze(-1)
    ) & key_valid.unsqueeze(1)
    logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    return torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0).mean(1)


if triton is not None:

    @triton.jit
    def _rows_attention_kernel(
        Q, K, SLOTS, KEY_VALID, OUT,
        stride_qb, stride_qh, stride_qr,
        stride_kb, stride_kh, stride_kn,
        stride_sb, stride_vb, stride_ob, stride_or,
        R, N, D, GROUP, NUM_HEADS, scaling,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        pid_br = tl.program_id(0)
        head = tl.program_id(1)
        b = pid_br // R
        r = pid_br % R
        kv_head = head // GROUP
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        q = tl.load(Q + b * stride_qb + head * stride_qh + r * stride_qr + offs_d, mask=d_mask, other=0.0)
        slot = tl.load(SLOTS + b * stride_sb + r)
        k_base = K + b * stride_kb + kv_head * stride_kh
        m_i = -float("inf")
        l_i = 0.0
        for start in range(0, N, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_mask = offs_n < N
            k = tl.load(
                k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=n_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            valid = tl.load(KEY_VALID + b * stride_vb + offs_n, mask=n_mask, other=0)
            allowed = n_mask & (valid != 0) & (offs_n <= slot)
            s = tl.sum(k * q[None, :], axis=1) * scaling
            s = tl.where(allowed, s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.where(allowed, tl.exp(s - m_new), 0.0), axis=0)
            m_i = m_new
        inv = 1.0 / (l_i * NUM_HEADS)
        for start in range(0, N, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_mask = offs_n < N
            k = tl.load(
                k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=n_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            valid = tl.load(KEY_VALID + b * stride_vb + offs_n, mask=n_mask, other=0)
            allowed = n_mask & (valid != 0) & (offs_n <= slot)
            s = tl.sum(k * q[None, :], axis=1) * scaling
            p = tl.where(allowed, tl.exp(s - m_i) * inv, 0.0)
            tl.atomic_add(OUT + b * stride_ob + r * stride_or + offs_n, p, mask=n_mask)


_CHOICES: dict[tuple[Any, ...], str] = {}


def _bucket(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def auto_choice(q_rows: torch.Tensor, keys: torch.Tensor) -> str:
    """``"triton"`` or ``"reference"``: the faster of the two for this shape, measured on first use.

    Shapes are bucketed (rows and keys to the next power of two); each bucket is timed once per process
    with CUDA events on synthetic inputs of the bucket's size, so the automatic path is never the slower
    one by more than the timing noise. Off CUDA (or without triton) it is always the reference.
    """
    if not (triton_available() and q_rows.is_cuda):
        return "reference"
    b, h, r, d = q_rows.shape
    kvh, n = keys.shape[1], keys.shape[2]
    key = (q_rows.device, b, h, kvh, d, _bucket(r), _bucket(n))
    if key not in _CHOICES:
        _CHOICES[key] = _measure(b, h, kvh, _bucket(r), _bucket(n), d, q_rows.device)
    return _CHOICES[key]


def _measure(b: int, h: int, kvh: int, r: int, n: int, d: int, device: torch.device) -> str:
    q = torch.randn(b, h, r, d, device=device)
    k = torch.randn(b, kvh, n, d, device=device)
    slots = torch.full((b, r), n - 1, dtype=torch.long, device=device)
    valid = torch.ones(b, n, dtype=torch.bool, device=device)
    times = {}
    for name, use in (("reference", False), ("triton", True)):
        run = functools.partial(head_mean_rows_attention, q, k, slots, valid, d**-0.5, use_triton=use)
        run()  # compile / warm up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            run()
        end.record()
        end.synchronize()
        times[name] = start.elapsed_time(end)
    return min(times, key=times.get)


def head_mean_rows_attention(
    q_rows: torch.Tensor,
    keys: torch.Tensor,
    row_slots: torch.Tensor,
    key_valid: torch.Tensor,
    scaling: float,
    *,
    use_triton: bool | None = None,
    block_n: int = 64,
) -> torch.Tensor:
    """Head-mean rows attention [b, r, n] (float32); Triton when available on a GPU, else PyTorch.

    ``use_triton=True`` forces the kernel (e.g. under ``TRITON_INTERPRET=1`` on CPU tensors in tests).
    """
    if use_triton is None:
        use_triton = auto_choice(q_rows, keys) == "triton"
    if not use_triton:
        return rows_attention_reference(q_rows, keys, row_slots, key_valid, scaling)
    if not triton_available():
        raise RuntimeError("use_triton=True but triton is not installed (pip install 'svlm[triton]').")
    b, h, r, d = q_rows.shape
    n = keys.shape[2]
    q = q_rows.float().contiguous()
    k = keys.float().contiguous()
    slots = row_slots.to(torch.int32).contiguous()
    valid = key_valid.to(torch.int32).contiguous()
    out = torch.zeros(b, r, n, dtype=torch.float32, device=q.device)
    if b * r == 0 or n == 0:
        return out
    _rows_attention_kernel[(b * r, h)](
        q, k, slots, valid, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        slots.stride(0), valid.stride(0), out.stride(0), out.stride(1),
        r, n, d, h // k.shape[1], h, float(scaling),
        BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(d),
    )  # fmt: skip
    return out

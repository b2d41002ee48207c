"""Head-averaged attention probabilities of a few query rows against all keys.

The Triton path (:func:`rows_attention_triton`) gives each program a block of rows and one KV head with all
of its query heads, so a key tile is loaded once for the whole GQA group and multiplied with one ``tl.dot``.
Pass 1 finds every (row, head)'s softmax max and normaliser over chunks of the keys; pass 2 merges them and
writes one key block per program, the group's heads already summed. Memory: the output and a few
statistics; no [heads, r, n] or [n, n] intermediate. :func:`rows_attention_reference` is the PyTorch
definition it must match; :func:`auto_choice` picks whichever is faster for a shape, measured.
"""

from __future__ import annotations

import functools
import warnings
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
    def _tile(
        Q, K, SLOTS, KEY_VALID, b, kv, r0, start,
        stride_qb, stride_qh, stride_qr, stride_kb, stride_kh, stride_kn, stride_sb, stride_vb,
        R, N, D, GROUP, scaling,
        BLOCK_R: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """Scaled logits [BLOCK_R * GROUP_PAD, BLOCK_N] of rows r0.. (every query head of KV head ``kv``)
        against keys start.., with -inf where a key is not allowed, and which tile rows are real."""
        offs_m = tl.arange(0, BLOCK_R * GROUP_PAD)
        row = r0 + offs_m // GROUP_PAD
        member = offs_m % GROUP_PAD
        real = (row < R) & (member < GROUP)
        head = kv * GROUP + member
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        q = tl.load(
            Q + b * stride_qb + head[:, None] * stride_qh + row[:, None] * stride_qr + offs_d[None, :],
            mask=real[:, None] & d_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        slot = tl.load(SLOTS + b * stride_sb + row, mask=real, other=-1)
        offs_n = start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        k = tl.load(
            K + b * stride_kb + kv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
            mask=n_mask[:, None] & d_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        key_ok = tl.load(KEY_VALID + b * stride_vb + offs_n, mask=n_mask, other=0) != 0
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scaling
        allowed = (key_ok & n_mask)[None, :] & (offs_n[None, :] <= slot[:, None])
        return tl.where(allowed, s, -float("inf")), real

    @triton.jit
    def _stats_kernel(
        Q, K, SLOTS, KEY_VALID, M_PART, L_PART,
        stride_qb, stride_qh, stride_qr, stride_kb, stride_kh, stride_kn, stride_sb, stride_vb,
        R, N, D, GROUP, KV_HEADS, ROW_BLOCKS, SPLITS, CHUNK, scaling,
        BLOCK_R: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """Pass 1: running max and normaliser of each (row, head) over one chunk of the keys."""
        pid = tl.program_id(0)
        kv = tl.program_id(1)
        split = tl.program_id(2)
        b = pid // ROW_BLOCKS
        r0 = (pid % ROW_BLOCKS) * BLOCK_R
        m_i = tl.full((BLOCK_R * GROUP_PAD,), -float("inf"), tl.float32)
        l_i = tl.zeros((BLOCK_R * GROUP_PAD,), tl.float32)
        lo = split * CHUNK
        for start in range(lo, tl.minimum(lo + CHUNK, N), BLOCK_N):
            s, _ = _tile(
                Q, K, SLOTS, KEY_VALID, b, kv, r0, start,
                stride_qb, stride_qh, stride_qr, stride_kb, stride_kh, stride_kn, stride_sb, stride_vb,
                R, N, D, GROUP, scaling, BLOCK_R, GROUP_PAD, BLOCK_N, BLOCK_D,
            )  # fmt: skip
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - safe) + tl.sum(tl.exp(s - safe[:, None]), axis=1)
            m_i = m_new
        out = ((pid * KV_HEADS + kv) * SPLITS + split) * (BLOCK_R * GROUP_PAD) + tl.arange(
            0, BLOCK_R * GROUP_PAD
        )
        tl.store(M_PART + out, m_i)
        tl.store(L_PART + out, l_i)

    @triton.jit
    def _probs_kernel(
        Q, K, SLOTS, KEY_VALID, M_PART, L_PART, OUT,
        stride_qb, stride_qh, stride_qr, stride_kb, stride_kh, stride_kn, stride_sb, stride_vb,
        stride_ob, stride_or,
        R, N, D, GROUP, NUM_HEADS, KV_HEADS, ROW_BLOCKS, SPLITS, scaling,
        BLOCK_R: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """Pass 2: one key block's probabilities, summed over the KV head's query heads, added to OUT."""
        pid = tl.program_id(0)
        kv = tl.program_id(1)
        start = tl.program_id(2) * BLOCK_N
        b = pid // ROW_BLOCKS
        r0 = (pid % ROW_BLOCKS) * BLOCK_R
        base = (pid * KV_HEADS + kv) * SPLITS * (BLOCK_R * GROUP_PAD) + tl.arange(0, BLOCK_R * GROUP_PAD)
        m_i = tl.full((BLOCK_R * GROUP_PAD,), -float("inf"), tl.float32)
        l_i = tl.zeros((BLOCK_R * GROUP_PAD,), tl.float32)
        for split in range(0, SPLITS):  # merge the chunks' statistics
            m_s = tl.load(M_PART + base + split * (BLOCK_R * GROUP_PAD))
            l_s = tl.load(L_PART + base + split * (BLOCK_R * GROUP_PAD))
            m_new = tl.maximum(m_i, m_s)
            safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - safe) + l_s * tl.exp(m_s - safe)
            m_i = m_new
        s, real = _tile(
            Q, K, SLOTS, KEY_VALID, b, kv, r0, start,
            stride_qb, stride_qh, stride_qr, stride_kb, stride_kh, stride_kn, stride_sb, stride_vb,
            R, N, D, GROUP, scaling, BLOCK_R, GROUP_PAD, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        inv = tl.where(real & (l_i > 0), 1.0 / (l_i * NUM_HEADS), 0.0)
        safe = tl.where(m_i == -float("inf"), 0.0, m_i)
        p = tl.exp(s - safe[:, None]) * inv[:, None]  # [BLOCK_M, BLOCK_N]
        p = tl.sum(tl.reshape(p, (BLOCK_R, GROUP_PAD, BLOCK_N)), axis=1)  # sum over the group's heads
        rows = r0 + tl.arange(0, BLOCK_R)
        offs_n = start + tl.arange(0, BLOCK_N)
        target = OUT + b * stride_ob + rows[:, None] * stride_or + offs_n[None, :]
        mask = (rows < R)[:, None] & (offs_n < N)[None, :]
        if KV_HEADS == 1:
            tl.store(target, p, mask=mask)
        else:
            tl.atomic_add(target, p, mask=mask)


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
        try:
            run()  # compile / warm up
        except Exception as error:  # noqa: BLE001 - a kernel that cannot run here must not stop pruning
            warnings.warn(
                f"svlm: the Triton rows-attention kernel failed ({error}); using PyTorch.", stacklevel=3
            )
            return "reference"
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
    return rows_attention_triton(q_rows, keys, row_slots, key_valid, scaling, block_n=block_n)


def rows_attention_triton(
    q_rows: torch.Tensor,
    keys: torch.Tensor,
    row_slots: torch.Tensor,
    key_valid: torch.Tensor,
    scaling: float,
    *,
    block_n: int = 64,
    target_programs: int = 512,
) -> torch.Tensor:
    """The Triton kernels: [b, r, n] head-mean probabilities, keys read once per pass in their own dtype.

    Each program takes a block of rows and one KV head with all its query heads (GQA: the key tile is
    loaded once for the group), computes the logits with one ``tl.dot`` per key block, and sums the
    group's probabilities before writing. Pass 1 finds each (row, head)'s softmax max and normaliser over
    chunks of the keys (split so the GPU has ``target_programs`` programs); pass 2 merges the chunks'
    statistics and writes one key block per program.
    """
    b, h, r, d = q_rows.shape
    kv_heads, n = keys.shape[1], keys.shape[2]
    out = torch.zeros(b, r, n, dtype=torch.float32, device=q_rows.device)
    if b * r == 0 or n == 0:
        return out
    group = h // kv_heads
    q = q_rows.float().contiguous()
    k = keys.contiguous()
    slots = row_slots.to(torch.int32).contiguous()
    valid = key_valid.to(torch.int8).contiguous()
    group_pad = triton.next_power_of_2(group)
    block_r = max(1, min(triton.next_power_of_2(r), 64 // group_pad))
    block_r = max(block_r, 16 // group_pad)  # tl.dot needs at least 16 rows
    block_m = block_r * group_pad
    block_d = max(16, triton.next_power_of_2(d))
    row_blocks = triton.cdiv(r, block_r)
    key_blocks = triton.cdiv(n, block_n)
    splits = max(1, min(key_blocks, target_programs // max(1, b * row_blocks * kv_heads)))
    chunk = triton.cdiv(key_blocks, splits) * block_n
    splits = triton.cdiv(n, chunk)
    m_part = torch.empty(b * row_blocks * kv_heads * splits * block_m, dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    strides = (
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        slots.stride(0), valid.stride(0),
    )  # fmt: skip
    blocks = {"BLOCK_R": block_r, "GROUP_PAD": group_pad, "BLOCK_N": block_n, "BLOCK_D": block_d}
    _stats_kernel[(b * row_blocks, kv_heads, splits)](
        q, k, slots, valid, m_part, l_part, *strides,
        r, n, d, group, kv_heads, row_blocks, splits, chunk, float(scaling), **blocks,
    )  # fmt: skip
    _probs_kernel[(b * row_blocks, kv_heads, key_blocks)](
        q, k, slots, valid, m_part, l_part, out, *strides, out.stride(0), out.stride(1),
        r, n, d, group, h, kv_heads, row_blocks, splits, float(scaling), **blocks,
    )  # fmt: skip
    return out

"""Greedy max-min diversity selection (DivPrune) for a batch, without host round trips.

Given pairwise distances [b, m, m], the selection starts from the point farthest (in summed distance) from
all others, then repeatedly adds the point whose nearest chosen point is farthest. The loop is inherently
sequential: in PyTorch each step is a few tiny kernel launches (a loop of ``k`` steps over the whole batch,
no host syncs); the Triton kernel runs the whole loop inside one program per sample, keeping each point's
distance to its nearest chosen point in registers, so the GPU sees one launch instead of ``6 k``.
Both give the same choice: the same distances, the same ``argmax`` ties (lowest index).
"""

from __future__ import annotations

import warnings

import torch

from svlm.kernels.rows_attention import triton_available

try:  # triton is optional
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

_CHOSEN = -1.0  # below every distance (cosine distances are >= 0 up to rounding)
_OUTSIDE = -2.0  # padding slots: below chosen ones, never picked


def _first_point(dist: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[b] the valid point with the largest summed distance to the other valid points."""
    total = (dist * valid.unsqueeze(1)).sum(-1)
    return total.masked_fill(~valid, float("-inf")).argmax(-1)


def max_min_reference(dist: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool [b, m]: the ``k[b]`` points of each sample chosen greedily (PyTorch; ``max(k)`` steps)."""
    b, m = valid.shape
    k = torch.minimum(k.long(), valid.sum(-1))
    first = _first_point(dist, valid).unsqueeze(-1)
    chosen = torch.zeros_like(valid).scatter_(1, first, (k > 0).unsqueeze(-1))
    nearest = torch.gather(dist, 1, first.unsqueeze(-1).expand(b, 1, m)).squeeze(1)
    nearest = nearest.masked_fill(chosen, _CHOSEN).masked_fill(~valid, _OUTSIDE)
    steps = int(k.max()) if b else 0  # one sync: the loop length
    for step in range(1, steps):
        nxt = nearest.argmax(-1, keepdim=True)
        chosen.scatter_(1, nxt, (step < k).unsqueeze(-1) | torch.gather(chosen, 1, nxt))
        row = torch.gather(dist, 1, nxt.unsqueeze(-1).expand(b, 1, m)).squeeze(1)
        nearest = torch.minimum(nearest, row).masked_fill(chosen, _CHOSEN).masked_fill(~valid, _OUTSIDE)
    return chosen


if triton is not None:

    @triton.jit
    def _max_min_kernel(
        DIST, VALID, FIRST, COUNT, CHOSEN,
        M, stride_db, stride_dr, stride_vb, stride_cb,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        inside = offs < M
        valid = tl.load(VALID + b * stride_vb + offs, mask=inside, other=0) != 0
        k = tl.load(COUNT + b)
        first = tl.load(FIRST + b)
        base = DIST + b * stride_db
        nearest = tl.load(base + first * stride_dr + offs, mask=inside, other=0.0)
        chosen = (offs == first) & (k > 0)
        nearest = tl.where(chosen, -1.0, nearest)
        nearest = tl.where(valid, nearest, -2.0)
        for _ in range(1, k):
            nxt = tl.argmax(nearest, axis=0)
            row = tl.load(base + nxt * stride_dr + offs, mask=inside, other=0.0)
            chosen = chosen | (offs == nxt)
            nearest = tl.minimum(nearest, row)
            nearest = tl.where(chosen, -1.0, nearest)
            nearest = tl.where(valid, nearest, -2.0)
        tl.store(CHOSEN + b * stride_cb + offs, chosen.to(tl.int8), mask=inside)


def max_min_triton(dist: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The Triton kernel of :func:`max_min_reference` (one program per sample)."""
    b, m = valid.shape
    k = torch.minimum(k.long(), valid.sum(-1)).to(torch.int32).contiguous()
    first = _first_point(dist, valid).to(torch.int32).contiguous()
    dist = dist.float().contiguous()
    flags = valid.to(torch.int8).contiguous()
    chosen = torch.zeros(b, m, dtype=torch.int8, device=dist.device)
    if b and m:
        block = triton.next_power_of_2(m)
        _max_min_kernel[(b,)](
            dist, flags, first, k, chosen,
            m, dist.stride(0), dist.stride(1), flags.stride(0), chosen.stride(0),
            BLOCK=block, num_warps=max(1, min(16, block // 256)),
        )  # fmt: skip
    return chosen.bool()


def max_min_select(
    dist: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, *, use_triton: bool | None = None
) -> torch.Tensor:
    """Bool [b, m]: greedy max-min choice of ``k[b]`` of the ``valid`` points, from distances [b, m, m].

    Triton on CUDA tensors when it is installed (``use_triton`` forces either path), else PyTorch.
    """
    if use_triton is None:
        if triton_available() and dist.is_cuda and not _FAILED:
            try:
                return max_min_triton(dist, valid, k)
            except Exception as error:  # noqa: BLE001 - a kernel that cannot run here must not stop pruning
                _FAILED.append(error)
                warnings.warn(
                    f"svlm: the Triton max-min kernel failed ({error}); using PyTorch.", stacklevel=2
                )
        return max_min_reference(dist, valid, k)
    if use_triton:
        if not triton_available():
            raise RuntimeError("use_triton=True but triton is not installed (pip install 'svlm[triton]').")
        return max_min_triton(dist, valid, k)
    return max_min_reference(dist, valid, k)


_FAILED: list[Exception] = []  # set once the kernel failed in this process (then PyTorch is used)

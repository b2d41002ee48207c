"""Memory layout of ``nn.Linear`` weights: the same values, stored the way the CPU GEMM reads fastest.

``nn.Linear`` keeps its weight as ``[out, in]`` and computes ``x @ weight.T``, a GEMM with a transposed
right-hand matrix. On x86 CPUs with MKL that transposed GEMM is markedly slower for few rows than the plain
one: measured on this project's 2-core Xeon at one thread, for a 512 x 1376 weight streamed from memory,
``x @ W.T`` ran at 111 GFLOP/s for 88 rows and 6.7 GFLOP/s for one row (decoding), against 147 and 8.5
GFLOP/s when the weight was stored as a contiguous ``[in, out]`` matrix; at 600 rows the gap is 6%. Pruned
prefills and decoding steps are exactly those few-row GEMMs.

:func:`set_linear_layout` re-stores every linear weight of a model as the transpose of a contiguous
``[in, out]`` matrix. Nothing else changes: same parameter objects, shapes, values, module classes and
``state_dict`` keys; ``F.linear`` sees ``weight.T`` as contiguous and calls the non-transposed GEMM. MKL
computed bit-identical outputs in both layouts in every check this project ran (the tests compare them).
It is a property of the model, not of a pruning method: ``svlm bench`` applies it to every model it
times, the unpruned reference and the PyPI comparison included, so that speed-ups stay like for like.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["LAYOUTS", "Layout", "linear_layout", "resolve_layout", "set_linear_layout"]

Layout = Literal["native", "input_major"]
#: ``native``: transformers' ``[out, in]`` contiguous; ``input_major``: stored as a contiguous ``[in, out]``.
LAYOUTS: tuple[str, ...] = ("native", "input_major")


def resolve_layout(layout: str, device: torch.device) -> Layout:
    """``auto`` -> ``input_major`` on CPU (measured faster there), ``native`` elsewhere (not measured)."""
    if layout == "auto":
        return "input_major" if device.type == "cpu" else "native"
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown weight layout {layout!r}; valid layouts: auto, {', '.join(LAYOUTS)}.")
    return layout  # type: ignore[return-value]


def _linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weights of the model's ``nn.Linear`` modules that no embedding shares (tied output heads stay
    row-major: an embedding looks up rows)."""
    shared = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    seen: set[int] = set()
    weights = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.dim() == 2:
            weight = module.weight
            if id(weight) not in shared and id(weight) not in seen:
                seen.add(id(weight))
                weights.append(weight)
    return weights


def _is_input_major(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.t().is_contiguous() and not weight.is_contiguous()


@torch.no_grad()
def set_linear_layout(model: nn.Module, layout: Layout = "input_major") -> int:
    """Store every linear weight of ``model`` in ``layout``, in place; returns how many were re-stored.

    ``input_major`` keeps each weight's ``[out, in]`` shape and values but backs it with a contiguous
    ``[in, out]`` buffer (``weight.T.is_contiguous()``); ``native`` makes it contiguous again. Memory use is
    unchanged once the old storage is freed.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown weight layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}.")
    changed = 0
    for weight in _linear_weights(model):
        if layout == "input_major" and not _is_input_major(weight):
            weight.data = weight.data.t().contiguous().t()
            changed += 1
        elif layout == "native" and not weight.is_contiguous():
            weight.data = weight.data.contiguous()
            changed += 1
    return changed


def linear_layout(model: nn.Module) -> str:
    """``native``, ``input_major`` or ``mixed``: how the model's linear weights are stored now."""
    kinds = {"input_major" if _is_input_major(w) else "native" for w in _linear_weights(model)}
    return kinds.pop() if len(kinds) == 1 else ("native" if not kinds else "mixed")

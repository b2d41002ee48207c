"""What the decoder itself allows: the model's own language model timed on fewer tokens (no svlm)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from svlm.bench.stats import median, paired_speedup
from svlm.bench.timing import sync

__all__ = ["LAYER_COST_TOKENS", "decoder_ceiling", "linear_cost_ms"]

#: Token counts at which ``decoder_ceiling`` also times the decoder (``layer_ms``), below the full prompt.

LAYER_COST_TOKENS: tuple[int, ...] = (1, 16, 32, 64, 128, 256)


def decoder_ceiling(
    model: nn.Module, full: int, kept: int, repeats: int, clock: Callable[[], float], device: torch.device
) -> dict[str, float]:
    """How much faster the model's own language model (no svlm at all) runs on ``kept`` tokens than on
    ``full`` tokens, against the FLOPs ratio of the two: the best ``efficiency`` any pruning method that
    calls these decoder layers can reach on this machine (small GEMMs and per-op overheads are its own).

    ``layer_ms`` is the same decoder's cost per layer at a range of token counts (one sample): where it
    stops falling as tokens get fewer, a layer costs what reading its weights and launching its ops cost,
    which bounds the efficiency of any schedule that leaves few tokens in many layers. ``linear_ms`` is the
    part of it spent in the layers' ``nn.Linear`` GEMMs alone (see :func:`linear_cost_ms`).
    """
    from svlm import flops
    from svlm.adapters import adapter_for

    adapter = adapter_for(model)
    lm = adapter.language_model
    config = model.config
    dtype = next(model.parameters()).dtype
    hidden = int(config.get_text_config(decoder=True).hidden_size)
    layers = int(config.get_text_config(decoder=True).num_hidden_layers)
    sizes = sorted({full, kept, *(n for n in LAYER_COST_TOKENS if n < full)})
    states = {n: torch.randn(1, n, hidden, device=device, dtype=dtype) for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for n in sizes:  # warm-up
        lm(inputs_embeds=states[n])
    for _ in range(repeats):
        for n in sizes:
            sync(device)
            start = clock()
            lm(inputs_embeds=states[n])
            sync(device)
            times[n].append(clock() - start)

    def decoder_flops(n: int, causal: bool) -> float:
        return flops.prefill_flops(
            config, [n] * layers, include_vision=False, include_lm_head=False, causal=causal
        ).total

    speedup = paired_speedup(times[full], times[kept])
    ratio = decoder_flops(full, False) / decoder_flops(kept, False)
    ratio_causal = decoder_flops(full, True) / decoder_flops(kept, True)
    return {
        "full_tokens": full,
        "kept_tokens": kept,
        "full_s": median(times[full]),
        "kept_s": median(times[kept]),
        "speedup": speedup,
        "flops_speedup": ratio,
        "flops_speedup_causal": ratio_causal,
        "efficiency": speedup / ratio,
        "efficiency_causal": speedup / ratio_causal,
        "layer_ms": {str(n): 1e3 * median(times[n]) / layers for n in sizes},
        "linear_ms": linear_cost_ms(adapter.decoder_layers, sizes, repeats, clock, device, dtype),
    }


@torch.no_grad()
def linear_cost_ms(
    layers: Sequence[nn.Module],
    sizes: Sequence[int],
    repeats: int,
    clock: Callable[[], float],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Milliseconds per layer that the ``nn.Linear`` modules of ``layers`` take alone at each token count
    (``F.linear`` on random rows, weights as stored, every layer in turn so the weights stream from memory
    as in a forward pass); median over ``repeats``. The rest of ``layer_ms`` is attention, norms, rotary
    embeddings, activations and per-op dispatch."""
    linears = [[m for m in layer.modules() if isinstance(m, nn.Linear)] for layer in layers]
    widths = {m.in_features for group in linears for m in group}
    result = {}
    for n in sizes:
        rows = {w: torch.randn(n, w, device=device, dtype=dtype) for w in widths}

        def one_pass(rows: dict[int, torch.Tensor] = rows) -> None:
            for group in linears:
                for m in group:
                    F.linear(rows[m.in_features], m.weight, m.bias)

        one_pass()  # warm-up
        times = []
        for _ in range(max(1, repeats)):
            sync(device)
            start = clock()
            one_pass()
            sync(device)
            times.append(clock() - start)
        result[str(n)] = 1e3 * median(times) / max(1, len(linears))
    return result

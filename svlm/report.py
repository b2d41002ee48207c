"""What one sparsified call did: tokens per layer, budgets both ways, FLOPs, KV-cache size."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from svlm.adapters.base import ModelInfo


@dataclass
class LayerDecision:
    """One pruning step: visual tokens before/after (per sample), merged tokens, strategy extras."""

    layer: int
    visual_before: torch.Tensor
    visual_after: torch.Tensor
    merged: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    scoring_rows: int = 0
    scoring_keys: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "visual_before": self.visual_before.tolist(),
            "visual_after": self.visual_after.tolist(),
            "merged": self.merged.tolist(),
            **{k: _jsonable(v) for k, v in self.info.items()},
        }


class Report:
    """Per-call accounting. Token counts are of *valid* tokens (padding slots are not counted).

    ``budget`` counts the visual tokens entering each decoder layer (what its attention and MLP process),
    averaged over layers and samples; ``budget_output`` counts them on layer outputs, as the SparseVLM
    paper does.
    """

    def __init__(
        self,
        *,
        info: ModelInfo,
        config: Any,
        layer_sequences: list[Any],
        prompt_valid: torch.Tensor,
        decisions: list[LayerDecision],
        strategy: str,
        input_ids: torch.Tensor,
        inputs: dict[str, Any] | None = None,
        overhead_flops: float = 0.0,
    ) -> None:
        self.overhead_flops = overhead_flops
        self.info = info
        self.config = config
        self.strategy = strategy
        self.decisions = decisions
        self.decode_steps = 0
        self.scoring_seconds = 0.0  # wall time in the strategy's prepare/scoring/selection and the gathers
        self._seqs = layer_sequences
        # One device-to-host copy for all counts (one sync per call, whatever the batch size or depth).
        visual = torch.stack([s.visual_counts() for s in layer_sequences], dim=1)  # [b, L]
        tokens = torch.stack([s.valid.sum(-1) for s in layer_sequences], dim=1)  # [b, L]
        host = torch.cat([visual, tokens, prompt_valid.sum(-1, keepdim=True)], dim=1).cpu()
        layers = len(layer_sequences)
        self._visual, self._tokens = host[:, :layers], host[:, layers : 2 * layers]
        self._prompt_tokens = host[:, -1]
        self._slots = [s.length for s in layer_sequences]
        self._dtype = layer_sequences[0].cos.dtype
        self.batch_size = int(input_ids.shape[0])
        self.prompt_length = int(input_ids.shape[1])
        # Image geometry for the FLOPs, derived on first use (it reads input_ids on the host).
        self._geometry_inputs = {
            key: value
            for key, value in (inputs or {}).items()
            if key in ("image_sizes", "image_grid_thw", "video_grid_thw")
        }
        self._geometry_inputs["input_ids"] = input_ids

    @cached_property
    def _vision(self) -> list[dict[str, Any]]:
        from svlm import flops

        inputs = {
            key: value.cpu() if isinstance(value, torch.Tensor) else value
            for key, value in self._geometry_inputs.items()
        }
        return [flops.vision_kwargs(self.config, inputs, b) for b in range(self.batch_size)]

    # -- tokens ------------------------------------------------------------------------------------
    @property
    def visual_tokens(self) -> list[list[int]]:
        """[sample][layer]: visual tokens entering each decoder layer."""
        return self._visual.tolist()

    @property
    def tokens(self) -> list[list[int]]:
        """[sample][layer]: all (text + visual) tokens entering each decoder layer."""
        return self._tokens.tolist()

    @property
    def visual_tokens_output(self) -> list[list[int]]:
        """[sample][layer]: visual tokens leaving each decoder layer (paper-style counting)."""
        out = torch.cat([self._visual[:, 1:], self._visual[:, -1:]], dim=1)
        return out.tolist()

    @property
    def image_samples(self) -> torch.Tensor:
        """Bool [b]: samples with visual tokens (a text-only sample in a mixed batch has none)."""
        return self._visual.sum(-1) > 0

    @property
    def budget(self) -> float:
        """Mean over layers of visual tokens entering each layer, mean over the samples with visual tokens
        (0.0 when none has any)."""
        rows = self._visual[self.image_samples]
        return float(rows.float().mean()) if len(rows) else 0.0

    @property
    def budget_output(self) -> float:
        """Like :attr:`budget`, counted on layer outputs."""
        out = torch.cat([self._visual[:, 1:], self._visual[:, -1:]], dim=1)[self.image_samples]
        return float(out.float().mean()) if len(out) else 0.0

    @property
    def budget_per_sample(self) -> list[float]:
        return self._visual.float().mean(-1).tolist()

    def positions(self, layer: int, sample: int = 0) -> torch.Tensor:
        """Original prompt positions of the (non-merged) tokens entering decoder ``layer``."""
        seq = self._seqs[layer]
        origin = seq.origin[sample]
        return origin[seq.valid[sample] & (origin >= 0)].cpu()

    def kept_mask(self, layer: int, sample: int = 0) -> torch.Tensor:
        """Bool [prompt length]: which prompt positions enter decoder ``layer``."""
        mask = torch.zeros(self.prompt_length, dtype=torch.bool, device="cpu")
        mask[self.positions(layer, sample)] = True
        return mask

    # -- compute and memory --------------------------------------------------------------------------
    @cached_property
    def _flops(self) -> tuple[float, float, float]:
        from svlm import flops

        sparse = dense = scoring = 0.0
        for b in range(self.batch_size):
            score = (
                sum(
                    flops.rows_scoring_flops(
                        d.scoring_rows / self.batch_size,
                        d.scoring_keys,
                        self.info.num_heads,
                        self.info.head_dim,
                    )
                    for d in self.decisions
                )
                + self.overhead_flops / self.batch_size
            )
            per_layer = self._tokens[b].tolist()
            n = int(self._prompt_tokens[b])
            vision = self._vision[b]
            sparse += flops.prefill_flops(self.config, per_layer, scoring_flops=score, **vision).total
            dense += flops.prefill_flops(self.config, [n] * self.info.num_layers, **vision).total
            scoring += score
        return sparse, dense, scoring

    @property
    def prefill_flops(self) -> float:
        """Analytic prefill FLOPs of the pruned run, summed over the batch (incl. vision and scoring)."""
        return self._flops[0]

    @property
    def dense_prefill_flops(self) -> float:
        return self._flops[1]

    @property
    def scoring_flops(self) -> float:
        return self._flops[2]

    @property
    def decode_flops(self) -> float:
        """Analytic FLOPs of the decoding steps of the last ``generate`` (each step attends to the pruned
        per-layer caches), summed over the batch."""
        from svlm import flops

        if not self.decode_steps:
            return 0.0
        return float(
            sum(
                flops.decode_flops(self.config, self._tokens[b].tolist(), self.decode_steps).total
                for b in range(self.batch_size)
            )
        )

    @property
    def dense_decode_flops(self) -> float:
        from svlm import flops

        if not self.decode_steps:
            return 0.0
        return float(
            sum(
                flops.decode_flops(
                    self.config, [int(self._prompt_tokens[b])] * self.info.num_layers, self.decode_steps
                ).total
                for b in range(self.batch_size)
            )
        )

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of the prompt's KV cache as allocated (all slots of each layer, both K and V)."""
        per_token = 2 * self.info.num_kv_heads * self.info.head_dim * torch.finfo(self._dtype).bits // 8
        return int(sum(self._slots) * per_token * self.batch_size)

    @property
    def dense_kv_cache_bytes(self) -> int:
        per_token = 2 * self.info.num_kv_heads * self.info.head_dim * torch.finfo(self._dtype).bits // 8
        return int(self.prompt_length * self.info.num_layers * per_token * self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "budget": self.budget,
            "budget_output": self.budget_output,
            "visual_tokens": self.visual_tokens,
            "tokens": self.tokens,
            "prefill_flops": self.prefill_flops,
            "dense_prefill_flops": self.dense_prefill_flops,
            "scoring_flops": self.scoring_flops,
            "scoring_seconds": self.scoring_seconds,
            "kv_cache_bytes": self.kv_cache_bytes,
            "dense_kv_cache_bytes": self.dense_kv_cache_bytes,
            "decode_steps": self.decode_steps,
            "decode_flops": self.decode_flops,
            "dense_decode_flops": self.dense_decode_flops,
            "decisions": [d.to_dict() for d in self.decisions],
        }

    def __repr__(self) -> str:
        return (
            f"Report(strategy={self.strategy}, batch={self.batch_size}, budget={self.budget:.1f}, "
            f"budget_output={self.budget_output:.1f})"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value

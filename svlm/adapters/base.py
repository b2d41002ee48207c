"""What the engine needs to know about one model family, and nothing more.

An adapter never copies modeling code: it points at transformers' own modules (the decoder layers, the
attention projections) and answers family-specific questions (which input ids are visual, how the visual
tokens of one image are laid out on a grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """Shape facts of the language model that strategies and FLOPs accounting use."""

    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Adapter:
    """Base adapter for ``*ForConditionalGeneration`` models with ``model.model.language_model.layers``."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config
        self.text_config = model.config.get_text_config(decoder=True)

    # -- structure -------------------------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def info(self) -> ModelInfo:
        tc = self.text_config
        num_heads = tc.num_attention_heads
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // num_heads
        return ModelInfo(
            family=self.family,
            num_layers=tc.num_hidden_layers,
            hidden_size=tc.hidden_size,
            num_heads=num_heads,
            num_kv_heads=getattr(tc, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            intermediate_size=tc.intermediate_size,
            vocab_size=tc.vocab_size,
        )

    @property
    def attn_implementation(self) -> str:
        return self.text_config._attn_implementation or "eager"

    # -- tokens ----------------------------------------------------------------------------------
    def visual_token_ids(self) -> list[int]:
        ids = [self.config.image_token_id]
        video = getattr(self.config, "video_token_id", None)
        if video is not None:
            ids.append(video)
        return ids

    def visual_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask [batch, seq] of positions that hold visual tokens."""
        ids = torch.tensor(self.visual_token_ids(), device=input_ids.device)
        return torch.isin(input_ids, ids)

    def expected_visual_tokens(self, inputs: dict[str, Any]) -> int | None:
        """Visual tokens the images of ``inputs`` produce (None when the family cannot tell cheaply)."""
        return None

    def apply_rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding as the family's attention applies it (x: [b, heads, n, d]; cos/sin: [b, n, d])."""
        return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)

    def rotary_tables(self, like: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables (cos, sin) [b, n, head_dim] of the language model for 1-D ``positions`` [b, n], as
        its own rotary embedding computes them (``like`` gives dtype and device); used to renumber positions
        after pruning (``Strategy.renumber_positions``)."""
        return self.language_model.rotary_emb(like, positions.to(like.device))

    # -- vision encoder (for strategies that read its attention) ------------------------------------
    def vision_attention(self, layer: int) -> nn.Module:
        """The attention module of vision-encoder layer ``layer`` (negative counts from the end)."""
        raise NotImplementedError(f"{type(self).__name__} exposes no vision-encoder attention.")

    def cls_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Head-mean attention [images, visual tokens per image] of the encoder's CLS token to the patch
        tokens that become visual tokens, from the layer's captured ``q_proj``/``k_proj`` outputs."""
        raise NotImplementedError(f"{self.family} has no CLS token in its vision encoder.")

    # -- geometry (for overlays and spatial strategies) -------------------------------------------
    def visual_grids(self, inputs: dict[str, Any], sample: int) -> list[tuple[int, int]]:
        """(rows, cols) of each image's visual tokens of one sample, in sequence order."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its visual-token grid.")

    def visual_grids_batch(
        self, inputs: dict[str, Any], counts: list[int]
    ) -> list[list[tuple[int, int]] | None]:
        """:meth:`visual_grids` of every sample (None where there is none), given each sample's number of
        visual tokens ``counts`` already on the host: families override it to avoid a device round trip
        per sample."""
        grids: list[list[tuple[int, int]] | None] = []
        for sample in range(len(counts)):
            try:
                grids.append(self.visual_grids(inputs, sample))
            except (NotImplementedError, ValueError, KeyError):
                grids.append(None)
        return grids

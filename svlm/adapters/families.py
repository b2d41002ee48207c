"""Adapters for the supported model families."""

from __future__ import annotations

import math
from typing import Any

import torch

from svlm.adapters.base import Adapter


class LlavaAdapter(Adapter):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``): one square grid of patches per image."""

    family = "llava"
    model_types = ("llava",)

    def expected_visual_tokens(self, inputs: dict[str, Any]) -> int | None:
        vc = self.config.vision_config
        per_image = (vc.image_size // vc.patch_size) ** 2
        if self.config.vision_feature_select_strategy == "full":
            per_image += 1
        return int(inputs["pixel_values"].shape[0]) * per_image

    def vision_attention(self, layer: int) -> torch.nn.Module:
        tower = self.model.model.vision_tower
        tower = getattr(tower, "vision_model", tower)  # CLIPVisionModel wraps a CLIPVisionTransformer or not
        return tower.encoder.layers[layer].self_attn

    def feature_layer(self) -> int:
        """Index (from 0) of the encoder layer whose output LLaVA feeds to the projector."""
        feature = self.config.vision_feature_layer
        if not isinstance(feature, int):
            raise NotImplementedError("CLS attention with several vision feature layers is not supported.")
        num = self.config.vision_config.num_hidden_layers
        return feature - 1 if feature > 0 else num + feature

    def cls_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        attn = self.vision_attention(layer)
        heads, dim = attn.num_heads, attn.head_dim
        images, tokens, _ = k.shape
        q_cls = q[:, :1].view(images, 1, heads, dim).transpose(1, 2).float()
        keys = k.view(images, tokens, heads, dim).transpose(1, 2).float()
        probs = torch.softmax(torch.matmul(q_cls, keys.transpose(-1, -2)) * attn.scale, dim=-1)
        probs = probs.mean(1)[:, 0]  # [images, tokens]
        if self.config.vision_feature_select_strategy == "default":
            probs = probs[:, 1:]
        return probs

    def visual_grids(self, inputs: dict[str, Any], sample: int) -> list[tuple[int, int]]:
        n = int(self.visual_mask(inputs["input_ids"][sample : sample + 1]).sum())
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"Expected a square grid of visual tokens, got {n} tokens.")
        return [(side, side)]

    def visual_grids_batch(
        self, inputs: dict[str, Any], counts: list[int]
    ) -> list[list[tuple[int, int]] | None]:
        return [[(math.isqrt(n), math.isqrt(n))] if math.isqrt(n) ** 2 == n else None for n in counts]


class LlavaNextAdapter(Adapter):
    """LLaVA-NeXT: base image plus anyres crops with newline tokens; grid geometry is not a plain square."""

    family = "llava_next"
    model_types = ("llava_next",)

    def visual_grids(self, inputs: dict[str, Any], sample: int) -> list[tuple[int, int]]:
        raise NotImplementedError(
            "LLaVA-NeXT packs a base view and anyres crops with newline tokens; it has no single token grid."
        )


class Qwen2VLAdapter(Adapter):
    """Qwen2-VL: dynamic resolution, 2x2 patch merge, M-RoPE positions (handled by transformers)."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)

    def expected_visual_tokens(self, inputs: dict[str, Any]) -> int | None:
        grid = inputs.get("image_grid_thw")
        if grid is None or inputs.get("video_grid_thw") is not None:
            return None
        merge = self.config.vision_config.spatial_merge_size
        return int(grid.prod(-1).sum()) // (merge * merge)

    def rotary_tables(self, like: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(
            f"{self.family} uses 3-D M-RoPE positions (time, height, width), for which renumbering the kept "
            "tokens 0..k-1 is not defined; keep original positions (e.g. sparsevlm positions='original')."
        )

    def visual_grids(self, inputs: dict[str, Any], sample: int) -> list[tuple[int, int]]:
        grid_thw = inputs.get("image_grid_thw")
        if grid_thw is None:
            raise ValueError("image_grid_thw is needed to lay out Qwen2-VL visual tokens.")
        merge = self.config.vision_config.spatial_merge_size
        counts = self.visual_mask(inputs["input_ids"]).sum(-1).tolist()
        # images are consumed in order across the batch
        start = sum(_images_for(counts[:sample], grid_thw, merge))
        grids, seen, i = [], 0, start
        while seen < counts[sample] and i < len(grid_thw):
            t, h, w = (int(v) for v in grid_thw[i])
            grids.append((h // merge, w // merge))
            seen += t * (h // merge) * (w // merge)
            i += 1
        return grids

    def visual_grids_batch(
        self, inputs: dict[str, Any], counts: list[int]
    ) -> list[list[tuple[int, int]] | None]:
        grid_thw = inputs.get("image_grid_thw")
        if grid_thw is None:
            raise ValueError("image_grid_thw is needed to lay out Qwen2-VL visual tokens.")
        merge = self.config.vision_config.spatial_merge_size
        rows = grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else list(grid_thw)  # one sync
        grids: list[list[tuple[int, int]] | None] = []
        i = 0
        for count in counts:  # images are consumed in order across the batch
            sample, seen = [], 0
            while seen < count and i < len(rows):
                t, h, w = (int(v) for v in rows[i])
                sample.append((h // merge, w // merge))
                seen += t * (h // merge) * (w // merge)
                i += 1
            grids.append(sample)
        return grids


def _images_for(counts: list[int], grid_thw: torch.Tensor, merge: int) -> list[int]:
    """Number of images used by each earlier sample (matching token counts to grid sizes in order)."""
    used, i = [], 0
    for count in counts:
        seen, n = 0, 0
        while seen < count and i < len(grid_thw):
            t, h, w = (int(v) for v in grid_thw[i])
            seen += t * (h // merge) * (w // merge)
            i += 1
            n += 1
        used.append(n)
    return used


class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: like Qwen2-VL on the language side (windowed attention lives in the vision tower)."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)

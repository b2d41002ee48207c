"""Processors for the tiny test models, built from transformers' own classes without torchvision.

LLaVA and LLaVA-NeXT use the real ``LlavaProcessor`` / ``LlavaNextProcessor`` with the PIL image processors.
transformers' Qwen2-VL / Qwen2.5-VL processors insist on a video processor, which needs torchvision; the
image-only subclasses below drop that argument and keep everything else (placeholder expansion,
``image_grid_thw``, ``mm_token_type_ids``), so their output is what the real processors return for images.
"""

from __future__ import annotations

from transformers import (
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerBase,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class _ImageOnlyQwenMixin:
    """``__init__`` without ``video_processor``: ProcessorMixin derives its sub-processors from it."""

    def __init__(
        self,
        image_processor: BaseImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        **kwargs,
    ) -> None:
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class ImageOnlyQwen2VLProcessor(_ImageOnlyQwenMixin, Qwen2VLProcessor):
    """Qwen2-VL processor for images only (no torchvision needed).

    ``ImageOnlyQwen2VLProcessor.from_pretrained(path)`` also loads a real checkpoint's image processor,
    tokenizer and chat template. ``AutoProcessor`` does not know this class: a saved copy loads through it
    as a bare tokenizer, so load saved folders with this class.
    """


class ImageOnlyQwen2_5_VLProcessor(_ImageOnlyQwenMixin, Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images only (no torchvision needed); see ``ImageOnlyQwen2VLProcessor``."""


def llava_processor(tokenizer: PreTrainedTokenizerBase, image_size: int, patch_size: int) -> LlavaProcessor:
    """LLaVA-1.5 processor: resize + centre-crop to ``image_size``; one token per patch (CLS dropped)."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )


def llava_next_processor(
    tokenizer: PreTrainedTokenizerBase, image_size: int, patch_size: int, grid_pinpoints: list[list[int]]
) -> LlavaNextProcessor:
    """LLaVA-NeXT (AnyRes) processor: a base view of ``image_size`` plus crops tiling the best pinpoint."""
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=grid_pinpoints,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )


def qwen_processor(
    family: str, tokenizer: PreTrainedTokenizerBase, image_size: int, patch_size: int, merge_size: int
) -> Qwen2VLProcessor:
    """Qwen2-VL / Qwen2.5-VL processor that resizes every image to about ``image_size**2`` pixels.

    min_pixels = max_pixels pins the pixel count, so a square image gives exactly
    ``(image_size / (patch_size * merge_size))**2`` visual tokens; other aspect ratios give about as many.
    """
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=2,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    cls = ImageOnlyQwen2VLProcessor if family == "qwen2_vl" else ImageOnlyQwen2_5_VLProcessor
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template)

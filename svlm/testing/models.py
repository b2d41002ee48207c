"""Tiny randomly initialised VLMs of every supported family, built offline from configs.

Language models are small (4 layers, width 64 by default) but the visual token counts are realistic, so
pruning schedules, budgets and position bookkeeping are exercised at the sizes real checkpoints use:

- ``llava``: CLIP tower at 336 px / patch 14 -> 24 x 24 = 576 visual tokens (CLS dropped), Llama decoder.
- ``llava_next``: AnyRes with a 112 px base view (8 x 8 = 64 tokens) and pinpoints that are 1x2, 2x1, 2x2,
  1x3 and 3x1 multiples of it. A square image of at least 224 px tiles 2 x 2 crops: 16 x 16 grid tokens + 16
  row-newline tokens + 64 base tokens = 336; other aspect ratios give other counts (unpadding), as in
  LLaVA-NeXT. Mistral decoder, ``[INST]`` template (llava-v1.6-mistral).
- ``qwen2_vl`` / ``qwen2_5_vl``: every image is resized to about 672 x 672 px (min_pixels = max_pixels),
  patch 14 -> 48 x 48 patches -> 2 x 2 merge -> 576 visual tokens for a square image; M-RoPE sections scaled
  to the head dim. Qwen2.5-VL uses window attention in its first vision block and full attention in its last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import (
    BatchFeature,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLVisionConfig,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.processing_utils import ProcessorMixin

from svlm.testing.images import random_image
from svlm.testing.processor import llava_next_processor, llava_processor, qwen_processor
from svlm.testing.tokenizer import tiny_tokenizer

FAMILIES: tuple[str, ...] = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")

PATCH_SIZE = 14
MERGE_SIZE = 2  # Qwen spatial merge (2 x 2 patches -> 1 token)
DEFAULT_IMAGE_SIZE = {"llava": 336, "llava_next": 112, "qwen2_vl": 672, "qwen2_5_vl": 672}
# Size (width, height) of the image whose token count is reported as ``TinyVLM.num_visual_tokens``.
REFERENCE_IMAGE_SIZE = (336, 336)
# Vision towers stay tiny: their cost grows with the number of patches, which is kept realistic.
VISION_HIDDEN = 32
VISION_LAYERS = 2
VISION_HEADS = 2

_MODEL_CLASSES = {
    "llava": LlavaForConditionalGeneration,
    "llava_next": LlavaNextForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}


@dataclass
class TinyVLM:
    """A tiny model with its processor; ``inputs`` builds a batch the way evaluation code does."""

    model: PreTrainedModel
    processor: ProcessorMixin
    family: str
    num_visual_tokens: int
    """Visual tokens for a square ``REFERENCE_IMAGE_SIZE`` image (the ``random_image`` default)."""
    image_size: int
    """Vision input side in pixels: CLIP input (llava), AnyRes base view (llava_next), resize side (qwen)."""

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer

    @property
    def image_token_id(self) -> int:
        return self.processor.image_token_id

    def prompt(self, question: str) -> str:
        """The chat-formatted prompt for one image followed by ``question``."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def inputs(
        self, images: Sequence[Image.Image] | Image.Image, questions: Sequence[str] | str
    ) -> BatchFeature:
        """Left-padded batch (one image per question) on the model's device, pixels in the model's dtype."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        questions = [questions] if isinstance(questions, str) else list(questions)
        if len(images) != len(questions):
            raise ValueError(
                f"Got {len(images)} images but {len(questions)} questions; pass one image per question"
            )
        batch = self.processor(
            images=images, text=[self.prompt(q) for q in questions], padding=True, return_tensors="pt"
        )
        return batch.to(self.model.device).to(self.model.dtype)


def tiny_vlm(
    family: str,
    num_layers: int = 4,
    hidden_size: int = 64,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    image_size: int | None = None,
    initializer_range: float = 0.2,
    init_device: str | torch.device | None = None,
) -> TinyVLM:
    """Build a tiny random ``family`` model (eval mode) with an offline tokenizer and processor.

    ``num_key_value_heads`` < ``num_attention_heads`` gives grouped-query attention; ``intermediate_size``
    defaults to 4 x ``hidden_size``. Weights are drawn in float32 from ``seed`` (without touching the global
    RNG), then the parameters are cast to ``dtype`` as loading a checkpoint would (RoPE buffers stay
    float32), so models that differ only in dtype hold the same weights up to rounding.
    ``initializer_range`` is 10x transformers' 0.02 so attention is peaked enough for token scores
    to differ and for greedy decoding to be free of near-ties. ``init_device`` (e.g. ``"cuda"``) builds
    the weights directly on that device: a 7B-shaped random init takes minutes on a CPU, seconds on a GPU;
    the draws come from that device's generator, so they differ from a CPU-built model with the same seed.
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; valid families: {', '.join(FAMILIES)}")
    num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
    _check_sizes(family, num_layers, hidden_size, num_attention_heads, num_key_value_heads)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype must be a floating torch.dtype (e.g. torch.float32, torch.bfloat16), got {dtype!r}"
        )
    image_size = DEFAULT_IMAGE_SIZE[family] if image_size is None else image_size
    step = PATCH_SIZE * (MERGE_SIZE if family.startswith("qwen") else 1)
    if image_size <= 0 or image_size % step:
        raise ValueError(f"image_size for {family!r} must be a positive multiple of {step}, got {image_size}")

    tokenizer = tiny_tokenizer(family)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": 4096,
        "initializer_range": initializer_range,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    builder = _llava_config if family.startswith("llava") else _qwen_config
    config, processor = builder(family, tokenizer, text, image_size)
    init = torch.device("cpu" if init_device is None else init_device)
    with torch.random.fork_rng(devices=[] if init.type == "cpu" else [init], device_type=init.type), init:
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[family]._from_config(
            config, attn_implementation=attn_implementation, dtype=torch.float32
        )
    _cast_parameters(model, dtype)
    model.eval()
    _set_generation_defaults(model, tokenizer)
    return TinyVLM(
        model=model,
        processor=processor,
        family=family,
        num_visual_tokens=_count_visual_tokens(processor),
        image_size=image_size,
    )


def _check_sizes(family: str, layers: int, hidden: int, heads: int, kv_heads: int) -> None:
    if layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {layers}")
    if heads < 1 or hidden % heads:
        raise ValueError(f"hidden_size ({hidden}) must be a multiple of num_attention_heads ({heads})")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(
            f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
        )
    head_dim = hidden // heads
    min_head_dim = 6 if family.startswith("qwen") else 2  # M-RoPE needs a non-empty t/h/w section each
    if head_dim % 2 or head_dim < min_head_dim:
        raise ValueError(
            f"head dim hidden_size/num_attention_heads = {head_dim} must be even and >= {min_head_dim} "
            f"for {family!r}"
        )


def _llava_config(
    family: str, tokenizer: PreTrainedTokenizerBase, text: dict, image_size: int
) -> tuple[LlavaConfig | LlavaNextConfig, ProcessorMixin]:
    """LLaVA-1.5 (Llama) or LLaVA-NeXT (Mistral, AnyRes); both drop CLIP's CLS token ("default")."""
    common = {"vision_feature_layer": -2, "vision_feature_select_strategy": "default"}
    common["image_seq_length"] = (image_size // PATCH_SIZE) ** 2
    if family == "llava":
        processor = llava_processor(tokenizer, image_size, PATCH_SIZE)
        config = LlavaConfig(
            vision_config=_clip_config(image_size),
            text_config=LlamaConfig(**text),
            image_token_index=processor.image_token_id,
            **common,
        )
        return config, processor
    pinpoints = [[image_size * a, image_size * b] for a, b in ((1, 2), (2, 1), (2, 2), (1, 3), (3, 1))]
    processor = llava_next_processor(tokenizer, image_size, PATCH_SIZE, pinpoints)
    config = LlavaNextConfig(
        vision_config=_clip_config(image_size),
        text_config=MistralConfig(**text, sliding_window=None),
        image_token_index=processor.image_token_id,
        image_grid_pinpoints=pinpoints,
        **common,
    )
    return config, processor


def _qwen_config(
    family: str, tokenizer: PreTrainedTokenizerBase, text: dict, image_size: int
) -> tuple[Qwen2VLConfig | Qwen2_5_VLConfig, ProcessorMixin]:
    """Qwen2-VL or Qwen2.5-VL: M-RoPE text model, patch-merging vision tower (windowed for 2.5)."""
    processor = qwen_processor(family, tokenizer, image_size, PATCH_SIZE, MERGE_SIZE)
    half_head_dim = text["hidden_size"] // text["num_attention_heads"] // 2
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": _mrope_section(half_head_dim)}
    text = {**text, "rope_parameters": rope, "bos_token_id": tokenizer.pad_token_id}
    vision = {
        "depth": VISION_LAYERS,
        "num_heads": VISION_HEADS,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": 2,
    }
    special = {
        "image_token_id": processor.image_token_id,
        "video_token_id": processor.video_token_id,
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    if family == "qwen2_vl":
        vision_config = Qwen2VLVisionConfig(
            **vision, embed_dim=VISION_HIDDEN, hidden_size=text["hidden_size"], mlp_ratio=2
        )
        config = Qwen2VLConfig(text_config=Qwen2VLTextConfig(**text), vision_config=vision_config, **special)
        return config, processor
    vision_config = Qwen2_5_VLVisionConfig(
        **vision,
        hidden_size=VISION_HIDDEN,
        intermediate_size=2 * VISION_HIDDEN,
        out_hidden_size=text["hidden_size"],
        window_size=112,  # 8 x 8 patches: windowed attention in every block but the last
        fullatt_block_indexes=[VISION_LAYERS - 1],
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=Qwen2_5_VLTextConfig(**text), vision_config=vision_config, **special
    )
    return config, processor


def _clip_config(image_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=2 * VISION_HIDDEN,
        projection_dim=VISION_HIDDEN,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=VISION_HEADS,
        image_size=image_size,
        patch_size=PATCH_SIZE,
    )


def _mrope_section(half_head_dim: int) -> list[int]:
    """Split the rotary half-dim into temporal/height/width like Qwen2-VL's [16, 24, 24] for head dim 128."""
    temporal = half_head_dim // 4
    height = (half_head_dim - temporal) // 2
    return [temporal, height, half_head_dim - temporal - height]


def _cast_parameters(model: PreTrainedModel, dtype: torch.dtype) -> None:
    """Cast weights only, like ``from_pretrained(dtype=...)``: RoPE frequency buffers stay float32."""
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.to(dtype)
    for config in (model.config, *(getattr(model.config, k, None) for k in ("text_config", "vision_config"))):
        if config is not None:
            config.dtype = dtype


def _set_generation_defaults(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Greedy decoding that stops at the chat end-of-turn token(s), as the real generation configs do."""
    config = model.generation_config
    config.do_sample = False
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    if tokenizer.eos_token == "<|im_end|>":  # Qwen instruct: end of turn or end of text
        config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    else:
        config.eos_token_id = tokenizer.eos_token_id


def _count_visual_tokens(processor: ProcessorMixin) -> int:
    """Placeholders the processor emits for the reference image: ground truth for every family."""
    batch = processor(
        images=[random_image(0, REFERENCE_IMAGE_SIZE)], text=[processor.image_token], return_tensors="pt"
    )
    return int((batch["input_ids"] == processor.image_token_id).sum())

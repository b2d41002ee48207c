"""The model of the recipe: a LLaVA-1.5-architecture VLM, freshly initialised and seeded."""

from __future__ import annotations

import math

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)
from transformers.processing_utils import ProcessorMixin

from svlm.zoo.recipe.config import PATCH_SIZE, RecipeConfig, check_architecture


def build_model(cfg: RecipeConfig) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A freshly initialised model (seeded) and its processor (tokenizer + CLIP image processor)."""
    from svlm.testing.processor import llava_processor
    from svlm.testing.tokenizer import tiny_tokenizer

    check_architecture(cfg)
    tokenizer = tiny_tokenizer("llava")
    processor = llava_processor(tokenizer, cfg.image_size, PATCH_SIZE)
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=4 * cfg.vision_hidden_size,
        projection_dim=cfg.vision_hidden_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=PATCH_SIZE,
        initializer_range=cfg.vision_initializer_range,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=2048,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=processor.image_token_id,
        image_seq_length=cfg.num_visual_tokens,
        # the last vision layer's output (LLaVA-1.5 takes the penultimate of a 24-layer CLIP; a tiny tower
        # trained from scratch has no layer to spare)
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
        std = cfg.initializer_range * cfg.residual_init_scale / math.sqrt(2 * cfg.num_layers)
        for layer in model.model.language_model.layers:
            torch.nn.init.normal_(layer.self_attn.o_proj.weight, std=std)
            torch.nn.init.normal_(layer.mlp.down_proj.weight, std=std)
    gen = model.generation_config
    gen.do_sample = False
    gen.max_new_tokens = 8
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    return model, processor

"""Offline tokenizers for the tiny test models: byte-level BPE trained on a built-in corpus.

Each family gets its real special tokens and a chat template that renders prompts the way the real checkpoints
do, so prompt structure (system/prefix tokens, image placeholder, question, generation prompt) matches.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from svlm.testing._corpus import corpus

VOCAB_SIZE = 1280

# LLaVA-1.5 (llava-hf): "USER: <image>\n{question} ASSISTANT:"; the tokenizer adds <s> in front.
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | list -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{ texts | join(' ') + ' ' }}"
    "{%- else -%}{{ message['role'].upper() + ': ' }}{{ '<image>\n' * n_images }}"
    "{%- for text in texts -%}{{ text + ' ' }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# LLaVA-NeXT (llava-v1.6-mistral-hf): "[INST] <image>\n{question} [/INST]".
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | list -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{ '<<SYS>>\n' + texts | join(' ') + '\n<</SYS>>\n\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '[INST] ' + '<image>\n' * n_images + texts | join(' ') + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + texts | join(' ') + '</s>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# Qwen2-VL / Qwen2.5-VL Instruct: ChatML with the default system prompt and a vision span per image.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'text' -%}{{ content['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

_LLAMA_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_STYLE = {"llava": "llama", "llava_next": "llama", "qwen2_vl": "qwen", "qwen2_5_vl": "qwen"}
_TEMPLATES = {
    "llava": LLAVA_CHAT_TEMPLATE,
    "llava_next": LLAVA_NEXT_CHAT_TEMPLATE,
    "qwen2_vl": QWEN_CHAT_TEMPLATE,
    "qwen2_5_vl": QWEN_CHAT_TEMPLATE,
}


@functools.cache
def _trained_tokenizer_json(style: str) -> str:
    """Train the BPE once per style; the serialized form is cached so every caller gets a fresh copy."""
    specials = list(_LLAMA_SPECIALS if style == "llama" else _QWEN_SPECIALS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    if style == "llama":
        # Llama tokenizers prepend <s>; the chat template does not contain it.
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A fresh tokenizer for ``family`` with its special tokens, chat template and left padding."""
    if family not in _STYLE:
        raise ValueError(f"Unknown family {family!r}; valid families: {sorted(_STYLE)}")
    style = _STYLE[family]
    backend = Tokenizer.from_str(_trained_tokenizer_json(style))
    if style == "llama":
        special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    else:
        special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side="left",
        chat_template=_TEMPLATES[family],
        model_max_length=8192,
        **special,
    )

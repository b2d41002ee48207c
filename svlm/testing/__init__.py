"""Tiny offline vision-language models, tokenizers, processors and images for tests and demos.

Nothing here downloads anything: tokenizers are trained on a built-in corpus, weights are random.
"""

from svlm.testing.images import random_image
from svlm.testing.models import FAMILIES, REFERENCE_IMAGE_SIZE, TinyVLM, tiny_vlm
from svlm.testing.oracle import assert_matches_oracle, oracle_logits
from svlm.testing.processor import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen2VLProcessor
from svlm.testing.tokenizer import tiny_tokenizer

__all__ = [
    "FAMILIES",
    "REFERENCE_IMAGE_SIZE",
    "ImageOnlyQwen2VLProcessor",
    "ImageOnlyQwen2_5_VLProcessor",
    "TinyVLM",
    "assert_matches_oracle",
    "oracle_logits",
    "random_image",
    "tiny_tokenizer",
    "tiny_vlm",
]

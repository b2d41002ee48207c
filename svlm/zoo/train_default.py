"""Recipe of svlm's zoo models (entry point): ``python -m svlm.zoo.train_default --help``.

The recipe lives in `svlm.zoo.recipe`, one module per stage and concern (options, model, questions, packing,
labels, batches, losses, the vision / alignment / VQA stages, evaluation, command line); this module keeps
the command and every public name of the recipe where they were.
"""

from __future__ import annotations

from svlm.zoo.recipe.align import (
    ALIGN_BACKGROUND_WORD,
    ALIGN_COUNT_WORDS,
    ALIGN_SCALE,
    ALIGN_WORD_GROUPS,
    align_projector,
    word_token_ids,
)
from svlm.zoo.recipe.batches import kept_visual_tokens, train_batch, training_sample
from svlm.zoo.recipe.cli import main, parse_args
from svlm.zoo.recipe.config import (
    PATCH_SIZE,
    SCENE_COUNT_CLASSES,
    SCENES,
    SMOKE,
    VISION_COUNT_CLASSES,
    Phase,
    RecipeConfig,
    check_architecture,
    check_config,
    parse_curriculum,
    parse_layers,
    parse_question_types,
    parse_type_weights,
    phase_at,
)
from svlm.zoo.recipe.evaluate import evaluate
from svlm.zoo.recipe.labels import (
    cell_labels,
    centre_tokens,
    colour_count_labels,
    digit_labels,
    evidence_tokens,
    object_coverage,
    objects_per_colour,
    patch_labels,
    scene_labels,
)
from svlm.zoo.recipe.losses import evidence_attention_loss, packed_hidden_states, packed_loss
from svlm.zoo.recipe.model import build_model
from svlm.zoo.recipe.packing import PackedBatch, pack
from svlm.zoo.recipe.questions import (
    derived_questions,
    evidence_objects,
    keyword_end,
    prompt_text,
    question_type,
)
from svlm.zoo.recipe.train import lr_at, save, train
from svlm.zoo.recipe.vision import pretrain_vision

__all__ = [
    "ALIGN_BACKGROUND_WORD",
    "ALIGN_COUNT_WORDS",
    "ALIGN_SCALE",
    "ALIGN_WORD_GROUPS",
    "PATCH_SIZE",
    "PackedBatch",
    "Phase",
    "RecipeConfig",
    "SCENES",
    "SCENE_COUNT_CLASSES",
    "SMOKE",
    "VISION_COUNT_CLASSES",
    "align_projector",
    "build_model",
    "cell_labels",
    "centre_tokens",
    "check_architecture",
    "check_config",
    "colour_count_labels",
    "digit_labels",
    "derived_questions",
    "evaluate",
    "evidence_attention_loss",
    "evidence_objects",
    "evidence_tokens",
    "kept_visual_tokens",
    "keyword_end",
    "lr_at",
    "main",
    "object_coverage",
    "objects_per_colour",
    "pack",
    "packed_hidden_states",
    "packed_loss",
    "parse_args",
    "parse_curriculum",
    "parse_layers",
    "parse_question_types",
    "parse_type_weights",
    "patch_labels",
    "phase_at",
    "pretrain_vision",
    "prompt_text",
    "question_type",
    "save",
    "scene_labels",
    "train",
    "train_batch",
    "training_sample",
    "word_token_ids",
]

if __name__ == "__main__":
    main()

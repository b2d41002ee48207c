"""Recipe of svlm's zoo models: a small LLaVA-1.5-architecture VLM trained on svlm-shapes, on CPU.

    python -m svlm.zoo.train_default --output-dir svlm/zoo/svlm-shapes-llava          # svlm-shapes-llava
    python -m svlm.zoo.train_default --output-dir /tmp/smoke --smoke                     # a few seconds
    python -m svlm.zoo.train_default --benchmark scenes --output-dir /tmp/scenes-1   # svlm-scenes, stage 1
    python -m svlm.zoo.recipe.replay svlm/zoo/svlm-scenes-llava/training_log.json --output-dir /tmp/rebuilt
                                                            # the default, svlm-scenes-llava: every stage

The model is ``LlavaForConditionalGeneration``: a CLIP vision tower (224 px, 14-px patches: 256 visual
tokens), the 2-layer MLP projector and an 8-layer Llama decoder, trained from scratch on the shapes *train*
split in two stages, like LLaVA (whose tower comes pretrained from CLIP):

1. Vision pretraining: the tower learns to tell, at each patch, the colour and shape of the object covering
   it and the 3x3 grid cell the patch lies in, and at each object patch how many objects of its colour the
   image holds (linear heads on its output, discarded afterwards). Shape labels sit on each object's centre
   patch first, then on all its patches.
1b. Projector alignment (``--align-steps``), standing in for LLaVA's projector pretraining on captions: the
   projector alone learns to point each visual token towards the input embedding of its object's colour word
   and (at the object's centre) shape word; with tied embeddings (``--tie-word-embeddings``) a token that
   attention copies to the answer position then reads out as its word. Colour questions become learnable in
   a few hundred steps instead of a lottery of thousands.
2. Visual question answering: projector and decoder learn to answer the benchmark's questions (the tower is
   frozen by default). All five types are mixed from the start; a window of steps (``--lead-start``,
   ``--lead-steps``) then asks count questions only (the mix alone never learned to count), and afterwards
   count questions come up twice as often as the others. Half the heads of a few decoder layers are also
   told where to look (``--attention-weight``): the loss adds -log of the attention mass that the answer
   position puts on the patches of the objects the question is about (known from the scene annotation).
   For most steps (``--train-visual-until``) each image keeps only ``--train-visual-tokens`` visual tokens:
   those its objects cover and random background, at their original positions, as drop-only pruning would
   (exact: the same values as hiding the others as keys, tested); the last steps see all 256.
   On svlm-scenes two more terms make the answer readable where it is copied from: attribute keeping
   (``--attribute-weight``, `svlm.zoo.recipe.attributes`: linear heads must still read each visual token's
   colour, shape, size and digit at the supervised layers) and the readout loss (``--readout-weight``: the
   supervised heads' output, through the LM head, must name the asked attribute); the projector stays as
   stage 1b aligned it (``--projector-lr-scale 0``). Relation questions ("Where is the red circle relative
   to the blue star?") compare where two objects lie, which needs three more pieces: stage 1 names each
   patch's row and column band (``--position-loss-weight``) and attribute keeping keeps them
   (``--attribute-groups ...,row,column``); the two objects are looked at one per supervised layer
   (``--split-types relation``: the first at layer 5, the second at layer 8, so no head averages them); and
   linear heads must read each looked-at object's bands from the heads' output
   (``--position-readout-weight``, as classes or as coordinates: ``--position-readout-groups``).

Everything is seeded and the data are a pure function of the seed and the step, so a run is reproducible up
to floating-point non-associativity of the kernels.

Why it trains in minutes on two cores:

- Each image is asked several questions at once. The sequence holds the image prefix once, followed by one
  branch per question (question + instruction + answer); a 4-D attention mask lets each branch see the
  prefix and itself only, and position ids restart after the prefix, so every branch is computed exactly as
  the single-question evaluation prompt would be (``tests/test_zoo.py`` checks this against a plain forward).
  The expensive part, 256 visual tokens through the decoder, is paid once for all questions. The attention
  is computed from that layout (``svlm.zoo.packed_attention``), not from a dense [t, t] mask, which SDPA on
  CPU handles slowly.
- Most steps keep 80 of the 256 visual tokens (above): a 447-token training sequence becomes ~270, about
  twice as fast, and the decoder learns on the tokens that hold the answers.
- Extra questions are derived from the scene annotation of the same training image with the benchmark's own
  templates (the original question is always one of them), balanced over question types.
- The loss is teacher-forced cross-entropy on the answer tokens (answer and end-of-sequence) only, and the
  LM head is applied to those positions only.
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
from svlm.zoo.recipe.attributes import ATTRIBUTES, AttributeProbes, visual_attribute_labels
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
    "ATTRIBUTES",
    "AttributeProbes",
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
    "visual_attribute_labels",
    "word_token_ids",
]

"""Recipe options (`RecipeConfig`), the smoke preset, and the checks that name a bad option."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from svlm.data import scenes, shapes

PATCH_SIZE = 14
VISION_COUNT_CLASSES = 4  # the tower's same-colour count head: 1, 2, 3, 4 or more
SCENE_COUNT_CLASSES = 4  # the scene-summary head's objects per colour: 0, 1, 2, 3 or more
#: bands of the token grid that position labels name (12: two 14-px cells of a 336-px image each)
POSITION_BANDS = 12


#: question types of each benchmark the recipe trains on
QUESTION_TYPES: dict[str, tuple[str, ...]] = {
    "shapes": shapes.QUESTION_TYPES,
    "scenes": scenes.QUESTION_TYPES,
}
#: the most objects a scene of each benchmark holds
MOST_OBJECTS: dict[str, int] = {"shapes": shapes.GRID * shapes.GRID, "scenes": 30}


@dataclass
class RecipeConfig:
    """Everything that determines the trained weights (written to ``training_log.json``)."""

    seed: int = 0
    # the benchmark trained on: "shapes" (svlm-shapes) or "scenes" (svlm-scenes, with cards to read: stage 1
    # then also names each card's digit at its patches, and stage 1b aligns them to the digit's word)
    benchmark: str = "shapes"
    # weight of stage 1's digit head (svlm-scenes only)
    digit_loss_weight: float = 1.0
    # weight of stage 1's size head, small or large at every shape patch (svlm-scenes only; its questions
    # name objects by size: "What color is the small star?"), and the alignment of centre tokens to the size
    # word (0 turns both off)
    size_loss_weight: float = 0.0
    # stage 1: vision-tower pretraining (stands in for CLIP's pretraining; 0 skips it)
    vision_steps: int = 1500
    vision_batch_size: int = 16
    vision_lr: float = 3e-3
    cell_loss_weight: float = 0.1  # weight of the grid-cell head
    # weight of a head that names, at every patch, its row band and column band (`POSITION_BANDS` each): where
    # a token lies, finer than the 3x3 cell, for relation questions ("Is the red star left of the blue
    # cross?"), whose answer a head that copies an object's features can only read if they carry it (0: off)
    position_loss_weight: float = 0.0
    # shape labels on the patch at each object's centre first (unambiguous), on every patch it covers from
    # this fraction of the stage on, so that all of an object's tokens carry its shape
    shape_dense_from: float = 1.0
    # label an object's non-centre patches "part of an object" (an extra shape class) instead of leaving them
    # unlabelled, so that exactly one patch per object says "centre": what counting objects needs
    part_class: bool = False
    vision_min_objects: int = 5  # crowded scenes: more labelled objects per image at the same cost
    # weight of a head that names, at every object patch, how many objects of that patch's colour the image
    # holds (1, 2, 3, 4+): the tower's self-attention sees the whole image, the decoder's attention can only
    # average what it attends to, so the count has to be in the features it reads (0 turns it off)
    count_loss_weight: float = 0.25
    # weight of a scene-summary head at every patch: how many objects of each colour the image holds (0, 1, 2,
    # 3+), global content of the kind CLIP features carry; counting then reads one token's features instead of
    # aggregating attention over several objects (0 turns it off)
    scene_loss_weight: float = 0.0
    # stage 1c, on a model loaded by `init_from`: fine-tune its tower for this many steps so that each patch's
    # row and column band become readable from the visual tokens while the tokens stay as the decoder knows
    # them (`svlm.zoo.recipe.graft`; 0 skips it)
    position_graft_steps: int = 0
    position_graft_lr: float = 1e-3
    # weight of the tokens' squared change relative to their squared norm against the position head's loss
    position_graft_keep_weight: float = 10.0
    # stage 1b: projector alignment (LLaVA's projector pretraining, here on the scene annotation): the visual
    # tokens are pulled towards the input embeddings of the words that name their object's colour and shape,
    # so that a question's key words and the image tokens they are about start out alike (0 skips it)
    align_steps: int = 300
    align_batch_size: int = 16
    align_lr: float = 2e-3
    # also pull each object token towards the digit of its colour's object count (" 1" ... " 4"), the answer
    # of "How many <colour> shapes are there?" that stage 1's count head put in the tower's features
    align_counts: bool = False
    # also pull every token towards the words of where its patch lies: " top"/" bottom" for the first/last
    # row of the 3x3 grid and " left"/" right" for the first/last column (the middle ones towards
    # "background"), the words in "What shape is at the top left of the image?" and "top-left"
    align_cells: bool = False
    # stage 2: end-to-end VQA training of the whole model
    steps: int = 5600
    # train only the first `stop_after` steps of the `steps`-long schedule (0: all of it), as a run stopped
    # there would; what replaying a chain needs for a stage that was stopped and continued from its
    # partial save (`python -m svlm.zoo.recipe.replay`)
    stop_after: int = 0
    vision_lr_scale: float = 0.0  # the vision tower's stage-2 learning rate relative to `lr` (0: frozen)
    # the projector's stage-2 learning rate relative to `lr` (0: frozen after stage 1b). Trained at full rate
    # on svlm-scenes its outputs grew 7x in norm and lost their alignment: the nearest colour word of a
    # token's projection fell from 99% right to 19%, a linear probe of its colour from 99% to 87%
    projector_lr_scale: float = 1.0
    batch_size: int = 8
    questions_per_image: int = 8
    # how often each question type comes up among an image's derived questions ("count:3": three count
    # questions per cycle of the five types; types not named weigh 1)
    question_weights: str = "count:2"
    # the first `lead_steps` steps ask only questions of these types (e.g. "count"): a skill the mix of all
    # five types does not pick up can be learned alone first
    lead_types: str = "count"
    lead_steps: int = 400
    # the lead window starts at this step (0: the first steps); a later window lets the mix of all types learn
    # first (e.g. colour, fast after the projector alignment) and then teaches the lead types alone
    lead_start: int = 800
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 60
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # attention supervision: weight of -log(attention mass on the evidence patches) from the answer position,
    # for half the heads of these decoder layers (0 turns it off)
    attention_weight: float = 1.0
    attention_layers: str = "4,6"  # queries at the position that predicts the answer
    keyword_layers: str = "1,2"  # queries at the question's key word ("What color is the circle?" -> circle)
    # queries at the position that predicts the answer again, towards the question's words that name the
    # evidence ("small star"): the answer position first gathers what to look for, then (attention_layers)
    # looks for it; several words name one object in svlm-scenes ("" turns it off)
    phrase_layers: str = ""
    # readout supervision: weight of the cross-entropy of the answer's first token read, through the LM head,
    # from what the supervised heads of `attention_layers` attend to (their share of the attention output),
    # for the question types in `readout_types`, whose answer is an attribute of the evidence object: the
    # heads that find the object must also carry its colour or digit to the answer (0 turns it off)
    readout_weight: float = 0.0
    readout_types: str = "color,shape,text"
    # attribute keeping (`svlm.zoo.recipe.attributes`, svlm-scenes only): weight of linear heads that must
    # read each kept visual token's colour, shape, size and digit from its hidden state at the input of
    # `attribute_layers` (the layers the answer is copied from), so the decoder keeps them readable there
    # (0 turns it off)
    attribute_weight: float = 0.0
    attribute_layers: str = ""
    # the attributes kept (of `svlm.zoo.recipe.attributes.ATTRIBUTES`: colour, shape, size, digit, count of
    # the token's kind, row and column band)
    attribute_groups: str = "colour,shape,size,digit"
    # question types whose evidence objects are looked at one per layer (svlm-scenes "relation" asks about
    # two): the supervised head at the k-th of `attention_layers` attends to the k-th evidence object only
    # (the last one at later layers) and the key word to the first, so no head averages the two objects
    # ("Where is the red circle relative to the blue star?": the circle at layer 5, the star at layer 8)
    split_types: str = ""
    # for `split_types` questions: weight of linear heads (training only) that must read the attended
    # object's row and column band from the supervised head's output at each of `attention_layers`, so the
    # heads copy where the object lies, not only what it is (0 turns it off)
    position_readout_weight: float = 0.0
    # what those heads read: the bands as classes ("row,column") or as coordinates ("row_coord,column_coord",
    # `svlm.zoo.recipe.attributes.ORDINAL`)
    position_readout_groups: str = "row,column"
    # question types whose attention is supervised (leaving out "count" lets its answer live in how much
    # attention the matching objects get, which full mass on them hides; it did not help at 2000 steps)
    attention_types: str = "color,shape,count,exist,position"
    # architecture
    image_size: int = 224
    vision_hidden_size: int = 96
    vision_layers: int = 4
    vision_heads: int = 4
    vision_initializer_range: float = 0.2
    hidden_size: int = 128
    intermediate_size: int = 344
    num_layers: int = 8
    num_heads: int = 4
    initializer_range: float = 0.05
    # one matrix for the input embeddings and the LM head (as in Llama 3.2 1B/3B): a visual token aligned with
    # a word's embedding (stage 1b) then reads out as that word when attention copies it to the answer
    tie_word_embeddings: bool = True
    # RoPE base of the decoder. With 32-dim heads and Llama's 10000 only a few rotary pairs turn slowly enough
    # for a query to match visual tokens by content across the ~260 positions between them
    rope_theta: float = 10000.0
    # std of the decoder's residual-branch outputs (o_proj, down_proj) = initializer_range * this / sqrt(2 L):
    # a deep narrow stack then starts close to the identity and learns like a shallow one
    residual_init_scale: float = 1.0
    # data (the svlm-shapes generator's defaults, as evaluated by `svlm test`)
    data_image_size: int = 336
    # visual tokens each training image keeps (0: all): every token an object covers, then background tokens
    # at random, at their original positions, as drop-only pruning would; the decoder's cost falls with the
    # sequence length, and the last (1 - `train_visual_until`) of the steps see all tokens again
    train_visual_tokens: int = 80
    train_visual_until: float = 0.85
    # curriculum: (end of phase as a fraction of `steps`, min objects, max objects) per phase; scenes with one
    # object first teach the model to find the object among background tokens, then binding (2-5 objects)
    curriculum: str = "0.03:1:1,0.1:1:3,1.0:2:5"
    # evaluation during training (val split; the test split is only used for the final report)
    eval_every: int = 700
    eval_samples: int = 100
    test_samples: int = 500
    # CPU threads of stage 1 and stage 2 (as in the shipped run: other counts change floating-point sums)
    vision_threads: int = 2
    threads: int = 2
    # where the model trains: "cpu" (the shipped runs) or "cuda" / "cuda:N"; data are drawn on the CPU either
    # way, so a run is the same function of the seed (up to the kernels' floating-point sums)
    device: str = "cpu"
    # a saved recipe model this run starts from: its vision tower (stage 1 is skipped), its projector when the
    # shapes fit (stage 1b is skipped too) and its decoder when it fits as well (stage 2 then continues
    # training it, with a fresh optimizer and this run's schedule): to iterate on later stages, or to train a
    # model further in another session ("" runs every stage from scratch)
    init_from: str = ""
    # which parts `init_from` loads (of "vision_tower", "projector", "decoder"; the vision tower always):
    # leaving out "projector" re-runs stage 1b on the loaded tower, e.g. to restart from a clean alignment
    init_parts: str = "vision_tower,projector,decoder"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_visual_tokens(self) -> int:
        return (self.image_size // PATCH_SIZE) ** 2


#: defaults of ``--benchmark scenes`` (other options keep RecipeConfig's defaults; flags override both): the
#: first stage of the shipped svlm-scenes-llava (its later stages are in its training_log.json),
#: svlm-scenes at 336 px (576 visual tokens) with a 22-layer, 64-wide decoder
#: (SparseVLM and FastV first prune after layer 1 of 22, so budget 64 is reachable) on one thread per stage
SCENES: dict[str, Any] = {
    "benchmark": "scenes",
    "image_size": 336,
    "attention_types": "color,shape,count,exist,relation,text",
    "question_weights": "count:2,relation:2",
    "train_visual_tokens": 128,
    "vision_min_objects": 8,
    "vision_steps": 600,
    "vision_batch_size": 8,
    "size_loss_weight": 1.0,
    "align_steps": 200,
    # RoPE base: with 32-dim heads and Llama's 10000 only 3-4 rotary pairs turn slowly enough to match a
    # visual token by content across the ~600 positions between an answer and the image's first tokens;
    # 8-layer probes of 400 steps: text questions 0.52 vs 0.29 teacher-forced with 1e6
    "rope_theta": 1_000_000.0,
    # a few objects first (the decoder learns to find the named object), then the benchmark's 8-20
    "curriculum": "0.15:2:5,0.35:4:10,1.0:8:20",
    "steps": 2800,
    "lead_start": 300,
    "lead_steps": 200,
    "num_layers": 22,
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_heads": 2,
    "attention_layers": "5,8",
    "keyword_layers": "1,3",
    # the answer is copied from the visual tokens at the supervised layers: keep the projector as stage 1b
    # aligned it, keep each token's attributes readable there, and train the supervised heads to read them
    # out (without these three, colour questions stayed at chance: dense 0.372, against 0.796 with them)
    "projector_lr_scale": 0.0,
    "attribute_weight": 1.0,
    "attribute_layers": "5,8",
    "readout_weight": 1.0,
    "eval_every": 500,
    "eval_samples": 60,
    "vision_threads": 1,
    "threads": 1,
}

SMOKE = {
    "steps": 3,
    "batch_size": 2,
    "questions_per_image": 2,
    "num_layers": 2,
    "vision_layers": 1,
    "eval_every": 0,
    "eval_samples": 4,
    "test_samples": 4,
    "warmup_steps": 1,
    "vision_steps": 2,
    "vision_batch_size": 2,
    "attention_layers": "1",
    "keyword_layers": "0",
    "phrase_layers": "1",
    "attribute_layers": "1",
    "lead_steps": 1,
    "lead_start": 0,
    "align_steps": 2,
    "align_batch_size": 2,
    "vision_threads": 1,
    "threads": 1,
}


@dataclass(frozen=True)
class Phase:
    """Training scenes up to ``end`` (fraction of the steps): ``min_objects``-``max_objects`` shapes of side
    ``shape_scale`` x image size."""

    end: float
    min_objects: int
    max_objects: int
    shape_scale: float = 1 / 7

    def scene_kwargs(self) -> dict[str, Any]:
        return {
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "shape_scale": self.shape_scale,
        }


def parse_curriculum(spec: str, most_objects: int = 9) -> list[Phase]:
    """``"0.1:1:1:0.3,1.0:2:5"`` -> phases (end fraction : min objects : max objects [: shape scale]);
    ``most_objects`` is the benchmark's largest scene (svlm-shapes 9, svlm-scenes 30)."""
    try:
        phases = [
            Phase(float(f[0]), int(f[1]), int(f[2]), *map(float, f[3:4]))
            for f in (p.split(":") for p in spec.split(","))
        ]
    except (ValueError, TypeError, IndexError):
        raise ValueError(
            "curriculum must look like '0.1:1:1:0.3,1.0:2:5' (end fraction:min objects:max objects"
            f"[:shape scale], one phase per comma), got {spec!r}"
        ) from None
    ends = [p.end for p in phases]
    if ends != sorted(ends) or ends[-1] != 1.0:
        raise ValueError(f"curriculum phases must end in increasing order, the last at 1.0: {spec!r}")
    for p in phases:
        if not 1 <= p.min_objects <= p.max_objects <= most_objects or not 0 < p.shape_scale <= 1 / 3:
            raise ValueError(
                f"curriculum phase {p} needs 1 <= min <= max <= {most_objects} objects and 0 < scale <= 1/3"
            )
    return phases


def phase_at(cfg: RecipeConfig, step: int) -> Phase:
    """The curriculum phase of ``step``."""
    phases = parse_curriculum(cfg.curriculum, MOST_OBJECTS[cfg.benchmark])
    return next((p for p in phases if step < p.end * cfg.steps), phases[-1])


def parse_layers(spec: str, num_layers: int, option: str = "attention_layers") -> list[int]:
    """``"2,4,6"`` -> [2, 4, 6], checked against the decoder's depth (errors name ``option``)."""
    try:
        layers = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated layer indices, got {spec!r}") from None
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"{option} {bad} are outside the decoder's layers 0..{num_layers - 1}")
    return layers


def parse_question_types(spec: str, option: str = "attention_types", benchmark: str = "shapes") -> set[str]:
    """``"color,shape"`` -> {"color", "shape"}, checked against the benchmark's question types."""
    types = {t.strip() for t in spec.split(",") if t.strip()}
    valid = QUESTION_TYPES[benchmark]
    bad = sorted(types - set(valid))
    if bad:
        raise ValueError(f"{option} {bad} are not svlm-{benchmark} question types {list(valid)}")
    return types


def parse_type_weights(spec: str, benchmark: str = "shapes") -> dict[str, int]:
    """``"count:3,exist:2"`` -> {"count": 3, "exist": 2} (types not named weigh 1), checked."""
    weights: dict[str, int] = {}
    valid = QUESTION_TYPES[benchmark]
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, value = part.partition(":")
        if name not in valid or not value.isdigit() or int(value) < 1:
            raise ValueError(
                f"question_weights must look like 'count:3,exist:2' (svlm-{benchmark} question types "
                f"{list(valid)}, whole weights >= 1), got {part!r} in {spec!r}"
            )
        weights[name] = int(value)
    return weights


def check_config(cfg: RecipeConfig) -> None:
    """Raise ValueError naming the first bad option (layers, question types, curriculum, architecture)."""
    if cfg.benchmark not in QUESTION_TYPES:
        raise ValueError(f"benchmark must be one of {sorted(QUESTION_TYPES)}, got {cfg.benchmark!r}")
    parse_layers(cfg.attention_layers, cfg.num_layers)
    parse_layers(cfg.keyword_layers, cfg.num_layers, "keyword_layers")
    parse_layers(cfg.phrase_layers, cfg.num_layers, "phrase_layers")
    parse_question_types(cfg.attention_types, benchmark=cfg.benchmark)
    if cfg.readout_weight < 0:
        raise ValueError(
            f"readout_weight must be >= 0 (0 turns the readout loss off), got {cfg.readout_weight}"
        )
    if cfg.readout_weight > 0:
        parse_question_types(cfg.readout_types, "readout_types", cfg.benchmark)
    split = parse_question_types(cfg.split_types, "split_types", cfg.benchmark)
    if cfg.position_readout_weight < 0:
        raise ValueError(
            "position_readout_weight must be >= 0 (0 turns the position readout off), got "
            f"{cfg.position_readout_weight}"
        )
    if cfg.position_readout_weight > 0 and not split:
        raise ValueError(
            "position_readout_weight > 0 reads the position of split questions' objects: name them in "
            f"split_types (e.g. 'relation'), got split_types {cfg.split_types!r}"
        )
    parse_layers(cfg.attribute_layers, cfg.num_layers, "attribute_layers")
    if cfg.attribute_weight < 0:
        raise ValueError(
            f"attribute_weight must be >= 0 (0 turns attribute keeping off), got {cfg.attribute_weight}"
        )
    if cfg.attribute_weight > 0 and (cfg.benchmark != "scenes" or not cfg.attribute_layers.strip()):
        raise ValueError(
            "attribute_weight > 0 needs --benchmark scenes and attribute_layers (e.g. '5,8'), got "
            f"benchmark {cfg.benchmark!r}, attribute_layers {cfg.attribute_layers!r}"
        )
    for name in ("vision_lr_scale", "projector_lr_scale"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0 freezes the part in stage 2), got {getattr(cfg, name)}")
    parse_init_parts(cfg.init_parts)
    # imported here: attributes builds on this module's constants
    from svlm.zoo.recipe.attributes import POSITION_GROUPS, parse_attribute_groups

    parse_attribute_groups(cfg.attribute_groups)
    parse_attribute_groups(cfg.position_readout_groups, "position_readout_groups", POSITION_GROUPS)
    parse_type_weights(cfg.question_weights, cfg.benchmark)
    if not parse_question_types(cfg.lead_types, "lead_types", cfg.benchmark) and cfg.lead_steps > 0:
        raise ValueError("lead_types must name at least one question type when lead_steps > 0")
    if cfg.position_graft_steps < 0 or cfg.position_graft_keep_weight < 0:
        raise ValueError(
            "position_graft_steps and position_graft_keep_weight must be >= 0, got "
            f"{cfg.position_graft_steps} and {cfg.position_graft_keep_weight}"
        )
    if cfg.position_graft_steps > 0 and not (
        cfg.init_from and "projector" in parse_init_parts(cfg.init_parts)
    ):
        raise ValueError(
            "position_graft_steps > 0 keeps a trained model's visual tokens: give init_from (with the "
            f"projector in init_parts), got init_from {cfg.init_from!r}, init_parts {cfg.init_parts!r}"
        )
    if not 0 <= cfg.stop_after <= cfg.steps:
        raise ValueError(
            f"stop_after must be between 0 (train every step) and steps ({cfg.steps}), got {cfg.stop_after}"
        )
    if cfg.align_steps < 0:
        raise ValueError(f"align_steps must be >= 0 (0 skips projector alignment), got {cfg.align_steps}")
    if cfg.lead_start < 0:
        raise ValueError(
            f"lead_start must be >= 0 (the step the lead window starts at), got {cfg.lead_start}"
        )
    if cfg.lead_steps < 0:
        raise ValueError(
            f"lead_steps must be >= 0 (0: every question type from the start), got {cfg.lead_steps}"
        )
    fewest = MOST_OBJECTS[cfg.benchmark]  # every object's centre token must fit
    if cfg.train_visual_tokens and not fewest <= cfg.train_visual_tokens <= cfg.num_visual_tokens:
        raise ValueError(
            f"train_visual_tokens must be 0 (all) or between {fewest} (one per object of a full scene) and "
            f"{cfg.num_visual_tokens} (the model's visual tokens), got {cfg.train_visual_tokens}"
        )
    if not 0 <= cfg.train_visual_until <= 1:
        raise ValueError(
            f"train_visual_until must be a fraction of the steps in [0, 1], got {cfg.train_visual_until}"
        )
    parse_curriculum(cfg.curriculum, MOST_OBJECTS[cfg.benchmark])
    check_device(cfg.device)
    check_architecture(cfg)


#: the parts of a saved recipe model ``init_from`` can load
INIT_PARTS: tuple[str, ...] = ("vision_tower", "projector", "decoder")


def parse_init_parts(spec: str) -> set[str]:
    """``"vision_tower,decoder"`` -> the parts named, checked (the vision tower must be among them)."""
    parts = {p.strip() for p in spec.split(",") if p.strip()}
    bad = sorted(parts - set(INIT_PARTS))
    if bad or "vision_tower" not in parts:
        raise ValueError(
            f"init_parts must name parts of {list(INIT_PARTS)}, the vision tower among them, got {spec!r}"
        )
    return parts


def check_device(device: str) -> None:
    """Raise ValueError naming a device the recipe cannot train on here."""
    import torch

    if device == "cpu":
        return
    if not device.startswith("cuda") or device not in ("cuda", *(f"cuda:{i}" for i in range(64))):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(f"device {device!r} is not available: this machine has {found} CUDA device(s)")


def check_architecture(cfg: RecipeConfig) -> None:
    """Raise ValueError naming a model option that cannot build the model."""
    if cfg.image_size % PATCH_SIZE:
        raise ValueError(f"image_size must be a multiple of {PATCH_SIZE}, got {cfg.image_size}")
    if not cfg.rope_theta > 0:
        raise ValueError(f"rope_theta must be a positive RoPE base (Llama: 10000), got {cfg.rope_theta}")
    for name in ("count_loss_weight", "scene_loss_weight", "size_loss_weight", "position_loss_weight"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0 turns its head off), got {getattr(cfg, name)}")

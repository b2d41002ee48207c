"""Recipe of svlm's default model: a small LLaVA-1.5-architecture VLM trained on svlm-shapes, on CPU.

    python -m svlm.zoo.train_default --output-dir svlm/zoo/svlm-shapes-llava          # the shipped model
    python -m svlm.zoo.train_default --output-dir /tmp/smoke --smoke                     # a few seconds

The model is ``LlavaForConditionalGeneration`` (CLIP-style vision tower, 2-layer MLP projector, Llama decoder
with 32 layers like LLaVA-1.5-7B so in-LLM pruning at layers 2/6/15 means what it does there), trained end to
end from scratch on the shapes *train* split. Everything is seeded and the data are a pure function of the
seed and the step, so a run is reproducible up to floating-point non-associativity of the kernels.

Why it trains in minutes on two cores:

- Each image is asked several questions at once. The sequence holds the image prefix once, followed by one
  branch per question (question + instruction + answer); a 4-D attention mask lets each branch see the
  prefix and itself only, and position ids restart after the prefix, so every branch is computed exactly as
  the single-question evaluation prompt would be (``tests/test_zoo.py`` checks this against a plain forward).
  The expensive part, 256 visual tokens through 32 layers, is paid once for all questions.
- Extra questions are derived from the scene annotation of the same training image with the benchmark's own
  templates (the original question is always one of them), balanced over question types.
- The loss is teacher-forced cross-entropy on the answer tokens (answer and end-of-sequence) only, and the
  LM head is applied to those positions only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)
from transformers.processing_utils import ProcessorMixin

from svlm.data import shapes
from svlm.data.prompts import SHORT_ANSWER, build_conversation, with_instruction

PATCH_SIZE = 14


@dataclass
class RecipeConfig:
    """Everything that determines the trained weights (written to ``training_log.json``)."""

    seed: int = 0
    steps: int = 1200
    batch_size: int = 8
    questions_per_image: int = 6
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 60
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # architecture
    image_size: int = 224
    vision_hidden_size: int = 64
    vision_layers: int = 3
    vision_heads: int = 2
    hidden_size: int = 64
    intermediate_size: int = 160
    num_layers: int = 32
    num_heads: int = 2
    initializer_range: float = 0.2
    # std of the decoder's residual-branch outputs (o_proj, down_proj) = initializer_range * this / sqrt(2 L):
    # a deep narrow stack then starts close to the identity and learns like a shallow one
    residual_init_scale: float = 1.0
    # data (the svlm-shapes generator's defaults, as evaluated by `svlm test`)
    data_image_size: int = 336
    # curriculum: (end of phase as a fraction of `steps`, min objects, max objects) per phase; scenes with one
    # object first teach the model to find the object among background tokens, then binding (2-5 objects)
    curriculum: str = "0.15:1:1,0.35:1:3,1.0:2:5"
    # evaluation during training (val split; the test split is only used for the final report)
    eval_every: int = 200
    eval_samples: int = 100
    test_samples: int = 500
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_visual_tokens(self) -> int:
        return (self.image_size // PATCH_SIZE) ** 2


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
}


# ----------------------------------------------------------------------------------------------- model


def build_model(cfg: RecipeConfig) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A freshly initialised model (seeded) and its processor (tokenizer + CLIP image processor)."""
    from svlm.testing.processor import llava_processor
    from svlm.testing.tokenizer import tiny_tokenizer

    if cfg.image_size % PATCH_SIZE:
        raise ValueError(f"image_size must be a multiple of {PATCH_SIZE}, got {cfg.image_size}")
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
        initializer_range=cfg.initializer_range,
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


# ------------------------------------------------------------------------------------------------ data


def _templates() -> dict[str, Any]:
    return {
        "color": lambda o: f"What color is the {o['shape']}?",
        "shape": lambda o: f"What shape is at the {shapes.POSITION_PHRASES[o['position']]} of the image?",
        "count": lambda color: f"How many {color} shapes are there?",
        "exist": lambda shape, color: f"Is there a {color} {shape}?",
        "position": lambda o: f"Where is the {o['color']} {o['shape']}?",
    }


def derived_questions(sample: dict, k: int, rng: random.Random) -> list[tuple[str, str]]:
    """``k`` (question, answer) pairs about ``sample``'s image: its own question, then questions derived from
    its scene annotation with the benchmark's templates, cycling over question types (each type's answer
    drawn uniformly among the answers that type can have for this image)."""
    t = _templates()
    objs = sample["objects"]
    shape_counts: dict[str, int] = {}
    combos = {(o["shape"], o["color"]) for o in objs}
    for o in objs:
        shape_counts[o["shape"]] = shape_counts.get(o["shape"], 0) + 1
    combo_counts: dict[tuple[str, str], int] = {}
    for o in objs:
        combo_counts[(o["shape"], o["color"])] = combo_counts.get((o["shape"], o["color"]), 0) + 1

    by_type: dict[str, dict[str, list[str]]] = {q: {} for q in shapes.QUESTION_TYPES}

    def add(qtype: str, question: str, answer: str) -> None:
        by_type[qtype].setdefault(answer, []).append(question)

    for o in objs:
        if shape_counts[o["shape"]] == 1:
            add("color", t["color"](o), o["color"])
        add("shape", t["shape"](o), o["shape"])
        if combo_counts[(o["shape"], o["color"])] == 1:
            add("position", t["position"](o), o["position"])
        add("exist", t["exist"](o["shape"], o["color"]), "yes")
    for color in shapes.COLORS:
        n = sum(o["color"] == color for o in objs)
        if n <= 3:
            add("count", t["count"](color), str(n))
    present_shapes = {s for s, _ in combos}
    present_colors = {c for _, c in combos}
    for s in shapes.SHAPES:
        for c in shapes.COLORS:
            if (s, c) not in combos and (s in present_shapes or c in present_colors):  # near misses
                add("exist", t["exist"](s, c), "no")

    out = [(sample["question"], sample["answer"])]
    seen = {sample["question"]}
    types = list(shapes.QUESTION_TYPES)
    start = rng.randrange(len(types))
    tries = 0
    while len(out) < k and tries < 20 * k:
        qtype = types[(start + tries) % len(types)]
        tries += 1
        answers = sorted(by_type[qtype])
        if not answers:
            continue
        questions = [q for q in by_type[qtype][rng.choice(answers)] if q not in seen]
        if not questions:
            continue
        q = rng.choice(sorted(questions))
        seen.add(q)
        out.append((q, next(a for a, qs in by_type[qtype].items() if q in qs)))
    return out


def prompt_text(processor: ProcessorMixin, question: str) -> str:
    """The evaluation prompt of svlm-shapes (question + short-answer instruction, chat template)."""
    conversation = build_conversation(with_instruction(question, SHORT_ANSWER))
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [b, t]
    position_ids: torch.Tensor  # [b, t]
    attention_mask: torch.Tensor  # [b, 1, t, t] bool, True = may attend
    pixel_values: torch.Tensor  # [b, 3, h, w]
    target_rows: torch.Tensor  # [n] batch index of each supervised position
    target_cols: torch.Tensor  # [n] position whose output predicts the target
    targets: torch.Tensor  # [n] target token ids
    target_question: torch.Tensor  # [n] index of the question (over the batch) each target belongs to
    branch_starts: list[list[tuple[int, int, int]]]  # per sample: (start, length, answer_len) per branch

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": self.attention_mask,
            "pixel_values": self.pixel_values,
        }


def pack(
    processor: ProcessorMixin, images: Sequence[Any], qas: Sequence[Sequence[tuple[str, str]]]
) -> PackedBatch:
    """One sequence per image: the image prefix once, then one (question, answer) branch per pair.

    Branch tokens are the tokens the single-question prompt has after the prefix, followed by the answer and
    ``</s>``; each branch attends to the prefix and causally to itself, with positions continuing the prefix.
    """
    tok = processor.tokenizer
    image_id = processor.image_token_id
    crop = processor.image_processor.crop_size
    num_image = (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size)
    seqs: list[list[int]] = []
    prefix_lens: list[int] = []
    branches: list[list[tuple[int, int, int]]] = []
    for pairs in qas:
        prefix: list[int] | None = None
        ids: list[int] = []
        spans: list[tuple[int, int, int]] = []
        for question, answer in pairs:
            prompt = tok(prompt_text(processor, question), add_special_tokens=True)["input_ids"]
            full = tok(prompt_text(processor, question) + " " + answer, add_special_tokens=True)["input_ids"]
            if full[: len(prompt)] != prompt:
                raise RuntimeError(f"answer {answer!r} changes the prompt's tokenization")
            full = full + [tok.eos_token_id]
            cut = prompt.index(image_id) + 2  # <s> USER: <image> \n | question ...
            if prefix is None:
                prefix = full[:cut]
                ids = prefix[: cut - 2] + [image_id] * num_image + prefix[cut - 1 :]
            elif full[:cut] != prefix:
                raise RuntimeError("questions of one image do not share the image prefix")
            spans.append((len(ids), len(full) - cut, len(full) - len(prompt)))
            ids += full[cut:]
        seqs.append(ids)
        prefix_lens.append(len(prefix) - 1 + num_image)
        branches.append(spans)
    b, t = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((b, t), tok.pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((b, t), dtype=torch.long)
    mask = torch.zeros((b, 1, t, t), dtype=torch.bool)
    rows, cols, targets, owner = [], [], [], []
    num_questions = 0
    for i, (ids, p, spans) in enumerate(zip(seqs, prefix_lens, branches, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        position_ids[i, :p] = torch.arange(p)
        mask[i, 0, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
        for start, length, answer_len in spans:
            end = start + length
            position_ids[i, start:end] = torch.arange(p, p + length)
            mask[i, 0, start:end, :p] = True
            mask[i, 0, start:end, start:end] = torch.ones(length, length, dtype=torch.bool).tril()
            for j in range(end - answer_len, end):  # output at j-1 predicts token j
                rows.append(i)
                cols.append(j - 1)
                targets.append(ids[j])
                owner.append(num_questions)
            num_questions += 1
        pad = torch.arange(len(ids), t)
        mask[i, 0, pad, pad] = True  # padding attends to itself only (no fully masked rows)
    pixel_values = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        pixel_values=pixel_values,
        target_rows=torch.tensor(rows),
        target_cols=torch.tensor(cols),
        targets=torch.tensor(targets),
        target_question=torch.tensor(owner),
        branch_starts=branches,
    )


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


def parse_curriculum(spec: str) -> list[Phase]:
    """``"0.1:1:1:0.3,1.0:2:5"`` -> phases (end fraction : min objects : max objects [: shape scale])."""
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
        if not 1 <= p.min_objects <= p.max_objects <= 9 or not 0 < p.shape_scale <= 1 / 3:
            raise ValueError(f"curriculum phase {p} needs 1 <= min <= max <= 9 objects and 0 < scale <= 1/3")
    return phases


def phase_at(cfg: RecipeConfig, step: int) -> Phase:
    """The curriculum phase of ``step``."""
    phases = parse_curriculum(cfg.curriculum)
    return next((p for p in phases if step < p.end * cfg.steps), phases[-1])


def train_batch(cfg: RecipeConfig, processor: ProcessorMixin, step: int) -> PackedBatch:
    """Batch ``step`` of training: shapes train samples ``step * batch_size ...``, derived questions seeded
    by (seed, sample index) -- a pure function of the config and the step."""
    images, qas = [], []
    for i in range(step * cfg.batch_size, (step + 1) * cfg.batch_size):
        sample = shapes.generate_sample(
            i,
            "train",
            cfg.seed,
            image_size=cfg.data_image_size,
            **phase_at(cfg, step).scene_kwargs(),
        )
        rng = random.Random(cfg.seed * 1_000_003 + i)
        images.append(sample["image"])
        qas.append(derived_questions(sample, cfg.questions_per_image, rng))
    return pack(processor, images, qas)


def packed_loss(model: PreTrainedModel, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over answer tokens, and per question whether teacher-forced greedy decoding gets
    every answer token right (LM head on target positions only)."""
    hidden = model.model(**batch.model_inputs(), use_cache=False).last_hidden_state
    logits = model.lm_head(hidden[batch.target_rows, batch.target_cols]).float()
    loss = torch.nn.functional.cross_entropy(logits, batch.targets)
    wrong = (logits.argmax(-1) != batch.targets).float()
    per_question = torch.zeros(int(batch.target_question.max()) + 1).index_add_(
        0, batch.target_question, wrong
    )
    return loss, per_question == 0


# ------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    split: str = "val",
    num_samples: int = 100,
    seed: int = 0,
    strategy: str | None = None,
    budget: float | None = None,
    batch_size: int = 16,
    image_size: int = 336,
    max_new_tokens: int = 8,
) -> dict[str, Any]:
    """Greedy answers on ``num_samples`` of the shapes ``split``, scored like ``svlm test`` (normalised exact
    match), overall and per question type; ``strategy``/``budget`` prune with ``svlm.sparsify``."""
    import svlm
    from svlm.data.benchmarks import load_benchmark
    from svlm.metrics import exact_match

    model.eval()
    ds = load_benchmark("shapes", split=split, limit=num_samples, seed=seed, image_size=image_size)
    runner = model if strategy in (None, "dense") else svlm.sparsify(model, strategy, budget=budget)
    tok = processor.tokenizer
    scores: dict[str, list[float]] = {}
    preds = []
    for lo in range(0, len(ds), batch_size):
        rows = [ds[i] for i in range(lo, min(lo + batch_size, len(ds)))]
        prompts = [
            processor.apply_chat_template(
                build_conversation(r["prompt"]), add_generation_prompt=True, tokenize=False
            )
            for r in rows
        ]
        inputs = processor(images=[r["image"] for r in rows], text=prompts, padding=True, return_tensors="pt")
        ids = runner.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        texts = [
            t.strip()
            for t in tok.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        ]
        for r, text in zip(rows, texts, strict=True):
            s = exact_match(text, r["answers"])
            scores.setdefault("all", []).append(s)
            scores.setdefault(r["category"], []).append(s)
            preds.append(text)
    out = {k: float(np.mean(v)) for k, v in scores.items()}
    out["num_samples"] = len(ds)
    return out


# ------------------------------------------------------------------------------------------------ train


def lr_at(cfg: RecipeConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: RecipeConfig, output_dir: str | Path | None = None, log_every: int = 10) -> dict[str, Any]:
    """Train, evaluate on the val split every ``eval_every`` steps and on the test split at the end, and
    save model, processor and ``training_log.json`` to ``output_dir`` (when given)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, processor = build_model(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    log: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_visual_tokens": cfg.num_visual_tokens,
        "torch_version": torch.__version__,
        "steps": [],
        "val": [],
    }
    start = time.perf_counter()
    window: list[float] = []
    window_acc: list[float] = []
    for step in range(cfg.steps):
        model.train()
        batch = train_batch(cfg, processor, step)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss, correct = packed_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        window.append(float(loss))
        window_acc.append(float(correct.float().mean()))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            entry = {
                "step": step + 1,
                "loss": float(np.mean(window)),
                "answer_acc": float(np.mean(window_acc)),
                "lr": lr_at(cfg, step),
                "elapsed_s": round(time.perf_counter() - start, 1),
            }
            log["steps"].append(entry)
            window, window_acc = [], []
            print(json.dumps(entry), flush=True)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            val = evaluate(
                model, processor, "val", cfg.eval_samples, cfg.seed, image_size=cfg.data_image_size
            )
            val.update(step=step + 1, elapsed_s=round(time.perf_counter() - start, 1))
            log["val"].append(val)
            print(json.dumps({"val": val}), flush=True)
    log["train_time_s"] = round(time.perf_counter() - start, 1)
    model.eval()
    val = evaluate(model, processor, "val", cfg.eval_samples, cfg.seed, image_size=cfg.data_image_size)
    val.update(step=cfg.steps, elapsed_s=round(time.perf_counter() - start, 1))
    log["val"].append(val)
    if cfg.test_samples > 0:
        log["test_dense"] = evaluate(
            model, processor, "test", cfg.test_samples, 0, image_size=cfg.data_image_size
        )
    log["total_time_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps({"val": val, "test_dense": log.get("test_dense")}), flush=True)
    if output_dir is not None:
        save(model, processor, log, output_dir)
    return log


def save(
    model: PreTrainedModel, processor: ProcessorMixin, log: dict[str, Any], output_dir: str | Path
) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")


def parse_args(argv: Sequence[str] | None = None) -> tuple[RecipeConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m svlm.zoo.train_default", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output-dir", default=None, help="where to save the model (default: do not save)")
    parser.add_argument("--smoke", action="store_true", help="a tiny 2-layer model for a few steps (seconds)")
    defaults = RecipeConfig()
    for f in dataclasses.fields(RecipeConfig):
        if f.name == "extra":
            continue
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=None
        )
    args = parser.parse_args(argv)
    values = dict(SMOKE) if args.smoke else {}
    values.update(
        {
            k: v
            for k, v in vars(args).items()
            if k in {f.name for f in dataclasses.fields(RecipeConfig)} and v is not None
        }
    )
    return RecipeConfig(**values), args


def main(argv: Sequence[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    train(cfg, args.output_dir)


if __name__ == "__main__":
    main()

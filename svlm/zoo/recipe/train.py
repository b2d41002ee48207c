"""Stage 2 and the whole run: visual question answering, evaluation along the way, saving."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    PreTrainedModel,
)
from transformers.processing_utils import ProcessorMixin

from svlm.zoo.recipe.align import ALIGN_WORD_GROUPS, align_projector, word_token_ids
from svlm.zoo.recipe.attributes import POSITION_GROUPS, AttributeProbes, parse_attribute_groups
from svlm.zoo.recipe.batches import train_batch
from svlm.zoo.recipe.config import (
    RecipeConfig,
    check_config,
    parse_init_parts,
    parse_layers,
    parse_question_types,
)
from svlm.zoo.recipe.evaluate import evaluate
from svlm.zoo.recipe.graft import graft_positions
from svlm.zoo.recipe.losses import packed_loss
from svlm.zoo.recipe.model import build_model
from svlm.zoo.recipe.vision import pretrain_vision


def lr_at(cfg: RecipeConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: RecipeConfig, output_dir: str | Path | None = None, log_every: int = 10) -> dict[str, Any]:
    """Train, evaluate on the val split every ``eval_every`` steps and on the test split at the end, and
    save model, processor and ``training_log.json`` to ``output_dir`` (when given)."""
    threads_before = torch.get_num_threads()
    try:
        return _train(cfg, output_dir, log_every)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: RecipeConfig, output_dir: str | Path | None, log_every: int) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    attention_layers = parse_layers(cfg.attention_layers, cfg.num_layers)
    keyword_layers = parse_layers(cfg.keyword_layers, cfg.num_layers)
    phrase_layers = parse_layers(cfg.phrase_layers, cfg.num_layers)
    readout_types = (
        frozenset(parse_question_types(cfg.readout_types, "readout_types", cfg.benchmark))
        if cfg.readout_weight > 0
        else frozenset()
    )
    check_config(cfg)  # everything else, before stage 1's minutes
    model, processor = build_model(cfg)
    device = torch.device(cfg.device)
    model.to(device)
    if cfg.align_steps > 0:  # fail now rather than after stage 1
        for names in ALIGN_WORD_GROUPS.values():
            word_token_ids(processor.tokenizer, names)
    start = time.perf_counter()
    torch.set_num_threads(cfg.vision_threads)
    loaded = load_parts(model, cfg.init_from, parse_init_parts(cfg.init_parts)) if cfg.init_from else set()
    run_vision = cfg.vision_steps > 0 and "vision_tower" not in loaded
    vision_log = pretrain_vision(model, processor, cfg) if run_vision else []
    run_align = cfg.align_steps > 0 and "projector" not in loaded
    align_log = align_projector(model, processor, cfg) if run_align else []
    graft_log = graft_positions(model, processor, cfg) if cfg.position_graft_steps > 0 else []
    torch.set_num_threads(cfg.threads)
    if cfg.vision_lr_scale == 0:
        model.model.vision_tower.requires_grad_(False)
    if cfg.projector_lr_scale == 0:
        model.model.multi_modal_projector.requires_grad_(False)
    attribute_layers = parse_layers(cfg.attribute_layers, cfg.num_layers)
    probes = (
        AttributeProbes(cfg.hidden_size, attribute_layers, parse_attribute_groups(cfg.attribute_groups)).to(
            device
        )
        if cfg.attribute_weight > 0 and attribute_layers
        else None
    )
    position_probes = (
        AttributeProbes(
            cfg.hidden_size,
            attention_layers,
            parse_attribute_groups(cfg.position_readout_groups, "position_readout_groups", POSITION_GROUPS),
        ).to(device)
        if cfg.position_readout_weight > 0
        else None
    )
    scales = {
        "model.vision_tower.": cfg.vision_lr_scale,
        "model.multi_modal_projector.": cfg.projector_lr_scale,
    }
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    named = list(model.named_parameters())
    for prefix, heads in (("attribute_probes", probes), ("position_probes", position_probes)):
        if heads is not None:  # training-only heads, optimised with the model, discarded with the run
            named += [(f"{prefix}.{n}", p) for n, p in heads.named_parameters()]
    for name, param in named:
        if not param.requires_grad:
            continue
        scale = next((v for prefix, v in scales.items() if name.startswith(prefix)), 1.0)
        decays = param.ndim >= 2 and "embed" not in name
        groups.setdefault((scale, decays), []).append(param)
    opt = torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": cfg.weight_decay if decays else 0.0,
                "lr_scale": scale,
            }
            for (scale, decays), params in groups.items()
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    log: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_visual_tokens": cfg.num_visual_tokens,
        "torch_version": torch.__version__,
        "vision_pretraining": vision_log,
        "projector_alignment": align_log,
        "position_graft": graft_log,
        "steps": [],
        "val": [],
    }
    if cfg.init_from:
        log["continued_from"] = earlier_runs(cfg.init_from)

    def validate(step: int) -> dict[str, Any]:
        """Score the val split now and log it with the step and the time so far."""
        val = evaluate(
            model,
            processor,
            "val",
            cfg.eval_samples,
            cfg.seed,
            image_size=cfg.data_image_size,
            benchmark=cfg.benchmark,
        )
        val.update(step=step, elapsed_s=round(time.perf_counter() - start, 1))
        log["val"].append(val)
        return val

    window: list[float] = []
    window_acc: dict[str, list[float]] = {}
    window_attr: dict[str, list[float]] = {}
    last_step = cfg.stop_after or cfg.steps
    for step in range(last_step):
        model.train()
        batch = train_batch(cfg, processor, step).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step) * group["lr_scale"]
        loss, correct = packed_loss(
            model,
            batch,
            attention_layers,
            cfg.attention_weight,
            keyword_layers,
            phrase_layers,
            cfg.readout_weight,
            readout_types,
            probes,
            cfg.attribute_weight,
            # the attribute heads' accuracy costs host syncs: measured on logging steps only
            stats := {} if (step + 1) % log_every == 0 or step + 1 == last_step else None,
            position_probes,
            cfg.position_readout_weight,
        )
        for name, acc in (stats or {}).items():
            window_attr.setdefault(name, []).append(acc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in named if p.requires_grad], cfg.grad_clip)
        opt.step()
        window.append(float(loss.detach()))
        for qtype, ok in zip(batch.question_types, correct.tolist(), strict=True):
            window_acc.setdefault("all", []).append(ok)
            window_acc.setdefault(qtype, []).append(ok)
        if (step + 1) % log_every == 0 or step + 1 == last_step:
            entry = {
                "step": step + 1,
                "loss": float(np.mean(window)),
                "answer_acc": {k: round(float(np.mean(v)), 3) for k, v in window_acc.items()},
                "lr": lr_at(cfg, step),
                "elapsed_s": round(time.perf_counter() - start, 1),
            }
            if window_attr:
                entry["attribute_acc"] = {k: round(float(np.mean(v)), 3) for k, v in window_attr.items()}
            log["steps"].append(entry)
            window, window_acc, window_attr = [], {}, {}
            print(json.dumps(entry), flush=True)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < last_step:
            val = validate(step + 1)
            print(json.dumps({"val": val}), flush=True)
            if output_dir is not None:  # a partial model to use if the run is stopped
                log["train_time_s"] = round(time.perf_counter() - start, 1)
                save(model, processor, log, output_dir)
    log["train_time_s"] = round(time.perf_counter() - start, 1)
    model.eval()
    val = validate(last_step)
    if cfg.test_samples > 0:
        log["test_dense"] = evaluate(
            model,
            processor,
            "test",
            cfg.test_samples,
            0,
            image_size=cfg.data_image_size,
            benchmark=cfg.benchmark,
        )
    log["total_time_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps({"val": val, "test_dense": log.get("test_dense")}), flush=True)
    if output_dir is not None:
        save(model, processor, log, output_dir)
    return log


#: the parts of a recipe model `load_parts` copies, by attribute of ``model.model`` (the LM head is tied or
#: travels with the decoder)
PARTS: dict[str, str] = {
    "vision_tower": "vision_tower",
    "projector": "multi_modal_projector",
    "decoder": "language_model",
}


def load_parts(model: PreTrainedModel, path: str | Path, parts: set[str] | None = None) -> set[str]:
    """Copy the parts of the recipe model saved at ``path`` whose shapes fit into ``model``: the vision tower
    (required), the projector, and the decoder with the LM head, of those in ``parts`` (default all); returns
    the names loaded (`PARTS`)."""
    from transformers import LlavaForConditionalGeneration

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"init_from: {str(path)!r} is not a folder saved by the recipe (no config.json)"
        )
    saved = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    loaded: set[str] = set()
    for part, attribute in PARTS.items():
        if parts is not None and part not in parts:
            continue
        own, theirs = (
            getattr(model.model, attribute).state_dict(),
            getattr(saved.model, attribute).state_dict(),
        )
        if theirs.keys() == own.keys() and all(theirs[k].shape == own[k].shape for k in own):
            getattr(model.model, attribute).load_state_dict(theirs)
            loaded.add(part)
        elif part == "vision_tower":
            raise ValueError(
                f"init_from: the vision tower saved in {str(path)!r} does not fit this model's options"
            )
    if "decoder" in loaded:
        model.lm_head.load_state_dict(saved.lm_head.state_dict())
    return loaded


def earlier_runs(path: str | Path) -> dict[str, Any]:
    """What ``init_from`` started from, for the new run's log: the saved run's config, its test accuracy and,
    in turn, what it continued from (a chain of continuations stays reproducible from its logs)."""
    saved = Path(path) / "training_log.json"
    if not saved.is_file():
        return {"path": str(path), "config": None}
    earlier = json.loads(saved.read_text())
    steps = earlier.get("steps") or []
    return {
        "path": str(path),
        "config": earlier.get("config"),
        # fewer than the config's steps when that run was stopped and continued from a partial save
        "trained_steps": steps[-1]["step"] if steps else 0,
        "test_dense": earlier.get("test_dense"),
        "continued_from": earlier.get("continued_from"),
    }


def save(
    model: PreTrainedModel, processor: ProcessorMixin, log: dict[str, Any], output_dir: str | Path
) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")

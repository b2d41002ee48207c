"""Greedy evaluation on the benchmark, scored like `svlm test`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import (
    PreTrainedModel,
)
from transformers.processing_utils import ProcessorMixin

from svlm.data.prompts import build_conversation


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
    benchmark: str = "shapes",
) -> dict[str, Any]:
    """Greedy answers on ``num_samples`` of the shapes ``split``, scored like ``svlm test`` (normalised exact
    match), overall and per question type; ``strategy``/``budget`` prune with ``svlm.sparsify``."""
    import svlm
    from svlm.data.benchmarks import load_benchmark
    from svlm.metrics import exact_match

    model.eval()
    ds = load_benchmark(benchmark, split=split, limit=num_samples, seed=seed, image_size=image_size)
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
        inputs = inputs.to(model.device)
        ids = runner.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        texts = [
            t.strip()
            for t in tok.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        ]
        for r, text in zip(rows, texts, strict=True):
            s = exact_match(text, r["answers"], rule="vqa")  # svlm-shapes scoring
            scores.setdefault("all", []).append(s)
            scores.setdefault(r["category"], []).append(s)
            preds.append(text)
    out = {k: float(np.mean(v)) for k, v in scores.items()}
    out["num_samples"] = len(ds)
    return out

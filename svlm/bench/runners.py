"""The rows' callables: synthetic inputs, the unwrapped Hugging Face model, svlm strategies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from svlm.bench.timing import Runner

__all__ = ["DEFAULT_QUESTION", "Case", "cast_pixels", "hf_runner", "label_for", "make_inputs", "svlm_runner"]


DEFAULT_QUESTION = "What is shown in the image? Answer the question using a single word or phrase."


def label_for(name: str, budget: float | None, batch: int, main_batch: int, execution: str = "eager") -> str:
    """``fastv-64``, ``fastv-64@b8``; a fast execution mode adds ``+<mode>``: ``fastv-64+cuda_graphs@b8``."""
    label = name if budget is None else f"{name}-{budget:g}"
    if execution != "eager":
        label += f"+{execution}"
    return label if batch == main_batch else f"{label}@b{batch}"


def make_inputs(
    processor: Any, batch: int, image_size: int | None, question: str, device: torch.device
) -> Any:
    from svlm.testing import random_image

    size = (image_size, image_size) if image_size else (336, 336)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    images = [random_image(seed=i, size=size) for i in range(batch)]
    return processor(images=images, text=[prompt] * batch, padding=True, return_tensors="pt").to(device)


def cast_pixels(inputs: Any, model: nn.Module) -> Any:
    dtype = next(model.parameters()).dtype
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs and inputs[key].is_floating_point():
            inputs[key] = inputs[key].to(dtype)
    return inputs


def generate_kwargs(new_tokens: int) -> dict[str, Any]:
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}


@dataclass
class Case:
    """What the rows of one table share: the model, its inputs, and how much to generate."""

    section: str
    model: nn.Module
    inputs: Any
    device: torch.device
    batch: int
    new_tokens: int
    attn_implementation: str

    def runner(
        self,
        label: str,
        strategy: str,
        call: Callable[[], Any] | None,
        kind: type[Runner] = Runner,
        **kwargs: Any,
    ) -> Runner:
        return kind(
            label=label,
            section=self.section,
            strategy=strategy,
            call=call,
            model=self.model,
            inputs=self.inputs,
            device=self.device,
            batch=self.batch,
            new_tokens=self.new_tokens,
            attn_implementation=self.attn_implementation,
            **kwargs,
        )


def hf_runner(case: Case, label: str = "hf") -> Runner:
    """The unwrapped Hugging Face model: the reference of every speed-up."""
    model, inputs, kwargs = case.model, case.inputs, generate_kwargs(case.new_tokens)
    return case.runner(label, "hf", lambda: model.generate(**inputs, **kwargs))


def svlm_runner(
    case: Case,
    label: str,
    name: str,
    budget: float | None,
    execution: str = "eager",
    bucket: int | None = None,
) -> Runner:
    import svlm

    strategy = svlm.build_strategy(name) if budget is None else svlm.build_strategy(name, budget=budget)
    sparse = svlm.sparsify(case.model, strategy, execution=execution, bucket=bucket)
    inputs, kwargs = case.inputs, generate_kwargs(case.new_tokens)

    def call() -> Any:
        return sparse.generate(**inputs, **kwargs)

    return case.runner(label, name, call, budget_target=budget, sparse=sparse, execution=execution)

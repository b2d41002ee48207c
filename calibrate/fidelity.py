"""Fidelity of a pruned run to the dense model on the same inputs, and the runs that measure it.

Two objectives (lower is better), both read at the answer position — the last prompt token, whose
next-token distribution is the first answer token:

* ``kl``: ``KL(p_dense || p_pruned)`` of the next-token distribution;
* ``cosine``: ``1 - cos(h_dense, h_pruned)`` of the last token's final hidden state (after the final
  norm), VFlowOpt's criterion.

Both are computed for every run; the calibrator optimises the selected one. Only the last position's logits
(``logits_to_keep=1``) and hidden state (a hook on the language model) are kept, so a 7B model with a 32k
vocabulary costs a few hundred kilobytes per sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import svlm
from svlm.adapters import adapter_for

__all__ = [
    "OBJECTIVES",
    "Answer",
    "fidelity",
    "forward_answer",
    "generate_answer",
    "tokenize",
]

OBJECTIVES: tuple[str, ...] = ("kl", "cosine")


@dataclass
class Answer:
    """What a run predicts at the answer position: log-probabilities [b, V] and final hidden state [b, d]."""

    logprobs: torch.Tensor
    hidden: torch.Tensor

    def cpu(self) -> Answer:
        return Answer(self.logprobs.detach().float().cpu(), self.hidden.detach().float().cpu())

    def index(self, rows: list[int]) -> Answer:
        return Answer(self.logprobs[rows], self.hidden[rows])

    @staticmethod
    def cat(parts: list[Answer]) -> Answer:
        return Answer(torch.cat([p.logprobs for p in parts]), torch.cat([p.hidden for p in parts]))


def fidelity(dense: Answer, pruned: Answer) -> dict[str, torch.Tensor]:
    """Per-sample ``kl`` and ``cosine`` distance of a pruned run to the dense one (lower is better)."""
    p, q = dense.logprobs.float(), pruned.logprobs.float().to(dense.logprobs.device)
    kl = F.kl_div(q, p, log_target=True, reduction="none").sum(-1).clamp_min(0)
    cos = F.cosine_similarity(dense.hidden.float(), pruned.hidden.float().to(dense.hidden.device), dim=-1)
    return {"kl": kl, "cosine": 1 - cos}


def check_objective(name: str) -> str:
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}.")
    return name


def tokenize(processor: Any, batch: Mapping[str, Any], device: torch.device) -> Any:
    """Chat template + processor (left padding), as the evaluator does, on ``device``."""
    from svlm.module import VLMEvaluator

    prompts = [
        processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        for conv in VLMEvaluator.conversations(batch)
    ]
    inputs = processor(images=list(batch["images"]), text=prompts, padding=True, return_tensors="pt")
    return inputs.to(device)


@contextmanager
def _last_hidden(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the language model's last-position output (after its final norm) of every call."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        captured.append(hidden[:, -1].detach())  # left padding: the last slot is the last prompt token

    handle = adapter_for(model).language_model.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def forward_answer(
    model: nn.Module, inputs: Mapping[str, Any], strategy: Any = "dense"
) -> tuple[Answer, Any]:
    """One prefill with ``strategy``: the answer-position prediction and the pruning ``Report``."""
    sparse = svlm.sparsify(model, strategy)
    try:
        with _last_hidden(model) as hidden:
            out = sparse(**inputs, logits_to_keep=1, use_cache=False)
        logprobs = out.logits[:, -1].float().log_softmax(-1)
        return Answer(logprobs, hidden[0].float()), sparse.last_report
    finally:
        sparse.detach()


@torch.no_grad()
def generate_answer(
    model: nn.Module, processor: Any, inputs: Mapping[str, Any], strategy: Any, max_new_tokens: int
) -> tuple[list[str], Answer, Any]:
    """Greedy answers plus the answer-position prediction of the same run's prefill, and its ``Report``."""
    tokenizer = getattr(processor, "tokenizer", processor)
    sparse = svlm.sparsify(model, strategy)
    try:
        with _last_hidden(model) as hidden:
            out = sparse.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        new_ids = out.sequences[:, inputs["input_ids"].shape[1] :]
        answers = [t.strip() for t in tokenizer.batch_decode(new_ids, skip_special_tokens=True)]
        answer = Answer(out.logits[0].float().log_softmax(-1), hidden[0].float())
        return answers, answer, sparse.last_report
    finally:
        sparse.detach()

"""Which prompt tokens SparseVLM rates the image with ("raters"), on a benchmark's own prompts.

    python -m svlm.diagnostics.raters --benchmark scenes --limit 100 --output results/raters/scenes.json

SparseVLM scores visual tokens by the attention of its raters: the text tokens after the image whose input
embeddings match the visual tokens more than the average text token does. Its text guidance can only help
when the raters include words of the question; when they are the prompt's fixed instruction ("Answer the
question using a single word or phrase.") every question scores the image alike. This report runs the
model's prefill with SparseVLM on each prompt exactly as ``svlm test`` tokenises it and records, per prompt,
the raters and whether each lies inside the question's text; the summary gives the share of raters inside
the question, the share of prompts with at least one, and the most frequent rater tokens.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from svlm.diagnostics.prompt_tokens import question_token_mask
from svlm.sparse import sparsify
from svlm.strategies.base import PrefillContext
from svlm.strategies.sparsevlm import SparseVLM

__all__ = ["RaterRecorder", "rater_report", "summarize", "main"]


class RaterRecorder(SparseVLM):
    """SparseVLM that also keeps, for each prefill, the prompt ids and the raters it chose ([b, n] each)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def prepare(self, ctx: PrefillContext) -> None:
        super().prepare(ctx)
        self.calls.append((ctx.input_ids.detach().cpu(), ctx.scratch["raters"].detach().cpu()))


def rater_report(
    evaluator: Any, batches: Iterable[Mapping[str, Any]], **sparsevlm_kwargs: Any
) -> list[dict[str, Any]]:
    """One record per sample: its raters (token text, position) and whether each is a word of the question.

    ``evaluator`` is a :class:`svlm.module.VLMEvaluator` (its model is loaded here if needed): prompts are
    tokenised by it, as ``svlm test`` does. ``sparsevlm_kwargs`` go to SparseVLM (the raters do not depend on
    them: every version picks them the same way before the first layer).
    """
    evaluator.configure_model()
    tokenizer = getattr(evaluator.processor, "tokenizer", evaluator.processor)
    recorder = RaterRecorder(**sparsevlm_kwargs)
    model = sparsify(evaluator.vlm, recorder)
    records: list[dict[str, Any]] = []
    for batch in batches:
        inputs = evaluator.tokenize(batch)
        prompts = [
            evaluator.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            for conv in evaluator.conversations(batch)
        ]
        recorder.calls.clear()
        with torch.no_grad():
            model(**inputs)
        ids, raters = recorder.calls[0]
        for i, question in enumerate(batch["questions"]):
            row = ids[i].tolist()
            in_question = question_token_mask(tokenizer, prompts[i], question, row)
            positions = raters[i].nonzero().flatten().tolist()
            words = [tokenizer.decode([row[p]]).strip() for p in positions]
            records.append(
                {
                    "id": batch["ids"][i],
                    "question": question,
                    "raters": words,
                    "positions": positions,
                    # a word of the question: inside its text and holding a letter or digit (not "?")
                    "in_question": None
                    if in_question is None
                    else [
                        in_question[p] and any(c.isalnum() for c in w)
                        for p, w in zip(positions, words, strict=True)
                    ],
                }
            )
    return records


def summarize(records: Sequence[Mapping[str, Any]], top: int = 20) -> dict[str, Any]:
    """Mean raters per prompt, shares inside the question, most frequent rater tokens."""
    if not records:
        raise ValueError("no samples: nothing to summarize")
    known = [r for r in records if r["in_question"] is not None]
    n_raters = sum(len(r["raters"]) for r in known)
    summary: dict[str, Any] = {
        "samples": len(records),
        "mean_raters": sum(len(r["raters"]) for r in records) / len(records),
        "samples_located": len(known),  # those whose question could be found among the prompt's tokens
        "rater_share_question_words": (sum(sum(r["in_question"]) for r in known) / n_raters)
        if n_raters
        else None,
        "samples_with_question_word": (sum(any(r["in_question"]) for r in known) / len(known))
        if known
        else None,
        "top_raters": Counter(t for r in records for t in r["raters"]).most_common(top),
    }
    return summary


def _format(summary: Mapping[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.0f}%"

    top = ", ".join(f"{t!r} {c}" for t, c in summary["top_raters"][:12])
    return (
        f"{summary['samples']} prompts; {summary['mean_raters']:.1f} raters per prompt; "
        f"{pct(summary['rater_share_question_words'])} of raters are question words; "
        f"{pct(summary['samples_with_question_word'])} of prompts have one "
        f"(question located in {summary['samples_located']} prompts)\nmost frequent raters: {top}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from svlm.data import VLMDataModule
    from svlm.module import VLMEvaluator
    from svlm.zoo import DEFAULT_MODEL_NAME

    parser = argparse.ArgumentParser(
        prog="python -m svlm.diagnostics.raters", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default=f"zoo:{DEFAULT_MODEL_NAME}", help="as svlm test's model.model")
    parser.add_argument("--benchmark", default="scenes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--output", type=Path, default=None, help="JSON file: summary and per-sample raters")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.batch_size < 1:
        parser.error(f"--limit and --batch-size must be >= 1; got {args.limit} and {args.batch_size}")
    try:
        evaluator = VLMEvaluator(model=args.model, dtype=args.dtype)
        data = VLMDataModule(
            benchmark=args.benchmark, split=args.split, limit=args.limit, batch_size=args.batch_size
        )
        data.setup("test")
        batches = tqdm(data.test_dataloader(), desc="raters", unit="batch")
        records = rater_report(evaluator, batches)
    except (ValueError, LookupError) as e:  # a bad model, benchmark or split: the message, not a traceback
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    summary = summarize(records)
    print(f"{args.model} on {args.benchmark}/{args.split}:\n{_format(summary)}")
    result = {"model": args.model, "benchmark": args.benchmark, "split": args.split, "summary": summary}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({**result, "samples": records}, indent=1))
        print(f"written: {args.output}")
    return result


if __name__ == "__main__":
    main()

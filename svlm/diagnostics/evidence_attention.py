"""At which decoder layers does the model's attention point at the objects a question is about?

    python -m svlm.diagnostics.evidence_attention --limit 50 --output-dir results/evidence_attention

In-LLM pruning methods score visual tokens by attention at a chosen layer: FastV and PyramidDrop by the last
prompt token's, SparseVLM by its raters' (:mod:`svlm.diagnostics.raters`). Such a score can only keep the
right tokens at layers whose attention lands on them. On svlm-scenes every image notes which tokens cover
the question's evidence objects (:mod:`svlm.data.evidence`), so this report measures, per layer, the share
of those rows' attention to visual tokens (mean over heads, as the methods score) that falls on evidence
tokens, next to the share uniform attention would give (evidence tokens / visual tokens); the question's key
word (the last token of the words naming the asked object, from the annotations) is measured as a third
row. The rows come from svlm's engine, as a strategy gets them (:class:`EvidenceProbe`: computed from each
layer's own q/k, with SDPA or FlashAttention, no attention matrix), on svlm-scenes samples generated in the
same process; it writes ``evidence_attention.json``, ``.csv`` and ``.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from svlm.data.evidence import evidence_scores, find_note
from svlm.diagnostics.prompt_tokens import token_at_char
from svlm.sparse import sparsify
from svlm.strategies.base import LayerView, PrefillContext, Selection, Strategy
from svlm.strategies.sparsevlm import select_raters

__all__ = ["ROWS", "EvidenceProbe", "evidence_attention", "write_outputs", "main"]

#: the attention rows measured: the last prompt token (FastV, PyramidDrop), SparseVLM's raters and the
#: question's key word (the last token of the words naming the asked object, from the annotations)
ROWS: tuple[str, ...] = ("last_token", "raters", "keyword")
LABELS: dict[str, str] = {
    "last_token": "last prompt token (FastV, PyramidDrop)",
    "raters": "raters (SparseVLM)",
    "keyword": "the question's key word",
}


def _evidence_mask(pixel_values: torch.Tensor, num_visual: int) -> torch.Tensor:
    grid = math.isqrt(num_visual)
    if grid * grid != num_visual:
        raise ValueError(
            f"evidence attention needs a square grid of visual tokens per image, got {num_visual}"
        )
    return evidence_scores(find_note(pixel_values), grid) > 0


class EvidenceProbe(Strategy):
    """Prunes nothing; after every decoder layer but the last it asks the engine for the attention rows of
    the last prompt token, SparseVLM's raters and the question's key word (rows only, from the layer's own
    q/k, as the methods get them: any attention implementation) and keeps, per sample and row kind, the share
    of their visual attention that lands on evidence tokens."""

    def __init__(self) -> None:
        super().__init__(None)
        self.keywords: torch.Tensor | None = None  # [b] prompt position of each key word (-1: unknown)
        self.shares: dict[int, dict[str, torch.Tensor]] = {}  # layer -> kind -> [b] (NaN: no such row)
        self.uniform: torch.Tensor | None = None  # [b] evidence tokens / visual tokens

    def prune_layers(self, ctx: PrefillContext) -> list[int]:
        return list(range(ctx.info.num_layers - 1))

    def prepare(self, ctx: PrefillContext) -> None:
        pixel_values = ctx.inputs.get("pixel_values", ctx.request_inputs.get("pixel_values"))
        if pixel_values is None or pixel_values.ndim != 4 or len(pixel_values) != ctx.batch_size:
            raise ValueError(
                "evidence attention needs one image per sample as pixel_values [batch, 3, H, W] "
                f"(LLaVA-1.5-style models); got {None if pixel_values is None else tuple(pixel_values.shape)}"
            )
        visual = ctx.visual & ctx.valid
        evidence = torch.zeros_like(visual)
        for b, n in enumerate(visual.sum(-1).tolist()):  # one host look-up per image, as the oracle's
            mask = _evidence_mask(pixel_values[b], int(n)).to(visual.device)
            evidence[b, visual[b]] = mask
        slots = torch.arange(visual.shape[1], device=visual.device)
        raters, _ = select_raters(ctx.inputs_embeds, ctx.visual, ctx.valid)
        keywords = (
            self.keywords
            if self.keywords is not None
            else torch.full((ctx.batch_size,), -1, device=visual.device)
        )
        ctx.scratch["kinds"] = {
            "last_token": slots == torch.where(ctx.valid, slots, -1).amax(-1, keepdim=True),
            "raters": raters,
            "keyword": slots == keywords.to(visual.device).unsqueeze(-1),
        }
        ctx.scratch["evidence"] = evidence
        self.uniform = evidence.sum(-1).float() / visual.sum(-1).clamp_min(1).float()
        self.shares = {}

    def attention_rows(self, ctx: PrefillContext, view: LayerView) -> torch.Tensor:
        rows = torch.zeros_like(view.valid)
        for kind in ctx.scratch["kinds"].values():
            rows |= kind
        return rows & view.valid  # nothing is pruned: slots are prompt positions

    def select(self, ctx: PrefillContext, view: LayerView) -> Selection:
        probs = view.attention[:, 0]  # [b, r, n] head mean
        visual = (view.visual & view.valid).unsqueeze(1).float()
        evidence = ctx.scratch["evidence"].unsqueeze(1).float()
        share = (probs * evidence).sum(-1) / (probs * visual).sum(-1).clamp_min(1e-12)  # [b, r]
        self.shares[view.layer] = {}
        for name, kind in ctx.scratch["kinds"].items():
            member = kind.gather(1, view.rows) & view.rows_valid  # [b, r]
            count = member.sum(-1)
            mean = (share * member).sum(-1) / count.clamp_min(1)
            self.shares[view.layer][name] = torch.where(count > 0, mean, torch.nan)
        return Selection(keep=view.visual & view.valid)


def evidence_attention(
    evaluator: Any,
    batches: Iterable[Mapping[str, Any]],
    keyword_ends: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Per layer, the mean share of each row kind's visual attention that lands on evidence tokens.

    ``evaluator`` is a :class:`svlm.module.VLMEvaluator` (any attention implementation); the batches come
    from the svlm-scenes benchmark (their images must be noted in this process). ``keyword_ends`` (sample
    id -> the svlm-scenes row's ``keyword_end``: where, in the question, the words naming the asked object
    end) adds the key word's row; a row kind no sample has is ``None``. The last layer is not measured: no
    method prunes after it.
    """
    evaluator.configure_model()
    tokenizer = getattr(evaluator.processor, "tokenizer", evaluator.processor)
    probe = EvidenceProbe()
    model = sparsify(evaluator.vlm, probe)
    totals: dict[int, dict[str, float]] = {}
    counts = dict.fromkeys(ROWS, 0)
    uniform_total, samples = 0.0, 0
    for batch in batches:
        inputs = evaluator.tokenize(batch)
        keywords = _keyword_positions(evaluator, tokenizer, batch, inputs, keyword_ends)
        probe.keywords = torch.tensor([-1 if k is None else k for k in keywords])
        with torch.no_grad():
            model(**inputs)
        for layer, kinds in probe.shares.items():
            for kind, values in kinds.items():
                found = ~values.isnan()
                totals.setdefault(layer, dict.fromkeys(ROWS, 0.0))[kind] += float(values[found].sum())
                if layer == 0:
                    counts[kind] += int(found.sum())
        uniform_total += float(probe.uniform.sum())
        samples += len(batch["ids"])
    if samples == 0:
        raise ValueError("no samples: nothing to measure")
    return {
        "samples": samples,
        "uniform": uniform_total / samples,
        "rows_measured": counts,  # samples each row kind was found in
        "layers": [
            {"layer": layer, **{k: v / counts[k] if counts[k] else None for k, v in totals[layer].items()}}
            for layer in sorted(totals)
        ],
    }


def _keyword_positions(
    evaluator: Any,
    tokenizer: Any,
    batch: Mapping[str, Any],
    inputs: Mapping[str, Any],
    keyword_ends: Mapping[str, int] | None,
) -> list[int | None]:
    """Per sample, the position of the last token of the question's key words (``None`` if unknown)."""
    if not keyword_ends:
        return [None] * len(batch["ids"])
    positions: list[int | None] = []
    for i, conv in enumerate(evaluator.conversations(batch)):
        end = keyword_ends.get(batch["ids"][i])
        prompt = evaluator.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        start = prompt.rfind(batch["questions"][i])
        row = inputs["input_ids"][i].tolist()
        ok = end is not None and end > 0 and start >= 0
        positions.append(token_at_char(tokenizer, prompt, start + int(end) - 1, row) if ok else None)
    return positions


def write_outputs(result: Mapping[str, Any], out_dir: Path, title: str) -> list[Path]:
    """``evidence_attention.json``, ``.csv`` (one row per layer) and ``.png`` (share vs layer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"evidence_attention.{ext}" for ext in ("json", "csv", "png")]
    paths[0].write_text(json.dumps(result, indent=1))
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["layer", *ROWS, "uniform"])
        writer.writeheader()
        for row in result["layers"]:
            writer.writerow({**row, "uniform": result["uniform"]})
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    layers = [r["layer"] for r in result["layers"]]
    for row in ROWS:
        if all(r[row] is not None for r in result["layers"]):
            ax.plot(layers, [r[row] for r in result["layers"]], marker="o", ms=3, label=LABELS[row])
    ax.axhline(result["uniform"], color="grey", ls="--", label="uniform attention")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("share of visual attention on evidence")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)
    return paths


def _format(result: Mapping[str, Any]) -> str:
    lines = [f"layer  {'  '.join(f'{r:>10}' for r in ROWS)}   (uniform {result['uniform']:.3f})"]

    def cell(value: float | None) -> str:
        return f"{'-':>10}" if value is None else f"{value:>10.3f}"

    lines += [f"{r['layer']:>5}  {'  '.join(cell(r[k]) for k in ROWS)}" for r in result["layers"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from svlm.data import VLMDataModule
    from svlm.module import VLMEvaluator
    from svlm.zoo import DEFAULT_MODEL_NAME

    parser = argparse.ArgumentParser(
        prog="python -m svlm.diagnostics.evidence_attention", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default=f"zoo:{DEFAULT_MODEL_NAME}", help="as svlm test's model.model")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=5, help="attention maps of every layer are held")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--output-dir", type=Path, default=Path("results/evidence_attention"))
    args = parser.parse_args(argv)
    if args.limit < 1 or args.batch_size < 1:
        parser.error(f"--limit and --batch-size must be >= 1; got {args.limit} and {args.batch_size}")
    result = {"model": args.model, "benchmark": "scenes", "split": args.split}
    try:
        evaluator = VLMEvaluator(model=args.model, dtype=args.dtype)
        data = VLMDataModule(
            benchmark="scenes", split=args.split, limit=args.limit, batch_size=args.batch_size
        )
        data.setup("test")
        raw = data.test_set.raw
        keyword_ends = dict(zip(raw["id"], raw["keyword_end"], strict=True))
        batches = tqdm(data.test_dataloader(), desc="evidence attention", unit="batch")
        result.update(evidence_attention(evaluator, batches, keyword_ends))
    except (ValueError, LookupError) as e:  # a bad model, split or image: the message, not a traceback
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"{args.model} on scenes/{args.split}, {result['samples']} samples:\n{_format(result)}")
    title = f"{args.model}: {result['samples']} svlm-scenes {args.split} samples"
    paths = write_outputs(result, args.output_dir, title)
    print("written: " + ", ".join(str(p) for p in paths))
    return result


if __name__ == "__main__":
    main()

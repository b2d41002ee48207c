"""At which decoder layers does the model's attention point at the objects a question is about?

    python -m svlm.diagnostics.evidence_attention --limit 50 --output-dir results/evidence_attention

In-LLM pruning methods score visual tokens by attention at a chosen layer: FastV and PyramidDrop by the last
prompt token's, SparseVLM by its raters' (:mod:`svlm.diagnostics.raters`). Such a score can only keep the
right tokens at layers whose attention lands on them. On svlm-scenes every image notes which tokens cover
the question's evidence objects (:mod:`svlm.data.evidence`), so this report measures, per layer, the share
of those rows' attention to visual tokens (mean over heads, as the methods score) that falls on evidence
tokens, next to the share uniform attention would give (evidence tokens / visual tokens); the question's key
word (the last token of the words naming the asked object, from the annotations) is measured as a third
row. It runs the model with eager attention (the only implementation that returns attention maps) on
svlm-scenes samples generated in the same process, and writes ``evidence_attention.json``, ``.csv`` and
``.png``.
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

from svlm.adapters import adapter_for
from svlm.data.evidence import evidence_scores, find_note
from svlm.diagnostics.prompt_tokens import token_at_char
from svlm.strategies.sparsevlm import select_raters

__all__ = ["ROWS", "evidence_attention", "write_outputs", "main"]

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


def evidence_attention(
    evaluator: Any,
    batches: Iterable[Mapping[str, Any]],
    keyword_ends: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Per layer, the mean share of each row kind's visual attention that lands on evidence tokens.

    ``evaluator`` is a :class:`svlm.module.VLMEvaluator` loaded with ``attn_implementation="eager"``; the
    batches come from the svlm-scenes benchmark (their images must be noted in this process).
    ``keyword_ends`` (sample id -> the svlm-scenes row's ``keyword_end``: where, in the question, the words
    naming the asked object end) adds the key word's row; a row kind no sample has is ``None``.
    """
    if evaluator.attn_implementation != "eager":
        raise ValueError(
            f"evidence attention reads attention maps, which only attn_implementation='eager' returns; "
            f"got {evaluator.attn_implementation!r}"
        )
    evaluator.configure_model()
    vlm = evaluator.vlm
    adapter = adapter_for(vlm)
    num_layers = adapter.info().num_layers
    totals = {row: torch.zeros(num_layers, dtype=torch.float64) for row in ROWS}
    counts = dict.fromkeys(ROWS, 0)
    uniform_total, samples = 0.0, 0
    tokenizer = getattr(evaluator.processor, "tokenizer", evaluator.processor)
    seen: dict[str, torch.Tensor] = {}

    def keep_embeds(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = adapter.language_model.register_forward_pre_hook(keep_embeds, with_kwargs=True)
    try:
        for batch in batches:
            inputs = evaluator.tokenize(batch)
            with torch.no_grad():
                out = vlm(**inputs, output_attentions=True)
            if not out.attentions or out.attentions[0] is None:
                raise RuntimeError("the model returned no attention maps; load it with eager attention")
            pixel_values = inputs.get("pixel_values")
            if (
                pixel_values is None
                or pixel_values.ndim != 4
                or len(pixel_values) != len(inputs["input_ids"])
            ):
                raise ValueError(
                    "evidence attention needs one image per sample as pixel_values [batch, 3, H, W] "
                    f"(LLaVA-1.5-style models); {type(vlm).__name__} gives "
                    f"{None if pixel_values is None else tuple(pixel_values.shape)}"
                )
            valid = inputs["attention_mask"].bool()
            visual = adapter.visual_mask(inputs["input_ids"]) & valid
            keywords = _keyword_positions(evaluator, tokenizer, batch, inputs, keyword_ends)
            raters, _ = select_raters(seen["embeds"], visual, valid)
            # [layers, batch, n, n]: head-mean attention, as the methods score
            maps = torch.stack([a.float().mean(1) for a in out.attentions])
            for b in range(maps.shape[1]):
                vis = visual[b].nonzero().flatten()
                evidence = _evidence_mask(pixel_values[b], len(vis)).to(vis.device)
                to_visual = maps[:, b][:, :, vis]  # [layers, n, n_visual]
                share = to_visual[..., evidence].sum(-1) / to_visual.sum(-1).clamp_min(1e-12)  # [layers, n]
                last = int(valid[b].nonzero().max())
                rows = {"last_token": share[:, last], "raters": share[:, raters[b]].mean(-1)}
                if keywords[b] is not None:
                    rows["keyword"] = share[:, keywords[b]]
                for kind, values in rows.items():
                    totals[kind] += values.double().cpu()
                    counts[kind] += 1
                uniform_total += float(evidence.float().mean())
                samples += 1
    finally:
        hook.remove()
    if samples == 0:
        raise ValueError("no samples: nothing to measure")
    return {
        "samples": samples,
        "uniform": uniform_total / samples,
        "rows_measured": counts,  # samples each row kind was found in
        "layers": [
            {
                "layer": layer,
                **{row: float(totals[row][layer]) / counts[row] if counts[row] else None for row in ROWS},
            }
            for layer in range(num_layers)
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
        evaluator = VLMEvaluator(model=args.model, dtype=args.dtype, attn_implementation="eager")
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

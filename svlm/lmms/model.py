"""``lmms-eval --model svlm``: any lmms-eval image task through ``svlm.sparsify``.

    lmms-eval --model svlm \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,strategy=sparsevlm,budget=64 \\
        --tasks gqa,pope,mme --batch_size 8

Generation is exactly ``svlm test``'s: the same model loading, chat template (one image entry per visual,
then lmms-eval's prompt text), left-padded batches, greedy decoding and stripping, so the same samples get
the same answers in both. Requests are batched in lmms-eval's document order per task and generation
settings; one process evaluates every document (run one lmms-eval process per device). svlm's cost report
of every task (budget both ways, FLOPs ratio, KV-cache bytes, visual tokens) is logged, added to
lmms-eval's ``throughput`` summary of the results file, and written as JSON to ``report=<path>`` if given.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger as log
from PIL import Image

from svlm.module import StrategyPoint, VLMEvaluator
from svlm.zoo import DEFAULT_MODEL_NAME


def _batch_size(value: Any) -> int:
    if value is None:
        return 1
    text = str(value)
    if text.startswith("auto"):
        raise ValueError(f"batch_size {text!r} is not supported by --model svlm; pass a number (e.g. 8)")
    size = int(text)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    return size


def _greedy_limit(gen_kwargs: Mapping[str, Any], default: int) -> int:
    """max_new_tokens of a request; anything but greedy decoding is refused (svlm evaluates greedily)."""
    sampling = bool(gen_kwargs.get("do_sample", False)) or float(gen_kwargs.get("temperature", 0) or 0) > 0
    if sampling or int(gen_kwargs.get("num_beams", 1) or 1) != 1:
        raise ValueError(
            f"--model svlm decodes greedily (do_sample=False, temperature=0, num_beams=1); the task asks "
            f"for {dict(gen_kwargs)}"
        )
    return int(gen_kwargs.get("max_new_tokens", default))


def _truncate(text: str, until: Sequence[str]) -> str:
    """Cut the answer at the first stop sequence (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class SVLM(lmms):
    """An lmms-eval model that prunes visual tokens with svlm.

    Args (``--model_args``, comma-separated ``key=value``):
        pretrained: Hugging Face id, local folder, ``zoo:<name>`` or ``tiny:<family>`` (``svlm.load_vlm``;
            default: svlm's default model, ``zoo:svlm-scenes-llava``).
        strategy: svlm strategy name or class path (default ``dense``); budget: its visual-token budget.
        dtype, attn_implementation, device: as for ``svlm test`` (``auto`` dtype: bf16 on CUDA, fp32 on CPU).
        seed: the torch seed before each batch (plus the batch's first document index), as ``svlm test``.
        report: JSON file for svlm's per-task cost report.
        max_new_tokens: limit when a task sets none (default 16); cpu_threads: torch's CPU threads.
        any other key: a keyword argument of the strategy (e.g. ``k=2,ratio=0.5`` for fastv).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str = f"zoo:{DEFAULT_MODEL_NAME}",
        strategy: str = "dense",
        budget: float | None = None,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        device: str | None = None,
        batch_size: int | str | None = 1,
        seed: int = 0,
        report: str | None = None,
        max_new_tokens: int = 16,
        max_batch_size: int | None = None,
        cpu_threads: int | None = None,
        **strategy_kwargs: Any,
    ) -> None:
        super().__init__()
        if strategy == "dense" and (budget is not None or strategy_kwargs):
            raise ValueError(
                f"strategy 'dense' takes no budget or arguments; got budget={budget}, {strategy_kwargs}"
            )
        point = StrategyPoint(strategy=str(strategy), budget=budget, kwargs=dict(strategy_kwargs))
        self.engine = VLMEvaluator(
            model=str(pretrained),
            strategies=[point],
            dtype=dtype,
            attn_implementation=attn_implementation,
            max_new_tokens=max_new_tokens,
            seed=seed,
            latency_warmup=False,
            journal=False,
            cpu_threads=cpu_threads,
        )
        self.pretrained = str(pretrained)
        self.default_max_new_tokens = int(max_new_tokens)
        self.point_label = self.engine.point_configs[0].label
        self._device_name = device
        self.batch_size_per_gpu = _batch_size(batch_size)
        self.report_path = Path(report) if report else None
        self.task_dict: dict[str, Any] = {}
        self.costs: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._load()

    def _load(self) -> None:
        from svlm.models import load_vlm, resolve_device

        e = self.engine
        device = resolve_device(self._device_name or "auto")
        vlm, processor, family = load_vlm(e.model_name, e.dtype_name, device, e.attn_implementation)
        for p in vlm.parameters():
            p.requires_grad_(False)
        e.vlm, e.processor, e.family = vlm, processor, family

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> Any:
        return next(self.engine.vlm.parameters()).device

    # -- requests ----------------------------------------------------------------------------------
    def _chunks(self, requests: Sequence[Instance]) -> Iterator[list[tuple[int, tuple]]]:
        """Batches of (request position, args), in request order, sharing task, split and settings."""
        groups: dict[str, list[tuple[int, tuple]]] = {}
        for pos, req in enumerate(requests):
            ctx, gen_kwargs, _, _, task, split = req.args
            key = json.dumps([task, split, {k: repr(v) for k, v in sorted(gen_kwargs.items())}])
            groups.setdefault(key, []).append((pos, req.args))
        for items in groups.values():
            for i in range(0, len(items), self.batch_size):
                yield items[i : i + self.batch_size]

    def _batch(self, chunk: Sequence[tuple[int, tuple]]) -> dict[str, Any]:
        """The batch ``svlm test`` would build: one conversation per request, its image(s) alongside."""
        conversations, images = [], []
        for _, (ctx, _, doc_to_visual, doc_id, task, split) in chunk:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            visuals = [v for v in visuals if isinstance(v, Image.Image)]
            content = [{"type": "image"}] * len(visuals) + [{"type": "text", "text": ctx}]
            conversations.append([{"role": "user", "content": content}])
            images.append(visuals[0] if len(visuals) == 1 else (visuals or None))
        batch: dict[str, Any] = {"conversations": conversations}
        if any(im is not None for im in images):
            batch["images"] = images
        return batch

    def generate_until(self, requests: Sequence[Instance]) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        for chunk in self._chunks(requests):
            ctx, gen_kwargs, _, first_doc, task, _ = chunk[0][1]
            gen_kwargs = dict(gen_kwargs)
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            self.engine.max_new_tokens = _greedy_limit(gen_kwargs, self.default_max_new_tokens)
            inputs = self.engine.tokenize(self._batch(chunk))
            new_ids, report, timing = self.engine.generate(0, inputs, seed=self.engine.seed + int(first_doc))
            timing["new_tokens"] = int((new_ids != self.engine._pad_id()).sum())
            texts = self.engine.decode(new_ids)
            for (pos, _), text in zip(chunk, texts, strict=True):
                answers[pos] = _truncate(text, until).strip()
            if report is not None:
                stats = VLMEvaluator.cost_stats(report, timing, len(chunk))
                for k, v in stats.items():
                    self.costs[task][k] += v
        self._publish()
        return [a if a is not None else "" for a in answers]

    def loglikelihood(self, requests: Sequence[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "--model svlm implements generate_until only: pruning changes which visual tokens the answer "
            "tokens attend to, and svlm scores tasks from greedy generations; use a generate_until task "
            "(every image task svlm loads is one)"
        )

    def generate_until_multi_round(self, requests: Sequence[Instance]) -> list[str]:
        raise NotImplementedError("--model svlm does not implement multi-round generation")

    # -- svlm's report -----------------------------------------------------------------------------
    def task_reports(self) -> dict[str, dict[str, Any]]:
        """svlm's cost report of each task seen so far (per-sample means, as in ``svlm test``)."""
        out = {}
        for task, s in self.costs.items():
            n = s["samples"] or 1.0
            dense = s["dense_prefill_flops"]
            out[task] = {
                "model": self.pretrained,
                "point": self.point_label,
                "samples": int(s["samples"]),
                "budget": s["budget"] / n,
                "budget_output": s["budget_output"] / n,
                "visual_tokens": s["visual_tokens"] / n,
                "flops_ratio": s["prefill_flops"] / dense if dense else math.nan,
                "prefill_tflops": s["prefill_flops"] / n / 1e12,
                "kv_cache_bytes": s["kv_cache_bytes"] / n,
                "generate_latency_s": s["generate_latency"] / max(s["batches"], 1.0),
            }
        return out

    def _publish(self) -> None:
        reports = self.task_reports()
        for task, rep in reports.items():
            log.info(f"svlm {self.point_label} on {task}: {json.dumps(rep)}")
            log_metrics(
                total_elapsed_time=float(self.costs[task]["generate_latency"]),
                total_gen_tokens=int(self.costs[task]["new_tokens"]),
                avg_speed=0.0,
                additional_metrics={
                    f"svlm_{k}": v for k, v in rep.items() if isinstance(v, float) and not math.isnan(v)
                },
            )
        if self.report_path is not None:
            self.report_path.parent.mkdir(parents=True, exist_ok=True)
            self.report_path.write_text(json.dumps(reports, indent=2) + "\n")

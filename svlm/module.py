"""The LightningModule that evaluates a list of pruning strategies on one model over the same batches."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import Metric

from svlm.engine.execution import EXECUTIONS
from svlm.engine.validation import InputError
from svlm.journal import STAT_KEYS, PointJournal, run_determinants, summarize_rejected
from svlm.metrics import MAIN_METRICS
from svlm.models import load_vlm, resolve_device
from svlm.strategies.base import parse_budget

log = logging.getLogger(__name__)

__all__ = ["StrategyPoint", "VLMEvaluator", "check_load_options", "check_model_name", "expand_points"]

#: Data-module settings that do not change a batch's results (batch composition is keyed by sample ids).
VOLATILE_DATA_KEYS: frozenset[str] = frozenset(
    {"limit", "train_limit", "num_workers", "cache_dir", "batch_size"}
)


@dataclass
class StrategyPoint:
    """One point of a trade-off curve: a strategy and its budget.

    Attributes:
        strategy: Registered strategy name (see ``svlm strategies``) or the import path of a Strategy class.
        budget: Target mean number of visual tokens entering each decoder layer; a list expands into one point
            per value. Unset for ``dense``.
        label: Name of the point in tables, logs and plots (default ``<strategy>-<budget>``).
        kwargs: Further keyword arguments of the strategy (its paper's own hyper-parameters).
    """

    strategy: str = "dense"
    budget: float | list[float] | None = None
    label: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def _as_point(spec: str | StrategyPoint | Mapping[str, Any]) -> StrategyPoint:
    if isinstance(spec, StrategyPoint):
        return spec
    if isinstance(spec, str):
        return StrategyPoint(strategy=spec)
    if isinstance(spec, Mapping):
        spec = dict(spec)
        for alias in ("name", "class_path"):
            if alias in spec:
                spec["strategy"] = spec.pop(alias)
        kwargs = {**spec.pop("init_args", {}), **spec.pop("kwargs", {})}
        unknown = set(spec) - {"strategy", "budget", "label"}
        if unknown:
            raise ValueError(
                f"Unknown keys {sorted(unknown)} in strategy point {spec}; "
                "valid keys: strategy (or name/class_path), budget, label, kwargs."
            )
        return StrategyPoint(kwargs=kwargs, **spec)
    raise TypeError(f"A strategy point must be a name, a dict or a StrategyPoint, got {type(spec).__name__}.")


def _label(strategy: str, budget: float | None) -> str:
    """``<name>-<budget>``: a class path is labelled with the name its class is registered under (a user's
    ``@register_strategy("l2norm")`` class ``L2Norm`` is ``l2norm-192``), else with the class name."""
    name = strategy
    if "." in strategy:
        from svlm.strategies.registry import registered_name

        name = registered_name(strategy) or strategy.rpartition(".")[2]
    return name if budget is None else f"{name}-{budget:g}"


def expand_points(specs: Sequence[str | StrategyPoint | Mapping[str, Any]]) -> list[StrategyPoint]:
    """Normalise strategy specs into one :class:`StrategyPoint` per budget, with unique labels."""
    points: list[StrategyPoint] = []
    for spec in specs:
        point = _as_point(spec)
        budgets = point.budget if isinstance(point.budget, (list, tuple)) else [point.budget]
        if not budgets:
            raise ValueError(f"Strategy point {point.strategy!r} has an empty budget list.")
        for budget in budgets:
            budget = parse_budget(budget)
            label = point.label or _label(point.strategy, budget)
            if point.label and len(budgets) > 1:
                label = f"{point.label}-{budget:g}"
            points.append(StrategyPoint(point.strategy, budget, label, dict(point.kwargs)))
    seen: dict[str, int] = {}
    for p in points:
        seen[p.label] = seen.get(p.label, 0) + 1
    duplicates = sorted(k for k, v in seen.items() if v > 1)
    if duplicates:
        raise ValueError(f"Duplicate strategy point labels {duplicates}; give the points distinct `label`s.")
    return points


def build_point_strategy(point: StrategyPoint) -> Any:
    """Build the :class:`svlm.Strategy` of a point; bad names or arguments raise ``ValueError``."""
    import svlm

    kwargs = dict(point.kwargs)
    if point.budget is not None:
        kwargs["budget"] = point.budget
    try:
        return svlm.build_strategy(point.strategy, **kwargs)
    except TypeError as err:  # unexpected keyword: a user error, not a bug
        raise ValueError(f"Bad arguments {kwargs} for strategy {point.strategy!r}: {err}") from err


def check_model_name(name: str) -> None:
    """Fail fast, before any data or weights load, on a model svlm cannot run (unknown ``tiny:`` family,
    missing ``zoo:`` model, missing local folder, local folder of an unsupported model type). Hub ids are
    checked when loading, from their config, before the weights."""
    from svlm.models import TINY_PREFIX, ZOO_PREFIX, check_local_path, family_of, zoo_path

    if name.startswith(TINY_PREFIX):
        from svlm.testing import FAMILIES as TINY_FAMILIES

        family = name[len(TINY_PREFIX) :].partition("?")[0]
        if family not in TINY_FAMILIES:
            raise ValueError(f"Unknown tiny model family {family!r}. Valid: {', '.join(TINY_FAMILIES)}.")
        return
    if not name.startswith(ZOO_PREFIX):
        check_local_path(name)
    path = Path(zoo_path(name[len(ZOO_PREFIX) :]) if name.startswith(ZOO_PREFIX) else name).expanduser()
    if (path / "config.json").is_file():
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{str(path / 'config.json')!r} is not a valid model config: {err}") from err
        family_of(SimpleNamespace(model_type=model_type))


def check_load_options(dtype: str, attn_implementation: str | None) -> None:
    """Fail before anything loads on a dtype name or attention implementation svlm cannot use."""
    from svlm.engine.masks import SUPPORTED_IMPLEMENTATIONS
    from svlm.models import resolve_dtype

    resolve_dtype(dtype)
    if attn_implementation is not None and attn_implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attn_implementation {attn_implementation!r}. svlm supports: "
            f"{', '.join(SUPPORTED_IMPLEMENTATIONS)}."
        )


def _file_digests(kwargs: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of strategy arguments that name files (calibrated schedules): a changed file is a new point."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and len(value) < 4096 and Path(value).is_file():
            out[key] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return out


def _batch_offset(batch: Mapping[str, Any], batch_idx: int) -> int:
    """Seed offset of a batch: the dataset row of its first sample (the same with any number of processes),
    else the batch index."""
    indices = batch.get("indices")
    if indices and isinstance(indices[0], int):
        return int(indices[0])
    return int(batch_idx)


def _image_count(image: Any) -> int:
    if image is None:
        return 0
    return len(image) if isinstance(image, (list, tuple)) else 1


def _placeholders(conversation: Sequence[Mapping[str, Any]]) -> int:
    """Number of image entries in a chat conversation."""
    count = 0
    for message in conversation:
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            count += sum(1 for part in content if isinstance(part, Mapping) and part.get("type") == "image")
    return count


class PointStats(Metric):
    """Cost statistics of one strategy point, summed over batches (and processes, under DDP)."""

    full_state_update = False
    KEYS = STAT_KEYS

    def __init__(self) -> None:
        super().__init__()
        for key in self.KEYS:
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, **values: float) -> None:  # type: ignore[override]
        for key, value in values.items():
            state = getattr(self, key)
            state += float(value)

    def compute(self) -> dict[str, float]:
        return {key: float(getattr(self, key)) for key in self.KEYS}


def _metric_values(value: Any, default_name: str) -> dict[str, float]:
    """Flatten a torchmetrics ``compute()`` result (tensor or dict) into ``{name: float}``."""
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(_metric_values(v, str(k)))
        return out
    if isinstance(value, torch.Tensor):
        return {default_name: float(value.float().mean())} if value.numel() else {}
    if isinstance(value, (int, float)):
        return {default_name: float(value)}
    return {}


def _safe_div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _per_image_sample(total: float, stats: Mapping[str, float]) -> float:
    """Mean over the samples with visual tokens (0 when all samples were text-only, NaN without samples)."""
    if stats["visual_samples"]:
        return total / stats["visual_samples"]
    return 0.0 if stats["samples"] else math.nan


#: Per-point numbers sent to the logger (everything, incl. per-category metrics, goes to tradeoff.csv).
LOGGED_KEYS: frozenset[str] = frozenset(
    {
        "budget",
        "budget_output",
        "prefill_tflops",
        "flops_ratio",
        "accuracy",
        "relative_accuracy",
        "prefill_latency_s",
        "generate_latency_s",
    }
)


class VLMEvaluator(pl.LightningModule):
    """Evaluates one vision-language model under a list of token-pruning strategies on the same batches.

    For every batch and every strategy point: ``svlm.sparsify`` the model, greedy ``generate`` a batch of
    answers, score them with the benchmark's metric, and record the cost from ``last_report`` (visual tokens,
    budget counted on layer inputs and outputs, prefill FLOPs) and wall-clock latency (prefill and whole
    generate). At the end of ``test`` (or ``validate``) the results are in :attr:`points`, one dict per
    strategy point with keys: ``label``, ``strategy``, ``budget_target``; ``budget`` / ``budget_output``
    (measured mean visual tokens per layer, counted on layer inputs / outputs); ``visual_tokens`` (entering
    the language model); ``prefill_flops``, ``dense_prefill_flops``, ``prefill_tflops`` (per sample) and
    ``flops_ratio``; ``kv_cache_bytes`` (per sample); ``main_metric`` and ``accuracy`` (its value),
    ``relative_accuracy`` (vs the ``dense`` point), ``metric/<name>`` and ``relative/<name>`` for every
    metric; ``prefill_latency_s`` / ``generate_latency_s`` (per batch); ``samples``, ``batches``,
    ``model``, ``benchmark``, ``kwargs``.

    Args:
        model: Hugging Face id, local folder, ``zoo:<name>`` (shipped model) or ``tiny:<family>`` (offline
            random model); see ``svlm.models.load_vlm``.
        strategies: Strategy points: names (``dense``), or dicts with ``strategy`` (name or class path),
            ``budget`` (number or list of numbers), ``label`` and ``kwargs``.
        dtype: Weights dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``bfloat16``, ``float16``, ``float32``.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        max_new_tokens: Greedy decoding length limit.
        seed: Seed of torch's global RNG, set before each point's generate, offset by the dataset row of the
            batch's first sample (the batch index without ``indices``): the same with any number of processes.
            Built-in strategies are seeded themselves (``random``'s ``seed`` argument).
        benchmark: Benchmark name for the metric; by default taken from the datamodule or the batch metadata.
        latency_warmup: Run one untimed generate before the first timed batch (CUDA kernels, allocator).
        processor_kwargs: Passed to ``AutoProcessor.from_pretrained`` (e.g. ``max_pixels`` for Qwen2-VL).
        main_metric: Metric reported as ``accuracy`` (and plotted); default: the benchmark's headline metric
            (exact_match, vqa_accuracy, mc_accuracy, mmbench_circular, pope_f1 or mme_perception).
        resume: Reuse the results that an earlier ``test`` run into the same ``default_root_dir`` recorded in
            its journal (same model, data and point settings, same batches): only missing (point, batch)
            pairs are computed. Without it a test run starts a fresh journal.
        journal: Record every finished (point, batch) of ``test`` in ``<default_root_dir>/journal/`` (one
            JSON line each, flushed at once), which is what ``resume`` reads after a crash or Ctrl-C.
        cpu_threads: Intra-op threads for torch on CPU (``None``: torch's default). On a shared or small
            machine 1 avoids OpenMP threads spinning against other processes, which can slow a tiny model
            down tenfold.
        execution: How the decoder layers run (``svlm.sparsify``'s ``execution``): ``eager`` (transformers'
            own forward), ``cuda_graphs`` (replayed CUDA graphs: faster on a GPU at small batches),
            ``compile`` or ``static``. Results equal eager's up to floating-point rounding.

    Before the first generate of a run, every strategy point runs one prefill on the first sample, so a bad
    budget, pruning layer or input fails before any real work. Under DDP, metrics and costs are summed over
    all processes before :attr:`points` is computed (the same on every rank).
    """

    def __init__(
        self,
        model: str = "tiny:llava",
        strategies: list[str | StrategyPoint] | None = None,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        max_new_tokens: int = 16,
        seed: int = 0,
        benchmark: str | None = None,
        latency_warmup: bool = True,
        processor_kwargs: dict[str, Any] | None = None,
        main_metric: str | None = None,
        resume: bool = False,
        journal: bool = True,
        cpu_threads: int | None = None,
        execution: str = "eager",
    ) -> None:
        super().__init__()
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        check_model_name(model)
        check_load_options(dtype, attn_implementation)
        self.save_hyperparameters()
        self.model_name = model
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        if execution not in EXECUTIONS:
            raise ValueError(f"Unknown execution {execution!r}; valid: {', '.join(EXECUTIONS)}.")
        self.execution = execution
        self._wrappers: dict[int, Any] = {}  # one per strategy point, kept so fast modes reuse their graphs
        self.benchmark = benchmark
        self.latency_warmup = latency_warmup
        self.processor_kwargs = dict(processor_kwargs or {})
        self.main_metric = main_metric
        self.point_configs = expand_points(strategies if strategies is not None else ["dense"])
        self.strategy_objects = [build_point_strategy(p) for p in self.point_configs]
        self.vlm: nn.Module | None = None
        self.processor: Any = None
        self.family: str | None = None
        self.point_metrics = nn.ModuleList()  # built at the first batch, once the benchmark is known
        self.point_stats = nn.ModuleList(PointStats() for _ in self.point_configs)
        self.points: list[dict[str, Any]] = []
        self.resume = resume
        self.journal = journal
        if cpu_threads is not None:
            if cpu_threads < 1:
                raise ValueError(f"cpu_threads must be >= 1 (or null for torch's default); got {cpu_threads}")
            torch.set_num_threads(cpu_threads)
        self.reused: int = 0  # (point, batch) results taken from the journal in the last run (this process)
        self._journal: PointJournal | None = None
        self._pending: list[int] | None = None
        self._checked = False
        self._warm = False

    # -- model -----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Load the VLM (once) directly on the device the trainer runs on."""
        if self.vlm is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else resolve_device("auto")
        vlm, processor, family = load_vlm(
            self.model_name, self.dtype_name, device, self.attn_implementation, self.processor_kwargs
        )
        for p in vlm.parameters():
            p.requires_grad_(False)
        self.vlm, self.processor, self.family = vlm, processor, family
        self._check_schedules()

    def _check_schedules(self) -> None:
        """Points that load a calibrated schedule: refused for a model of another depth, warned about for
        another model name."""
        from svlm.adapters import adapter_for
        from svlm.calibrate.schedule import check_schedule_model

        num_layers = None
        for cfg, obj in zip(self.point_configs, self.strategy_objects, strict=True):
            record = getattr(obj, "schedule_model", None)
            if record:
                num_layers = num_layers or adapter_for(self.vlm).info().num_layers
                where = f"Strategy point {cfg.label!r}: schedule {cfg.kwargs.get('schedule')!r}"
                check_schedule_model(record, num_layers, where=where, name=self.model_name)

    def _ensure_model(self) -> nn.Module:
        if self.vlm is None:
            self.configure_model()
        return self.vlm

    # -- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def conversations(batch: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
        """Chat conversations of a batch: given directly, or built from the question and image(s) of each
        sample (no image entry for a sample whose image is ``None``)."""
        if batch.get("conversations") is not None:
            return list(batch["conversations"])
        if batch.get("questions") is None:
            raise KeyError(f"A batch needs 'conversations' or 'questions'; it has keys {sorted(batch)}.")
        images = batch.get("images") or [None] * len(batch["questions"])
        return [
            [
                {
                    "role": "user",
                    "content": [*([{"type": "image"}] * _image_count(im)), {"type": "text", "text": q}],
                }
            ]
            for q, im in zip(batch["questions"], images, strict=False)
        ]

    @staticmethod
    def check_images(batch: Mapping[str, Any], conversations: Sequence[Any]) -> list[int]:
        """Images per sample, checked against the prompts' image entries; raises :class:`InputError` for a
        mismatch or for a batch mixing samples with different numbers of images."""
        images = batch.get("images")
        counts = [_image_count(im) for im in images] if images is not None else [0] * len(conversations)
        if len(counts) != len(conversations):
            raise InputError(f"The batch has {len(counts)} image entries for {len(conversations)} prompts.")
        slots = [_placeholders(conv) for conv in conversations]
        bad = [i for i, (c, p) in enumerate(zip(counts, slots, strict=True)) if c != p]
        if bad:
            i = bad[0]
            raise InputError(
                f"Sample {i} of the batch has {counts[i]} image(s) but its prompt has {slots[i]} image "
                f"entries (per sample: images {counts}, prompt image entries {slots}); give each image one "
                '{"type": "image"} entry in the conversation.'
            )
        for i, image in enumerate(images or []):
            for one in image if isinstance(image, (list, tuple)) else [image]:
                size = getattr(one, "size", None)
                if isinstance(size, tuple) and 0 in size:
                    raise InputError(
                        f"Sample {i} of the batch has an empty image ({size[0]}x{size[1]} pixels); every "
                        "image needs at least one pixel."
                    )
        if len(set(counts)) > 1:
            raise InputError(
                f"The batch mixes samples with different numbers of images (per sample: {counts}); svlm "
                "evaluates batches whose samples have the same number of images: use batch_size 1 or group "
                "samples by image count."
            )
        return counts

    def tokenize(self, batch: Mapping[str, Any]) -> Any:
        """Chat template + processor (left padding) -> model inputs on this module's device.

        Samples without images (all of the batch) make a text-only batch, which runs dense with a warning.
        """
        self._ensure_model()
        conversations = self.conversations(batch)
        counts = self.check_images(batch, conversations)
        prompts = [
            self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            for conv in conversations
        ]
        if counts and counts[0] > 0:
            images = list(batch["images"])
            inputs = self.processor(images=images, text=prompts, padding=True, return_tensors="pt")
        else:
            inputs = self.processor(text=prompts, padding=True, return_tensors="pt")
        param = next(self.vlm.parameters())
        return inputs.to(param.device).to(param.dtype)  # BatchFeature casts floating tensors only

    # -- generation ------------------------------------------------------------------------------
    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    @contextmanager
    def _prefill_timer(self, device: torch.device):
        """Time the first forward of the model during ``generate`` (the prefill) with hooks on the model."""
        timing: dict[str, float] = {}

        def pre(module, args, kwargs):
            if "start" not in timing:
                self._sync(device)
                timing["start"] = time.perf_counter()

        def post(module, args, kwargs, output):
            if "prefill" not in timing:
                self._sync(device)
                timing["prefill"] = time.perf_counter() - timing["start"]

        handles = [
            self.vlm.register_forward_pre_hook(pre, with_kwargs=True),
            self.vlm.register_forward_hook(post, with_kwargs=True),
        ]
        try:
            yield timing
        finally:
            for h in handles:
                h.remove()

    def _wrapper(self, index: int) -> Any:
        """The ``svlm.sparsify`` wrapper of strategy point ``index``, made once (fast modes keep their graphs
        and buffers in it)."""
        import svlm

        model = self._ensure_model()
        if index not in self._wrappers or self._wrappers[index].model is not model:
            self._wrappers[index] = svlm.sparsify(
                model, self.strategy_objects[index], execution=self.execution
            )
        return self._wrappers[index]

    def generate(
        self, index: int | None, inputs: Mapping[str, Any], seed: int | None = None
    ) -> tuple[torch.Tensor, Any, dict[str, float]]:
        """Greedy-generate with strategy point ``index`` (``None``: the unwrapped Hugging Face model).

        Returns the new token ids, the point's ``last_report`` (``None`` for the unwrapped model) and the
        wall-clock times of the prefill (first forward) and of the whole ``generate``.
        """
        model = self._ensure_model()
        device = next(model.parameters()).device
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if seed is not None:
            torch.manual_seed(seed)
        sparse = self._wrapper(index) if index is not None else None
        runner = sparse if sparse is not None else model
        try:
            with self._prefill_timer(device) as timing, torch.no_grad():
                self._sync(device)
                start = time.perf_counter()
                ids = runner.generate(
                    **inputs,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tokenizer.pad_token_id,
                )
                self._sync(device)
                timing["generate"] = time.perf_counter() - start
            report = sparse.last_report if sparse is not None else None
        finally:
            if sparse is not None:
                sparse.detach()
        timing.pop("start", None)
        return ids[:, inputs["input_ids"].shape[1] :], report, timing

    def decode(self, new_ids: torch.Tensor) -> list[str]:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return [t.strip() for t in tokenizer.batch_decode(new_ids, skip_special_tokens=True)]

    def _run_points(self, batch: Mapping[str, Any], batch_idx: int) -> tuple[Any, dict, dict, dict]:
        """Generate with the points to compute (all, or those :meth:`evaluate_batch` found no record of)."""
        inputs = self.tokenize(batch)
        todo = list(range(len(self.point_configs))) if self._pending is None else list(self._pending)
        if self.latency_warmup and not self._warm and todo:
            self.generate(todo[0], inputs, seed=self.seed)
            self._warm = True
        answers, reports, timings = {}, {}, {}
        offset = _batch_offset(batch, batch_idx)
        for i in todo:
            point = self.point_configs[i]
            new_ids, report, timing = self.generate(i, inputs, seed=self.seed + offset)
            answers[point.label] = self.decode(new_ids)
            reports[point.label] = report
            timings[point.label] = {**timing, "new_tokens": int((new_ids != self._pad_id()).sum())}
        return inputs, answers, reports, timings

    def _pad_id(self) -> int:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return -1 if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)

    # -- metrics ---------------------------------------------------------------------------------
    def _benchmark_name(self, batch: Mapping[str, Any]) -> str:
        if self.benchmark:
            return self.benchmark
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        name = getattr(datamodule, "benchmark", None)
        if not name and batch.get("tasks"):
            name = batch["tasks"][0]
        if not name:
            raise ValueError(
                "Cannot tell the benchmark: set `model.benchmark`, use a datamodule with a `benchmark` "
                "attribute, or give batches a 'tasks' list (svlm.data.VLMDataModule does both)."
            )
        self.benchmark = str(name)
        return self.benchmark

    def _metrics(self, batch: Mapping[str, Any]) -> nn.ModuleList:
        if len(self.point_metrics) == 0:
            from svlm.metrics import metric_for

            benchmark = self._benchmark_name(batch)
            device = next(self._ensure_model().parameters()).device
            for _ in self.point_configs:
                self.point_metrics.append(metric_for(benchmark).to(device))
        return self.point_metrics

    @staticmethod
    def cost_stats(report: Any, timing: Mapping[str, float], n: int) -> dict[str, float]:
        """The :class:`PointStats` sums of one (point, batch): what the journal records and replays.

        ``budget``/``budget_output`` sum over the samples with visual tokens (``visual_samples``): a text-only
        sample of a mixed batch does not pull the mean budget down."""
        visual = [float(v[0]) if len(v) else 0.0 for v in report.visual_tokens]
        with_image = [bool(x) for x in report.image_samples.tolist()]
        per_sample = report.budget_per_sample
        per_sample_out = [sum(v) / len(v) if len(v) else 0.0 for v in report.visual_tokens_output]
        timed = "prefill" in timing
        return {
            "samples": float(n),
            "visual_samples": float(sum(with_image)),
            "batches": 1.0,
            "timed_batches": float(timed),
            "budget": float(sum(b for b, w in zip(per_sample, with_image, strict=True) if w)),
            "budget_output": float(sum(b for b, w in zip(per_sample_out, with_image, strict=True) if w)),
            "visual_tokens": sum(visual),
            "kv_cache_bytes": float(getattr(report, "kv_cache_bytes", 0.0) or 0.0),
            "prefill_flops": float(report.prefill_flops),
            "dense_prefill_flops": float(report.dense_prefill_flops),
            "prefill_latency": float(timing.get("prefill", 0.0)),
            "generate_latency": float(timing["generate"]) if timed else 0.0,
            "new_tokens": float(timing.get("new_tokens", 0)),
        }

    def _update(
        self, i: int, batch: Mapping[str, Any], answers: list[str], stats: Mapping[str, float]
    ) -> None:
        from svlm.metrics import update_from_batch

        update_from_batch(self._metrics(batch)[i], answers, batch)
        self.point_stats[i].update(**{k: stats[k] for k in PointStats.KEYS})

    # -- Lightning hooks -------------------------------------------------------------------------
    # test and validate run the same evaluation (validate on the datamodule's validation split, and after
    # each calibration epoch during fit); each run starts from empty metrics and ends with `self.points`.
    def on_test_epoch_start(self) -> None:
        self.reset_points()
        self._open_journal()

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.evaluate_batch(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.finish_points()

    def on_test_end(self) -> None:
        self._close_journal()

    def on_validation_epoch_start(self) -> None:
        self._close_journal()  # calibration may change a strategy between validations: never replayed
        self.reset_points()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.evaluate_batch(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.finish_points()

    def reset_points(self) -> None:
        for m in [*self.point_metrics, *self.point_stats]:
            m.reset()
        self.points = []
        self.reused = 0
        self._checked = False

    # -- resume journal --------------------------------------------------------------------------------
    def determinants(self) -> dict[str, Any]:
        """What determines every per-batch result of this run (the journal header; see
        :func:`svlm.journal.run_determinants`): model and weights fingerprint, revision, dtype, device type,
        generation and data settings, svlm version."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        hparams = dict(getattr(datamodule, "hparams", None) or {})
        return run_determinants(
            self._ensure_model(),
            model_name=self.model_name,
            attn_implementation=self.attn_implementation,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            processor_kwargs=self.processor_kwargs,
            data={k: v for k, v in hparams.items() if k not in VOLATILE_DATA_KEYS},
        )

    def point_settings(self) -> list[dict[str, Any]]:
        """What determines each strategy point's results besides the run's determinants: strategy, budget,
        arguments, class, and the contents of files it reads (calibrated schedules)."""
        return [
            {
                "strategy": cfg.strategy,
                "budget": cfg.budget,
                "kwargs": cfg.kwargs,
                "class": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "files": _file_digests(cfg.kwargs),
            }
            for cfg, obj in zip(self.point_configs, self.strategy_objects, strict=True)
        ]

    def _open_journal(self) -> None:
        self._close_journal()
        if not self.journal or self._trainer is None:
            return
        trainer = self.trainer
        self._journal = PointJournal(
            Path(trainer.default_root_dir) / "journal",
            trainer.global_rank,
            trainer.world_size,
            resume=self.resume,
            determinants=self.determinants(),
            points=[
                (cfg.label, settings)
                for cfg, settings in zip(self.point_configs, self.point_settings(), strict=True)
            ],
        )
        if self.resume:
            rank_zero_info(self._journal.summary())
            rejected = summarize_rejected(self._journal.journal.rejected)
            if rejected:
                log.warning("svlm: %s", rejected)

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- evaluation ------------------------------------------------------------------------------------
    def _preflight(self, batch: Mapping[str, Any], todo: Sequence[int]) -> None:
        """One prefill of the batch's first sample per point: bad budgets, pruning layers or inputs raise
        here, naming the point, before any generate."""

        first = {k: v[:1] if isinstance(v, list) else v for k, v in batch.items()}
        inputs = self.tokenize(first)
        self._ensure_model()
        for i in todo:
            sparse = self._wrapper(i)
            try:
                with torch.no_grad():
                    sparse(**inputs)
            except ValueError as err:
                label = self.point_configs[i].label
                try:
                    wrapped = type(err)(f"Strategy point {label!r}: {err}")
                except Exception:  # noqa: BLE001 - an exception type with another signature: keep it as is
                    raise err from None
                raise wrapped from err
            finally:
                sparse.detach()

    def evaluate_batch(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Run every strategy point on ``batch`` and accumulate metrics and costs.

        Points with a record of this batch in the resume journal are replayed from it (answers re-scored,
        costs re-added) instead of generated; every newly computed point is recorded. Returns each point's
        answers, the reports of the points computed now, and the model inputs (on CPU) for callbacks such
        as :class:`svlm.callbacks.KeptTokenOverlay`.
        """
        records = self._journal.replay(batch, batch_idx) if self._journal is not None else {}
        todo = [i for i in range(len(self.point_configs)) if i not in records]
        if todo:
            if not self._checked:
                self.check_images(batch, self.conversations(batch))  # the preflight sees one sample only
                self._preflight(batch, todo)
                self._checked = True
            self._pending = todo
            try:
                inputs, answers, reports, timings = self._run_points(batch, batch_idx)
            finally:
                self._pending = None
        else:
            inputs, answers, reports, timings = self.tokenize(batch), {}, {}, {}
        ordered: dict[str, list[str]] = {}
        for i, point in enumerate(self.point_configs):
            if i in records:
                answers_i, stats = list(records[i]["answers"]), records[i]["stats"]
                self.reused += 1
            else:
                answers_i = answers[point.label]
                stats = self.cost_stats(reports[point.label], timings[point.label], len(answers_i))
                if self._journal is not None:
                    self._journal.record(i, batch, batch_idx, answers_i, stats)
            ordered[point.label] = answers_i
            self._update(i, batch, answers_i, stats)
        if self._journal is not None and todo:
            self._journal.sync()
        keep = ("input_ids", "attention_mask", "image_grid_thw", "image_sizes")
        return {
            "answers": ordered,
            "reports": reports,
            "inputs": {k: inputs[k].detach().cpu() for k in keep if k in inputs},
        }

    def finish_points(self) -> None:
        """Compute :attr:`points` and log their headline numbers as ``<label>/<key>``."""
        self.points = self.compute_points()
        scalars = {
            f"{p['label']}/{key}": float(value)
            for p in self.points
            for key, value in p.items()
            if (key in LOGGED_KEYS or (key.startswith("metric/") and key.count("/") == 1))
            and isinstance(value, (int, float))
            and math.isfinite(value)
        }
        if scalars:
            self.log_dict(scalars, sync_dist=False, rank_zero_only=True)

    def compute_points(self) -> list[dict[str, Any]]:
        """One summary dict per strategy point from the accumulated metrics and statistics."""
        points: list[dict[str, Any]] = []
        for i, cfg in enumerate(self.point_configs):
            s = self.point_stats[i].compute()
            n = s["samples"]
            metric = self.point_metrics[i] if i < len(self.point_metrics) else None
            values = _metric_values(metric.compute(), "score") if metric is not None and n else {}
            main = self._main_name(values)
            point: dict[str, Any] = {
                "label": cfg.label,
                "strategy": cfg.strategy,
                # an upper bound reading annotations (evidence_oracle), never on the Pareto front of methods
                "oracle": bool(getattr(self.strategy_objects[i], "oracle", False)),
                "budget_target": cfg.budget,
                "budget": _per_image_sample(s["budget"], s),
                "budget_output": _per_image_sample(s["budget_output"], s),
                "visual_tokens": _safe_div(s["visual_tokens"], n),
                "prefill_flops": _safe_div(s["prefill_flops"], n),
                "dense_prefill_flops": _safe_div(s["dense_prefill_flops"], n),
                "prefill_tflops": _safe_div(s["prefill_flops"], n) / 1e12,
                "flops_ratio": _safe_div(s["prefill_flops"], s["dense_prefill_flops"]),
                "kv_cache_bytes": _safe_div(s["kv_cache_bytes"], n),
                "main_metric": main,
                "accuracy": values.get(main, math.nan) if main else math.nan,
                "higher_is_better": bool(getattr(metric, "higher_is_better", True) is not False),
                "prefill_latency_s": _safe_div(s["prefill_latency"], s["timed_batches"]),
                "generate_latency_s": _safe_div(s["generate_latency"], s["batches"]),
                "new_tokens_per_sample": _safe_div(s["new_tokens"], n),
                "samples": int(n),
                "batches": int(s["batches"]),
                "model": self.model_name,
                "benchmark": self.benchmark,
                "kwargs": dict(cfg.kwargs),
            }
            point.update({f"metric/{k}": v for k, v in values.items()})
            points.append(point)
        dense = next((p for p in points if p["strategy"] == "dense"), None)
        for p in points:
            p["relative_accuracy"] = _safe_div(p["accuracy"], dense["accuracy"]) if dense else math.nan
            for key in [k for k in p if k.startswith("metric/")]:
                if dense and key in dense:
                    p["relative/" + key.removeprefix("metric/")] = _safe_div(p[key], dense[key])
        return points

    def _main_name(self, values: Mapping[str, float]) -> str | None:
        """The headline metric: ``main_metric`` if set, else the first of ``MAIN_METRICS`` present."""
        if self.main_metric:
            if values and self.main_metric not in values:
                log.warning("main_metric %r is not among the metrics %s", self.main_metric, sorted(values))
            else:
                return self.main_metric
        return next((k for k in MAIN_METRICS if k in values), next(iter(values), None))

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Each point's answers (lists aligned with the batch) with its report summary and latency."""
        _, answers, reports, timings = self._run_points(batch, batch_idx)
        return {
            "ids": batch.get("ids"),
            "questions": batch.get("questions"),
            "references": batch.get("answers"),
            "answers": answers,
            "reports": {label: _report_dict(rep) for label, rep in reports.items()},
            "latency": timings,
        }


def _report_dict(report: Any) -> dict[str, Any]:
    return report.to_dict() if hasattr(report, "to_dict") else {"budget": getattr(report, "budget", None)}

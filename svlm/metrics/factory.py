"""The metric collection that scores a benchmark, and the one call that feeds it a DataModule batch."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchmetrics import Metric, MetricCollection

from svlm.data.registry import Registry
from svlm.metrics.accuracy import CategorizedMean, ExactMatch, MultipleChoiceAccuracy, VQAAccuracy
from svlm.metrics.mmbench import MMBenchCircular
from svlm.metrics.mme import MMEScore
from svlm.metrics.pope import POPEMetrics

MetricFactory = Callable[[Sequence[str] | None], Metric]

METRICS: Registry[MetricFactory] = Registry("metric", error=ValueError)
# The kinds a benchmark names (`BenchmarkSpec.metric`); each default follows lmms-eval 0.7.3's task of the
# same benchmark. The result keys stay those of the metric class ("exact_match", "vqa_accuracy", ...).
METRICS.register("exact_match", lambda cats: ExactMatch(categories=cats))  # GQA: ignore case + punctuation
METRICS.register("vqa_exact_match", lambda cats: ExactMatch(categories=cats, rule="vqa"))  # svlm-shapes
METRICS.register("vqa_accuracy", lambda cats: VQAAccuracy(categories=cats), aliases=("vqa",))  # VQAv2
METRICS.register("textvqa_accuracy", lambda cats: VQAAccuracy(categories=cats, processor="evalai"))
METRICS.register(
    "mc_accuracy", lambda cats: MultipleChoiceAccuracy(categories=cats), aliases=("multiple_choice",)
)  # ScienceQA-IMG
METRICS.register("mmbench", lambda cats: MMBenchCircular(), aliases=("mmbench_circular",))
METRICS.register("pope", lambda cats: POPEMetrics(categories=cats))
METRICS.register("mme", lambda cats: MMEScore())


def available_metrics() -> list[str]:
    return METRICS.names()


def build_metric(kind: str, categories: Sequence[str] | None = None) -> Metric:
    """A metric by kind name (see `available_metrics()`)."""
    return METRICS.get(kind)(categories)


def metric_for(benchmark: str, per_category: bool = True) -> MetricCollection:
    """The metrics of a registered benchmark (name or alias), as a `MetricCollection`.

    The collection's `compute()` returns a flat dict (e.g. ``{"exact_match": ..., "exact_match/color": ...}``
    for svlm-shapes, ``{"pope_f1": ..., ...}`` for POPE, ``{"mme_perception": ..., ...}`` for MME).
    `per_category=False` drops the per-category breakdown.
    """
    from svlm.data.benchmarks import get_benchmark  # the data layer knows which metric scores a benchmark

    spec = get_benchmark(benchmark)
    metric = build_metric(spec.metric, spec.categories if per_category else None)
    # a scalar metric reports under its own name ("exact_match" for both exact-match rules)
    key = metric.name if isinstance(metric, CategorizedMean) else spec.metric
    # compute_groups would merge metrics whose states happen to coincide after the first batch
    return MetricCollection({key: metric}, compute_groups=False)


BATCH_FIELDS = ("answers", "choices", "categories", "image_ids")


def _accepts(metric: Metric) -> set[str]:
    params = inspect.signature(metric.update).parameters
    return {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}


def update_from_batch(
    metric: Metric | MetricCollection, preds: Sequence[str], batch: Mapping[str, Any]
) -> None:
    """``metric.update(preds, ...)`` with the batch fields (`BATCH_FIELDS`) each metric's update accepts."""
    fields = {k: batch[k] for k in BATCH_FIELDS if k in batch}
    if "answers" not in fields:
        raise ValueError(f"batch has no 'answers'; keys: {sorted(batch)}")
    if isinstance(metric, MetricCollection):
        for m in metric.values(copy_state=False):
            m.update(preds, **{k: v for k, v in fields.items() if k in _accepts(m)})
    else:
        metric.update(preds, **{k: v for k, v in fields.items() if k in _accepts(metric)})

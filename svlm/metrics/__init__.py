"""Benchmark metrics on torchmetrics (distributed-safe): official VQA accuracy, exact match, multiple-choice
accuracy, MMBench's circular score, POPE and MME scores, and `metric_for(benchmark)`.

Each benchmark's default scoring equals lmms-eval 0.7.3's task of the same name (tests/test_metrics_lmms.py
records the fixed cases; tests/test_lmms/ compares against lmms-eval itself); svlm's own, more lenient
readers remain as named options (``rule=``)."""

from svlm.metrics.accuracy import (
    CategorizedMean,
    ExactMatch,
    MultipleChoiceAccuracy,
    VQAAccuracy,
    exact_match,
    vqa_accuracy,
)
from svlm.metrics.extract import (
    REASONING_TAGS,
    extract_choice,
    extract_yes_no,
    mmbench_choice,
    parse_mme_answer,
    pope_answer,
    scienceqa_letter,
    strip_reasoning,
)
from svlm.metrics.factory import BATCH_FIELDS, available_metrics, build_metric, metric_for, update_from_batch
from svlm.metrics.mmbench import MMBenchCircular, mmbench_correct
from svlm.metrics.mme import MME_COGNITION, MME_PERCEPTION, MMEScore
from svlm.metrics.normalize import evalai_answer, normalize_answer, strip_case_punctuation
from svlm.metrics.pope import POPEMetrics

#: Headline metric of each benchmark family, in order of preference (papers report POPE F1, MME perception);
#: the evaluator and calibration report the first one a benchmark computes.
MAIN_METRICS: tuple[str, ...] = (
    "exact_match",
    "vqa_accuracy",
    "mc_accuracy",
    "mmbench_circular",
    "pope_f1",
    "mme_perception",
)

__all__ = [
    "MAIN_METRICS",
    "BATCH_FIELDS",
    "CategorizedMean",
    "REASONING_TAGS",
    "ExactMatch",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "MMBenchCircular",
    "MMEScore",
    "MultipleChoiceAccuracy",
    "POPEMetrics",
    "VQAAccuracy",
    "available_metrics",
    "build_metric",
    "evalai_answer",
    "exact_match",
    "extract_choice",
    "extract_yes_no",
    "metric_for",
    "mmbench_choice",
    "mmbench_correct",
    "normalize_answer",
    "parse_mme_answer",
    "pope_answer",
    "scienceqa_letter",
    "strip_case_punctuation",
    "strip_reasoning",
    "update_from_batch",
    "vqa_accuracy",
]

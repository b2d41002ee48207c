"""Benchmark metrics on torchmetrics (distributed-safe): official VQA accuracy, normalised exact match,
multiple-choice accuracy, POPE and MME scores, and `metric_for(benchmark)`."""

from svlm.metrics.accuracy import (
    CategorizedMean,
    ExactMatch,
    MultipleChoiceAccuracy,
    VQAAccuracy,
    exact_match,
    vqa_accuracy,
)
from svlm.metrics.extract import extract_choice, extract_yes_no, parse_mme_answer
from svlm.metrics.factory import BATCH_FIELDS, available_metrics, build_metric, metric_for, update_from_batch
from svlm.metrics.mme import MME_COGNITION, MME_PERCEPTION, MMEScore
from svlm.metrics.normalize import normalize_answer
from svlm.metrics.pope import POPEMetrics

__all__ = [
    "BATCH_FIELDS",
    "CategorizedMean",
    "ExactMatch",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "MMEScore",
    "MultipleChoiceAccuracy",
    "POPEMetrics",
    "VQAAccuracy",
    "available_metrics",
    "build_metric",
    "exact_match",
    "extract_choice",
    "extract_yes_no",
    "metric_for",
    "normalize_answer",
    "parse_mme_answer",
    "update_from_batch",
    "vqa_accuracy",
]

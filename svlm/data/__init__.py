"""Datasets for svlm: the synthetic svlm-shapes benchmark, loaders for public VLM benchmarks normalised to one
sample schema, chat prompts, and a model-agnostic LightningDataModule."""

from svlm.data.benchmarks import (
    BENCHMARKS,
    BenchmarkDataset,
    BenchmarkSpec,
    available_benchmarks,
    describe_benchmarks,
    get_benchmark,
    load_benchmark,
    register_benchmark,
)
from svlm.data.datamodule import BATCH_KEYS, VLMDataModule, collate_samples
from svlm.data.fixtures import write_benchmark_fixture
from svlm.data.prompts import OPTION_LETTER, SHORT_ANSWER, build_conversation
from svlm.data.schema import DataError, EmptyDatasetError, Sample, SplitNotFoundError, UnknownBenchmarkError
from svlm.data.shapes import build_shapes_dataset

__all__ = [
    "BATCH_KEYS",
    "BENCHMARKS",
    "BenchmarkDataset",
    "BenchmarkSpec",
    "DataError",
    "EmptyDatasetError",
    "OPTION_LETTER",
    "SHORT_ANSWER",
    "Sample",
    "SplitNotFoundError",
    "UnknownBenchmarkError",
    "VLMDataModule",
    "available_benchmarks",
    "build_conversation",
    "build_shapes_dataset",
    "collate_samples",
    "describe_benchmarks",
    "get_benchmark",
    "load_benchmark",
    "register_benchmark",
    "write_benchmark_fixture",
]

"""`VLMDataModule`: any registered benchmark as Lightning dataloaders of plain-python batches.

The DataModule never tokenises: the LightningModule owns the processor (and so the chat template and the image
preprocessing of its model family), which keeps one DataModule usable with every model.

Evaluation batches are the same whatever the number of processes: under DDP, rank ``r`` of ``W`` gets the
global batches ``r, r + W, r + 2W, ...`` of the single-process order (:class:`BatchShardSampler`), never a
padded duplicate. Each batch carries ``indices`` (the samples' rows in the split), so seeds and resume records
do not depend on how many processes ran.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from svlm.data.benchmarks import BenchmarkDataset, BenchmarkSpec, get_benchmark, is_generated, load_benchmark
from svlm.data.prompts import build_conversation
from svlm.data.schema import DataError, Sample

# batch key -> sample key; every value of a batch is a list with one entry per sample
BATCH_KEYS: dict[str, str] = {
    "ids": "id",
    "images": "image",
    "questions": "question",
    "prompts": "prompt",
    "answers": "answers",
    "answer_types": "answer_type",
    "choices": "choices",
    "categories": "category",
    "image_ids": "image_id",
    "tasks": "task",
    "indices": "index",
}
OPTIONAL_KEYS: frozenset[str] = frozenset({"indices"})  # None for samples that do not carry them


def collate_samples(samples: Sequence[Sample]) -> dict[str, list[Any]]:
    """Samples -> dict of lists (`BATCH_KEYS`) plus ``conversations`` ready for ``apply_chat_template``."""
    if not samples:
        raise DataError("cannot collate an empty list of samples")
    batch: dict[str, list[Any]] = {
        key: [s.get(field) if key in OPTIONAL_KEYS else s[field] for s in samples]  # type: ignore[misc]
        for key, field in BATCH_KEYS.items()
    }
    batch["conversations"] = [build_conversation(p) for p in batch["prompts"]]
    return batch


class _Indexed(Dataset):
    """Adds each sample's row number (``index``) so that a batch knows where it sits in the split."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "index": int(i)}

    def __repr__(self) -> str:
        return repr(self.dataset)


class BatchShardSampler(DistributedSampler):
    """Sequential evaluation order split by whole batches: rank ``r`` of ``W`` gets global batches ``r``,
    ``r + W``, ... (no padding, no duplicates; ranks may differ by one batch).

    Batches keep exactly the single-process composition, so per-sample results and the reduced metrics match
    a single-process run. Being a ``DistributedSampler``, Lightning leaves it in place.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        n = len(dataset)  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.num_batches = math.ceil(n / batch_size)
        self.indices = [
            i
            for b in range(rank, self.num_batches, num_replicas)
            for i in range(b * batch_size, min((b + 1) * batch_size, n))
        ]
        self.num_samples = len(self.indices)
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


class VLMDataModule(LightningDataModule):
    """Benchmark samples for evaluation (test/validate/predict) and calibration (fit).

    Args:
        benchmark: registered benchmark name or alias ("shapes", "gqa", "pope", "mme", "textvqa",
            "scienceqa_img", "mmbench", "vqav2"); see `svlm.data.available_benchmarks()`.
        path: Hub repo or local path of the data; default: the repo lmms-eval 0.7.3 reads (shapes: generated).
        split: evaluation split (test/predict, and validate unless `val_split`); default: the benchmark's.
        config: dataset config (Hub subset / local sub-folder); default: the benchmark's.
        limit: use at most this many samples per split (for the generated "shapes" and "scenes": how many to
            generate; default 500).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        seed: generator seed for "shapes" and "scenes"; shuffling seed for training; subset seed when
            `random_subset`.
        image_size: image side in pixels for "shapes" and "scenes".
        train_split: split used by `fit` (calibration); default: the benchmark's train split.
        val_split: split used by `validate` and during `fit`; default: the benchmark's, else `split`.
        train_limit: like `limit`, for the training split (default: `limit`).
        random_subset: with `limit`, take a seeded random subset instead of the first rows (the first rows of
            several benchmarks are all one category).
        cache_dir: `datasets` cache folder.
    """

    def __init__(
        self,
        benchmark: str = "shapes",
        path: str | None = None,
        split: str | None = None,
        config: str | None = None,
        limit: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        image_size: int = 336,
        train_split: str | None = None,
        val_split: str | None = None,
        train_limit: int | None = None,
        random_subset: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.spec: BenchmarkSpec = get_benchmark(benchmark)  # fails fast, with suggestions
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        for name, value in (("limit", limit), ("train_limit", train_limit)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number of samples or None, got {value}")
        self.save_hyperparameters()
        self.benchmark = self.spec.name
        self.path, self.config, self.cache_dir = path, config, cache_dir
        self.split = split or self.spec.split
        self.val_split = val_split or self.spec.val_split or self.split
        self.train_split = train_split or self.spec.train_split
        self.limit, self.train_limit = limit, train_limit if train_limit is not None else limit
        self.batch_size, self.num_workers = batch_size, num_workers
        self.seed, self.image_size, self.random_subset = seed, image_size, random_subset
        self._datasets: dict[str, BenchmarkDataset] = {}

    @property
    def categories(self) -> tuple[str, ...] | None:
        """Known category values of the benchmark (for per-category metrics), if it has a fixed set."""
        return self.spec.categories

    def dataset(self, split: str, limit: int | None = None) -> BenchmarkDataset:
        """The (cached) normalised dataset of `split`."""
        key = f"{split}:{limit}"
        if key not in self._datasets:
            self._datasets[key] = load_benchmark(
                self.benchmark,
                self.path,
                split,
                config=self.config,
                limit=limit,
                seed=self.seed if (self.random_subset or is_generated(self.benchmark)) else None,
                image_size=self.image_size,
                cache_dir=self.cache_dir,
            )
        return self._datasets[key]

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit" and self.train_split is None:
            raise DataError(f"benchmark {self.benchmark!r} has no default training split; pass train_split=")
        if stage in (None, "fit") and self.train_split is not None:
            self.train_set = self.dataset(self.train_split, self.train_limit)
        if stage in (None, "fit", "validate"):
            self.val_set = self.dataset(self.val_split, self.limit)
        if stage in (None, "test", "predict"):
            self.test_set = self.dataset(self.split, self.limit)

    def prepare_data(self) -> None:
        """Download / cache the data of the current stage once per node (Lightning calls this on local rank 0
        before the other ranks load it in `setup`); the generated "shapes" needs nothing."""
        if is_generated(self.benchmark) or self.path is not None and not self._remote(self.path):
            return
        fn = getattr(getattr(getattr(self, "trainer", None), "state", None), "fn", None)
        stage = getattr(fn, "value", fn)
        if stage in ("test", "predict"):
            self.dataset(self.split, self.limit)
        elif stage == "validate":
            self.dataset(self.val_split, self.limit)

    @staticmethod
    def _remote(path: str) -> bool:
        from svlm.data.loading import _looks_local

        return not _looks_local(path)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(self, ds: BenchmarkDataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            _Indexed(ds),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, ds: BenchmarkDataset) -> DataLoader:
        """Sequential batches, split by whole batches under DDP (see :class:`BatchShardSampler`)."""
        world_size, rank = self._world()
        sampler = None
        if world_size > 1:
            batches = math.ceil(len(ds) / self.batch_size)
            if batches < world_size:
                fit = len(ds) // world_size
                hint = f"use --data.batch_size {fit} or less, or" if fit >= 1 else "use"
                raise DataError(
                    f"{len(ds)} samples in batches of {self.batch_size} make {batches} batch(es), fewer than "
                    f"the {world_size} processes (every process needs one); {hint} fewer devices."
                )
            sampler = BatchShardSampler(ds, self.batch_size, world_size, rank)
        return DataLoader(
            _Indexed(ds),
            batch_size=self.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if not hasattr(self, "train_set"):
            self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if not hasattr(self, "val_set"):
            self.setup("validate")
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        if not hasattr(self, "test_set"):
            self.setup("test")
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

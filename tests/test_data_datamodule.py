"""VLMDataModule: batch format, stages, errors, and the batch going through a processor and a Trainer."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image

from svlm.data import (
    BATCH_KEYS,
    SHORT_ANSWER,
    DataError,
    SplitNotFoundError,
    UnknownBenchmarkError,
    VLMDataModule,
    collate_samples,
    write_benchmark_fixture,
)
from svlm.metrics import metric_for, update_from_batch


def _ids(loader) -> list[str]:
    return [i for batch in loader for i in batch["ids"]]


def test_shapes_test_batches():
    dm = VLMDataModule("shapes", limit=10, batch_size=4, image_size=112)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert [len(b["ids"]) for b in batches] == [4, 4, 2]
    b = batches[0]
    assert set(b) == set(BATCH_KEYS) | {"conversations"}
    assert all(isinstance(v, list) and len(v) == 4 for v in b.values())
    assert all(isinstance(im, Image.Image) and im.size == (112, 112) for im in b["images"])
    assert b["conversations"][0] == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": b["prompts"][0]}]}
    ]
    assert b["prompts"][0] == f"{b['questions'][0]}\n{SHORT_ANSWER}"
    assert b["categories"] == ["color", "shape", "count", "exist"] and b["tasks"] == ["shapes"] * 4
    assert isinstance(b["answers"][0], list) and b["choices"] == [None] * 4
    assert _ids(dm.predict_dataloader()) == _ids(dm.test_dataloader())  # deterministic, unshuffled


def test_fit_uses_train_and_val_splits_with_seeded_shuffle():
    dm = VLMDataModule("shapes", limit=8, batch_size=4, seed=3, image_size=64)
    dm.setup("fit")
    train_a, train_b = _ids(dm.train_dataloader()), _ids(dm.train_dataloader())
    assert all(i.startswith("shapes-train-3-") for i in train_a)
    assert sorted(train_a) == [f"shapes-train-3-{i:06d}" for i in range(8)] != train_a  # all, shuffled
    assert train_a == train_b  # the same seed gives the same order
    assert all(i.startswith("shapes-val-3-") for i in _ids(dm.val_dataloader()))
    dm2 = VLMDataModule("shapes", limit=4, train_limit=6, batch_size=8, image_size=64)
    assert len(_ids(dm2.train_dataloader())) == 6 and len(_ids(dm2.test_dataloader())) == 4


def test_real_benchmark_mirror(tmp_path):
    path = write_benchmark_fixture("mmbench", tmp_path)
    dm = VLMDataModule("mmbench_en", path=str(path), batch_size=3, cache_dir=str(tmp_path / "cache"))
    assert dm.benchmark == "mmbench" and dm.split == "dev"
    batch = next(iter(dm.test_dataloader()))
    assert batch["choices"][1] == ["Oil Paint", "Sketch", "Digital art"]
    assert batch["answers"] == [["A"], ["B"], ["C"]] and batch["answer_types"] == ["choice"] * 3
    with pytest.raises(SplitNotFoundError, match=r"split 'test' not found .*valid splits: \['dev'\]"):
        VLMDataModule("mmbench", path=str(path), split="test", cache_dir=str(tmp_path / "cache")).setup(
            "test"
        )
    with pytest.raises(DataError, match="'mmbench' has no default training split; pass train_split="):
        dm.setup("fit")


def test_constructor_errors():
    with pytest.raises(UnknownBenchmarkError, match="Did you mean 'textvqa'"):
        VLMDataModule("textvq")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        VLMDataModule("shapes", batch_size=0)
    with pytest.raises(ValueError, match="limit must be a positive"):
        VLMDataModule("shapes", limit=0)
    with pytest.raises(DataError, match="empty"):
        collate_samples([])


def test_batch_goes_through_the_processor_contract(make_tiny_vlm):
    vlm = make_tiny_vlm("llava")
    dm = VLMDataModule("shapes", limit=2, batch_size=2, image_size=64)
    batch = next(iter(dm.test_dataloader()))
    prompts = [
        vlm.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
        for c in batch["conversations"]
    ]
    assert batch["questions"][0] in prompts[0]
    inputs = vlm.processor(images=batch["images"], text=prompts, padding=True, return_tensors="pt")
    assert inputs["input_ids"].shape[0] == 2 and inputs["pixel_values"].shape[0] == 2


class _OracleModule(pl.LightningModule):
    """Answers with the first reference answer: the metric must report a perfect score."""

    def __init__(self, benchmark: str) -> None:
        super().__init__()
        self.metrics = metric_for(benchmark)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def test_step(self, batch, batch_idx):
        update_from_batch(self.metrics, [a[0] for a in batch["answers"]], batch)

    def on_test_epoch_end(self):
        self.log_dict(self.metrics.compute(), batch_size=1)


def test_trainer_consumes_plain_python_batches():
    dm = VLMDataModule("shapes", limit=10, batch_size=4, image_size=64)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (results,) = trainer.test(_OracleModule("shapes"), datamodule=dm, verbose=False)
    assert results["exact_match"] == 1.0
    assert {f"exact_match/{c}" for c in ("color", "shape", "count", "exist", "position")} <= set(results)


def test_setup_without_stage_skips_a_missing_train_split(tmp_path):
    path = write_benchmark_fixture("pope", tmp_path)
    dm = VLMDataModule("pope", path=str(path), limit=3, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert len(dm.test_set) == 3 and not hasattr(dm, "train_set")

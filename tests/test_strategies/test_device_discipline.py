"""Every tensor svlm creates on the prefill/decode path gets an explicit device (so it lands next to the
data on a GPU). Checked on CPU: every strategy (and its variants) on every family, forward, generate, the
report and the oracle, under :class:`svlm.testing.discipline.DeviceDiscipline`."""

from __future__ import annotations

import pytest
import torch

import svlm
from svlm.testing.discipline import DeviceDiscipline
from svlm.testing.oracle import oracle_logits

VARIANTS: dict[str, list[dict]] = {
    "fastv": [{"budget": 0.6}, {"ratio": 0.5}, {"budget": 0.6, "signal": "text"}],
    "pyramiddrop": [{"budget": 0.6}, {}],
    "sparsevlm": [
        {"budget": 0.6},
        {"preset": 192},
        {"budget": 0.6, "recycle": True},
        {"rank_scale": 1.0},
        {"budget": 0.6, "gravity_correction": True, "priority_heads": 2},
    ],
    "visionzip": [{"budget": 0.6}, {"budget": 0.6, "contextual_share": 0.0}],
    "random": [{"budget": 0.6}, {"budget": 0.6, "layer": 1}],
}

CASES = [
    pytest.param(name, kwargs, id=f"{name}-{i}")
    for name in svlm.available_strategies()
    for i, kwargs in enumerate(VARIANTS.get(name, [{} if name == "dense" else {"budget": 0.6}]))
]


def exercise(vlm, inputs, name: str, kwargs: dict) -> None:
    sparse = svlm.sparsify(vlm.model, name, **kwargs)
    sparse(**inputs)
    report = sparse.last_report
    report.to_dict()
    report.kept_mask(0, 0)
    sparse.generate(**inputs, max_new_tokens=2, do_sample=False)
    sparse.last_report.to_dict()
    if sparse.strategy.drops_only:
        oracle_logits(vlm.model, inputs, report)


@pytest.mark.parametrize(("name", "kwargs"), CASES)
@torch.no_grad()
def test_no_tensor_factory_without_device(tiny, images, questions, name, kwargs):
    inputs = tiny.inputs(images, questions)
    with DeviceDiscipline() as mode:
        exercise(tiny, inputs, name, kwargs)
    mode.check()


def test_discipline_flags_a_factory_without_device():
    with DeviceDiscipline() as mode:
        torch.zeros(2, device="cpu")
        torch.tensor(torch.ones(2))  # keeps its argument's device
    assert mode.violations == []
    with DeviceDiscipline() as mode:
        svlm.strategies.schedule_counts.__globals__["torch"].zeros(2)  # called from this test: not svlm
    assert mode.violations == []


def _trainer(root, **kwargs):
    import lightning.pytorch as pl

    options = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
    return pl.Trainer(default_root_dir=str(root), enable_model_summary=False, **options, **kwargs)


def test_evaluator_and_calibration_create_tensors_with_a_device(tmp_path):
    from svlm.calibrate import RankCalibrator
    from svlm.data import VLMDataModule
    from svlm.module import VLMEvaluator

    evaluator = VLMEvaluator(
        "tiny:llava?num_layers=4",
        strategies=["dense", {"strategy": "fastv", "budget": 0.6}],
        max_new_tokens=2,
    )
    calibrator = RankCalibrator(
        model="tiny:llava?num_layers=8&image_size=112", budget=24.0, dtype="float32", max_new_tokens=2,
        benchmark="shapes",
    )  # fmt: skip
    with DeviceDiscipline() as mode:
        _trainer(tmp_path / "eval").test(evaluator, datamodule=VLMDataModule("shapes", limit=2, batch_size=2))
        data = VLMDataModule("shapes", train_limit=4, limit=2, batch_size=2, image_size=112)
        _trainer(tmp_path / "fit", max_epochs=1, num_sanity_val_steps=0).fit(calibrator, data)
    mode.check()

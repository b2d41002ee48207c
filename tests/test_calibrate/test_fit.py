"""`svlm fit` calibration end to end on a tiny model: schedule written and loadable, exact resume, CLI."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

import svlm
from svlm.calibrate import RankCalibrator, read_schedule
from svlm.callbacks import TradeoffCurve
from svlm.data import VLMDataModule

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny:llava?num_layers=8&image_size=112"  # 64 visual tokens, pruning after layers 1/2/4
BUDGET = 24.0


def _module(**kwargs) -> RankCalibrator:
    options = {"budget": BUDGET, "dtype": "float32", "max_new_tokens": 2, "benchmark": "shapes", "sigma": 0.2}
    return RankCalibrator(model=MODEL, **{**options, **kwargs})


class _InOrder(VLMDataModule):
    """Calibration batches in a fixed order, so that a resumed run must match an uninterrupted one exactly
    (VLMDataModule reshuffles with one generator across epochs, which a fresh process restarts)."""

    def train_dataloader(self):
        if not hasattr(self, "train_set"):
            self.setup("fit")
        return self._loader(self.train_set, shuffle=False)


def _data() -> VLMDataModule:
    return _InOrder("shapes", train_limit=8, limit=4, batch_size=4, image_size=112)


def _fit(root: Path, epochs: int, module: RankCalibrator, ckpt_path: str | None = None) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        default_root_dir=str(root),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=str(root / "checkpoints"), save_last=True), TradeoffCurve()],
    )
    trainer.fit(module, _data(), ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    module = _module()
    trainer = _fit(root, 2, module)
    return root, module, trainer


def test_fit_writes_a_loadable_schedule(two_epochs, images, questions):
    root, module, trainer = two_epochs
    assert trainer.global_step == 4  # one search iteration per batch, 2 batches x 2 epochs
    data = read_schedule(root / "schedule.yaml", strategy="sparsevlm")
    params, metrics = data["params"], data["metrics"]
    assert params["layers"] == [2, 6, 15] and len(params["rank_scale"]) == 3
    assert metrics["budget_target"] == BUDGET and metrics["search"]["iterations"] == 4
    calibration = metrics["calibration"]
    assert BUDGET * 0.95 <= calibration["budget"] <= BUDGET  # solved on the calibration set, from below
    assert set(metrics["validation"]) >= {"dense", "sparsevlm", "calibrated", "epoch"}
    for key in ("kl", "cosine", "accuracy", "budget", "flops_ratio"):
        assert key in metrics["validation"]["calibrated"]
    # what svlm test / svlm.sparsify load is what was validated
    sparse = svlm.sparsify(module.vlm, "sparsevlm", schedule=str(root / "schedule.yaml"))
    inputs = module._inputs({"images": images[:1] * 2, "questions": questions})
    with torch.no_grad():
        sparse(**inputs)
    assert len(sparse.last_report.decisions) == 3
    # progress curve: dense, default, one calibrated point per epoch
    assert [p["label"] for p in module.points] == ["dense", "sparsevlm-24", "calibrated-e0", "calibrated-e1"]
    assert (root / "tradeoff.csv").is_file() and (root / "checkpoints" / "last.ckpt").is_file()


def test_resume_continues_the_same_search(two_epochs, tmp_path):
    root, full, _ = two_epochs
    first = _module()
    _fit(tmp_path, 1, first)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert "svlm_calibration" in state and not any(k.startswith("vlm.") for k in state["state_dict"])
    resumed = _module()
    trainer = _fit(tmp_path, 2, resumed, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert trainer.global_step == 4 and trainer.optimizers[0].iterations == 4
    torch.testing.assert_close(resumed.theta, full.theta)
    assert trainer.optimizers[0].sigma == pytest.approx(full.trainer.optimizers[0].sigma)
    assert (
        read_schedule(tmp_path / "schedule.yaml")["params"] == read_schedule(root / "schedule.yaml")["params"]
    )


def test_counts_parametrization_and_cosine_objective(tmp_path):
    module = _module(parametrization="counts", objective="cosine", offspring=2)
    _fit(tmp_path, 1, module)
    params = read_schedule(tmp_path / "schedule.yaml")["params"]
    assert set(params) == {"layers", "counts"}


def test_bad_options_fail_early():
    with pytest.raises(ValueError, match="objective"):
        _module(objective="mse")
    with pytest.raises(ValueError, match="parametrization"):
        _module(parametrization="soft")
    with pytest.raises(ValueError, match="budget"):
        _module(budget=0.5)


def _cli_supports_fit() -> bool:
    from svlm import cli

    try:
        cli.parse_config(ROOT / "configs" / "calib.yaml", "fit")
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _cli_supports_fit(), reason="svlm/cli.py does not bind RankCalibrator to `fit` yet")
def test_cli_fit_then_compare(tmp_path, monkeypatch, capsys):
    from svlm.calibrate.compare import main as compare_main
    from svlm.cli import main

    monkeypatch.chdir(tmp_path)  # the shipped config's own folder (results/calib) must stay untouched
    config = yaml.safe_load((ROOT / "configs" / "calib.yaml").read_text())
    config["trainer"].update(max_epochs=1, enable_progress_bar=False)
    config["model"].update(model=MODEL, budget=BUDGET, max_new_tokens=2)
    config["data"].update(train_limit=4, limit=2, batch_size=2, image_size=112)
    path = tmp_path / "calib.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    command = ["fit", "--config", str(path), "--trainer.default_root_dir", str(run)]
    assert main(command) == 0
    # every output follows the one run folder
    for name in ("schedule.yaml", "metrics.csv", "config.yaml", "tradeoff.csv", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert not (tmp_path / "results").exists()
    schedule = run / "schedule.yaml"
    assert read_schedule(schedule)["metrics"]["search"]["iterations"] == 2

    # a checkpoint of other settings is refused, naming the difference, and nothing is touched
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*command, "--ckpt_path", "last", "--model.budget", "20"]) == 1
    err = capsys.readouterr().err
    assert "model.budget: 24.0 in the checkpoint, 20.0 now" in err, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # the matching one resumes
    assert main([*command, "--ckpt_path", "last", "--trainer.max_epochs", "2"]) == 0
    assert read_schedule(schedule)["metrics"]["search"]["iterations"] == 4
    out = tmp_path / "compare.json"
    assert (
        compare_main(
            ["--schedule", str(schedule), "--limit", "2", "--dtype", "float32", "--output", str(out)]
        )
        == 0
    )
    assert out.is_file()


def test_shapes_calibration_config_differs_from_the_default_in_model_budget_and_data_only():
    """configs/calib_shapes.yaml (calibration on the first default, svlm-shapes-llava) is configs/calib.yaml
    on that model at budget 96, with its own run folder."""
    default = yaml.safe_load((ROOT / "configs" / "calib.yaml").read_text())
    shapes = yaml.safe_load((ROOT / "configs" / "calib_shapes.yaml").read_text())
    assert default["model"]["model"] == "zoo:svlm-scenes-llava" and default["data"]["benchmark"] == "scenes"
    assert shapes["model"] == {**default["model"], "model": "zoo:svlm-shapes-llava", "budget": 96}
    assert shapes["data"] == {**default["data"], "benchmark": "shapes"}
    assert default["trainer"]["default_root_dir"] == "results/calib"
    assert shapes["trainer"] == {**default["trainer"], "default_root_dir": "results/calib_shapes"}
    assert {k: v for k, v in shapes.items() if k not in ("model", "data", "trainer")} == {
        k: v for k, v in default.items() if k not in ("model", "data", "trainer")
    }

import math

import pytest
import torch
from lightning.pytorch import Trainer

from svlm.data import VLMDataModule
from svlm.models import family_of, load_vlm, resolve_dtype
from svlm.module import StrategyPoint, VLMEvaluator, build_point_strategy, expand_points

RANDOM_64 = {"strategy": "random", "budget": 64}


def _trainer(tmp_path) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )


def _data(limit=4, batch_size=2) -> VLMDataModule:
    return VLMDataModule("shapes", limit=limit, batch_size=batch_size)


# -- strategy points ------------------------------------------------------------------------------------


def test_expand_points_labels_and_budget_lists():
    points = expand_points(
        [
            "dense",
            {"strategy": "fastv", "budget": [192, 64.0]},
            {"name": "random", "budget": 0.25, "label": "rnd"},
            {"class_path": "svlm.strategies.random.RandomPrune", "budget": 32, "kwargs": {"seed": 3}},
            StrategyPoint("sparsevlm", [128], label="svlm"),
        ]
    )
    assert [p.label for p in points] == ["dense", "fastv-192", "fastv-64", "rnd", "random-32", "svlm"]
    assert points[1].budget == 192 and points[4].kwargs == {"seed": 3}


def test_expand_points_errors():
    with pytest.raises(ValueError, match="Duplicate strategy point labels"):
        expand_points(["dense", {"strategy": "dense"}])
    with pytest.raises(ValueError, match="Unknown keys"):
        expand_points([{"strategy": "fastv", "budgett": 64}])
    with pytest.raises(ValueError, match="empty budget list"):
        expand_points([{"strategy": "fastv", "budget": []}])


def test_bad_strategy_names_and_arguments_fail_early():
    with pytest.raises(ValueError, match="fastv"):  # the message lists the valid names
        VLMEvaluator(strategies=["fastvv"])
    with pytest.raises(ValueError, match="unknown argument"):
        build_point_strategy(StrategyPoint("fastv", 64, kwargs={"nope": 1}))


# -- loading --------------------------------------------------------------------------------------------


def test_load_vlm_tiny_options_and_errors():
    model, processor, family = load_vlm("tiny:llava?num_layers=2&hidden_size=32", "float32", "cpu")
    assert family == "llava" and model.config.text_config.num_hidden_layers == 2
    assert processor.tokenizer.padding_side == "left" and not model.training
    with pytest.raises(ValueError, match="llava_next"):
        load_vlm("tiny:gemma", "float32", "cpu")
    with pytest.raises(ValueError, match="Bad options"):
        load_vlm("tiny:llava?layers=2", "float32", "cpu")
    with pytest.raises(ValueError, match="Unknown dtype"):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        family_of(type("Cfg", (), {"model_type": "gemma3"})())


def test_load_vlm_local_folder(tmp_path, make_tiny_vlm):
    tiny = make_tiny_vlm("llava", num_layers=2)
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    model, processor, family = load_vlm(str(tmp_path), "float32", "cpu")
    assert family == "llava" and processor.tokenizer.padding_side == "left"
    ref = tiny.model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())


# -- evaluation -----------------------------------------------------------------------------------------


def test_test_step_dense_and_random(tmp_path):
    module = VLMEvaluator("tiny:llava", strategies=["dense", RANDOM_64], max_new_tokens=2)
    _trainer(tmp_path).test(module, datamodule=_data(), verbose=False)
    dense, rnd = module.points
    assert (dense["label"], rnd["label"]) == ("dense", "random-64")
    assert dense["benchmark"] == rnd["benchmark"] == "shapes"
    assert dense["budget"] == dense["budget_output"] == dense["visual_tokens"] == 576
    assert rnd["budget"] == rnd["budget_output"] == rnd["visual_tokens"] == 64 and rnd["budget_target"] == 64
    assert dense["flops_ratio"] == pytest.approx(1.0)
    assert 0 < rnd["flops_ratio"] < 0.3 and rnd["dense_prefill_flops"] == dense["prefill_flops"]
    assert rnd["prefill_tflops"] == pytest.approx(rnd["prefill_flops"] / 1e12)
    for p in (dense, rnd):
        assert p["samples"] == 4 and p["batches"] == 2 and p["main_metric"] == "exact_match"
        assert 0.0 <= p["accuracy"] <= 1.0 and p["accuracy"] == p["metric/exact_match"]
        assert 0 < p["prefill_latency_s"] < p["generate_latency_s"]
        assert p["new_tokens_per_sample"] <= 2


class _OracleDense(VLMEvaluator):
    """Dense answers replaced by the references: dense accuracy is exactly 1."""

    def _run_points(self, batch, batch_idx):
        inputs, answers, reports, timings = super()._run_points(batch, batch_idx)
        answers["dense"] = [refs[0] for refs in batch["answers"]]
        return inputs, answers, reports, timings


def test_relative_accuracy_against_dense(tmp_path):
    module = _OracleDense("tiny:llava", strategies=["dense", RANDOM_64], max_new_tokens=1)
    _trainer(tmp_path).test(module, datamodule=_data(), verbose=False)
    dense, rnd = module.points
    assert dense["accuracy"] == 1.0 and dense["relative_accuracy"] == 1.0
    assert rnd["relative_accuracy"] == pytest.approx(rnd["accuracy"])
    assert rnd["relative/exact_match"] == pytest.approx(rnd["accuracy"])


def test_relative_accuracy_is_nan_without_dense(tmp_path):
    module = VLMEvaluator("tiny:llava", strategies=[RANDOM_64], max_new_tokens=1, latency_warmup=False)
    trainer = _trainer(tmp_path)
    trainer.test(module, datamodule=_data(limit=2), verbose=False)
    assert math.isnan(module.points[0]["relative_accuracy"])
    trainer.test(module, datamodule=_data(limit=2), verbose=False)  # a second run starts from scratch
    assert module.points[0]["samples"] == 2


def test_predict_step_returns_answers_and_reports(tmp_path):
    module = VLMEvaluator(
        "tiny:llava", strategies=["dense", RANDOM_64], max_new_tokens=1, latency_warmup=False
    )
    (out,) = _trainer(tmp_path).predict(module, datamodule=_data(limit=2))
    assert set(out["answers"]) == {"dense", "random-64"}
    assert all(len(a) == 2 and all(isinstance(t, str) for t in a) for a in out["answers"].values())
    assert out["reports"]["random-64"]["budget"] == 64
    assert out["references"] and len(out["questions"]) == 2


def test_validate_runs_the_same_evaluation(tmp_path):
    module = VLMEvaluator(
        "tiny:llava", strategies=["dense", RANDOM_64], max_new_tokens=1, latency_warmup=False
    )
    (logged,) = _trainer(tmp_path).validate(module, datamodule=_data(limit=2), verbose=False)
    assert [p["label"] for p in module.points] == ["dense", "random-64"]
    assert logged["random-64/budget"] == 64 and "dense/accuracy" in logged
    assert not any("/exact_match/" in k for k in logged)  # per-category numbers go to the CSV only


def test_zoo_names_resolve_or_fail_clearly():
    from svlm.models import zoo_path

    with pytest.raises(ValueError, match="No model 'nope' in svlm.zoo"):
        zoo_path("nope")
    with pytest.raises(ValueError, match="shipped models"):
        load_vlm("zoo:nope", "float32", "cpu")

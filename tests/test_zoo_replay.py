"""Replaying a recipe model's chain of continuations (`svlm.zoo.recipe.replay`) and `stop_after`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from svlm.zoo import recipe
from svlm.zoo.recipe import replay


def _log(config: dict, steps: int, continued_from: dict | None = None) -> dict:
    return {"config": config, "steps": [{"step": steps}], "continued_from": continued_from}


def _config(**values) -> dict:
    import dataclasses

    return dataclasses.asdict(recipe.RecipeConfig(**{**recipe.SMOKE, **values}))


def test_chain_is_oldest_first_and_rewired_to_the_rebuilt_stages(tmp_path: Path) -> None:
    first = _config(steps=6, init_from="")
    second = _config(steps=4, lr=1e-3, init_from="/gone/first")
    third = _config(steps=3, seed=7, init_from="/gone/second")
    log = _log(
        third,
        3,
        {
            "path": "/gone/second",
            "config": second,
            "trained_steps": 4,
            "continued_from": {"path": "/gone/first", "config": first, "trained_steps": 5},
        },
    )
    stages = replay.chain_of(log, "/shipped")
    assert [s.path for s in stages] == ["/gone/first", "/gone/second", "/shipped"]
    assert [s.trained_steps for s in stages] == [5, 4, 3]
    planned = replay.stage_configs(stages, tmp_path / "out")
    assert [target for _, target in planned] == [
        tmp_path / "out" / "stage-0",
        tmp_path / "out" / "stage-1",
        tmp_path / "out",
    ]
    cfgs = [cfg for cfg, _ in planned]
    assert [c.init_from for c in cfgs] == [
        "",
        str(tmp_path / "out" / "stage-0"),
        str(tmp_path / "out" / "stage-1"),
    ]
    # the first stage was stopped at step 5 of its 6-step schedule; the others ran to the end
    assert [c.stop_after for c in cfgs] == [5, 0, 0]
    assert cfgs[1].lr == 1e-3 and cfgs[2].seed == 7


def test_command_line_names_only_what_differs_from_the_benchmark_defaults() -> None:
    cfg = recipe.RecipeConfig(**{**recipe.SCENES, "lr": 1e-3, "split_types": "relation"})
    line = replay.command_line(cfg, Path("/tmp/x"))
    assert line == (
        "python -m svlm.zoo.train_default --benchmark scenes --lr 0.001 --split-types relation "
        "--output-dir /tmp/x"
    )


def test_missing_trained_steps_are_read_from_the_saved_run(tmp_path: Path) -> None:
    saved = tmp_path / "partial"
    saved.mkdir()
    (saved / "training_log.json").write_text(json.dumps(_log(_config(steps=6), 4)))
    log = _log(_config(steps=2, init_from=str(saved)), 2, {"path": str(saved), "config": _config(steps=6)})
    assert [s.trained_steps for s in replay.chain_of(log)] == [4, 2]
    recorded = replay.record_trained_steps(json.loads(json.dumps(log)))
    assert recorded["continued_from"]["trained_steps"] == 4


@pytest.mark.parametrize(
    ("log", "message"),
    [
        (_log(_config(), 3, {"path": "/gone", "config": None}), "no recorded config"),
        (_log({**_config(), "retired_option": 1}, 3), "retired_option"),
        (_log(_config(init_from="/elsewhere"), 3), "whose log is not in the chain"),
    ],
)
def test_unreplayable_chains_are_refused_with_the_reason(tmp_path: Path, log: dict, message: str) -> None:
    path = tmp_path / "training_log.json"
    path.write_text(json.dumps(log))
    with pytest.raises(ValueError, match=message):
        replay.replay(path, tmp_path / "out", dry_run=True)


def test_stop_after_must_fit_the_schedule() -> None:
    with pytest.raises(ValueError, match="stop_after must be between 0"):
        recipe.check_config(recipe.RecipeConfig(**{**recipe.SMOKE, "steps": 3, "stop_after": 4}))


def test_replay_rebuilds_a_stopped_and_continued_chain_exactly(tmp_path: Path) -> None:
    """Stage 0 stopped at step 2 of 3, stage 1 continued from its save: the replay gives the same weights."""
    common = ["--smoke", "--test-samples", "0", "--eval-samples", "2"]
    first, second = tmp_path / "first", tmp_path / "second"
    recipe.main([*common, "--steps", "3", "--stop-after", "2", "--output-dir", str(first)])
    recipe.main(
        [*common, "--steps", "2", "--seed", "3", "--init-from", str(first), "--output-dir", str(second)]
    )
    log = json.loads((second / "training_log.json").read_text())
    assert log["continued_from"]["trained_steps"] == 2
    assert json.loads((first / "training_log.json").read_text())["steps"][-1]["step"] == 2

    rebuilt = tmp_path / "rebuilt"
    folders = replay.replay(second / "training_log.json", rebuilt)
    assert folders == [rebuilt / "stage-0", rebuilt]
    original, again = load_file(second / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)

"""Rebuild a recipe model from its ``training_log.json``, every stage of its chain of continuations.

A model trained in several runs, each started from the previous one's save (``--init-from``), records the
whole chain in its log: each run's config, the steps it trained (fewer than its config's when it was stopped
and continued from a partial save) and what it continued from. Replaying runs the stages oldest first, each
from the one before, into ``<output-dir>/stage-<i>``, the last into ``<output-dir>`` itself::

    python -m svlm.zoo.recipe.replay svlm/zoo/svlm-scenes-llava/training_log.json --output-dir /tmp/rebuilt
    python -m svlm.zoo.recipe.replay svlm/zoo/svlm-scenes-llava/training_log.json --dry-run   # the commands
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svlm.zoo.recipe.config import SCENES, RecipeConfig, check_config


@dataclasses.dataclass(frozen=True)
class Stage:
    """One run of a chain: its config (``init_from`` as recorded) and the steps it actually trained."""

    path: str
    config: dict[str, Any]
    trained_steps: int


def chain_of(log: dict[str, Any], path: str = "") -> list[Stage]:
    """The runs behind ``log``, oldest first; the last is ``log``'s own run."""
    stages = []
    entry: dict[str, Any] | None = {
        "path": path,
        "config": log.get("config"),
        "trained_steps": (log.get("steps") or [{}])[-1].get("step", 0),
        "continued_from": log.get("continued_from"),
    }
    while entry is not None:
        if not entry.get("config"):
            raise ValueError(
                f"the run saved at {entry.get('path')!r} has no recorded config, so its chain cannot be "
                "replayed from this log"
            )
        trained = entry.get("trained_steps")
        if (
            trained is None
        ):  # recorded before logs noted it: the saved run's own log says, where it is at hand
            trained = _steps_saved_at(entry.get("path", ""))
        stages.append(Stage(str(entry.get("path", "")), entry["config"], int(trained or 0)))
        entry = entry.get("continued_from")
    return stages[::-1]


def _steps_saved_at(path: str) -> int:
    """The last step logged by the run saved at ``path`` (0 when that folder or its log is not here)."""
    saved = Path(path) / "training_log.json" if path else None
    if saved is None or not saved.is_file():
        return 0
    steps = json.loads(saved.read_text()).get("steps") or [{}]
    return int(steps[-1].get("step", 0))


def record_trained_steps(log: dict[str, Any]) -> dict[str, Any]:
    """``log`` with ``trained_steps`` noted in every run it continued from that lacks it, read from that
    run's saved log where it is at hand: so the chain stays replayable where those folders are not."""
    entry = log.get("continued_from")
    while entry is not None:
        if entry.get("trained_steps") is None:
            entry["trained_steps"] = _steps_saved_at(entry.get("path", "")) or None
        entry = entry.get("continued_from")
    return log


def stage_configs(stages: Sequence[Stage], output_dir: str | Path) -> list[tuple[RecipeConfig, Path]]:
    """Each stage's config pointed at the previous stage's rebuild, with the folder it is saved to."""
    out = Path(output_dir)
    fields = {f.name for f in dataclasses.fields(RecipeConfig)}
    planned = []
    previous: Path | None = None
    for i, stage in enumerate(stages):
        unknown = sorted(set(stage.config) - fields)
        if unknown:
            raise ValueError(f"stage {i} ({stage.path!r}) has options this recipe no longer knows: {unknown}")
        values = dict(stage.config)
        if i == 0 and values.get("init_from"):
            raise ValueError(
                f"stage 0 ({stage.path!r}) started from {values['init_from']!r}, "
                "whose log is not in the chain"
            )
        values["init_from"] = str(previous) if previous is not None else ""
        steps = int(values.get("steps", RecipeConfig.steps))
        values["stop_after"] = stage.trained_steps if 0 < stage.trained_steps < steps else 0
        cfg = RecipeConfig(**values)
        check_config(cfg)
        target = out if i == len(stages) - 1 else out / f"stage-{i}"
        planned.append((cfg, target))
        previous = target
    return planned


def command_line(cfg: RecipeConfig, output_dir: Path) -> str:
    """The ``train_default`` command that runs one stage: every option that differs from the defaults (of
    ``--benchmark scenes`` for an svlm-scenes run)."""
    scenes = cfg.benchmark == "scenes"
    defaults = RecipeConfig(**SCENES) if scenes else RecipeConfig()
    flags = [
        f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}"
        for f in dataclasses.fields(RecipeConfig)
        if f.name != "extra" and getattr(cfg, f.name) != getattr(defaults, f.name)
    ]
    head = ["python -m svlm.zoo.train_default"] + (["--benchmark scenes"] if scenes else [])
    return " ".join([*head, *flags, f"--output-dir {output_dir}"])


def replay(log_path: str | Path, output_dir: str | Path, dry_run: bool = False) -> list[Path]:
    """Rebuild every stage of the chain in ``log_path``; return the folders, the final model's last."""
    log = json.loads(Path(log_path).read_text())
    planned = stage_configs(chain_of(log, str(Path(log_path).parent)), output_dir)
    for i, (cfg, target) in enumerate(planned):
        print(f"stage {i} of {len(planned)}: {command_line(cfg, target)}", flush=True)
        if not dry_run:
            from svlm.zoo.recipe.train import train  # the training stack, only when something runs

            train(cfg, target)
    return [target for _, target in planned]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m svlm.zoo.recipe.replay",
        description="Rebuild a recipe model from its training_log.json, every stage of its chain.",
    )
    parser.add_argument("log", help="a training_log.json saved by the recipe")
    parser.add_argument("--output-dir", required=True, help="where the rebuilt model goes (stages below it)")
    parser.add_argument("--dry-run", action="store_true", help="print each stage's command; train nothing")
    args = parser.parse_args(argv)
    try:
        replay(args.log, args.output_dir, args.dry_run)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()

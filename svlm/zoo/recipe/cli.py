"""Command line of the recipe: one flag per `RecipeConfig` field."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from svlm.zoo.recipe.config import SCENES, SMOKE, RecipeConfig, check_config
from svlm.zoo.recipe.train import train


def _flag(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) for boolean options."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[RecipeConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m svlm.zoo.train_default",
        description="Train one of svlm's zoo models (a small LLaVA-1.5 VLM) on CPU.",
    )
    parser.add_argument("--output-dir", default=None, help="where to save the model (default: do not save)")
    parser.add_argument("--smoke", action="store_true", help="a tiny 2-layer model for a few steps (seconds)")
    defaults = RecipeConfig()
    for f in dataclasses.fields(RecipeConfig):
        if f.name == "extra":
            continue
        kind = type(getattr(defaults, f.name))
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=_flag if kind is bool else kind, default=None
        )
    args = parser.parse_args(argv)
    values = dict(SCENES) if args.benchmark == "scenes" else {}
    values.update(SMOKE if args.smoke else {})
    values.update(
        {
            k: v
            for k, v in vars(args).items()
            if k in {f.name for f in dataclasses.fields(RecipeConfig)} and v is not None
        }
    )
    cfg = RecipeConfig(**values)
    try:
        check_config(cfg)
    except ValueError as err:
        parser.error(str(err))  # one line naming the bad value, before any training
    return cfg, args


def main(argv: Sequence[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    train(cfg, args.output_dir)

"""How much token choice matters on svlm-scenes, from a finished table run (its ``tradeoff.json``).

    svlm test --config configs/zoo_table_scenes.yaml
    python -m svlm.data.scenes_bounds results/zoo_table_scenes/tradeoff.json     # -> bounds.json beside it

Two bounds need no knowledge of any model: the **evidence oracle** (the tokens covering the objects a
question is about, from the scene annotation) bounds question-aware selection, and the best of the
question-agnostic methods (DivPrune, pooling, VisionZip, VTC-CLS: one token set per image, whatever is asked)
bounds what choosing without the question can keep. A benchmark on which choosing tokens matters as on real
images shows dense accuracy well above chance, a large loss for random tokens, an oracle close to dense and a
clear gap between the oracle and every question-agnostic choice at the same budget. The thresholds are those
of issue 27 and can be changed by flag.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["QUESTION_AGNOSTIC", "Thresholds", "bounds", "main"]

#: strategies that pick one token set per image whatever the question asks
QUESTION_AGNOSTIC: tuple[str, ...] = ("divprune", "pooling", "visionzip", "vtc_cls")


@dataclass(frozen=True)
class Thresholds:
    """Acceptance thresholds (accuracy in [0, 1]; drops and gaps in accuracy points / 100)."""

    min_dense: float = 0.85
    min_random_drop: float = 0.25
    min_oracle_share: float = 0.95
    min_agnostic_gap: float = 0.08


def _at(points: Sequence[dict[str, Any]], strategy: str, budget: float) -> dict[str, Any] | None:
    return next(
        (
            p
            for p in points
            if p.get("strategy") == strategy and math.isclose(float(p["budget_target"]), budget)
        ),
        None,
    )


def bounds(
    points: Sequence[dict[str, Any]], budget: float = 64, thresholds: Thresholds | None = None
) -> dict[str, Any]:
    """The bounds at ``budget`` and whether each check holds (``None`` when its point is missing)."""
    t = thresholds or Thresholds()
    dense = next((p for p in points if p.get("strategy") == "dense"), None)
    if dense is None:
        raise ValueError("the table has no 'dense' point; run it with the dense strategy")
    acc = float(dense["accuracy"])
    oracle = _at(points, "evidence_oracle", budget)
    rand = _at(points, "random", budget)
    agnostic = {s: p for s in QUESTION_AGNOSTIC if (p := _at(points, s, budget)) is not None}
    best = max(agnostic.items(), key=lambda kv: float(kv[1]["accuracy"]), default=None)
    out: dict[str, Any] = {
        "budget": budget,
        "samples": int(dense.get("samples", 0)),
        "dense": acc,
        "random": None if rand is None else float(rand["accuracy"]),
        "evidence_oracle": None if oracle is None else float(oracle["accuracy"]),
        "question_agnostic": {s: float(p["accuracy"]) for s, p in agnostic.items()},
        "best_question_agnostic": None if best is None else best[0],
    }
    checks: dict[str, bool | None] = {f"dense >= {t.min_dense:g}": acc >= t.min_dense}
    checks[f"random-{budget:g} loses >= {100 * t.min_random_drop:g} points"] = (
        None if rand is None else acc - float(rand["accuracy"]) >= t.min_random_drop
    )
    checks[f"oracle-{budget:g} keeps >= {100 * t.min_oracle_share:g}% of dense"] = (
        None if oracle is None else float(oracle["accuracy"]) >= t.min_oracle_share * acc
    )
    checks[f"best question-agnostic-{budget:g} >= {100 * t.min_agnostic_gap:g} points below the oracle"] = (
        None
        if oracle is None or best is None
        else float(oracle["accuracy"]) - float(best[1]["accuracy"]) >= t.min_agnostic_gap
    )
    out["checks"] = checks
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m svlm.data.scenes_bounds", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "tradeoff", help="tradeoff.json of a table run (svlm test --config configs/zoo_table_scenes.yaml)"
    )
    parser.add_argument("--budget", type=float, default=64)
    parser.add_argument(
        "--output", default=None, help="where to write the bounds (default: bounds.json beside it)"
    )
    parser.add_argument("--check", action="store_true", help="exit with status 1 unless every check holds")
    args = parser.parse_args(argv)
    path = Path(args.tradeoff)
    if not path.is_file():
        parser.error(f"no such file: {path} (run `svlm test --config configs/zoo_table_scenes.yaml` first)")
    result = bounds(json.loads(path.read_text())["points"], args.budget)
    out = Path(args.output) if args.output else path.with_name("bounds.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"dense {result['dense']:.3f} on {result['samples']} samples; at budget {args.budget:g}:")

    def fmt(v: float | None) -> str:
        return "missing" if v is None else f"{v:.3f}"

    print(f"  evidence oracle {fmt(result['evidence_oracle'])}, random {fmt(result['random'])}")
    agnostic = ", ".join(f"{k} {fmt(v)}" for k, v in result["question_agnostic"].items())
    print(f"  question-agnostic: {agnostic or 'missing'}")
    for name, ok in result["checks"].items():
        print(f"  [{'ok' if ok else 'missing' if ok is None else 'FAIL'}] {name}")
    print(f"written: {out}")
    return 0 if not args.check or all(result["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``svlm`` command line: LightningCLI subcommands plus small helpers.

    svlm test --config configs/demo.yaml          # evaluate a list of strategy points, write results/<run>/
    svlm test --config configs/demo.yaml --model.max_new_tokens 8 --data.limit 16
    svlm strategies                                # registered strategies with a one-line description
    svlm bench --model tiny:llava --strategies '[dense, fastv]' --budgets '[128, 64]'

``fit``/``validate``/``test``/``predict`` are Lightning's; ``strategies`` and ``bench`` are handled before
LightningCLI sees the arguments (as litgpt maps subcommands to functions).
"""

from __future__ import annotations

import inspect
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from svlm.module import VLMEvaluator, build_point_strategy, expand_points

__all__ = ["SVLMCLI", "bench", "main", "parse_config", "strategies_table"]

HELPERS_HELP = (
    "Helpers: `svlm strategies` lists the registered pruning strategies; `svlm bench --help` measures "
    "latency and FLOPs of strategies on synthetic inputs."
)


def _datamodule_class() -> type:
    from svlm.data import VLMDataModule

    return VLMDataModule


class SVLMCLI(LightningCLI):
    """LightningCLI for :class:`svlm.module.VLMEvaluator` and :class:`svlm.data.VLMDataModule`.

    Adds a :class:`svlm.callbacks.TradeoffCurve` under the ``tradeoff`` key (always on: every run writes its
    trade-off table into ``trainer.default_root_dir``), links the datamodule's benchmark to the model, and
    validates strategy points at parse time. ``parse_only=True`` parses and validates without building
    anything (no model download): used by :func:`parse_config`.
    """

    def __init__(self, *args: Any, parse_only: bool = False, **kwargs: Any) -> None:
        self.parse_only = parse_only
        kwargs.setdefault("model_class", VLMEvaluator)
        kwargs.setdefault("datamodule_class", _datamodule_class())
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        parser_kwargs.setdefault("description", f"svlm: training-free visual-token pruning. {HELPERS_HELP}")
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from svlm.callbacks import TradeoffCurve

        parser.add_lightning_class_args(TradeoffCurve, "tradeoff")
        data_params = inspect.signature(self._datamodule_class).parameters
        if "benchmark" in data_params:
            parser.link_arguments("data.benchmark", "model.benchmark", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        validate_points(config)

    def instantiate_classes(self) -> None:
        if not self.parse_only:
            super().instantiate_classes()

    def _run_subcommand(self, subcommand: str) -> None:
        if not self.parse_only:
            super()._run_subcommand(subcommand)

    def after_test(self) -> None:
        points = getattr(self.model, "points", None)
        if points and self.trainer.is_global_zero:
            print(format_points(points))
            print(f"results: {Path(self.trainer.default_root_dir).resolve()}")


def validate_points(config: Any) -> None:
    """Build every strategy point of a parsed config once, so a bad name or argument fails at parse time."""
    model = config.get("model") if hasattr(config, "get") else None
    specs = model.get("strategies") if model is not None else None
    if specs is None:
        return
    specs = [s if isinstance(s, str) else dict(vars(s)) if hasattr(s, "__dict__") else dict(s) for s in specs]
    for point in expand_points(specs):
        build_point_strategy(point)


def parse_config(path: str | Path, subcommand: str = "test") -> Any:
    """Parse a YAML config through the same parser as ``svlm <subcommand> --config path``.

    Nothing is instantiated (no model is loaded); unknown keys, bad types, unknown strategies or strategy
    arguments raise. Returns the parsed namespace of the subcommand.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config {str(path)!r} does not exist.")
    parser_kwargs = {"exit_on_error": False}
    parser_kwargs = {**parser_kwargs, subcommand: dict(parser_kwargs)}
    cli = SVLMCLI(args=[subcommand, "--config", str(path)], parse_only=True, parser_kwargs=parser_kwargs)
    return cli.config[subcommand]


# -- helpers --------------------------------------------------------------------------------------------


def format_points(points: Sequence[dict[str, Any]]) -> str:
    """A compact plain-text table of strategy points (what a terminal user wants to see first)."""
    cols = [
        ("label", "{}"),
        ("budget", "{:.1f}"),
        ("budget_output", "{:.1f}"),
        ("prefill_tflops", "{:.4f}"),
        ("flops_ratio", "{:.3f}"),
        ("accuracy", "{:.4f}"),
        ("relative_accuracy", "{:.3f}"),
        ("prefill_latency_s", "{:.4f}"),
        ("generate_latency_s", "{:.4f}"),
    ]

    def cell(p: dict, key: str, fmt: str) -> str:
        v = p.get(key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return fmt.format(v)

    head = [c for c, _ in cols]
    if points and points[0].get("main_metric"):
        head[head.index("accuracy")] = str(points[0]["main_metric"])
    rows = [[cell(p, k, f) for k, f in cols] for p in points]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def _strategy_doc(name: str) -> str:
    import svlm

    cls = None
    for getter in ("get_strategy", "strategy_class"):
        fn = getattr(svlm, getter, None)
        if callable(fn):
            try:
                cls = fn(name)
                break
            except Exception:  # noqa: BLE001 - fall back to the registry below
                cls = None
    if cls is None:
        registry = getattr(getattr(svlm, "strategies", None), "STRATEGIES", None) or getattr(
            getattr(svlm, "strategies", None), "REGISTRY", None
        )
        if registry is not None and hasattr(registry, "get"):
            cls = registry.get(name)
    doc = inspect.getdoc(cls) if cls is not None else None
    return doc.strip().splitlines()[0] if doc else ""


def strategies_table() -> str:
    """One line per registered strategy: its name and the first line of its docstring."""
    import svlm

    names = svlm.available_strategies()
    width = max((len(n) for n in names), default=0)
    return "\n".join(f"{n.ljust(width)}  {_strategy_doc(n)}".rstrip() for n in names)


def _cmd_strategies(args: Sequence[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print("usage: svlm strategies\n\nList the registered pruning strategies with a one-line description.")
        return 0
    if args:
        print(f"svlm strategies takes no arguments, got {list(args)}", file=sys.stderr)
        return 2
    print(strategies_table())
    return 0


def bench(
    model: str = "tiny:llava",
    strategies: list[str] | None = None,
    budgets: list[float] | None = None,
    batch_size: int = 1,
    image_size: int = 336,
    question: str = "What is shown in the image? Answer the question using a single word or phrase.",
    max_new_tokens: int = 16,
    repeats: int = 5,
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    device: str = "auto",
    output: Path | None = None,
) -> list[dict[str, Any]]:
    """Measure prefill and generate latency, measured budget and FLOPs of strategies on synthetic inputs.

    Every strategy other than ``dense`` is run at every budget; each point is timed ``repeats`` times after a
    warm-up generate, and the median is reported together with the speed-up over dense.

    Args:
        model: Hugging Face id, local folder, or ``tiny:<family>``.
        strategies: Strategy names or class paths (default: dense and every registered strategy).
        budgets: Target mean visual tokens per layer for the pruning strategies.
        batch_size: Images per generate call.
        image_size: Side of the synthetic square images in pixels.
        question: Prompt text for every sample.
        max_new_tokens: Greedy decoding length per call.
        repeats: Timed runs per point (median reported).
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        output: Optional JSON file for the results (written atomically).
    """
    import svlm
    from svlm.models import resolve_device
    from svlm.results import atomic_write_json
    from svlm.testing import random_image

    if repeats < 1 or batch_size < 1:
        raise ValueError(f"repeats and batch_size must be >= 1, got {repeats} and {batch_size}")
    names = strategies or ["dense", *[n for n in svlm.available_strategies() if n != "dense"]]
    budgets = budgets or [192, 128, 64]
    specs: list[Any] = [
        n if n == "dense" else {"strategy": n, "budget": list(budgets)} for n in dict.fromkeys(names)
    ]
    evaluator = VLMEvaluator(
        model=model,
        strategies=specs,
        dtype=dtype,
        attn_implementation=attn_implementation,
        max_new_tokens=max_new_tokens,
        latency_warmup=False,
    )
    evaluator.vlm, evaluator.processor, evaluator.family = _load(evaluator, resolve_device(device))
    batch = {
        "images": [random_image(seed=i, size=(image_size, image_size)) for i in range(batch_size)],
        "questions": [question] * batch_size,
    }
    inputs = evaluator.tokenize(batch)
    rows = []
    for i, point in enumerate(evaluator.point_configs):
        evaluator.generate(i, inputs, seed=0)  # warm-up
        prefill, total = [], []
        for r in range(repeats):
            _, report, timing = evaluator.generate(i, inputs, seed=r)
            prefill.append(timing.get("prefill", math.nan))
            total.append(timing["generate"])
        rows.append(
            {
                "label": point.label,
                "strategy": point.strategy,
                "budget_target": point.budget,
                "budget": report.budget,
                "budget_output": report.budget_output,
                "prefill_tflops": report.prefill_flops / batch_size / 1e12,
                "flops_ratio": report.prefill_flops / report.dense_prefill_flops,
                "prefill_latency_s": statistics.median(prefill),
                "generate_latency_s": statistics.median(total),
            }
        )
    dense = next((r for r in rows if r["strategy"] == "dense"), None)
    for r in rows:
        r["prefill_speedup"] = dense["prefill_latency_s"] / r["prefill_latency_s"] if dense else math.nan
        r["generate_speedup"] = dense["generate_latency_s"] / r["generate_latency_s"] if dense else math.nan
    print(format_bench(rows, model, batch_size, evaluator))
    if output is not None:
        atomic_write_json(output, {"model": model, "batch_size": batch_size, "points": rows})
    return rows


def _load(evaluator: VLMEvaluator, device: Any) -> tuple[Any, Any, str]:
    from svlm.models import load_vlm

    vlm, processor, family = load_vlm(evaluator.model_name, evaluator.dtype_name, device, evaluator.attn_implementation)
    return vlm, processor, family


def format_bench(rows: Sequence[dict[str, Any]], model: str, batch_size: int, evaluator: VLMEvaluator) -> str:
    device = next(evaluator.vlm.parameters()).device
    head = f"svlm bench: {model} ({evaluator.family}) on {device}, batch {batch_size}, {evaluator.max_new_tokens} new"
    cols = ["label", "budget", "budget_output", "prefill_tflops", "flops_ratio", "prefill_ms", "generate_ms"]
    cols += ["prefill_x", "generate_x"]
    table = [
        [
            r["label"],
            f"{r['budget']:.1f}",
            f"{r['budget_output']:.1f}",
            f"{r['prefill_tflops']:.4f}",
            f"{r['flops_ratio']:.3f}",
            f"{1e3 * r['prefill_latency_s']:.1f}",
            f"{1e3 * r['generate_latency_s']:.1f}",
            f"{r['prefill_speedup']:.2f}",
            f"{r['generate_speedup']:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([head, fmt(cols), *(fmt(t) for t in table)])


def _cmd_bench(args: Sequence[str]) -> int:
    from jsonargparse import auto_cli

    auto_cli(bench, args=list(args), as_positional=False, parser_mode="yaml")
    return 0


HELPERS: dict[str, Callable[[Sequence[str]], int]] = {"strategies": _cmd_strategies, "bench": _cmd_bench}


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``svlm`` console script and ``python -m svlm``."""
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] in HELPERS:
        return HELPERS[args[0]](args[1:])
    SVLMCLI(args=args)
    return 0

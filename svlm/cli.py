"""The ``svlm`` command line: LightningCLI subcommands plus two small helpers.

    svlm test --config configs/demo.yaml          # evaluate a list of strategy points -> results/demo/
    svlm test --config configs/demo.yaml --data.limit 16 --model.max_new_tokens 8
    svlm strategies                                # registered strategies, one line each
    svlm bench --config configs/bench.yaml         # latency + FLOPs of strategies on synthetic inputs

``fit``/``validate``/``test``/``predict`` are Lightning's; ``strategies`` and ``bench`` are dispatched before
LightningCLI sees the arguments (litgpt's habit of mapping subcommands to plain functions).
"""

from __future__ import annotations

import inspect
import math
import statistics
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from svlm.module import VLMEvaluator, build_point_strategy, expand_points

__all__ = ["SVLMCLI", "bench", "format_points", "main", "parse_config", "strategies_table"]

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
    trade-off table into ``trainer.default_root_dir``), links ``data.benchmark`` to ``model.benchmark``, and
    builds every strategy point once at parse time so a bad name or argument fails before any model loads.
    ``parse_only=True`` stops after parsing and validation (no seeding, no instantiation): see
    :func:`parse_config`.
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
        if "benchmark" in inspect.signature(self._datamodule_class).parameters:
            parser.link_arguments("data.benchmark", "model.benchmark", apply_on="parse")

    def _set_seed(self) -> None:
        if not self.parse_only:
            super()._set_seed()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            validate_points(config)
        except ValueError as err:
            if self.parse_only:
                raise
            self._parser(self.subcommand).error(f"model.strategies: {err}")  # usage + message, exit 2

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


def _plain(value: Any) -> Any:
    """jsonargparse Namespaces / dataclasses -> dicts, recursively."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    return value


def validate_points(config: Any) -> None:
    """Build every strategy point of a parsed config once: unknown strategies or arguments raise here."""
    model = config.get("model") if hasattr(config, "get") else None
    specs = model.get("strategies") if model is not None else None
    for point in expand_points([_plain(s) for s in specs or []]):
        build_point_strategy(point)


def _bench_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="svlm bench", description=inspect.getdoc(bench), exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="Path to a YAML config of these options.")
    parser.add_function_arguments(bench, as_positional=False)
    return parser


def _is_bench_config(data: Any) -> bool:
    """A bench config names its model with a string; LightningCLI configs have a ``model`` section."""
    if not isinstance(data, Mapping) or not data:
        return False
    return isinstance(data.get("model"), str) or set(data) <= set(inspect.signature(bench).parameters)


def parse_config(path: str | Path, subcommand: str | None = None) -> Any:
    """Parse a shipped YAML through the same parser the CLI uses, raising on any error; nothing is loaded.

    ``subcommand`` is ``test`` (default), another LightningCLI subcommand, or ``bench``; when omitted, a
    config of only ``svlm bench`` options is parsed as ``bench``. Unknown keys, bad types, unknown strategies
    and bad strategy arguments raise. Returns the parsed namespace.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config {str(path)!r} does not exist.")
    if subcommand is None:
        subcommand = "bench" if _is_bench_config(yaml.safe_load(path.read_text())) else "test"
    if subcommand == "bench":
        return _bench_parser().parse_args(["--config", str(path)])
    parser_kwargs: dict[str, Any] = {"exit_on_error": False, subcommand: {"exit_on_error": False}}
    with warnings.catch_warnings():  # args= given while sys.argv holds the caller's (e.g. pytest's) options
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = SVLMCLI(args=[subcommand, "--config", str(path)], parse_only=True, parser_kwargs=parser_kwargs)
    return cli.config[subcommand]


# -- tables -----------------------------------------------------------------------------------------------


def _table(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; ``cols`` are (key, header, format). Missing / NaN values print as ``-``."""

    def cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return fmt.format(v)

    head = [h for _, h, _ in cols]
    body = [[cell(r, k, f) for k, _, f in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(head), *(line(b) for b in body)])


def format_points(points: Sequence[Mapping[str, Any]]) -> str:
    """The strategy points of a test run as a compact table (what a terminal user wants to see first)."""
    main = (points[0].get("main_metric") if points else None) or "accuracy"
    return _table(
        points,
        [
            ("label", "label", "{}"),
            ("budget", "budget", "{:.1f}"),
            ("budget_output", "budget_out", "{:.1f}"),
            ("prefill_tflops", "TFLOPs", "{:.4f}"),
            ("flops_ratio", "flops", "{:.3f}"),
            ("accuracy", main, "{:.4f}"),
            ("relative_accuracy", "rel", "{:.3f}"),
            ("prefill_latency_s", "prefill_s", "{:.4f}"),
            ("generate_latency_s", "generate_s", "{:.4f}"),
        ],
    )


# -- svlm strategies --------------------------------------------------------------------------------------


def strategies_table() -> str:
    """One line per registered strategy: its name and the first line of its docstring."""
    import svlm
    from svlm.strategies import strategy_class

    names = svlm.available_strategies()
    width = max((len(n) for n in names), default=0)
    lines = []
    for name in names:
        doc = inspect.getdoc(strategy_class(name)) or ""
        lines.append(f"{name.ljust(width)}  {doc.strip().splitlines()[0] if doc.strip() else ''}".rstrip())
    return "\n".join(lines)


def _cmd_strategies(args: Sequence[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print("usage: svlm strategies\n\nList the registered pruning strategies with a one-line description.")
        return 0
    if args:
        print(f"svlm strategies takes no arguments, got {list(args)}", file=sys.stderr)
        return 2
    print(strategies_table())
    return 0


# -- svlm bench -------------------------------------------------------------------------------------------


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

    The unwrapped Hugging Face model (row ``hf``) is the reference for the speed-ups; ``dense`` is svlm's
    no-pruning run (its gap to ``hf`` is the wrapper's overhead). Every other strategy runs at every budget.
    Each row is timed ``repeats`` times after one warm-up generate; medians are reported.

    Args:
        model: Hugging Face id, local folder, or ``tiny:<family>``.
        strategies: Strategy names or class paths (default: dense and every registered strategy).
        budgets: Target mean visual tokens per layer of the pruning strategies (default 192, 128, 64).
        batch_size: Images per generate call.
        image_size: Side of the synthetic square images in pixels.
        question: Prompt text for every sample.
        max_new_tokens: Greedy decoding length per call.
        repeats: Timed runs per row (median reported).
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        output: Optional JSON file for the rows (written atomically).
    """
    import svlm
    from svlm.models import load_vlm, resolve_device
    from svlm.results import atomic_write_json
    from svlm.testing import random_image

    if repeats < 1 or batch_size < 1:
        raise ValueError(f"repeats and batch_size must be >= 1, got {repeats} and {batch_size}")
    names = list(dict.fromkeys(strategies or ["dense", *svlm.available_strategies()]))
    budgets = list(budgets or [192, 128, 64])
    evaluator = VLMEvaluator(
        model=model,
        strategies=[n if n == "dense" else {"strategy": n, "budget": budgets} for n in names],
        dtype=dtype,
        attn_implementation=attn_implementation,
        max_new_tokens=max_new_tokens,
        latency_warmup=False,
    )
    evaluator.vlm, evaluator.processor, evaluator.family = load_vlm(
        model, dtype, resolve_device(device), attn_implementation
    )
    batch = {
        "images": [random_image(seed=i, size=(image_size, image_size)) for i in range(batch_size)],
        "questions": [question] * batch_size,
    }
    inputs = evaluator.tokenize(batch)
    rows = []
    for index, point in [(None, None), *enumerate(evaluator.point_configs)]:
        evaluator.generate(index, inputs, seed=0)  # warm-up
        prefill, total = [], []
        for r in range(repeats):
            _, report, timing = evaluator.generate(index, inputs, seed=r)
            prefill.append(timing.get("prefill", math.nan))
            total.append(timing["generate"])
        row: dict[str, Any] = {
            "label": point.label if point else "hf",
            "strategy": point.strategy if point else "hf",
            "budget_target": point.budget if point else None,
            "prefill_latency_s": statistics.median(prefill),
            "generate_latency_s": statistics.median(total),
        }
        if report is not None:
            row.update(
                budget=report.budget,
                budget_output=report.budget_output,
                prefill_tflops=report.prefill_flops / batch_size / 1e12,
                flops_ratio=report.prefill_flops / report.dense_prefill_flops,
            )
        rows.append(row)
    for row in rows:
        row["prefill_speedup"] = rows[0]["prefill_latency_s"] / row["prefill_latency_s"]
        row["generate_speedup"] = rows[0]["generate_latency_s"] / row["generate_latency_s"]
    device_name = next(evaluator.vlm.parameters()).device
    print(
        f"svlm bench: {model} ({evaluator.family}) on {device_name}, batch {batch_size}, {max_new_tokens} new"
    )
    print(
        _table(
            rows,
            [
                ("label", "label", "{}"),
                ("budget", "budget", "{:.1f}"),
                ("budget_output", "budget_out", "{:.1f}"),
                ("prefill_tflops", "TFLOPs/img", "{:.4f}"),
                ("flops_ratio", "flops", "{:.3f}"),
                ("prefill_latency_s", "prefill_s", "{:.4f}"),
                ("generate_latency_s", "generate_s", "{:.4f}"),
                ("prefill_speedup", "prefill_x", "{:.2f}"),
                ("generate_speedup", "generate_x", "{:.2f}"),
            ],
        )
    )
    if output is not None:
        atomic_write_json(
            output, {"model": model, "batch_size": batch_size, "device": str(device_name), "rows": rows}
        )
        print(f"results: {Path(output).resolve()}")
    return rows


def _cmd_bench(args: Sequence[str]) -> int:
    from jsonargparse import ArgumentError

    parser = _bench_parser()
    parser.exit_on_error = True
    try:
        cfg = parser.parse_args(list(args))
    except ArgumentError as err:  # pragma: no cover - exit_on_error handles it
        parser.error(str(err))
    cfg = parser.instantiate_classes(cfg).as_dict()
    cfg.pop("config", None)
    bench(**cfg)
    return 0


HELPERS: dict[str, Callable[[Sequence[str]], int]] = {"strategies": _cmd_strategies, "bench": _cmd_bench}


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``svlm`` console script and ``python -m svlm``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in HELPERS:
        return HELPERS[argv[0]](argv[1:])
    SVLMCLI(args=None if args is None else argv)  # None: LightningCLI reads sys.argv itself
    return 0

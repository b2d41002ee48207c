"""``svlm bench`` on the command line: the jsonargparse parser and the entry point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from svlm.bench.command import bench

__all__ = ["DESCRIPTION", "bench_parser", "main"]

#: What ``svlm bench --help`` prints above the options (each option's own help comes from ``bench``'s
#: docstring); line breaks are kept.
DESCRIPTION = """\
Measure prefill, time to first token, decoding speed, memory, KV cache and FLOPs of svlm's strategies.
Every speed-up is against the unwrapped Hugging Face model (row `hf`); `dense` is svlm with no pruning.
Rows are warmed up, then timed in interleaved rounds; medians are reported.

examples:
  svlm bench --config configs/bench.yaml              # what `make bench` runs (CPU, ~100M model)
  svlm bench --config configs/bench_gpu.yaml          # 7B-shaped models on a GPU, eager and fast modes
  svlm bench --model tiny:llava --strategies '[dense, random]' --budgets '[64]' --repeats 1

The columns are described in `python -c "import svlm.bench; help(svlm.bench)"` and in README "Speed"."""


def bench_parser() -> Any:
    """The jsonargparse parser of ``svlm bench`` (``--config`` plus one option per :func:`bench` argument)."""
    from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter):
        def _fill_text(self, text: str, width: int, indent: str) -> str:  # keep the description's lines
            return "".join(indent + line for line in text.splitlines(keepends=True))

    parser = ArgumentParser(
        prog="svlm bench", description=DESCRIPTION, formatter_class=Formatter, exit_on_error=False
    )
    parser.add_argument("--config", action=ActionConfigFile, help="Path to a YAML config of these options.")
    parser.add_function_arguments(bench, as_positional=False)
    return parser


def main(args: Sequence[str]) -> int:
    """``svlm bench [options]``: parse, run, exit code 0."""
    parser = bench_parser()  # errors raise jsonargparse's ArgumentError; svlm.cli.main prints them
    cfg = parser.parse_args(list(args))
    cfg = parser.instantiate_classes(cfg).as_dict()
    cfg.pop("config", None)
    bench(**cfg)
    return 0

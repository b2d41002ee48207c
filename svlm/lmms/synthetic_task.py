"""svlm's generated benchmarks (svlm-scenes, svlm-shapes) as lmms-eval tasks in a local folder (no Hub).

    python -m svlm.lmms.synthetic_task OUT_DIR --benchmark scenes --limit 100   # svlm_scenes.yaml + parquet
    lmms-eval --model svlm --model_args pretrained=zoo:svlm-scenes-llava \\
        --include_path OUT_DIR --tasks svlm_scenes

The rows are those ``svlm test --data.benchmark B --data.limit N`` evaluates (same split, seed and image
size), the prompt is svlm's and the score is the benchmarks' exact match (`ExactMatch(rule="vqa")` over the
accepted answers), so both harnesses must report the same accuracy for the same model. Both benchmarks share
one row layout, so the task functions below serve either.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from PIL import Image

from svlm.data.benchmarks import get_benchmark, load_benchmark
from svlm.metrics.accuracy import exact_match

#: benchmark -> lmms-eval task name
TASKS: dict[str, str] = {"scenes": "svlm_scenes", "shapes": "svlm_shapes"}
#: the generation limit of svlm's configs for these benchmarks (configs/demo.yaml)
MAX_NEW_TOKENS = 4
_MODULE = "svlm.lmms.synthetic_task"  # never "__main__", also under `python -m`


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """svlm's prompt for the row (the benchmark's own normaliser builds it; both share the row layout)."""
    row = {**doc, "image": Image.new("RGB", (1, 1))}
    return get_benchmark("scenes").normalise(row, 0, None)["prompt"]  # type: ignore[arg-type]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": exact_match(results[0], list(doc["answers"]), rule="vqa")}


def task_name(benchmark: str) -> str:
    """The lmms-eval task of a generated benchmark (a clear error for any other)."""
    name = get_benchmark(benchmark).name  # resolves aliases ("svlm-scenes")
    if name not in TASKS:
        raise ValueError(f"no lmms-eval task for benchmark {benchmark!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]


def task_yaml(task: str, data_file: str, split: str = "test", max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The task definition: a local parquet file (relative to the YAML's folder) and svlm's functions."""
    return f"""\
task: {task}
dataset_path: parquet
dataset_kwargs:
  data_files:
    {split}: {data_file}
test_split: {split}
output_type: generate_until
doc_to_visual: !function {_MODULE}.doc_to_visual
doc_to_text: !function {_MODULE}.doc_to_text
doc_to_target: answer
process_results: !function {_MODULE}.process_results
generation_kwargs:
  max_new_tokens: {int(max_new_tokens)}
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""


def write_task(
    out_dir: str | Path,
    benchmark: str = "scenes",
    limit: int = 100,
    split: str = "test",
    seed: int | None = None,
    image_size: int = 336,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> Path:
    """Write ``svlm_<benchmark>.yaml`` and the rows' parquet file into `out_dir`; returns the YAML's path."""
    task = task_name(benchmark)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_benchmark(benchmark, split=split, limit=limit, seed=seed, image_size=image_size)
    data_file = f"{task}_{ds.split}.parquet"
    ds.raw.to_parquet(str(out / data_file))
    path = out / f"{task}.yaml"
    path.write_text(task_yaml(task, data_file, ds.split, max_new_tokens))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for the task's YAML and its parquet file")
    parser.add_argument("--benchmark", default="scenes", choices=sorted(TASKS), help="default: scenes")
    parser.add_argument("--limit", type=int, default=100, help="number of samples (default 100)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    args = parser.parse_args(argv)
    path = write_task(
        args.out_dir, args.benchmark, args.limit, args.split, args.seed, args.image_size, args.max_new_tokens
    )
    print(f"wrote {path}: lmms-eval --include_path {path.parent} --tasks {task_name(args.benchmark)}")


if __name__ == "__main__":
    main()

"""The svlm-shapes benchmark as an lmms-eval task read from a local folder (no Hub).

    python -m svlm.lmms.shapes_task OUT_DIR --limit 100        # writes OUT_DIR/svlm_shapes.yaml + parquet
    lmms-eval --model svlm --model_args pretrained=zoo:svlm-shapes-llava \\
        --include_path OUT_DIR --tasks svlm_shapes

The rows are those ``svlm test --data.benchmark shapes --data.limit N`` evaluates (same split, seed and
image size), the prompt is svlm's and the score is svlm-shapes' exact match (`ExactMatch(rule="vqa")` over
the accepted answers), so both harnesses must report the same accuracy for the same model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from PIL import Image

from svlm.data.benchmarks import get_benchmark, load_benchmark
from svlm.metrics.accuracy import exact_match

TASK = "svlm_shapes"
#: the generation limit of svlm's shapes configs (configs/demo.yaml)
MAX_NEW_TOKENS = 4


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """svlm's shapes prompt (the benchmark's own normaliser builds it)."""
    row = {**doc, "image": Image.new("RGB", (1, 1))}
    return get_benchmark("shapes").normalise(row, 0, None)["prompt"]  # type: ignore[arg-type]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": exact_match(results[0], list(doc["answers"]), rule="vqa")}


def task_yaml(data_file: str, split: str = "test", max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The task definition: a local parquet file (relative to the YAML's folder) and svlm's functions."""
    fn = "svlm.lmms.shapes_task"  # never "__main__", also under `python -m`
    return f"""\
task: {TASK}
dataset_path: parquet
dataset_kwargs:
  data_files:
    {split}: {data_file}
test_split: {split}
output_type: generate_until
doc_to_visual: !function {fn}.doc_to_visual
doc_to_text: !function {fn}.doc_to_text
doc_to_target: answer
process_results: !function {fn}.process_results
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
    limit: int = 100,
    split: str = "test",
    seed: int | None = None,
    image_size: int = 336,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> Path:
    """Write ``svlm_shapes.yaml`` and the rows' parquet file into `out_dir`; returns the YAML's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_benchmark("shapes", split=split, limit=limit, seed=seed, image_size=image_size)
    data_file = f"{TASK}_{ds.split}.parquet"
    ds.raw.to_parquet(str(out / data_file))
    path = out / f"{TASK}.yaml"
    path.write_text(task_yaml(data_file, ds.split, max_new_tokens))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for svlm_shapes.yaml and its parquet file")
    parser.add_argument("--limit", type=int, default=100, help="number of samples (default 100)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    args = parser.parse_args(argv)
    path = write_task(args.out_dir, args.limit, args.split, args.seed, args.image_size, args.max_new_tokens)
    print(f"wrote {path}: lmms-eval --include_path {path.parent} --tasks {TASK}")


if __name__ == "__main__":
    main()

"""svlm's default scores and prompts equal lmms-eval 0.7.3's own, computed by lmms-eval itself.

The fixed cases of `svlm.testing.lmms_cases` go through each task's YAML (loaded by lmms-eval, its
``!function``s resolved), its ``doc_to_text``, the answer clean-up of its evaluator (reasoning tags from its
CLI default, strip), its ``process_results`` or registered metric, and its aggregation. Runs in the lmms-eval
venv (``make test-lmms``); skipped where lmms-eval is not installed.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

lmms_eval = pytest.importorskip("lmms_eval")

from lmms_eval.api.reasoning import strip_reasoning_tags  # noqa: E402
from lmms_eval.api.registry import get_metric  # noqa: E402
from lmms_eval.utils import load_yaml_config  # noqa: E402

from svlm.testing.lmms_cases import cases, svlm_samples, svlm_scores  # noqa: E402

TASKS = Path(lmms_eval.__file__).parent / "tasks"
YAML = {
    "gqa": "gqa/gqa.yaml",
    "pope": "pope/pope.yaml",
    "mme": "mme/mme.yaml",
    "textvqa_val": "textvqa/textvqa_val.yaml",
    "vqav2_val": "vqav2/vqav2_val.yaml",
    "scienceqa_img": "scienceqa/scienceqa_img.yaml",
    "mmbench_en_dev_static": "mmbench/mmbench_en_dev_static.yaml",
}
CASES = {c.benchmark: c for c in cases()}


def _default_reasoning_tags() -> list[list[str]]:
    from lmms_eval.__main__ import parse_eval_args

    argv, sys.argv = sys.argv, ["lmms-eval"]
    try:
        _, args = parse_eval_args()
    finally:
        sys.argv = argv
    return json.loads(args.reasoning_tags)


def _config(task: str) -> dict:
    return load_yaml_config(str(TASKS / YAML[task]), mode="full")


def lmms_scores(case, tmp_path) -> dict[str, float]:
    """The case scored the way lmms-eval's evaluator scores a task (single process)."""
    cfg = _config(case.task)
    assert cfg["task"] == case.task
    tags = _default_reasoning_tags()
    per_metric: dict[str, list] = {}
    for doc, pred in zip(copy.deepcopy(case.docs), case.preds, strict=True):
        answer = strip_reasoning_tags(pred, tags).strip()
        if callable(cfg.get("process_results")):
            out = cfg["process_results"](doc, [answer])
        else:  # a registered metric with the YAML's keyword arguments (GQA's exact_match)
            out = {}
            for m in cfg["metric_list"]:
                kwargs = {
                    k: v for k, v in m.items() if k not in ("metric", "aggregation", "higher_is_better")
                }
                value = get_metric(m["metric"])(
                    references=[doc[cfg["doc_to_target"]]], predictions=[answer], **kwargs
                )
                out[m["metric"]] = value[m["metric"]] if isinstance(value, dict) else value
        for k, v in out.items():
            per_metric.setdefault(k, []).append(v)
    scores = {}
    for m in cfg["metric_list"]:
        name, agg = m["metric"], m["aggregation"]
        if name == "submission":
            continue
        if agg == "mean":
            scores[name] = statistics.mean(per_metric[name])
        elif "args" in agg.__code__.co_varnames[: agg.__code__.co_argcount]:
            scores[name] = agg(per_metric[name], SimpleNamespace(output_path=str(tmp_path)))
        else:
            scores[name] = agg(per_metric[name])
    return {k: float(v) for k, v in scores.items()}


@pytest.mark.parametrize("benchmark", sorted(CASES))
def test_lmms_eval_scores_equal_the_recorded_ones_and_svlm(benchmark, tmp_path):
    case = CASES[benchmark]
    theirs = lmms_scores(case, tmp_path)
    assert theirs == pytest.approx(case.expected, rel=1e-9)
    assert svlm_scores(case) == pytest.approx(theirs, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("benchmark", sorted(CASES))
def test_every_prompt_equals_lmms_eval(benchmark):
    case = CASES[benchmark]
    cfg = _config(case.task)
    kwargs = cfg["lmms_eval_specific_kwargs"]["default"]
    theirs = [cfg["doc_to_text"](copy.deepcopy(doc), lmms_eval_specific_kwargs=kwargs) for doc in case.docs]
    assert [s["prompt"] for s in svlm_samples(case)] == theirs
    assert theirs[0] == case.prompt0


def test_default_sources_are_the_ones_lmms_eval_reads():
    from svlm.data import get_benchmark

    for case in CASES.values():
        assert get_benchmark(case.benchmark).hub == _config(case.task)["dataset_path"]

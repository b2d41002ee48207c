"""svlm's default scores and prompts equal lmms-eval 0.7.3's on fixed prediction sets (recorded literals).

The literals in `svlm.testing.lmms_cases` are lmms-eval's own results for those rows; tests/test_lmms/
recomputes them with lmms-eval itself (``make test-lmms``). Here they guard svlm without lmms-eval.
"""

from __future__ import annotations

import pytest

from svlm.testing.lmms_cases import cases, svlm_samples, svlm_scores

CASES = {c.benchmark: c for c in cases()}


@pytest.mark.parametrize("benchmark", sorted(CASES))
def test_default_scores_equal_lmms_eval(benchmark):
    case = CASES[benchmark]
    assert svlm_scores(case) == pytest.approx(case.expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("benchmark", sorted(CASES))
def test_prompts_equal_lmms_eval(benchmark):
    case = CASES[benchmark]
    assert svlm_samples(case)[0]["prompt"] == case.prompt0


def test_cases_cover_every_lmms_benchmark():
    from svlm.data import available_benchmarks, get_benchmark

    # every Hub benchmark has a case; svlm's generated ones (shapes, scenes) have no lmms-eval task
    assert set(CASES) == {b for b in available_benchmarks() if get_benchmark(b).hub is not None}


def test_default_sources_are_lmms_eval_0_7_3s():
    from svlm.data import get_benchmark

    # the dataset_path of each task YAML in lmms-eval 0.7.3 (tests/test_lmms/ reads them from lmms-eval)
    hubs = {b: get_benchmark(b).hub for b in CASES}
    assert hubs == {
        "gqa": "lmms-lab-encoder/GQA",
        "pope": "lmms-lab-encoder/POPE",
        "mme": "lmms-lab-encoder/MME",
        "textvqa": "lmms-lab-encoder/textvqa",
        "vqav2": "lmms-lab-encoder/VQAv2",
        "scienceqa_img": "lmms-lab-encoder/ScienceQA",
        "mmbench": "lmms-lab-encoder/MMBench",
    }

"""Generated benchmarks as lmms-eval task folders (runs without lmms-eval: only its files and functions)."""

from __future__ import annotations

import datasets
import pytest
import yaml

from svlm.data import load_benchmark
from svlm.lmms.synthetic_task import (
    TASKS,
    doc_to_text,
    doc_to_visual,
    main,
    process_results,
    task_name,
    write_task,
)


class _Loader(yaml.SafeLoader):
    """Reads lmms-eval's ``!function`` tags as plain strings."""


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


@pytest.mark.parametrize("benchmark", ["scenes", "shapes"])
def test_task_folder_holds_the_rows_svlm_test_evaluates(tmp_path, benchmark):
    path = write_task(tmp_path, benchmark, limit=3)
    cfg = yaml.load(path.read_text(), Loader=_Loader)
    assert cfg["task"] == TASKS[benchmark] == f"svlm_{benchmark}" and cfg["dataset_path"] == "parquet"
    assert cfg["doc_to_text"] == "!function svlm.lmms.synthetic_task.doc_to_text"
    assert cfg["generation_kwargs"] == {"max_new_tokens": 4, "do_sample": False, "temperature": 0}
    data_file = tmp_path / cfg["dataset_kwargs"]["data_files"]["test"]  # relative to the YAML's folder
    rows = datasets.load_dataset("parquet", data_files={"test": str(data_file)})["test"]
    ours = load_benchmark(benchmark, split="test", limit=3)
    assert len(rows) == 3
    for i, row in enumerate(rows):
        assert doc_to_text(row) == ours[i]["prompt"]
        assert doc_to_visual(row)[0].tobytes() == ours[i]["image"].tobytes()
        assert process_results(row, [ours[i]["answers"][0].upper()]) == {"exact_match": 1.0}
        assert process_results(row, ["purple elephant"]) == {"exact_match": 0.0}


def test_cli_writes_the_task(tmp_path, capsys):
    main([str(tmp_path / "t"), "--limit", "2", "--max-new-tokens", "8"])
    assert "--tasks svlm_scenes" in capsys.readouterr().out  # the default model's benchmark by default
    cfg = yaml.load((tmp_path / "t" / "svlm_scenes.yaml").read_text(), Loader=_Loader)
    assert cfg["generation_kwargs"]["max_new_tokens"] == 8
    main([str(tmp_path / "s"), "--benchmark", "shapes", "--limit", "1"])
    assert (tmp_path / "s" / "svlm_shapes.yaml").is_file()


def test_only_generated_benchmarks_have_a_task():
    assert task_name("svlm-scenes") == "svlm_scenes"
    with pytest.raises(ValueError, match="no lmms-eval task for benchmark 'gqa'; valid: scenes, shapes"):
        task_name("gqa")

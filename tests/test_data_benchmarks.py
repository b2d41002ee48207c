"""Benchmark loaders on tiny mirrors written in the lmms-lab formats (no network)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from svlm.data import (
    SHORT_ANSWER,
    DataError,
    EmptyDatasetError,
    SplitNotFoundError,
    UnknownBenchmarkError,
    available_benchmarks,
    get_benchmark,
    load_benchmark,
    write_benchmark_fixture,
)
from svlm.data.fixtures import fixture_benchmarks
from svlm.data.prompts import OPTION_LETTER
from svlm.data.registry import Registry
from svlm.data.schema import SAMPLE_KEYS


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mirrors")
    return {name: str(write_benchmark_fixture(name, root)) for name in fixture_benchmarks()}


def test_registry_covers_the_paper_benchmarks():
    expected = {"shapes", "scenes", "gqa", "pope", "mme", "textvqa", "scienceqa_img", "mmbench", "vqav2"}
    assert expected <= set(available_benchmarks())
    assert set(fixture_benchmarks()) == expected - {"shapes", "scenes"}


@pytest.mark.parametrize("name", ["gqa", "pope", "mme", "textvqa", "scienceqa_img", "mmbench", "vqav2"])
def test_every_loader_yields_the_common_schema(name, mirrors, cache):
    ds = load_benchmark(name, mirrors[name], cache_dir=cache)
    assert len(ds) == 6
    ids = set()
    for sample in ds:
        assert tuple(sample) == SAMPLE_KEYS
        assert isinstance(sample["image"], Image.Image) and sample["image"].mode == "RGB"
        assert sample["task"] == name
        assert sample["answers"] and all(isinstance(a, str) for a in sample["answers"])
        assert sample["answer_type"] in ("open", "yesno", "choice")
        instruction = OPTION_LETTER if sample["answer_type"] == "choice" else SHORT_ANSWER
        assert sample["prompt"].endswith("\n" + instruction)
        assert (sample["choices"] is not None) == (sample["answer_type"] == "choice")
        ids.add(sample["id"])
    assert len(ids) == len(ds)


def test_gqa_joins_questions_to_the_image_table(mirrors, cache):
    ds = load_benchmark("gqa", mirrors["gqa"], cache_dir=cache)
    first, second, third = ds[0], ds[1], ds[2]
    assert first["image_id"] == second["image_id"] == "n000000" and third["image_id"] == "n000001"
    assert np.array_equal(np.asarray(first["image"]), np.asarray(second["image"]))
    assert not np.array_equal(np.asarray(first["image"]), np.asarray(third["image"]))
    assert first["answers"] == ["yes"] and first["category"] == "verify"
    assert (
        first["prompt"]
        == "Is the object number 0 on the left?\nAnswer the question using a single word or phrase."
    )


def test_pope_and_mme_are_yes_no(mirrors, cache):
    pope = load_benchmark("pope", mirrors["pope"], cache_dir=cache)
    assert [s["answers"] for s in pope][:2] == [["yes"], ["no"]]
    assert {s["category"] for s in pope} == {"adversarial", "popular", "random"}
    assert pope[0]["id"] == "1" and pope[0]["image_id"] == "COCO_val2014_000000000000"

    mme = load_benchmark("mme", mirrors["mme"], cache_dir=cache)
    a, b = mme[0], mme[1]
    assert a["image_id"] == b["image_id"] == "existence/000000000000.jpg" and a["id"] != b["id"]
    assert (a["answers"], b["answers"]) == (["yes"], ["no"])
    # MME's own "Please answer yes or no." is replaced by the short-answer instruction (lmms-eval)
    assert a["question"].endswith("Please answer yes or no.")
    assert a["prompt"] == "Is there a cat in this image?\n" + SHORT_ANSWER
    assert {s["category"] for s in mme} == {"existence", "count", "OCR"}


def test_vqa_style_answers(mirrors, cache):
    vqa = load_benchmark("vqav2", mirrors["vqav2"], cache_dir=cache)
    assert vqa[1]["answers"] == ["2", "2", "two", "two", "3", "3", "3", "3", "3", "3"]
    assert vqa[1]["category"] == "number" and vqa[0]["category"] == "yes/no"
    assert vqa[1]["id"] == "262148001" and vqa[1]["image_id"] == "262149"
    text = load_benchmark("textvqa", mirrors["textvqa"], cache_dir=cache)
    assert text[0]["answers"] == ["Canon"] * 10 and text[0]["category"] is None


def test_multiple_choice_prompts(mirrors, cache):
    sqa = load_benchmark("scienceqa_img", mirrors["scienceqa_img"], cache_dir=cache)
    assert sqa[0]["prompt"] == (
        "Context: Figure: a map of the United States.\nWhich of these states is farthest north?\n"
        "A. West Virginia\nB. Louisiana\nAnswer with the option's letter from the given choices directly."
    )
    assert sqa[1]["prompt"].startswith("Which of these states")  # empty hint: no context line
    assert sqa[1]["answers"] == ["B"] and sqa[1]["choices"] == ["West Virginia", "Louisiana", "Arizona"]

    mmb = load_benchmark("mmbench", mirrors["mmbench"], cache_dir=cache)
    assert mmb[0]["prompt"].startswith("Which category")  # hint "nan" is dropped
    assert mmb[1]["choices"] == ["Oil Paint", "Sketch", "Digital art"]  # option D is null
    # lmms-eval 0.7.3's layout: "{hint} {question} There are several options:\nA. ...\n\n{instruction}"
    assert mmb[2]["prompt"] == (
        "The image shows an outdoor scene. Which category does this image belong to? There are several "
        "options:\nA. Oil Paint\nB. Sketch\nC. Digital art\nD. Photo\n\n" + OPTION_LETTER
    )
    assert [s["answers"][0] for s in mmb][:3] == ["A", "B", "C"] and mmb[0]["id"] == "241"


def test_aliases_and_did_you_mean(mirrors, cache):
    assert get_benchmark("ScienceQA-IMG").name == "scienceqa_img"
    assert get_benchmark("svlm-shapes").name == "shapes"
    assert len(load_benchmark("sqa", mirrors["scienceqa_img"], cache_dir=cache)) == 6
    with pytest.raises(UnknownBenchmarkError, match=r"Unknown benchmark 'popee'\. Did you mean 'pope'\?"):
        get_benchmark("popee")
    with pytest.raises(ValueError, match="Available: gqa, mmbench, mme, pope"):
        load_benchmark("imagenet")


def test_registry_refuses_duplicates():
    reg: Registry[int] = Registry("thing")
    reg.register("alpha", 1, aliases=("a",))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("Alpha", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("beta", 2, aliases=("A",))
    assert reg.get("A") == 1 and "alpha" in reg and len(reg) == 1


def test_missing_split_names_the_valid_ones(mirrors, cache):
    with pytest.raises(SplitNotFoundError, match=r"split 'validation' not found .*valid splits: \['test'\]"):
        load_benchmark("pope", mirrors["pope"], split="validation", cache_dir=cache)
    with pytest.raises(SplitNotFoundError, match=r"valid splits: \['test', 'train', 'val'\]"):
        load_benchmark("shapes", split="testdev")


def test_bad_paths_and_configs(mirrors, cache, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_benchmark("pope", str(tmp_path / "nowhere"), cache_dir=cache)
    with pytest.raises(DataError, match=r"config 'nope' not found .*testdev_balanced_images"):
        load_benchmark("gqa", mirrors["gqa"], config="nope", cache_dir=cache)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no data files"):
        load_benchmark("pope", str(tmp_path / "empty_dir"), cache_dir=cache)
    with pytest.raises(ValueError, match="limit must be a positive"):
        load_benchmark("pope", mirrors["pope"], limit=0)


def test_empty_split_is_an_error(tmp_path, cache):
    empty = datasets.Dataset.from_dict(
        {"question_id": [], "question": [], "answer": []},
        features=datasets.Features(
            {k: datasets.Value("string") for k in ("question_id", "question", "answer")}
        ),
    )
    empty.to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    with pytest.raises(EmptyDatasetError, match="pope split 'test' .* has no samples"):
        load_benchmark("pope", str(tmp_path), cache_dir=cache)


def test_limit_first_rows_or_seeded_subset(mirrors, cache):
    first = load_benchmark("textvqa", mirrors["textvqa"], limit=2, cache_dir=cache)
    assert [s["id"] for s in first] == ["34602", "34603"]
    sub_a = load_benchmark("textvqa", mirrors["textvqa"], limit=3, seed=7, cache_dir=cache)
    sub_b = load_benchmark("textvqa", mirrors["textvqa"], limit=3, seed=7, cache_dir=cache)
    assert [s["id"] for s in sub_a] == [s["id"] for s in sub_b] and len(sub_a) == 3
    assert len(load_benchmark("shapes", limit=7)) == 7


def test_single_file_and_save_to_disk_sources(mirrors, cache, tmp_path):
    file = f"{mirrors['pope']}/data/test-00000-of-00001.parquet"
    assert len(load_benchmark("pope", file, cache_dir=cache)) == 6
    raw = load_benchmark("pope", mirrors["pope"], cache_dir=cache).raw
    datasets.DatasetDict({"test": raw.select(range(4))}).save_to_disk(str(tmp_path / "saved"))
    ds = load_benchmark("pope", str(tmp_path / "saved"))
    assert len(ds) == 4 and ds[3]["answers"] == ["no"]
    with pytest.raises(SplitNotFoundError, match=r"valid splits: \['test'\]"):
        load_benchmark("pope", str(tmp_path / "saved"), split="train")


def test_shapes_benchmark_samples():
    ds = load_benchmark("shapes", split="val", limit=10, seed=2, image_size=112)
    s = ds[3]
    assert s["task"] == "shapes" and s["image"].size == (112, 112)
    assert s["answer_type"] == "yesno" and s["category"] == "exist"  # index 3 is an "exist" question
    assert s["prompt"] == f"{s['question']}\n{SHORT_ANSWER}"
    assert ds[-1]["id"] == ds[9]["id"]
    with pytest.raises(IndexError):
        ds[10]


def test_jsonl_mirror_with_image_paths(tmp_path, cache):
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "img0.png")
    (tmp_path / "test.jsonl").write_text(
        '{"question_id": "q0", "question": "Is it red?", "answer": "yes", "image": "img0.png", '
        '"category": "random", "image_source": "img0"}\n'
    )
    ds = load_benchmark("pope", str(tmp_path / "test.jsonl"), cache_dir=cache)
    assert ds[0]["image"].size == (20, 10) and ds[0]["answers"] == ["yes"]
    (tmp_path / "test.jsonl").write_text(
        '{"question_id": "q1", "question": "?", "answer": "no", "image": "x.png"}\n'
    )
    with pytest.raises(DataError, match="cannot open image"):
        load_benchmark("pope", str(tmp_path / "test.jsonl"), cache_dir=cache)[0]


@pytest.mark.parametrize("where", ["../outside.png", "{abs}", "sub/../../outside.png", "link.png"])
def test_rows_may_not_point_outside_the_data_folder(tmp_path, cache, where):
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "outside.png"
    Image.new("RGB", (20, 10)).save(outside)
    (data / "link.png").symlink_to(outside)
    path = where.format(abs=outside)
    row = {"question_id": "q0", "question": "?", "answer": "yes", "image": path, "category": "random"}
    (data / "test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"image path '{path}' points outside the data folder"):
        load_benchmark("pope", str(data / "test.jsonl"), cache_dir=cache)[0]


def test_empty_jsonl_and_parquet_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from svlm.data.loading import load_split
    from svlm.data.schema import EmptyDatasetError

    (tmp_path / "test.jsonl").write_text("")
    pq.write_table(pa.table({"question": pa.array([], pa.string())}), tmp_path / "test.parquet")
    for name in ("test.jsonl", "test.parquet"):
        with pytest.raises(EmptyDatasetError, match="has no rows"):
            load_split(tmp_path / name, "train")

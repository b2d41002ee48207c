"""The raters report: which prompt tokens SparseVLM rates with, located in the question or not."""

from __future__ import annotations

import json

import pytest
import torch

from svlm.data import VLMDataModule
from svlm.diagnostics import raters
from svlm.module import VLMEvaluator
from svlm.strategies.sparsevlm import select_raters


@pytest.fixture(scope="module")
def evaluator() -> VLMEvaluator:
    ev = VLMEvaluator(model="tiny:llava", dtype="float32")
    ev.configure_model()
    return ev


def _batches(limit: int = 4, batch_size: int = 2):
    data = VLMDataModule(benchmark="shapes", split="test", limit=limit, batch_size=batch_size)
    data.setup("test")
    return list(data.test_dataloader())


def test_report_records_the_raters_sparsevlm_uses(evaluator):
    batches = _batches(4, 2)
    records = raters.rater_report(evaluator, batches)
    assert [r["question"] for r in records] == [q for b in batches for q in b["questions"]]
    # the same choice, recomputed from the embeddings the dense model's decoder receives
    inputs = evaluator.tokenize(batches[0])
    vlm = evaluator.vlm
    visual = inputs["input_ids"] == vlm.config.image_token_id
    seen = {}

    def keep(module, args, kwargs):
        seen.setdefault("embeds", kwargs["inputs_embeds"])

    hook = vlm.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
    with torch.no_grad():
        vlm(**inputs)
    hook.remove()
    embeds = seen["embeds"]
    expected, _ = select_raters(embeds, visual, inputs["attention_mask"].bool())
    for i, record in enumerate(records[:2]):
        assert record["positions"] == expected[i].nonzero().flatten().tolist()
        last_visual = int(visual[i].nonzero().max())
        assert all(p > last_visual for p in record["positions"])
        assert record["in_question"] is not None and len(record["in_question"]) == len(record["raters"])


def test_summary_counts():
    records = [
        {"raters": ["red", "or"], "in_question": [True, False]},
        {"raters": ["or"], "in_question": [False]},
        {"raters": ["?"], "in_question": None},
    ]
    s = raters.summarize(records)
    assert s["samples"] == 3 and s["samples_located"] == 2
    assert s["mean_raters"] == pytest.approx(4 / 3)
    assert s["rater_share_question_words"] == pytest.approx(1 / 3)
    assert s["samples_with_question_word"] == pytest.approx(1 / 2)
    assert s["top_raters"][0] == ("or", 2)
    with pytest.raises(ValueError, match="no samples"):
        raters.summarize([])


def test_command_writes_json(tmp_path, capsys):
    out = tmp_path / "raters.json"
    result = raters.main(
        [
            "--model",
            "tiny:llava",
            "--benchmark",
            "shapes",
            "--limit",
            "2",
            "--batch-size",
            "2",
            "--output",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    assert data["summary"] == json.loads(json.dumps(result["summary"])) and len(data["samples"]) == 2
    assert "raters per prompt" in capsys.readouterr().out


def test_command_rejects_bad_limit():
    with pytest.raises(SystemExit):
        raters.main(["--limit", "0"])


def test_command_names_a_bad_model_or_benchmark(capsys):
    with pytest.raises(SystemExit) as exit_info:
        raters.main(["--model", "zoo:nope", "--limit", "2"])
    assert exit_info.value.code == 2 and "No model 'nope' in svlm.zoo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        raters.main(["--model", "tiny:llava", "--benchmark", "nope", "--limit", "2"])
    assert "Unknown benchmark 'nope'" in capsys.readouterr().err

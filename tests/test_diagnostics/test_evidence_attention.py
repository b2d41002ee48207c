"""Evidence attention: per layer, the share of visual attention that lands on the question's objects."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from svlm.data import VLMDataModule
from svlm.data.scenes import scene_objects
from svlm.diagnostics import evidence_attention as ea
from svlm.module import VLMEvaluator

TINY = "tiny:llava?num_layers=3&image_size=336"


def _batches(limit: int = 4, batch_size: int = 2):
    data = VLMDataModule(benchmark="scenes", split="test", limit=limit, batch_size=batch_size)
    data.setup("test")
    return list(data.test_dataloader())


def _keyword_ends(limit: int = 4) -> dict[str, int]:
    data = VLMDataModule(benchmark="scenes", split="test", limit=limit)
    data.setup("test")
    return dict(zip(data.test_set.raw["id"], data.test_set.raw["keyword_end"], strict=True))


@pytest.fixture(scope="module")
def evaluator() -> VLMEvaluator:
    ev = VLMEvaluator(model=TINY, dtype="float32")  # SDPA: the rows come from the engine
    ev.configure_model()
    return ev


def test_uniform_attention_gives_the_evidence_share(evaluator):
    """With every query projection zeroed, attention is uniform over the prefix: each row's share of visual
    attention on evidence is exactly the share of evidence tokens, at every layer and for every row kind."""
    batches = _batches()
    layers = evaluator.vlm.model.language_model.layers
    saved = [layer.self_attn.q_proj.weight.detach().clone() for layer in layers]
    try:
        for layer in layers:
            torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
            if layer.self_attn.q_proj.bias is not None:
                torch.nn.init.zeros_(layer.self_attn.q_proj.bias)
        result = ea.evidence_attention(evaluator, batches, _keyword_ends())
    finally:
        for layer, w in zip(layers, saved, strict=True):
            layer.self_attn.q_proj.weight.data.copy_(w)
    assert result["samples"] == 4 and [r["layer"] for r in result["layers"]] == [0, 1]  # not the last
    assert result["rows_measured"] == {"last_token": 4, "raters": 4, "keyword": 4}
    assert 0 < result["uniform"] < 0.5
    for row in result["layers"]:
        for kind in ea.ROWS:
            assert row[kind] == pytest.approx(result["uniform"], rel=1e-5), (row, kind)


def test_trained_attention_is_measured_per_layer(evaluator):
    result = ea.evidence_attention(evaluator, _batches(2, 2))  # no key words given: that row is None
    assert result["rows_measured"]["keyword"] == 0 and all(r["keyword"] is None for r in result["layers"])
    shares = [row[kind] for row in result["layers"] for kind in ("last_token", "raters")]
    assert all(0 <= s <= 1 for s in shares)
    assert any(abs(s - result["uniform"]) > 1e-4 for s in shares)  # a random model is not uniform


def test_evidence_mask_covers_the_evidence_centres(evaluator):
    batch = _batches(2, 2)[0]
    inputs = evaluator.tokenize(batch)
    data = VLMDataModule(benchmark="scenes", split="test", limit=2, batch_size=2)
    data.setup("test")
    rows = [data.dataset("test", 2).raw[i] for i in range(2)]
    for b, row in enumerate(rows):
        mask = ea._evidence_mask(inputs["pixel_values"][b], 576)
        objects = scene_objects(row)
        for j in row["evidence"]:
            x, y = objects[j].centre
            assert mask[int(y / 336 * 24) * 24 + int(x / 336 * 24)]
        assert 0 < int(mask.sum()) < 576


def test_rows_equal_the_eager_attention_maps(evaluator):
    """The engine's rows-only attention gives the shares the full eager attention maps give."""
    batches = _batches(2, 2)
    result = ea.evidence_attention(evaluator, batches)
    eager = VLMEvaluator(model=TINY, dtype="float32", attn_implementation="eager")
    eager.configure_model()
    eager.vlm.load_state_dict(evaluator.vlm.state_dict())
    inputs = eager.tokenize(batches[0])
    with torch.no_grad():
        maps = eager.vlm(**inputs, output_attentions=True).attentions
    visual = inputs["input_ids"] == eager.vlm.config.image_token_id
    shares = torch.zeros(2, len(result["layers"]))
    for b in range(2):
        vis = visual[b].nonzero().flatten()
        evidence = ea._evidence_mask(inputs["pixel_values"][b], len(vis))
        for layer in range(len(result["layers"])):
            last = maps[layer][b].float().mean(0)[-1, vis]  # head mean, last prompt token (left padding)
            shares[b, layer] = last[evidence].sum() / last.sum()
    expected = shares.mean(0).tolist()
    assert [r["last_token"] for r in result["layers"]] == pytest.approx(expected, abs=1e-5)


def test_command_writes_json_csv_and_png(tmp_path, capsys):
    out = tmp_path / "ea"
    result = ea.main(["--model", TINY, "--limit", "2", "--batch-size", "2", "--output-dir", str(out)])
    assert json.loads((out / "evidence_attention.json").read_text())["samples"] == 2
    with (out / "evidence_attention.csv").open() as f:
        assert [int(r["layer"]) for r in csv.DictReader(f)] == [0, 1]  # the last layer prunes nothing
    assert (out / "evidence_attention.png").stat().st_size > 0
    assert result["benchmark"] == "scenes" and "uniform" in capsys.readouterr().out


def test_command_refuses_models_without_one_image_tensor_per_sample(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ea.main(["--model", "tiny:qwen2_vl", "--limit", "2", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "pixel_values [batch, 3, H, W]" in err and "(4608, 1176)" in err

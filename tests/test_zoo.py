"""The shipped default model (svlm.zoo) and its training recipe (svlm.zoo.train_default).

The shipped weights are loaded from the installed package offline; nothing here retrains them (the recipe's
smoke mode runs a 2-layer model for a few steps).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

import svlm
from svlm.data import shapes
from svlm.models import zoo_path
from svlm.zoo import DEFAULT_MODEL_NAME, default_model_path
from svlm.zoo import train_default as recipe

SIZE_BUDGET_BYTES = 20 * 1024 * 1024


def shapes_model_path() -> str:
    """svlm-shapes-llava, the model these tests are about (the default is svlm-scenes-llava)."""
    return zoo_path("svlm-shapes-llava")


@pytest.fixture(scope="module")
def shipped() -> tuple[LlavaForConditionalGeneration, object]:
    path = shapes_model_path()
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    return model, processor


def _inputs(processor, samples: list[dict]) -> dict:
    prompts = [recipe.prompt_text(processor, s["question"]) for s in samples]
    return processor(images=[s["image"] for s in samples], text=prompts, padding=True, return_tensors="pt")


def test_default_model_path_is_inside_the_package() -> None:
    path = Path(default_model_path())
    assert path.name == DEFAULT_MODEL_NAME == "svlm-scenes-llava"
    assert path.parent == Path(svlm.zoo.__file__).resolve().parent
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (path / name).is_file(), name


@pytest.mark.parametrize("name", ["svlm-shapes-llava", "svlm-scenes-llava"])
def test_shipped_files_fit_the_size_budget(name: str) -> None:
    path = Path(zoo_path(name))
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    total = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    assert 0 < weights < SIZE_BUDGET_BYTES
    assert total < SIZE_BUDGET_BYTES


def test_shipped_model_architecture(shipped) -> None:
    model, processor = shipped
    assert isinstance(model, LlavaForConditionalGeneration)
    text = model.config.text_config
    assert text.model_type == "llama" and text.num_hidden_layers == recipe.RecipeConfig().num_layers >= 8
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert processor.tokenizer.padding_side == "left"
    batch = _inputs(processor, [shapes.generate_sample(0, "test")])
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 256


def test_shipped_model_forward_and_generate(shipped) -> None:
    model, processor = shipped
    samples = [shapes.generate_sample(i, "test") for i in range(2)]
    batch = _inputs(processor, samples)
    with torch.no_grad():
        logits = model(**batch).logits
        ids = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    new = ids[:, batch["input_ids"].shape[1] :]
    answers = [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
    vocab = {a for answers in shapes.ANSWER_VOCAB.values() for a in answers}
    assert all(a in vocab for a in answers), answers  # a trained model answers in the closed vocabulary
    log = json.loads((Path(shapes_model_path()) / "training_log.json").read_text())
    assert log["test_dense"]["num_samples"] == 500 and 0 < log["test_dense"]["all"] <= 1


def test_shipped_model_was_trained_by_the_recipes_defaults() -> None:
    """`python -m svlm.zoo.train_default` with no options is the command that built the shipped weights."""
    log = json.loads((Path(shapes_model_path()) / "training_log.json").read_text())
    # options added since (svlm-scenes support) whose defaults leave an svlm-shapes run as it was
    added = {
        "benchmark": "shapes",
        "digit_loss_weight": 1.0,
        "size_loss_weight": 0.0,
        "init_from": "",
        "device": "cpu",
        "phrase_layers": "",
        "readout_weight": 0.0,
        "readout_types": "color,shape,text",
        "projector_lr_scale": 1.0,
        "attribute_weight": 0.0,
        "attribute_layers": "",
        "attribute_groups": "colour,shape,size,digit",
        "init_parts": "vision_tower,projector,decoder",
        "position_loss_weight": 0.0,
        "split_types": "",
        "position_readout_weight": 0.0,
        "position_readout_groups": "row,column",
        "stop_after": 0,
        "position_graft_steps": 0,
        "position_graft_lr": 1e-3,
        "position_graft_keep_weight": 10.0,
    }
    assert set(dataclasses.asdict(recipe.RecipeConfig())) == set(log["config"]) | set(added)
    assert recipe.RecipeConfig(**{**added, **log["config"]}) == recipe.RecipeConfig()
    assert log["vision_pretraining"][-1]["step"] == log["config"]["vision_steps"]
    assert log["steps"][-1]["step"] == log["config"]["steps"]
    # what the README states: dense test accuracy >= 0.85, trained within the hour on 2 threads
    assert log["test_dense"]["all"] >= 0.85 and log["test_dense"]["num_samples"] == 500
    assert log["total_time_s"] <= 3600 and log["config"]["threads"] == 2


def test_shipped_model_looks_at_the_image(shipped) -> None:
    """The same questions with the objects painted over (a blank image) are answered clearly worse."""
    model, processor = shipped
    samples = [shapes.generate_sample(i, "test") for i in range(60)]
    blank = [{**s, "image": Image.new("RGB", s["image"].size, s["image"].getpixel((0, 0)))} for s in samples]

    def accuracy(batch_samples: list[dict]) -> float:
        right = 0
        for lo in range(0, len(batch_samples), 20):
            chunk = batch_samples[lo : lo + 20]
            inputs = _inputs(processor, chunk)
            with torch.no_grad():
                ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            new = ids[:, inputs["input_ids"].shape[1] :]
            texts = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
            right += sum(t.strip() in s["answers"] for t, s in zip(texts, chunk, strict=True))
        return right / len(batch_samples)

    real = accuracy(samples)
    assert real >= 0.85  # issue 6's bar, on test samples the model never trained on
    assert real >= accuracy(blank) + 0.3


def test_shipped_model_runs_pruned(shipped) -> None:
    model, processor = shipped
    batch = _inputs(processor, [shapes.generate_sample(i, "test") for i in range(2)])
    sparse = svlm.sparsify(model, "random", budget=64)
    ids = sparse.generate(**batch, max_new_tokens=4, do_sample=False)
    assert ids.shape[0] == 2
    assert sparse.last_report.budget == pytest.approx(64, abs=1)


# ------------------------------------------------------------------------------------------------ recipe


def test_missing_model_gets_a_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(svlm.zoo, "__file__", str(tmp_path / "__init__.py"))
    with pytest.raises(FileNotFoundError, match="python -m svlm.zoo.recipe.replay"):
        default_model_path()


def test_derived_questions_are_answered_by_the_scene() -> None:
    sample = shapes.generate_sample(7, "train")
    qas = recipe.derived_questions(sample, 8, random.Random(0))
    assert qas[0] == (sample["question"], sample["answer"])
    assert len({q for q, _ in qas}) == len(qas) == 8
    objs = sample["objects"]
    for q, a in qas:
        if q.startswith("How many"):
            color = q.split()[2]
            assert a == str(sum(o["color"] == color for o in objs))
        elif q.startswith("Is there"):
            color, shape = q[len("Is there a ") : -1].split()
            assert a == ("yes" if any((o["color"], o["shape"]) == (color, shape) for o in objs) else "no")
        elif q.startswith("Where is"):
            color, shape = q[len("Where is the ") : -1].split()
            (o,) = [o for o in objs if (o["color"], o["shape"]) == (color, shape)]
            assert a == o["position"]
        elif q.startswith("What color"):
            (o,) = [o for o in objs if o["shape"] == q[len("What color is the ") : -1]]
            assert a == o["color"]
        else:
            assert q.startswith("What shape is at the ")
            assert a in shapes.SHAPES


def test_question_weights_make_a_type_come_up_more_often() -> None:
    def share_of_count(weights: dict[str, int] | None) -> float:
        qtypes = []
        for i in range(60):
            sample = shapes.generate_sample(i, "train")
            qas = recipe.derived_questions(sample, 8, random.Random(i), weights)
            qtypes += [recipe.question_type(q) for q, _ in qas[1:]]
        return qtypes.count("count") / len(qtypes)

    plain, weighted = share_of_count(None), share_of_count({"count": 3})
    assert plain == pytest.approx(0.2, abs=0.06)
    assert weighted > plain + 0.15  # 3 of 7 types per cycle, as far as an image has count questions left
    assert recipe.parse_type_weights("count:3, exist:2") == {"count": 3, "exist": 2}
    assert recipe.parse_type_weights("") == {}
    for bad in ("count:0", "colour:2", "count", "count:x"):
        with pytest.raises(ValueError, match="question_weights must look like"):
            recipe.parse_type_weights(bad)


def test_lead_steps_ask_only_the_lead_types() -> None:
    cfg = recipe.RecipeConfig(**{**recipe.SMOKE, "steps": 4, "lead_steps": 2, "lead_types": "count,exist"})
    _, processor = recipe.build_model(cfg)
    for step in range(4):
        types = set(recipe.train_batch(cfg, processor, step).question_types)
        assert (types <= {"count", "exist"}) == (step < 2), (step, types)  # then every type again
    sample = shapes.generate_sample(0, "train")  # its own question is a colour question
    assert sample["question_type"] == "color"
    only = recipe.derived_questions(sample, 8, random.Random(0), only={"count"})
    assert only and all(recipe.question_type(q) == "count" for q, _ in only)
    with pytest.raises(ValueError, match=r"lead_steps must be >= 0.*got -1"):
        recipe.check_config(recipe.RecipeConfig(lead_steps=-1))
    with pytest.raises(ValueError, match=r"lead_types \['colour'\] are not svlm-shapes question types"):
        recipe.check_config(recipe.RecipeConfig(lead_types="colour"))


def test_lead_window_can_start_later() -> None:
    cfg = recipe.RecipeConfig(
        **{**recipe.SMOKE, "steps": 5, "lead_start": 2, "lead_steps": 2, "lead_types": "count"}
    )
    _, processor = recipe.build_model(cfg)
    only_count = [
        set(recipe.train_batch(cfg, processor, step).question_types) == {"count"} for step in range(5)
    ]
    assert only_count[2:4] == [True, True] and not only_count[0] and not only_count[4]
    with pytest.raises(ValueError, match=r"lead_start must be >= 0.*got -3"):
        recipe.check_config(recipe.RecipeConfig(lead_start=-3))


def test_derived_question_templates_match_the_benchmark() -> None:
    """Every question the generator writes is one the recipe's templates can write (same wording)."""
    made = set()
    for i in range(40):
        s = shapes.generate_sample(i, "train")
        made |= {q for q, _ in recipe.derived_questions(s, 30, random.Random(i))[1:]}
    asked = {shapes.generate_sample(i, "val")["question"] for i in range(60)}
    assert asked & made and all(q.split()[:2] in [m.split()[:2] for m in made] for q in asked)


def test_packed_branches_equal_single_question_forward() -> None:
    """Each packed question branch gives the logits of the plain single-question evaluation prompt."""
    cfg = recipe.RecipeConfig(**recipe.SMOKE)
    model, processor = recipe.build_model(cfg)
    model.eval()
    samples = [shapes.generate_sample(i, "train", image_size=cfg.data_image_size) for i in range(2)]
    qas = [recipe.derived_questions(s, 3, random.Random(i)) for i, s in enumerate(samples)]
    batch = recipe.pack(processor, [s["image"] for s in samples], qas)
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        hidden = model.model(**batch.model_inputs(), use_cache=False).last_hidden_state
        packed = model.lm_head(hidden[batch.target_rows, batch.target_cols])
        k = 0
        for s, pairs in zip(samples, qas, strict=True):
            for q, a in pairs:
                inp = processor(
                    images=[s["image"]],
                    text=[recipe.prompt_text(processor, q) + " " + a],
                    return_tensors="pt",
                )
                ids = torch.cat([inp["input_ids"], torch.tensor([[eos]])], dim=1)
                logits = model(input_ids=ids, pixel_values=inp["pixel_values"]).logits[0]
                n = len(processor.tokenizer(" " + a, add_special_tokens=False)["input_ids"]) + 1
                torch.testing.assert_close(packed[k : k + n], logits[-n - 1 : -1], atol=1e-4, rtol=1e-4)
                assert batch.targets[k : k + n].tolist() == ids[0, -n:].tolist()
                k += n
    assert k == len(batch.targets)


def test_recipe_smoke_run_saves_a_loadable_model(tmp_path: Path) -> None:
    log = recipe.main(["--smoke", "--output-dir", str(tmp_path), "--steps", "2"])
    saved = json.loads((tmp_path / "training_log.json").read_text())
    assert saved["config"]["steps"] == 2 and len(saved["steps"]) >= 1
    assert {"loss", "lr", "elapsed_s"} <= set(saved["steps"][-1])
    assert "train_time_s" in saved and "all" in saved["test_dense"]
    assert log is None or isinstance(log, dict)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    batch = _inputs(processor, [shapes.generate_sample(0, "test", image_size=64)])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_patch_labels_mark_each_objects_patches() -> None:
    sample = shapes.generate_sample(3, "train")
    grid = 224 // recipe.PATCH_SIZE
    shape_y, color_y = recipe.patch_labels(sample, 224, 336)
    centre_y, _ = recipe.patch_labels(sample, 224, 336, centre_only=True)
    assert shape_y.shape == color_y.shape == (grid * grid,)
    for o in sample["objects"]:
        x0, y0, x1, y1 = (v * 224 / 336 for v in o["bbox"])
        centre = int((y0 + y1) / 2 // recipe.PATCH_SIZE) * grid + int((x0 + x1) / 2 // recipe.PATCH_SIZE)
        assert shape_y[centre] == centre_y[centre] == shapes.SHAPES.index(o["shape"]) + 1
        assert color_y[centre] == list(shapes.COLORS).index(o["color"]) + 1
    on_objects = color_y > 0
    assert 0 < int(on_objects.sum()) < grid * grid // 4  # small shapes on a plain background
    assert int((centre_y > 0).sum()) == len(sample["objects"])  # one labelled patch per object
    assert bool((centre_y[on_objects & (centre_y <= 0)] == -100).all())
    assert bool((shape_y[~on_objects] == 0).all())
    part = len(shapes.SHAPES) + 1  # `part_class`: the other patches of an object get a class of their own
    parts_y, _ = recipe.patch_labels(sample, 224, 336, centre_only=True, part_label=part)
    assert torch.equal(parts_y, torch.where(centre_y == -100, part, centre_y))


def test_colour_count_labels_count_the_objects_of_each_patchs_colour() -> None:
    sample = shapes.generate_sample(0, "train", min_objects=9, max_objects=9)  # 9 objects, 6 colours
    _, color_y = recipe.patch_labels(sample, 224, 336)
    count_y = recipe.colour_count_labels(sample, color_y)
    per_colour = {c: sum(o["color"] == c for o in sample["objects"]) for c in shapes.COLORS}
    assert max(per_colour.values()) >= 2  # pigeonhole: some colour repeats
    for index, colour in enumerate(shapes.COLORS, start=1):
        on = color_y == index
        if per_colour[colour]:
            expected = min(per_colour[colour], recipe.VISION_COUNT_CLASSES) - 1
            assert on.any() and bool((count_y[on] == expected).all()), colour
        else:
            assert not on.any()
    assert bool((count_y[color_y == 0] == -100).all())  # background is not labelled


@pytest.mark.parametrize(
    ("option", "metric"),
    [
        ("count_loss_weight", "object_patch_count_acc"),
        ("scene_loss_weight", "patch_scene_count_acc"),
        ("position_loss_weight", "patch_row_acc"),
    ],
)
def test_optional_vision_heads(option: str, metric: str) -> None:
    """A weight > 0 adds the head (logged as `metric`) and its term on top of the same first-step loss."""
    logs = {}
    for weight in (0.0, 0.5):
        cfg = recipe.RecipeConfig(**{**recipe.SMOKE, option: weight})
        model, processor = recipe.build_model(cfg)
        logs[weight] = recipe.pretrain_vision(model, processor, cfg, log_every=1)
    assert metric not in logs[0.0][-1]
    assert 0 <= logs[0.5][-1][metric] <= 1
    assert logs[0.0][0]["loss"] < logs[0.5][0]["loss"]


def test_scene_labels_count_the_objects_of_each_colour() -> None:
    sample = shapes.generate_sample(3, "train", min_objects=9, max_objects=9)
    counts = recipe.scene_labels(sample)
    assert counts.shape == (len(shapes.COLORS),)
    for index, colour in enumerate(shapes.COLORS):
        n = sum(o["color"] == colour for o in sample["objects"])
        assert int(counts[index]) == min(n, recipe.SCENE_COUNT_CLASSES - 1), colour
    assert int(counts.sum()) >= 1


def test_cell_labels_follow_the_three_by_three_grid() -> None:
    cells = recipe.cell_labels(224).reshape(16, 16)
    assert (
        cells[0, 0] == 0
        and cells[0, -1] == 2
        and cells[8, 8] == 4
        and cells[-1, 0] == 6
        and cells[-1, -1] == 8
    )
    assert sorted(set(cells.flatten().tolist())) == list(range(9))


def test_evidence_objects_are_the_objects_a_question_is_about() -> None:
    for i in range(30):
        sample = shapes.generate_sample(i, "train")
        objs = sample["objects"]
        for q, a in recipe.derived_questions(sample, 12, random.Random(i)):
            found = [objs[j] for j in recipe.evidence_objects(sample, q)]
            if q.startswith("How many"):
                assert len(found) == int(a)
            elif q.startswith("Is there"):
                assert (len(found) > 0) == (a == "yes")
            elif q.startswith("What color"):
                assert [o["color"] for o in found] == [a]
            elif q.startswith("What shape"):
                assert [o["shape"] for o in found] == [a]
            else:
                assert [o["position"] for o in found] == [a]


def test_evidence_tokens_are_the_evidence_objects_centre_patches() -> None:
    sample = shapes.generate_sample(5, "train")
    qas = recipe.derived_questions(sample, 10, random.Random(0))
    centres = recipe.centre_tokens(sample, 224, 336)
    for (q, _), mask in zip(qas, recipe.evidence_tokens(sample, [q for q, _ in qas], 224, 336), strict=True):
        objects = recipe.evidence_objects(sample, q)
        if not objects:
            assert mask is None
        else:
            assert mask.nonzero().flatten().tolist() == sorted({centres[i] for i in objects})


def test_supervised_positions_are_the_answer_position_and_the_key_word() -> None:
    cfg = recipe.RecipeConfig(**{**recipe.SMOKE, "questions_per_image": 6})
    _, processor = recipe.build_model(cfg)
    batch = recipe.train_batch(cfg, processor, 0)
    tok = processor.tokenizer
    words = {0: [], 1: []}
    for row, col, kind in zip(
        batch.evidence_rows.tolist(),
        batch.evidence_query_cols.tolist(),
        batch.evidence_kinds.tolist(),
        strict=True,
    ):
        words[kind].append(tok.decode(batch.input_ids[row, col - 1 : col + 1]).strip())
    assert words[0] and all(w.endswith("ASSISTANT:") for w in words[0])
    names = {*shapes.SHAPES, *shapes.COLORS, "left", "right", "top", "bottom", "center"}
    assert len(words[1]) == len(words[0]) and all(w.split()[-1] in names for w in words[1]), words[1]
    assert recipe.keyword_end("What shape is at the top left of the image?") == len(
        "What shape is at the top left"
    )
    assert recipe.keyword_end("How many red shapes are there?") == len("How many red")
    assert recipe.keyword_end("Is there a red star?") == len("Is there a red star")


def test_attention_supervision_is_limited_to_the_chosen_question_types() -> None:
    cfg = recipe.RecipeConfig(**{**recipe.SMOKE, "batch_size": 4, "questions_per_image": 10, "lead_steps": 0})
    _, processor = recipe.build_model(cfg)

    def supervised_types(cfg: recipe.RecipeConfig) -> set[str]:
        batch = recipe.train_batch(cfg, processor, 0)
        tok = processor.tokenizer
        out = set()
        for row, col in zip(batch.evidence_rows.tolist(), batch.evidence_query_cols.tolist(), strict=True):
            starts = [s for s, _, _ in batch.branch_starts[row] if s <= col]
            text = tok.decode(batch.input_ids[row, max(starts) : col + 1])
            out.add(recipe.question_type(text.strip()))
        return out

    assert supervised_types(cfg) == set(shapes.QUESTION_TYPES)
    without_count = dataclasses.replace(cfg, attention_types="color,shape,exist,position")
    assert supervised_types(without_count) == {"color", "shape", "exist", "position"}
    assert supervised_types(dataclasses.replace(cfg, attention_types="count,color")) == {"count", "color"}
    with pytest.raises(ValueError, match=r"\['size'\] are not svlm-shapes question types"):
        recipe.parse_question_types("color,size")


def test_attention_supervision_reads_the_models_own_attention() -> None:
    """The rows-only evidence term equals -log(attention mass on evidence) taken from eager attention."""
    cfg = recipe.RecipeConfig(
        **{**recipe.SMOKE, "num_layers": 3, "attention_weight": 1.0, "train_visual_tokens": 0}
    )
    model, processor = recipe.build_model(cfg)
    model.eval().set_attn_implementation("eager")
    batch = recipe.train_batch(cfg, processor, 0)
    assert batch.evidence_rows is not None and len(batch.evidence_rows) > 0
    attn = model.model.language_model.layers[1].self_attn
    captured = {}
    handle = attn.register_forward_pre_hook(
        lambda m, a, kw: captured.update(x=(kw["hidden_states"], kw["position_embeddings"])), with_kwargs=True
    )
    mask = torch.zeros(batch.attention_mask.shape).masked_fill(~batch.attention_mask, float("-inf"))
    with torch.no_grad():
        inputs = {**batch.model_inputs(), "attention_mask": mask}
        weights = model.model(**inputs, output_attentions=True).attentions[1]
        ours = recipe.evidence_attention_loss(attn, *captured["x"], batch)
    handle.remove()
    n = batch.evidence_masks.shape[1]
    rows = weights[batch.evidence_rows, :, batch.evidence_query_cols][
        :, :, batch.image_start : batch.image_start + n
    ]
    rows = rows / rows.sum(-1, keepdim=True)
    heads = cfg.num_heads // 2
    expected = -(rows[:, :heads] * batch.evidence_masks[:, None]).sum(-1).log().mean()
    assert float(ours) == pytest.approx(float(expected), rel=1e-4)
    loss, _ = recipe.packed_loss(model, batch, [1], 1.0, [1])  # both kinds of rows at layer 1
    plain, _ = recipe.packed_loss(model, batch)
    assert float(loss) == pytest.approx(float(plain) + float(expected), rel=1e-3)


def test_recipe_is_deterministic() -> None:
    cfg = recipe.RecipeConfig(**recipe.SMOKE)
    _, processor = recipe.build_model(cfg)
    a, b = recipe.train_batch(cfg, processor, 1), recipe.train_batch(cfg, processor, 1)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixel_values, b.pixel_values)
    m1, _ = recipe.build_model(cfg)
    m2, _ = recipe.build_model(cfg)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters(), strict=True))


def test_recipe_sets_the_decoders_rope_base() -> None:
    cfg = recipe.RecipeConfig(**{**recipe.SMOKE, "rope_theta": 1e6})
    model, _ = recipe.build_model(cfg)
    assert model.config.text_config.rope_parameters["rope_theta"] == 1e6
    rotary = model.model.language_model.rotary_emb
    head_dim = cfg.hidden_size // cfg.num_heads
    expected = 1.0 / 1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    assert torch.allclose(rotary.inv_freq, expected)


def test_recipe_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="image_size"):
        recipe.build_model(recipe.RecipeConfig(image_size=100))
    with pytest.raises(ValueError, match="rope_theta must be a positive RoPE base.*got 0"):
        recipe.build_model(recipe.RecipeConfig(rope_theta=0))
    with pytest.raises(ValueError, match=r"count_loss_weight must be >= 0.*got -0\.5"):
        recipe.build_model(recipe.RecipeConfig(count_loss_weight=-0.5))
    with pytest.raises(ValueError, match=r"scene_loss_weight must be >= 0.*got -1"):
        recipe.build_model(recipe.RecipeConfig(scene_loss_weight=-1))
    with pytest.raises(SystemExit):
        recipe.parse_args(["--steps", "many"])
    with pytest.raises(ValueError, match=r"outside the decoder's layers 0\.\.1"):
        recipe.parse_layers("1,4", 2)
    with pytest.raises(ValueError, match="comma-separated"):
        recipe.parse_layers("two", 12)
    assert recipe.parse_layers("2,4,6", 12) == [2, 4, 6]
    assert recipe.parse_args(["--part-class", "true"])[0].part_class is True
    assert recipe.parse_args(["--part-class", "no"])[0].part_class is False
    with pytest.raises(SystemExit):
        recipe.parse_args(["--part-class", "maybe"])
    for argv in (["--rope-theta", "0"], ["--curriculum", "1.0:5:2"], ["--attention-layers", "9"]):
        with pytest.raises(SystemExit):  # a one-line usage error from the parser, before any training
            recipe.parse_args(argv)


def test_projector_alignment_pulls_visual_tokens_towards_their_words() -> None:
    """Stage 1b trains the projector only, and its visual tokens end up closer to the input embedding of
    their object's colour word than before (measured on images it did not train on)."""
    cfg = recipe.RecipeConfig(**{**recipe.SMOKE, "align_steps": 30, "align_batch_size": 4, "align_lr": 1e-2})
    model, processor = recipe.build_model(cfg)
    tower_before = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
    embed = model.model.language_model.get_input_embeddings().weight
    words = embed[recipe.word_token_ids(processor.tokenizer, list(shapes.COLORS))].detach()

    def colour_word_accuracy() -> float:
        samples = [shapes.generate_sample(i, "val", min_objects=3, max_objects=6) for i in range(4)]
        pixels = processor.image_processor([s["image"] for s in samples], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
            tokens = model.model.multi_modal_projector(hidden).flatten(0, 1)
        colour = torch.cat([recipe.patch_labels(s, cfg.image_size, cfg.data_image_size)[1] for s in samples])
        on = colour > 0
        sims = (
            torch.nn.functional.normalize(tokens[on], dim=-1) @ torch.nn.functional.normalize(words, dim=-1).T
        )
        return float((sims.argmax(-1) == colour[on] - 1).float().mean())

    before = colour_word_accuracy()
    log = recipe.align_projector(model, processor, cfg, log_every=10)
    after = colour_word_accuracy()
    assert [e["step"] for e in log] == [10, 20, 30] and log[-1]["loss"] < log[0]["loss"]
    assert after > before + 0.2, (before, after)
    assert all(torch.equal(v, model.model.vision_tower.state_dict()[k]) for k, v in tower_before.items())
    assert torch.equal(embed.detach()[0], model.model.language_model.get_input_embeddings().weight[0])


def test_projector_alignment_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"align_steps must be >= 0.*got -3"):
        recipe.check_config(recipe.RecipeConfig(align_steps=-3))
    _, processor = recipe.build_model(recipe.RecipeConfig(**recipe.SMOKE))
    with pytest.raises(ValueError, match="'turquoise' to be one token"):
        recipe.word_token_ids(processor.tokenizer, ["red", "turquoise"])


def test_projector_alignment_optional_word_groups() -> None:
    """`align_counts` and `align_cells` add their terms (logged, larger first-step loss); off by default."""
    logs = {}
    for extra in (False, True):
        cfg = recipe.RecipeConfig(**{**recipe.SMOKE, "align_counts": extra, "align_cells": extra})
        model, processor = recipe.build_model(cfg)
        logs[extra] = recipe.align_projector(model, processor, cfg, log_every=1)
    assert "object_count_word_acc" not in logs[False][0] and 0 <= logs[True][0]["object_count_word_acc"] <= 1
    assert logs[True][0]["loss"] > logs[False][0]["loss"]
    defaults = recipe.RecipeConfig()
    assert not defaults.align_counts and not defaults.align_cells

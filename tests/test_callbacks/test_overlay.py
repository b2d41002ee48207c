from types import SimpleNamespace

import numpy as np
import pytest
import torch

import svlm
from svlm.callbacks import KeptTokenOverlay
from svlm.callbacks.overlay import folder_name, kept_grid, pruning_layers
from svlm.testing import random_image, tiny_vlm


def test_pruning_layers():
    assert pruning_layers([576, 576, 288, 288, 100]) == [0, 2, 4]
    assert pruning_layers([64, 64, 64]) == [0]
    assert pruning_layers([9, 8, 7, 6], max_layers=2) == [0, 1]


def test_kept_grid_maps_positions_to_patches():
    visual = torch.arange(10, 19)  # 3x3 image tokens at prompt positions 10..18
    kept = torch.tensor([0, 1, 10, 14, 18, 25])  # text positions are ignored
    grid = kept_grid(visual, kept, (3, 3))
    assert grid.tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    with pytest.raises(ValueError, match="needs 16"):
        kept_grid(visual, kept, (4, 4))


def test_folder_names_stay_inside_and_never_collide(tmp_path):
    labels = ["..", ".", "a/b", "a_b", "a b", ".hidden", "../x", "", "random-64", "sparsevlm-0.5"]
    names = [folder_name(label) for label in labels]
    assert len(set(names)) == len(labels)
    root = (tmp_path / "overlays").resolve()
    for name in names:
        assert name and "/" not in name and not name.startswith(".")
        assert (root / name).resolve().parent == root
    assert folder_name("random-64") == "random-64" and folder_name("sparsevlm-0.5") == "sparsevlm-0.5"


def _run(family, tmp_path, strategy="random", **kwargs):
    vlm = tiny_vlm(family, num_layers=4)
    images = [random_image(seed=i) for i in range(2)]
    inputs = vlm.inputs(images, ["what color is it?", "how many?"])
    sparse = svlm.sparsify(vlm.model, strategy, **kwargs)
    sparse.generate(**inputs, max_new_tokens=1, do_sample=False)
    outputs = {"reports": {"p/1": sparse.last_report}, "inputs": dict(inputs)}
    module = SimpleNamespace(vlm=vlm.model, processor=vlm.processor)
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), is_global_zero=True)
    cb = KeptTokenOverlay(num_samples=3)
    cb.on_test_start(trainer, module)
    cb.on_test_batch_end(trainer, module, outputs, {"images": images}, 0)
    cb.on_test_batch_end(trainer, module, outputs, {"images": images}, 1)  # only one more sample drawn
    return cb, sparse.last_report


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_overlay_pngs(family, tmp_path):
    cb, report = _run(family, tmp_path, "random", budget=64)
    assert cb.skipped is None
    assert [p.name for p in cb.saved] == ["sample_000.png", "sample_001.png", "sample_002.png"]
    assert all(p.parent.name == folder_name("p/1") and p.read_bytes()[:4] == b"\x89PNG" for p in cb.saved)
    assert folder_name("p/1").startswith("p_1-")


def test_overlay_counts_match_report(tmp_path):
    vlm = tiny_vlm("llava", num_layers=4)
    inputs = vlm.inputs([random_image(seed=0)], ["what?"])
    sparse = svlm.sparsify(vlm.model, "random", budget=100)
    sparse(**inputs)
    rep = sparse.last_report
    adapter = svlm.adapter_for(vlm.model)
    positions = adapter.visual_mask(inputs["input_ids"])[0].nonzero().flatten()
    (grid,) = adapter.visual_grids(dict(inputs), 0)
    for layer, count in enumerate(rep.visual_tokens[0]):
        assert int(np.sum(kept_grid(positions, rep.positions(layer, 0), grid))) == count


def test_overlay_skips_dense_and_llava_next(tmp_path):
    cb, _ = _run("llava", tmp_path / "dense", "dense")
    assert cb.saved == [] and cb.skipped is None  # nothing pruned: nothing drawn
    cb, _ = _run("llava_next", tmp_path / "next", "random", budget=32)
    assert cb.saved == [] and "no single token grid" in cb.skipped


def test_overlay_shows_question_answers_and_a_legend(tmp_path, monkeypatch):
    """Each overlay says what was asked, what this point answered and what was expected, and which shading
    means kept or dropped."""
    import matplotlib.pyplot as plt

    from svlm.callbacks import overlay

    figures = []
    real = overlay.overlay_figure
    monkeypatch.setattr(
        overlay, "overlay_figure", lambda *a, **k: figures.append(real(*a, **k)) or figures[-1]
    )
    monkeypatch.setattr(plt, "close", lambda fig: None)
    vlm = tiny_vlm("llava", num_layers=4)
    images = [random_image(seed=0)]
    inputs = vlm.inputs(images, ["What colour is the square?"])
    sparse = svlm.sparsify(vlm.model, "random", budget=64)
    sparse(**inputs)
    outputs = {
        "reports": {"random-64": sparse.last_report},
        "inputs": dict(inputs),
        "answers": {"random-64": ["red"]},
    }
    batch = {"images": images, "questions": ["What colour is the square?"], "answers": [["blue", "navy"]]}
    module = SimpleNamespace(vlm=vlm.model, processor=vlm.processor)
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), is_global_zero=True)
    cb = KeptTokenOverlay(num_samples=1)
    cb.on_test_start(trainer, module)
    cb.on_test_batch_end(trainer, module, outputs, batch, 0)
    (fig,) = figures
    title = fig._suptitle.get_text()
    assert "Q: What colour is the square?" in title
    assert "answer: 'red'" in title and "reference: 'blue / navy'" in title
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["kept patch (as is)", "dropped patch (faded)"]
    assert cb.saved and cb.saved[0].read_bytes()[:4] == b"\x89PNG"
    plt.close("all")

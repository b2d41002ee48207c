"""Linear-weight layout: re-stored weights keep values, shapes and outputs; only strides change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import svlm
from svlm.engine.layout import linear_layout, resolve_layout, set_linear_layout
from svlm.testing import tiny_vlm


def _tied_model() -> nn.Module:
    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 10, bias=False))
    model[3].weight = model[0].weight  # a tied output head
    return model


def test_input_major_keeps_values_and_shapes_and_skips_tied_heads() -> None:
    model = _tied_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    assert linear_layout(model) == "native"
    assert set_linear_layout(model, "input_major") == 1  # the tied head is an embedding: left as it is
    assert linear_layout(model) == "input_major"
    weight = model[1].weight
    assert weight.shape == (5, 6) and weight.t().is_contiguous() and not weight.is_contiguous()
    assert model[0].weight.is_contiguous()
    assert [id(p) for p in model.parameters()] == params
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set_linear_layout(model, "input_major") == 0  # idempotent
    assert set_linear_layout(model, "native") == 1 and model[1].weight.is_contiguous()


def test_bad_layouts_name_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="Unknown weight layout 'column'; valid layouts: native, input_major"
    ):
        set_linear_layout(nn.Linear(2, 2), "column")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid layouts: auto, native, input_major"):
        resolve_layout("fast", torch.device("cpu"))
    assert resolve_layout("auto", torch.device("cpu")) == "input_major"
    assert resolve_layout("auto", torch.device("cuda")) == "native"
    assert resolve_layout("native", torch.device("cpu")) == "native"


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
@torch.no_grad()
def test_outputs_do_not_depend_on_the_layout(family, images, questions) -> None:
    tiny = tiny_vlm(family)  # a model of its own: the layout is changed in place
    inputs = tiny.inputs(images, questions)
    sparse = svlm.sparsify(tiny.model, "fastv", budget=0.6)
    kwargs = {"max_new_tokens": 5, "do_sample": False}
    native = (tiny.model(**inputs).logits, sparse(**inputs).logits, sparse.generate(**inputs, **kwargs))
    assert set_linear_layout(tiny.model, "input_major") > 0
    swapped = (tiny.model(**inputs).logits, sparse(**inputs).logits, sparse.generate(**inputs, **kwargs))
    torch.testing.assert_close(swapped[0], native[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(swapped[1], native[1], rtol=0, atol=1e-5)
    assert torch.equal(swapped[2], native[2])

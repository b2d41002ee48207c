"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import svlm

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_api_example_runs():
    block = next(b for b in python_blocks() if "svlm.sparsify(vlm.model" in b)
    namespace: dict = {}
    exec(compile(block, "README-api", "exec"), namespace)
    assert namespace["rep"].budget < namespace["rep"].visual_tokens[0][0]


def test_strategy_example_registers_and_runs(make_tiny_vlm, images, questions):
    block = next(b for b in python_blocks() if "register_strategy(" in b)
    block = block.replace('"text_attention"', '"readme_text_attention"')
    namespace: dict = {}
    exec(compile(block, "README-strategy", "exec"), namespace)
    try:
        assert 20 <= len(block.strip().splitlines()) <= 40
        tiny = make_tiny_vlm("llava")
        inputs = tiny.inputs(images, questions)
        sparse = svlm.sparsify(tiny.model, "readme_text_attention", budget=0.6)
        with torch.no_grad():
            out = sparse(**inputs).logits
        from svlm.testing.oracle import oracle_logits

        ref = oracle_logits(tiny.model, inputs, sparse.last_report)
        for b in range(2):
            pos = sparse.last_report.positions(3, b)
            torch.testing.assert_close(out[b, pos], ref[b, pos], atol=1e-4, rtol=1e-4)
    finally:
        svlm.strategies.registry.STRATEGIES.unregister("readme_text_attention")


def _heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of the README's headings (outside code blocks)."""
    anchors, inside = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and (m := re.match(r"^#{1,6} (.+)$", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_in_page_links_reach_a_heading():
    text = README.read_text()
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) >= 15  # the contents list and the cross-references
    assert sorted(set(links) - _heading_anchors(text)) == []

"""``svlm.bandwidth``: the bytes a decoding step reads, the read probe, and the floor arithmetic."""

from __future__ import annotations

import math
import time

import pytest
import torch

from svlm.adapters import adapter_for
from svlm.bandwidth import TIMED_BYTES, decode_floor_share, decode_weight_bytes, read_bandwidth_gbps


def _nbytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def test_decode_weight_bytes_counts_the_decoder_and_head_but_not_the_embedding_table(tiny) -> None:
    model = tiny.model
    lm = adapter_for(model).language_model
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert embedding.weight.data_ptr() != head.weight.data_ptr()  # untied in the tiny models
    expected = _nbytes(lm.parameters()) - _nbytes([embedding.weight]) + _nbytes(head.parameters())
    assert decode_weight_bytes(model, lm) == expected
    vision = _nbytes(
        p for n, p in model.named_parameters() if "language_model" not in n and "lm_head" not in n
    )
    assert vision > 0 and decode_weight_bytes(model, lm) < _nbytes(model.parameters()) - vision


def test_decode_weight_bytes_counts_a_tied_table_once() -> None:
    from transformers import AutoModelForImageTextToText

    from svlm.zoo import default_model_path

    model = AutoModelForImageTextToText.from_pretrained(default_model_path())
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert embedding.weight.data_ptr() == head.weight.data_ptr()  # the shipped model ties them
    lm = adapter_for(model).language_model
    assert decode_weight_bytes(model, lm) == _nbytes(lm.parameters())  # the table, read by the head


def test_read_bandwidth_divides_the_probe_size_by_the_time_of_one_pass() -> None:
    ticks = iter(range(100))

    def clock() -> float:
        return float(next(ticks))  # every timed span lasts one second, however many passes it holds

    size = 4 << 20
    passes = TIMED_BYTES // size
    gbps = read_bandwidth_gbps(size, 3, clock, torch.device("cpu"))
    assert gbps == pytest.approx(size * passes / 1e9)
    real = read_bandwidth_gbps(size, 3, time.perf_counter, torch.device("cpu"))
    assert 0.1 < real < 10_000  # a real clock gives some plausible bandwidth


def test_decode_floor_share() -> None:
    # 1 GB of weights at 10 GB/s: a 0.1 s floor; 5 tokens/s at batch 1 is a 0.2 s step
    assert decode_floor_share(10**9, None, 10.0, 5.0, 1) == pytest.approx(0.5)
    # the KV cache adds to the bytes; a batch of 2 makes 2 tokens per step
    assert decode_floor_share(10**9, 10**9, 10.0, 10.0, 2) == pytest.approx(1.0)
    assert math.isnan(decode_floor_share(10**9, None, 10.0, math.nan, 1))
    assert math.isnan(decode_floor_share(10**9, None, 0.0, 5.0, 1))

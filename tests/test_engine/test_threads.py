"""Concurrent calls: a pruned call in one thread never changes what another thread's call computes.

Each test pauses a pruned call inside its strategy (its hooks attached to the shared model), runs another
call in the main thread meanwhile, then lets the first one finish; both must equal their sequential results.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

import svlm
from svlm.strategies.fastv import FastV

TIMEOUT = 20.0


class PausingFastV(FastV):
    """FastV that stops inside ``select`` until released (hooks attached, prefill half done)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()

    def select(self, ctx, view):
        self.entered.set()
        if not self.release.wait(TIMEOUT):
            raise TimeoutError("never released")
        return super().select(ctx, view)


def _paused(sparse: svlm.SparseModel, inputs: dict) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``sparse(**inputs)`` in a thread and return once it is paused inside ``select``."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            with torch.no_grad():
                result["logits"] = sparse(**inputs).logits
            result["report"] = sparse.last_report
        except BaseException as err:  # noqa: BLE001 - reported to the test below
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert sparse.strategy.entered.wait(TIMEOUT), "the pruned call never reached select"
    return thread, result


def _finish(sparse: svlm.SparseModel, thread: threading.Thread, result: dict[str, Any]) -> dict[str, Any]:
    sparse.strategy.release.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    return result


@pytest.fixture
def llava(make_tiny_vlm, images, questions):
    tiny = make_tiny_vlm("llava")
    return tiny, dict(tiny.inputs(images, questions))


def _reference(make: Callable[[], svlm.SparseModel], inputs: dict) -> torch.Tensor:
    sparse = make()
    sparse.strategy.release.set()
    with torch.no_grad():
        return sparse(**inputs).logits


def test_dense_call_during_a_pruned_call_is_untouched(llava):
    tiny, inputs = llava
    with torch.no_grad():
        dense = tiny.model(**inputs).logits

    def make() -> svlm.SparseModel:
        return svlm.sparsify(tiny.model, PausingFastV(budget=0.6))

    pruned = _reference(make, inputs)
    sparse = make()
    thread, result = _paused(sparse, inputs)
    with torch.no_grad():
        during = tiny.model(**inputs).logits
    assert sparse.detach() is tiny.model  # does not pull the hooks from under the running call
    _finish(sparse, thread, result)
    assert during.shape == dense.shape
    assert torch.equal(during, dense)
    assert torch.equal(result["logits"], pruned)
    assert result["report"].budget < float(result["report"].visual_tokens[0][0])


def test_two_wrappers_in_parallel_each_get_their_own_result(llava):
    tiny, inputs = llava

    def first() -> svlm.SparseModel:
        return svlm.sparsify(tiny.model, PausingFastV(budget=0.6))

    second = svlm.sparsify(tiny.model, "random", budget=0.3)
    expected_first = _reference(first, inputs)
    with torch.no_grad():
        expected_second = second(**inputs).logits
        expected_budget = second.last_report.budget
    sparse = first()
    thread, result = _paused(sparse, inputs)
    with torch.no_grad():
        got_second = second(**inputs).logits
    _finish(sparse, thread, result)
    assert torch.equal(got_second, expected_second)
    assert second.last_report.budget == expected_budget
    assert torch.equal(result["logits"], expected_first)


def test_generate_during_a_pruned_call_is_untouched(llava):
    tiny, inputs = llava
    kwargs = {"max_new_tokens": 3, "do_sample": False}
    with torch.no_grad():
        dense = tiny.model.generate(**inputs, **kwargs)
    sparse = svlm.sparsify(tiny.model, PausingFastV(budget=0.6))
    thread, result = _paused(sparse, inputs)
    with torch.no_grad():
        during = tiny.model.generate(**inputs, **kwargs)
    _finish(sparse, thread, result)
    assert torch.equal(during, dense)


def test_one_wrapper_from_two_threads_is_refused(llava):
    tiny, inputs = llava
    sparse = svlm.sparsify(tiny.model, PausingFastV(budget=0.6))
    thread, result = _paused(sparse, inputs)
    try:
        with pytest.raises(RuntimeError, match="already running a call in another thread"):
            sparse(**inputs)
    finally:
        _finish(sparse, thread, result)
    with torch.no_grad():
        assert sparse(**inputs).logits.shape == result["logits"].shape  # usable again afterwards


@pytest.mark.gpu
def test_dense_call_during_a_pruned_call_on_the_gpu(images, questions):
    from svlm.testing import tiny_vlm

    tiny = tiny_vlm("llava")
    tiny.model.cuda()
    inputs = dict(tiny.inputs(images, questions))  # on the model's device
    with torch.no_grad():
        dense = tiny.model(**inputs).logits
    sparse = svlm.sparsify(tiny.model, PausingFastV(budget=0.6))
    thread, result = _paused(sparse, inputs)
    with torch.no_grad():
        during = tiny.model(**inputs).logits
    _finish(sparse, thread, result)
    torch.testing.assert_close(during, dense, rtol=1e-4, atol=1e-4)  # same shape: nothing pruned
    assert result["logits"].shape == dense.shape and result["report"].budget < 577

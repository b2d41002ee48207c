"""Fast execution modes (svlm.engine.execution): the same tokens and logits as eager, bucket padding is exact,
graphs/functions are reused, the model is left as it was."""

from __future__ import annotations

import pytest
import torch

import svlm
from svlm.engine.execution import EXECUTIONS

#: (strategy, kwargs): no pruning, pruning before the LM, inside it with attention rows, merging tokens
POINTS = [
    ("dense", {}),
    ("random", {"budget": 100}),
    ("sparsevlm", {"budget": 0.3}),
    ("visionzip", {"budget": 0.3}),
]


def _generate(model, inputs, name, kwargs, execution, **options):
    sparse = svlm.sparsify(model, name, execution=execution, **options, **kwargs)
    sparse._session.seed = 0  # random: the same draw in both modes
    out = sparse.generate(
        **inputs, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    return sparse, out


def _assert_same(eager, fast, tol: float) -> None:
    assert torch.equal(eager.sequences, fast.sequences)
    for a, b in zip(eager.scores, fast.scores, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=tol)


@pytest.mark.parametrize(("name", "kwargs"), POINTS, ids=[p[0] for p in POINTS])
def test_static_execution_equals_eager(family, make_tiny_vlm, images, questions, name, kwargs):
    """A left-padded batch of two through the static-shape path (what CUDA graphs replay) gives eager's
    tokens and logits; every decoding step of every layer takes the fast path."""
    tiny = make_tiny_vlm(family, num_key_value_heads=2)
    inputs = tiny.inputs(images, questions)
    _, eager = _generate(tiny.model, inputs, name, kwargs, "eager")
    sparse, fast = _generate(tiny.model, inputs, name, kwargs, "static")
    _assert_same(eager, fast, 1e-4)
    calls = sparse._executor.calls
    assert calls["decode"] == 3 * len(tiny.model.model.language_model.layers)  # 4 tokens: 3 decoding steps
    assert calls["prefill"] + calls["eager"] == len(tiny.model.model.language_model.layers)
    assert calls["eager"] == len(sparse._session.prune_at if name == "sparsevlm" else [])
    assert all("forward" not in layer.__dict__ for layer in tiny.model.model.language_model.layers)


def test_bucket_padding_is_exact(make_tiny_vlm, images, questions):
    """Padding pruned sequences to a multiple of the bucket changes neither tokens, logits nor accounting."""
    tiny = make_tiny_vlm("llava")
    inputs = tiny.inputs(images, questions)
    plain, eager = _generate(tiny.model, inputs, "sparsevlm", {"budget": 0.3}, "eager")
    padded, bucketed = _generate(tiny.model, inputs, "sparsevlm", {"budget": 0.3}, "eager", bucket=32)
    _assert_same(eager, bucketed, 1e-5)
    slots = [seq.length for seq in padded._session.layer_seqs]
    assert [n % 32 for n in slots[1:]] == [0] * (len(slots) - 1) and slots != [
        seq.length for seq in plain._session.layer_seqs
    ]
    assert plain.last_report.tokens == padded.last_report.tokens  # padding slots are not tokens
    assert plain.last_report.budget == padded.last_report.budget


def test_a_forward_call_in_static_mode_gives_eager_logits(make_tiny_vlm, images, questions):
    tiny = make_tiny_vlm("qwen2_5_vl")
    inputs = tiny.inputs(images, questions)
    eager = svlm.sparsify(tiny.model, "fastv", budget=0.5, k=1)(**inputs).logits
    fast = svlm.sparsify(tiny.model, "fastv", budget=0.5, k=1, execution="static")(**inputs).logits
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-4)


def test_functions_are_built_once_per_shape(make_tiny_vlm, images, questions):
    """The second call with the same shapes reuses every static function (what makes CUDA graphs pay)."""
    tiny = make_tiny_vlm("llava")
    inputs = tiny.inputs(images[:1], questions[:1])
    sparse = svlm.sparsify(tiny.model, "random", budget=100, execution="static")
    sparse.generate(**inputs, max_new_tokens=3)
    built = dict(sparse._executor.functions)
    buffers = dict(sparse._executor.kv)
    sparse.generate(**inputs, max_new_tokens=3)
    assert sparse._executor.functions.keys() == built.keys() and sparse._executor.kv.keys() == buffers.keys()
    # a prompt of another length buckets to the same pruned shape: its prefill functions are reused
    other = tiny.inputs(images[:1], ["Which colour?"])
    sparse.generate(**other, max_new_tokens=3)
    assert len(sparse._executor.functions) == len(built)


def test_compile_execution_equals_eager(make_tiny_vlm, images, questions):
    """torch.compile of the same static-shape functions (one layer: each layer is its own compiled graph)."""
    tiny = make_tiny_vlm("llava", num_layers=1)
    inputs = tiny.inputs(images[:1], questions[:1])
    _, eager = _generate(tiny.model, inputs, "random", {"budget": 100}, "eager")
    _, fast = _generate(tiny.model, inputs, "random", {"budget": 100}, "compile")
    _assert_same(eager, fast, 1e-4)


def test_execution_errors_name_the_valid_values(make_tiny_vlm):
    tiny = make_tiny_vlm("llava")
    with pytest.raises(ValueError, match="Unknown execution 'fast'.*eager, static, compile, cuda_graphs"):
        svlm.sparsify(tiny.model, "dense", execution="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs the model on a CUDA device"):
            svlm.sparsify(tiny.model, "dense", execution="cuda_graphs")
    eager_attn = make_tiny_vlm("llava", attn_implementation="eager")
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        svlm.sparsify(eager_attn.model, "dense", execution="static")
    assert EXECUTIONS[0] == "eager"


def test_the_unwrapped_model_is_untouched_meanwhile(make_tiny_vlm, images, questions):
    """Inside a fast call the layers' forward is replaced only for that call's own session."""
    tiny = make_tiny_vlm("llava")
    inputs = tiny.inputs(images[:1], questions[:1])
    dense = tiny.model(**inputs).logits
    sparse = svlm.sparsify(tiny.model, "random", budget=64, execution="static")
    seen = []

    def dense_inside(module, args, kwargs):  # a dense call of the bare model while the wrapper runs
        if not seen:
            seen.append(True)
            from svlm.engine.session import ACTIVE_SESSION

            token = ACTIVE_SESSION.set(None)
            try:
                seen.append(tiny.model(**inputs).logits)
            finally:
                ACTIVE_SESSION.reset(token)

    handle = tiny.model.model.language_model.layers[0].register_forward_pre_hook(
        dense_inside, with_kwargs=True
    )
    try:
        sparse.generate(**inputs, max_new_tokens=2)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[1], dense)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "kwargs"), POINTS, ids=[p[0] for p in POINTS])
@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_cuda_graphs_equal_eager(family, images, questions, name, kwargs):
    """On a GPU: the captured graphs give eager's tokens and logits (fp32), twice in a row (replayed), and
    decoding runs from the graphs."""
    model = svlm.testing.tiny_vlm(family, num_key_value_heads=2, init_device="cuda")
    tiny = svlm.testing.tiny_vlm(family, num_key_value_heads=2)
    inputs = tiny.inputs(images, questions).to("cuda")
    _, eager = _generate(model.model, inputs, name, kwargs, "eager")
    sparse = svlm.sparsify(model.model, name, execution="cuda_graphs", **kwargs)
    for _ in range(2):
        sparse._session.seed = 0
        fast = sparse.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        _assert_same(eager, fast, 1e-3)
    graphs = [f for f in sparse._executor.functions.values() if f.graph is not None]
    assert graphs and len(graphs) == len(sparse._executor.functions)
    assert sparse._executor.calls["decode"] == 3 * len(model.model.model.language_model.layers)


def _svlm_test(tmp_path, execution: str) -> list[dict]:
    import csv

    import yaml

    from svlm.cli import main

    results = tmp_path / execution
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(results),
            "enable_progress_bar": False,
            "logger": False,
        },
        "model": {
            "model": "tiny:llava",
            "max_new_tokens": 2,
            "strategies": ["dense", {"strategy": "random", "budget": 64}],
            "execution": execution,
            "journal": False,
        },
        "data": {"benchmark": "shapes", "limit": 4, "batch_size": 2},
    }
    path = tmp_path / f"{execution}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["test", "--config", str(path)]) == 0
    with open(results / "tradeoff.csv") as f:
        return list(csv.DictReader(f))


def test_svlm_test_exposes_execution(tmp_path):
    """`svlm test --model.execution static` scores the same answers as eager."""
    eager, fast = _svlm_test(tmp_path, "eager"), _svlm_test(tmp_path, "static")
    keys = ("label", "budget", "accuracy", "metric/exact_match")
    assert eager[0]["metric/exact_match"] and len(eager) == 2
    assert [[r.get(k) for k in keys] for r in fast] == [[r.get(k) for k in keys] for r in eager]
    from svlm.module import VLMEvaluator

    with pytest.raises(ValueError, match="Unknown execution 'fastest'"):
        VLMEvaluator(execution="fastest")


def test_buffers_made_in_inference_mode_serve_calls_outside_it(make_tiny_vlm, images, questions):
    """The bench times under torch.inference_mode, svlm test under no_grad: one wrapper serves both."""
    tiny = make_tiny_vlm("llava")
    inputs = tiny.inputs(images[:1], questions[:1])
    sparse = svlm.sparsify(tiny.model, "random", budget=64, execution="static")
    with torch.inference_mode():
        first = sparse.generate(**inputs, max_new_tokens=3)
    second = sparse.generate(**inputs, max_new_tokens=3)
    with torch.inference_mode():
        third = sparse.generate(**inputs, max_new_tokens=3)
    assert torch.equal(first, second) and torch.equal(first, third)


def test_fast_wrappers_in_threads_on_one_model(make_tiny_vlm, images, questions):
    """Two fast wrappers and the bare model, called from three threads at once on one model: each gets what
    it gets alone, and the layers are left with their own forward."""
    import threading

    tiny = make_tiny_vlm("llava")
    inputs = tiny.inputs(images[:1], questions[:1])
    layers = tiny.model.model.language_model.layers
    wrappers = [
        svlm.sparsify(tiny.model, "random", budget=64, execution="static"),
        svlm.sparsify(tiny.model, "sparsevlm", budget=0.3, execution="static"),
    ]
    for w in wrappers:
        w._session.seed = 0
    alone = [w.generate(**inputs, max_new_tokens=3) for w in wrappers]
    dense = tiny.model(**inputs).logits
    results: dict[int, list] = {0: [], 1: [], 2: []}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                if i < 2:
                    results[i].append(wrappers[i].generate(**inputs, max_new_tokens=3))
                else:
                    results[i].append(tiny.model(**inputs).logits)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        assert all(torch.equal(out, alone[i]) for out in results[i])
    assert all(torch.allclose(out, dense, atol=1e-5) for out in results[2])
    assert all("forward" not in layer.__dict__ for layer in layers)


def test_a_failed_capture_runs_the_function_without_a_graph(monkeypatch):
    """If a layer cannot be captured, it runs ungraphed (exact, slower) and the failure is recorded."""
    from svlm.engine import execution

    def no_stream(*args, **kwargs):
        raise RuntimeError("capture impossible here")

    monkeypatch.setattr(torch.cuda, "Stream", no_stream)
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        static = execution._Static(lambda x, y: x + y, [torch.ones(2)], [torch.ones(2)], graph_pool=object())
    assert static.graph is None and "capture impossible here" in static.capture_error
    assert torch.equal(static([torch.full((2,), 2.0)]), torch.full((2,), 3.0))

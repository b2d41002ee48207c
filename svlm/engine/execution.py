"""Fast execution of decoder layers: static shapes, persistent KV buffers, CUDA graphs or ``torch.compile``.

On a GPU at batch 1 a transformers decoder layer is launch-bound: it costs about the same whether it gets 1
or 600 tokens, so pruning saves FLOPs but not time. The fast modes run each decoder layer as one static-shape
function that a CUDA graph can replay (or ``torch.compile`` can fuse):

* prefill: ``layer(hidden, cos, sin, mask)`` writes the layer's keys and values straight into a KV buffer
  with room for the generated tokens and returns the new hidden states; the cache's layer is then a view of
  that buffer (:class:`~svlm.engine.cache.BufferedLayer` appends into it in place);
* decoding: ``layer(hidden, cos, sin)`` with the whole buffer as keys: the new token's key and value go into
  slot ``pos`` and a per-layer key mask (the layer's valid prompt slots plus the generated ones) hides the
  empty slots, so the shapes stay the same for every step of a call;
* the pruning engine pads every pruned sequence to a multiple of ``bucket`` slots (padding slots are never
  attended to and their rows are dropped, see :func:`svlm.engine.sequence.pad_to_bucket`), so a few shapes
  serve every input and the graphs are reused.

Layers whose queries/keys a strategy reads while pruning (the pruning layers of a prefill), calls with an
attention implementation other than SDPA, sliding-window layers and anything unusual (a prefill into a
non-empty cache, a cache that is not svlm's) run transformers' own forward unchanged.

Modes: ``eager`` (nothing here runs), ``static`` (the static-shape functions, eagerly: what the graphs
replay, testable on any device), ``compile`` (``torch.compile`` of them) and ``cuda_graphs`` (captured once
per layer and shape, then replayed). The KV buffers and graphs belong to one wrapper and are reused by its
next call, so in the fast modes the cache a call returns is valid until that wrapper's next call.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from svlm.engine.cache import BufferedLayer, cache_in

EXECUTIONS: tuple[str, ...] = ("eager", "static", "compile", "cuda_graphs")
#: Pruned sequences are padded to a multiple of this many slots in the fast modes (fewer shapes, more reuse).
DEFAULT_BUCKET = 32


def check_execution(execution: str, model: nn.Module, attn_implementation: str) -> str:
    """``execution`` if the model can run it, else a ValueError naming the bad value and the valid ones."""
    if execution not in EXECUTIONS:
        raise ValueError(f"Unknown execution {execution!r}; valid: {', '.join(EXECUTIONS)}.")
    if execution == "eager":
        return execution
    if not str(attn_implementation).startswith("sdpa"):
        raise ValueError(
            f"execution={execution!r} runs SDPA attention; this model uses attn_implementation="
            f"{attn_implementation!r}. Load it with attn_implementation='sdpa' or use execution='eager'."
        )
    device = next(model.parameters()).device
    if execution == "cuda_graphs" and device.type != "cuda":
        raise ValueError(
            f"execution='cuda_graphs' needs the model on a CUDA device, it is on {device}; "
            "use 'static' or 'compile' there."
        )
    return execution


def _rotary(attn: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The ``apply_rotary_pos_emb`` the attention module's own forward calls (same arithmetic)."""
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb


def _qkv(layer: nn.Module, attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    b, n, _ = hidden.shape
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x).view(b, n, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, n, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, n, -1, attn.head_dim).transpose(1, 2)
    q, k = _rotary(attn)(q, k, cos, sin)
    return q, k, v


def _finish(
    layer: nn.Module, attn: nn.Module, residual: torch.Tensor, attended: torch.Tensor
) -> torch.Tensor:
    b, n, _ = residual.shape
    hidden = residual + attn.o_proj(attended.reshape(b, n, -1).contiguous())
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def prefill_layer(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None,
    key_buffer: torch.Tensor,
    value_buffer: torch.Tensor,
) -> torch.Tensor:
    """One decoder layer over a prompt of ``n`` slots, as transformers' layer computes it, with the keys and
    values written into ``key_buffer[:, :, :n]`` / ``value_buffer[:, :, :n]`` instead of a cache."""
    attn = layer.self_attn
    q, k, v = _qkv(layer, attn, hidden, cos, sin)
    n = hidden.shape[1]
    key_buffer[:, :, :n].copy_(k)
    value_buffer[:, :, :n].copy_(v)
    attended, _ = sdpa_attention_forward(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)
    return _finish(layer, attn, hidden, attended)


def decode_layer(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_buffer: torch.Tensor,
    value_buffer: torch.Tensor,
    key_mask: torch.Tensor,
    pos: torch.Tensor,
) -> torch.Tensor:
    """One decoder layer for one new token per sample at slot ``pos`` (a 1-element device tensor): its key
    and value go into the buffers at ``pos``, ``key_mask`` [b, 1, 1, capacity] opens that slot, and the
    token attends to every open slot of the whole buffer."""
    attn = layer.self_attn
    q, k, v = _qkv(layer, attn, hidden, cos, sin)
    key_buffer.index_copy_(2, pos, k)
    value_buffer.index_copy_(2, pos, v)
    key_mask.index_fill_(3, pos, True)
    attended, _ = sdpa_attention_forward(
        attn, q, key_buffer, value_buffer, key_mask, dropout=0.0, scaling=attn.scaling
    )
    return _finish(layer, attn, hidden, attended)


class _Static:
    """One function at fixed shapes: its tensor inputs live in buffers of its own (``statics`` are buffers
    it shares, such as the KV buffers); a call copies the inputs in and runs the function, or replays the
    CUDA graph captured from it."""

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        inputs: list[torch.Tensor | None],
        statics: list[torch.Tensor],
        graph_pool: Any = None,
    ) -> None:
        self.fn = fn
        with torch.inference_mode(False):  # normal tensors: writable inside and outside inference mode
            self.inputs = [None if x is None else x.clone() for x in inputs]
        self.statics = statics
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None
        self.capture_error: str | None = None
        if graph_pool is not None:
            try:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):  # warm-up outside the graph (lazy init, autotuning)
                    self.fn(*self.inputs, *self.statics)
                torch.cuda.current_stream().wait_stream(stream)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, pool=graph_pool):
                    self.output = self.fn(*self.inputs, *self.statics)
            except Exception as err:  # this function runs without a graph (slower, still exact); said
                self.graph, self.output = None, None
                self.capture_error = f"{type(err).__name__}: {err}"
                warnings.warn(
                    f"CUDA graph capture failed, running without it: {self.capture_error}", stacklevel=2
                )

    def __call__(self, inputs: list[torch.Tensor | None]) -> torch.Tensor:
        for buffer, x in zip(self.inputs, inputs, strict=True):
            if buffer is not None:
                buffer.copy_(x)
        if self.graph is not None:
            self.graph.replay()
            return self.output
        return self.fn(*self.inputs, *self.statics)


def _shape_key(tensors: list[torch.Tensor | None]) -> tuple:
    return tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in tensors)


class LayerExecutor:
    """Runs the decoder layers of one wrapper's calls in a fast mode (see the module docstring).

    Attached for the duration of a call (after the pruning session): it replaces each decoder layer's
    ``forward`` on the instance and restores it afterwards. The replacement acts only inside ``session``'s
    own call; any other call (another thread, the unwrapped model) gets the layer's own forward.
    """

    def __init__(self, session: Any, mode: str) -> None:
        self.session = session
        self.mode = mode
        self.layers = list(session.adapter.decoder_layers)
        self._index = {id(layer): idx for idx, layer in enumerate(self.layers)}
        self.kv: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ours: set[int] = set()  # data pointers of the key buffers above
        self._inputs: dict[tuple, list] = {}  # shared input buffers (see _shared)
        self.capture_errors: list[str] = []  # CUDA graph captures that failed (those layers run ungraphed)
        self.decode_state: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.functions: dict[tuple, _Static] = {}
        self._pool: Any = None
        self._prompt_done: set[int] = set()
        self.calls = {"prefill": 0, "decode": 0, "eager": 0}  # layer calls of the last wrapper call, by path
        self._prefill_fn: Callable[..., torch.Tensor] = prefill_layer
        self._decode_fn: Callable[..., torch.Tensor] = decode_layer
        if mode == "compile":
            import torch._dynamo

            # one compiled graph per layer and shape: the default limit (8) would leave most layers eager
            limit = 8 * len(self.layers) + 8
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, limit)
            torch._dynamo.config.accumulated_cache_size_limit = max(
                torch._dynamo.config.accumulated_cache_size_limit, 4 * limit
            )
            self._prefill_fn = torch.compile(prefill_layer, dynamic=False)
            self._decode_fn = torch.compile(decode_layer, dynamic=False)

    # -- attaching ------------------------------------------------------------------------------------
    def __enter__(self) -> LayerExecutor:
        self._prompt_done.clear()
        self.calls = dict.fromkeys(self.calls, 0)
        self.session.executor = self
        for layer in self.layers:
            _install(layer)
        return self

    def __exit__(self, *exc: object) -> None:
        for layer in self.layers:
            _uninstall(layer)

    def run_layer(
        self, layer: nn.Module, original: Callable[..., Any], hidden: torch.Tensor, kwargs: dict
    ) -> Any:
        """One call of ``layer`` inside this executor's session: the fast path, or ``original`` (transformers'
        forward) where the fast path does not apply."""
        idx = self._index[id(layer)]
        out = self._fast(idx, layer, hidden, kwargs)
        if out is None:
            self.calls["eager"] += 1
            out = original(hidden, **kwargs)
            if self.session.prefill:
                self._adopt(idx, layer, kwargs)
        return out

    # -- one layer call ---------------------------------------------------------------------------------
    def _fast(self, idx: int, layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
        """The layer's output through the fast path, or None where it must run transformers' forward."""
        session = self.session
        cache = cache_in(kwargs)
        embeddings = kwargs.get("position_embeddings")
        attn = getattr(layer, "self_attn", None)
        if (
            cache is None
            or embeddings is None
            or attn is None
            or getattr(attn, "sliding_window", None)
            or idx >= len(getattr(cache, "layers", ()))
            or not isinstance(cache.layers[idx], BufferedLayer)
            or kwargs.get("output_attentions")
        ):
            return None
        cos, sin = embeddings
        cache_layer = cache.layers[idx]
        if session.prefill:
            if idx in session.prune_at or cache_layer.get_seq_length() != 0 or hidden.shape[1] < 2:
                return None
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dtype != torch.bool:
                return None
            return self._prefill(idx, layer, hidden, cos, sin, mask, cache_layer)
        if hidden.shape[1] != 1 or not session.reports:
            return None
        return self._decode(idx, layer, hidden, cos, sin, cache_layer)

    def _buffers(self, idx: int, like: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, heads, _, dim = like.shape
        key = (idx, b, heads, capacity, dim, like.dtype, like.device)
        if key not in self.kv:
            with torch.inference_mode(False):
                self.kv[key] = tuple(like.new_zeros(b, heads, capacity, dim) for _ in range(2))
            self._ours.add(self.kv[key][0].data_ptr())
        return self.kv[key]

    def _adopt(self, idx: int, layer: nn.Module, kwargs: dict) -> None:
        """After a prefill layer ran eagerly (a pruning layer), move its keys and values into a buffer of
        ours, so that its decoding steps take the fast path too."""
        cache = cache_in(kwargs)
        layers = getattr(cache, "layers", ())
        if idx >= len(layers) or not isinstance(layers[idx], BufferedLayer):
            return
        cache_layer = layers[idx]
        keys, values = cache_layer.keys, cache_layer.values
        if getattr(cache_layer, "_key_buffer", None) is not None or not isinstance(keys, torch.Tensor):
            return
        if keys.dim() != 4 or keys.shape[2] == 0:
            return
        n = keys.shape[2]
        key_buffer, value_buffer = self._buffers(idx, keys[:, :, :0], n + cache_layer.reserve)
        key_buffer[:, :, :n].copy_(keys)
        value_buffer[:, :, :n].copy_(values)
        cache_layer.keys, cache_layer.values = key_buffer[:, :, :n], value_buffer[:, :, :n]
        cache_layer._key_buffer, cache_layer._value_buffer = key_buffer, value_buffer

    def _shared(self, name: str, x: torch.Tensor | None) -> torch.Tensor | None:
        """A buffer holding ``x`` that every function of this shape reads (rotary tables and masks are the
        same tensor for many layers): copied only when a new tensor comes, not once per layer. The source
        is kept referenced, so a new tensor is never mistaken for it."""
        if x is None:
            return None
        key = (name, tuple(x.shape), x.dtype, x.device)
        entry = self._inputs.get(key)
        if entry is None:
            with torch.inference_mode(False):
                entry = self._inputs[key] = [x.clone(), x]
        elif entry[1] is not x:
            entry[0].copy_(x)
            entry[1] = x
        return entry[0]

    def _static(self, fn: Callable[..., torch.Tensor], inputs: list, statics: list) -> _Static:
        static = _Static(fn, inputs, statics, self._graph_pool())
        if static.capture_error is not None:
            self.capture_errors.append(static.capture_error)
        return static

    def _graph_pool(self) -> Any:
        if self.mode != "cuda_graphs":
            return None
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def _prefill(
        self,
        idx: int,
        layer: nn.Module,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache_layer: BufferedLayer,
    ) -> torch.Tensor:
        attn = layer.self_attn
        b, n, _ = hidden.shape
        kv_heads = attn.k_proj.out_features // attn.head_dim
        like = hidden.new_empty(b, kv_heads, 0, attn.head_dim)
        key_buffer, value_buffer = self._buffers(idx, like, n + cache_layer.reserve)
        shared = [self._shared("cos", cos), self._shared("sin", sin), self._shared("mask", mask)]
        key = ("prefill", idx, _shape_key([hidden, cos, sin, mask]), key_buffer.data_ptr())
        if key not in self.functions:

            def fn(h, kb, vb, c, s, m, layer=layer):
                return self._prefill_fn(layer, h, c, s, m, kb, vb)

            statics = [key_buffer, value_buffer, *shared]
            self.functions[key] = self._static(fn, [hidden], statics)
        out = self.functions[key]([hidden])
        cache_layer.update(key_buffer[:, :, :n], value_buffer[:, :, :n])
        cache_layer._key_buffer, cache_layer._value_buffer = key_buffer, value_buffer
        self.calls["prefill"] += 1
        return out

    def _decode(
        self,
        idx: int,
        layer: nn.Module,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache_layer: BufferedLayer,
    ) -> torch.Tensor | None:
        key_buffer = getattr(cache_layer, "_key_buffer", None)
        value_buffer = getattr(cache_layer, "_value_buffer", None)
        seq = self.session.layer_seqs[idx] if idx < len(self.session.layer_seqs) else None
        if key_buffer is None or seq is None or key_buffer.data_ptr() not in self._ours:
            return None  # not a buffer of ours (e.g. the prompt ran eagerly): transformers' path
        old = cache_layer.get_seq_length()
        capacity = key_buffer.shape[2]
        if old + 1 > capacity or cache_layer.keys.data_ptr() != key_buffer.data_ptr():
            return None
        state_key = (idx, key_buffer.data_ptr(), tuple(key_buffer.shape))
        if state_key not in self.decode_state:
            b = key_buffer.shape[0]
            with torch.inference_mode(False):
                self.decode_state[state_key] = (
                    torch.zeros(b, 1, 1, capacity, dtype=torch.bool, device=key_buffer.device),
                    torch.zeros(1, dtype=torch.long, device=key_buffer.device),
                )
        key_mask, pos = self.decode_state[state_key]
        if idx not in self._prompt_done:  # first step of this call: the layer's valid prompt slots
            if seq.valid.shape[1] != old:
                return None
            key_mask.zero_()
            key_mask[:, 0, 0, :old] = seq.valid
            self._prompt_done.add(idx)
        pos.fill_(old)
        shared = [self._shared("cos", cos), self._shared("sin", sin)]
        key = ("decode", idx, _shape_key([hidden, cos, sin]), key_buffer.data_ptr())
        if key not in self.functions:

            def fn(h, kb, vb, m, p, c, s, layer=layer):
                return self._decode_fn(layer, h, c, s, kb, vb, m, p)

            statics = [key_buffer, value_buffer, key_mask, pos, *shared]
            self.functions[key] = self._static(fn, [hidden], statics)
        out = self.functions[key]([hidden])
        cache_layer.keys = key_buffer[:, :, : old + 1]
        cache_layer.values = value_buffer[:, :, : old + 1]
        self.calls["decode"] += 1
        return out


# -- the layers' forward while any executor is attached ------------------------------------------------------
# One dispatcher per layer, installed by the first executor that attaches and removed by the last that
# detaches (wrappers of one model may run in several threads): each call goes to the executor of the
# session active in its own thread (svlm.engine.session.ACTIVE_SESSION), or to the layer's own forward.
_LOCK = threading.Lock()
_INSTALLED: dict[int, list[Any]] = {}  # id(layer) -> [users, had an instance `forward`, that forward]


def _install(layer: nn.Module) -> None:
    from svlm.engine.session import ACTIVE_SESSION

    with _LOCK:
        entry = _INSTALLED.get(id(layer))
        if entry is not None:
            entry[0] += 1
            return
        _INSTALLED[id(layer)] = [1, "forward" in layer.__dict__, layer.__dict__.get("forward")]
        original = layer.forward

        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            executor = getattr(ACTIVE_SESSION.get(), "executor", None)
            if args or executor is None or id(layer) not in executor._index:
                return original(hidden_states, *args, **kwargs)
            return executor.run_layer(layer, original, hidden_states, kwargs)

        layer.forward = forward


def _uninstall(layer: nn.Module) -> None:
    with _LOCK:
        entry = _INSTALLED.get(id(layer))
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] > 0:
            return
        del _INSTALLED[id(layer)]
        if entry[1]:
            layer.forward = entry[2]
        else:
            del layer.forward  # back to the class's forward

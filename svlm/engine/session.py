"""Runs a strategy inside transformers' own decoder loop through module hooks.

A :class:`PruningSession` is attached for the duration of one wrapper call (a forward or a whole
``generate``) and removes every hook when it exits, so the model is left exactly as it was. Hooks:

* a pre-hook on the top-level model notes the call's ``input_ids``/``attention_mask`` and whether this
  forward is a prefill (empty cache) or a decoding step;
* a pre-hook on each decoder layer swaps in the layer's pruned view of the sequence (rotary tables of the
  kept tokens' original positions, the mask of its slots);
* a hook on each pruning layer's output asks the strategy what to keep and gathers the kept rows;
* hooks on the pruning layers' ``q_proj``/``k_proj`` keep references to their outputs so that the strategy
  can get attention rows without the layer ever materialising an attention matrix.

Each layer's KV cache then holds exactly the slots that layer saw.

Positions: kept tokens keep their original positions, unless the strategy's ``renumber_positions`` is True
(SparseVLM v1/v1.5): then after each pruning the valid slots of each sample get positions ``0..k-1`` (the
adapter's ``rotary_tables``; refused for M-RoPE families), and a decoding step in a layer whose sequence was
renumbered takes the position ``k + tokens decoded so far``, i.e. that layer's own cache length, as the
reference code does.

The hooks sit on modules other threads may be calling at the same time (the unwrapped model, another
wrapper): each hook acts only inside the call that attached it, which :data:`ACTIVE_SESSION` (a context
variable, so one value per thread) names for the duration of that call. Any other call passes through the
hooks unchanged.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from svlm.adapters.base import Adapter
from svlm.engine.cache import PrunedCache, cache_in, cache_out
from svlm.engine.masks import decode_mask, mask_format, prefill_mask
from svlm.engine.scoring import attention_rows, rows_from_mask
from svlm.engine.sequence import TokenSequence, apply_plan, pad_to_bucket, plan_gather, renumber
from svlm.engine.validation import InputError
from svlm.report import LayerDecision, Report
from svlm.strategies.base import LayerView, PrefillContext, Selection, Strategy

#: The session of the call running in this thread (context), if any; hooks of other sessions ignore it.
ACTIVE_SESSION: ContextVar[PruningSession | None] = ContextVar("svlm_active_session", default=None)


class PruningSession:
    """Hooks one strategy into one model for the duration of a ``with`` block.

    One session runs one call at a time: entering it while it runs a call (in another thread) raises
    ``RuntimeError``. Sessions of other wrappers may run in other threads on the same model meanwhile.
    """

    def __init__(
        self, model: nn.Module, adapter: Adapter, strategy: Strategy, *, seed: int | None = None
    ) -> None:
        # the keyword inputs of the wrapper's call (``generate`` computes the image features before the first
        # forward, so that forward's own inputs hold no pixel values): see ``PrefillContext.request_inputs``
        self.request_inputs: dict[str, Any] = {}
        self.model = model
        self.adapter = adapter
        self.strategy = strategy
        self.info = adapter.info()
        self.fmt = mask_format(adapter.attn_implementation)
        self.seed = seed
        self.handles: list[RemovableHandle] = []
        self.reports: list[Report] = []
        #: Pruned sequences are left-padded to a multiple of this many slots (0: never); the fast execution
        #: modes set it so that a few shapes serve every input (svlm.engine.execution).
        self.bucket = 0
        self.executor: Any = None  # the svlm.engine.execution.LayerExecutor of a fast execution mode
        self._busy = threading.Lock()
        self._token: Token | None = None
        self._reset()

    # -- lifecycle -----------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.prefill = False
        self.call_inputs: dict[str, Any] = {}
        self.ctx: PrefillContext | None = None
        self.prune_at: list[int] = []
        self.layer_seqs: list[TokenSequence | None] = [None] * self.info.num_layers
        self.current: TokenSequence | None = None
        self.original: TokenSequence | None = None
        self.captured: dict[int, dict[str, torch.Tensor]] = {}
        self.vision_captured: dict[int, dict[str, torch.Tensor]] = {}
        self.decisions: list[LayerDecision] = []
        self.step_masks: dict[tuple[int, int, int], torch.Tensor] = {}
        self.step_rotary: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.decode_steps = 0
        self.scoring_seconds = 0.0

    def __enter__(self) -> PruningSession:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                f"This svlm wrapper ({self.strategy!r}) is already running a call in another thread (or "
                "this one); a wrapper runs one call at a time: make one svlm.sparsify(model, ...) per "
                "thread (they may share the model)."
            )
        try:
            self.reports = []
            self.request_inputs = {}
            self._token = ACTIVE_SESSION.set(self)
            self.attach()
        except BaseException:
            self._exit()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit()

    def _exit(self) -> None:
        try:
            self.detach()
            self._release()
            self.request_inputs = {}
            if self._token is not None:
                ACTIVE_SESSION.reset(self._token)
                self._token = None
        finally:
            self._busy.release()

    def _own(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """``hook`` acting only inside this session's own call; any other call passes through unchanged."""

        def guarded(*args: Any) -> Any:
            if ACTIVE_SESSION.get() is not self:
                return None
            return hook(*args)

        return guarded

    def _release(self) -> None:
        """Drop what only the call itself needed: its inputs (which hold the KV cache and the pixels), the
        input embeddings and captured projections. Kept: the layer sequences and reports."""
        self.call_inputs = {}
        self.ctx = None
        self.captured = {}
        self.vision_captured = {}
        self.step_masks = {}
        self.step_rotary = {}

    def attach(self) -> None:
        if self.handles:
            return
        model, own = self.model, self._own
        self.handles.append(model.register_forward_pre_hook(own(self._on_model_start), with_kwargs=True))
        self.handles.append(model.register_forward_hook(own(self._on_model_end), with_kwargs=True))
        for idx in self.strategy.vision_attention_layers(self.adapter):
            attn = self.adapter.vision_attention(idx)
            self.handles.append(attn.q_proj.register_forward_hook(own(self._vision_hook(idx, "q"))))
            self.handles.append(attn.k_proj.register_forward_hook(own(self._vision_hook(idx, "k"))))
        for idx, layer in enumerate(self.adapter.decoder_layers):
            self.handles.append(
                layer.register_forward_pre_hook(own(self._layer_pre_hook(idx)), with_kwargs=True)
            )
            self.handles.append(layer.register_forward_hook(own(self._layer_post_hook(idx))))
            attn = self.adapter.attention(layer)
            self.handles.append(attn.q_proj.register_forward_hook(own(self._capture_hook(idx, "q"))))
            self.handles.append(attn.k_proj.register_forward_hook(own(self._capture_hook(idx, "k"))))

    @property
    def running(self) -> bool:
        """True while a call runs with this session (in any thread)."""
        return self._busy.locked()

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    # -- top-level model -----------------------------------------------------------------------------
    def _on_model_start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = cache_in(kwargs)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if cache is not None and cache.get_seq_length() > 0:
            self.prefill = False
            self.decode_steps += 1
            self.step_masks.clear()
            self.step_rotary.clear()
            return
        self._reset()
        self.prefill = True
        if input_ids is None:
            raise InputError("svlm needs `input_ids` to locate the visual tokens; got only `inputs_embeds`.")
        self.call_inputs = dict(kwargs)
        self.call_inputs["input_ids"] = input_ids

    def _on_model_end(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self.prefill or self.ctx is None:
            if not self.prefill and self.reports:
                self.reports[-1].decode_steps = self.decode_steps
            return
        original = self.original
        for idx in range(self.info.num_layers):
            if self.layer_seqs[idx] is None:
                self.layer_seqs[idx] = self.current
        cache = cache_out(output)
        if isinstance(cache, PrunedCache):
            cache.set_pruned([original.length - seq.length for seq in self.layer_seqs])
        self.reports.append(
            Report(
                info=self.info,
                config=self.model.config,
                layer_sequences=self.layer_seqs,
                prompt_valid=original.valid,
                decisions=self.decisions,
                strategy=repr(self.strategy),
                input_ids=self.ctx.input_ids,
                inputs=self.call_inputs,
                overhead_flops=self.ctx.overhead_flops,
            )
        )
        # Wall-clock seconds of the strategy's own work in this prefill (prepare, attention rows, select,
        # gather): what pruning adds on top of the layers it shortens. ``svlm bench`` reports its share.
        self.reports[-1].scoring_seconds = self.scoring_seconds
        self.prefill = False

    # -- decoder layers ------------------------------------------------------------------------------
    def _layer_pre_hook(self, idx: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if self.prefill:
                if idx == 0:
                    args, kwargs = self._start_prefill(args, kwargs)
                self.layer_seqs[idx] = self.current
                if self.current is not None and self.current is not self.original:
                    return self._with_sequence(args, kwargs, self.current)
                return args, kwargs
            seq = self.layer_seqs[idx]
            if seq is None or seq is self.original or not self.reports:
                return None
            return self._with_decode_mask(idx, seq, args, kwargs)

        return hook

    def _layer_post_hook(self, idx: int):
        def hook(module: nn.Module, args: tuple, output: Any):
            if not self.prefill or idx not in self.prune_at:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            new_hidden = self._prune(idx, hidden, self.layer_seqs[idx])
            self.captured.pop(idx, None)
            return (new_hidden, *output[1:]) if isinstance(output, tuple) else new_hidden

        return hook

    def _vision_hook(self, idx: int, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self.prefill:
                self.vision_captured.setdefault(idx, {})[name] = output

        return hook

    def _capture_hook(self, idx: int, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self.prefill and idx in self.prune_at:
                self.captured.setdefault(idx, {})[name] = output

        return hook

    # -- prefill ---------------------------------------------------------------------------------------
    def _start_prefill(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        input_ids = self.call_inputs["input_ids"]
        b, n, _ = hidden.shape
        if input_ids.shape != (b, n):
            raise InputError(
                f"input_ids of shape {tuple(input_ids.shape)} do not match the language model input {(b, n)}."
            )
        attention_mask = self.call_inputs.get("attention_mask")
        if attention_mask is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=hidden.device)
        elif isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            valid = attention_mask.to(device=hidden.device, dtype=torch.bool)
        else:
            raise InputError("svlm expects a 2-D padding attention_mask [batch, seq] (or none).")
        visual = self.adapter.visual_mask(input_ids.to(hidden.device)) & valid
        cos, sin = kwargs["position_embeddings"]
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=hidden.device).manual_seed(self.seed)
        self.ctx = PrefillContext(
            info=self.info,
            input_ids=input_ids,
            inputs_embeds=hidden,
            visual=visual,
            valid=valid,
            inputs=self.call_inputs,
            request_inputs=self.request_inputs,
            generator=generator,
            vision=self.vision_captured,
            adapter=self.adapter,
        )
        if self.strategy.renumber_positions:  # fails early where positions cannot be renumbered (M-RoPE)
            first = torch.zeros(b, 1, dtype=torch.long, device=hidden.device)
            self.adapter.rotary_tables(hidden[:, :1], first)
        if bool(visual.any()):
            with self._scoring_clock(hidden.device):
                self.strategy.prepare(self.ctx)
            self.prune_at = self._validated_layers(self.strategy.prune_layers(self.ctx))
        else:
            warnings.warn("The inputs hold no visual tokens: running dense (nothing to prune).", stacklevel=2)
            self.prune_at = []
        self.original = TokenSequence(
            origin=torch.arange(n, device=hidden.device).expand(b, n),
            visual=visual,
            valid=valid,
            cos=cos.expand(b, -1, -1),
            sin=sin.expand(b, -1, -1),
        )
        self.current = self.original
        if -1 in self.prune_at:
            new_hidden = self._prune(-1, hidden, self.original)
            args = (new_hidden, *args[1:]) if args else args
            if not args:
                kwargs = {**kwargs, "hidden_states": new_hidden}
        return args, kwargs

    def _validated_layers(self, layers: Any) -> list[int]:
        layers = sorted({int(x) for x in layers})
        last = self.info.num_layers - 2
        bad = [x for x in layers if x < -1 or x > last]
        if bad:
            raise ValueError(
                f"Pruning layers {bad} are outside this {self.info.num_layers}-layer model; valid pruning "
                f"layers are -1 (before the language model) to {last}."
            )
        return layers

    @contextmanager
    def _scoring_clock(self, device: torch.device) -> Iterator[None]:
        """Adds the enclosed time to ``scoring_seconds`` (synchronising first and last on CUDA only)."""
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(device)
            self.scoring_seconds += time.perf_counter() - start

    def _prune(self, idx: int, hidden: torch.Tensor, seq: TokenSequence) -> torch.Tensor:
        with self._scoring_clock(hidden.device):
            return self._prune_now(idx, hidden, seq)

    def _prune_now(self, idx: int, hidden: torch.Tensor, seq: TokenSequence) -> torch.Tensor:
        view = LayerView(layer=idx, hidden=hidden, visual=seq.visual, valid=seq.valid, origin=seq.origin)
        rows = self.strategy.attention_rows(self.ctx, view) if idx >= 0 else None
        if rows is not None:
            view.rows, view.rows_valid = rows_from_mask(rows & seq.valid)
            view.attention = self._attention(idx, seq, view.rows, view.rows_valid)
            view.recompute = lambda q=None, k=None, logits=False: self._attention(
                idx, seq, view.rows, view.rows_valid, q, k, logits
            )
        selection = self.strategy.select(self.ctx, view)
        if not isinstance(selection, Selection):
            raise TypeError(f"{type(self.strategy).__name__}.select must return a Selection.")
        keep = (selection.keep | ~seq.visual) & seq.valid
        index, valid = plan_gather(
            seq, keep, selection.merged_valid if selection.merged is not None else None
        )
        new_seq, new_hidden = apply_plan(seq, hidden, index, valid, selection.merged, selection.merged_anchor)
        if self.bucket:
            new_seq, new_hidden = pad_to_bucket(new_seq, new_hidden, self.bucket)
        if self.strategy.renumber_positions:
            renumber(new_seq, lambda positions: self.adapter.rotary_tables(new_hidden, positions))
        merged = 0 if selection.merged_valid is None else selection.merged_valid.sum(-1)
        self.decisions.append(
            LayerDecision(
                layer=idx,
                visual_before=seq.visual_counts(),
                visual_after=new_seq.visual_counts(),
                merged=merged if isinstance(merged, torch.Tensor) else torch.zeros_like(seq.visual_counts()),
                info=dict(selection.info),
                scoring_rows=0 if view.rows is None else int(view.rows_valid.sum()),
                scoring_keys=seq.length,
            )
        )
        self.current = new_seq
        return new_hidden

    def _attention(
        self,
        idx: int,
        seq: TokenSequence,
        rows: torch.Tensor,
        rows_valid: torch.Tensor,
        q: torch.Tensor | None = None,
        k: torch.Tensor | None = None,
        logits: bool = False,
    ) -> torch.Tensor:
        """Attention rows of layer ``idx`` from its captured projections (or replacements ``q``/``k``);
        with ``logits`` the raw scaled logits of every head instead of the probabilities."""
        captured = self.captured.get(idx, {})
        if "q" not in captured or "k" not in captured:
            raise RuntimeError(f"Layer {idx}: q/k projections were not captured; is the adapter right?")
        attn = self.adapter.attention(self.adapter.decoder_layers[idx])
        rotated = self._cached_keys(idx, seq, captured["q"]) if k is None else None
        return attention_rows(
            captured["q"] if q is None else q.expand_as(captured["q"]),
            captured["k"] if k is None else k.expand_as(captured["k"]),
            rows,
            rows_valid,
            seq.valid,
            seq.cos,
            seq.sin,
            num_heads=self.info.num_heads,
            num_kv_heads=self.info.num_kv_heads,
            head_dim=self.info.head_dim,
            scaling=float(getattr(attn, "scaling", self.info.head_dim**-0.5)),
            rotary=self.adapter.apply_rotary,
            reduce_heads=not self.strategy.needs_head_attention,
            rotated_keys=rotated,
            softmax=not logits,
        )

    def _cached_keys(self, idx: int, seq: TokenSequence, like: torch.Tensor) -> torch.Tensor | None:
        """Layer ``idx``'s keys after rotary embedding, from the KV cache this prefill just filled (so that
        scoring does not rotate all n keys again); None when there is no such cache (``use_cache=False``)
        or it holds anything else than exactly this layer's ``seq`` slots."""
        layers = getattr(cache_in(self.call_inputs), "layers", None)
        if layers is None or idx >= len(layers):
            return None
        keys = getattr(layers[idx], "keys", None)
        if not isinstance(keys, torch.Tensor) or keys.dim() != 4 or keys.device != like.device:
            return None
        if keys.shape[0] != seq.valid.shape[0] or keys.shape[1] != self.info.num_kv_heads:
            return None
        return keys if keys.shape[2] == seq.length and keys.shape[3] == self.info.head_dim else None

    def _unmasked(self, seq: TokenSequence) -> bool:
        """SDPA on a sequence without padding needs no mask: ``attention_mask=None`` lets transformers call
        SDPA with ``is_causal=True`` (its fastest kernels, GQA without repeating k/v) instead of a [b, n, n]
        boolean mask. Eager attention always needs the mask; FlashAttention gets its 2-D padding mask."""
        return self.fmt == "bool" and not seq.padded

    def _with_sequence(self, args: tuple, kwargs: dict, seq: TokenSequence) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.fmt not in seq.masks:
            unmasked = self._unmasked(seq)
            seq.masks[self.fmt] = None if unmasked else prefill_mask(seq.valid, self.fmt, hidden.dtype)
        kwargs = dict(kwargs)
        kwargs["position_embeddings"] = (seq.cos, seq.sin)
        kwargs["attention_mask"] = seq.masks[self.fmt]
        kwargs["position_ids"] = None
        return args, kwargs

    # -- decoding --------------------------------------------------------------------------------------
    def _with_decode_mask(
        self, idx: int, seq: TokenSequence, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = cache_in(kwargs)
        if cache is None:
            raise InputError("Decoding after pruning needs the KV cache of the prefill (use_cache=True).")
        q_len = hidden.shape[1]
        kwargs = dict(kwargs)
        kwargs["position_ids"] = None
        past = cache.layers[idx].get_seq_length()
        if seq.next_position is not None:  # renumbered: this layer's tokens continue at its own count
            kwargs["position_embeddings"] = self._decode_rotary(seq, past, hidden)
        if q_len == 1 and self._unmasked(seq):  # one new token sees every cached slot: no mask at all
            kwargs["attention_mask"] = None
            return args, kwargs
        key = (id(seq), past, q_len)
        if key not in self.step_masks:
            self.step_masks[key] = decode_mask(seq.valid, past, q_len, self.fmt, hidden.dtype)
        kwargs["attention_mask"] = self.step_masks[key]
        return args, kwargs

    def _decode_rotary(
        self, seq: TokenSequence, past: int, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables of a decoding step for the layers of a renumbered ``seq``: the step's tokens sit at
        ``next_position + (tokens decoded so far) + j`` (the reference's per-layer cache length)."""
        q_len = hidden.shape[1]
        key = (id(seq), past, q_len)
        if key not in self.step_rotary:
            offset = past - seq.length + torch.arange(q_len, device=hidden.device)
            positions = seq.next_position.to(hidden.device).unsqueeze(-1) + offset
            self.step_rotary[key] = self.adapter.rotary_tables(hidden, positions)
        return self.step_rotary[key]

"""``svlm.sparsify``: a pruned view of a transformers VLM with the model's own call and ``generate``."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from svlm.adapters import Adapter, adapter_for
from svlm.engine.cache import CACHE_KWARG, PrunedCache, cache_in
from svlm.engine.execution import DEFAULT_BUCKET, LayerExecutor, check_execution
from svlm.engine.session import PruningSession
from svlm.engine.validation import validate_inputs
from svlm.report import Report
from svlm.strategies import Strategy, build_strategy


class SparseModel:
    """Runs ``model`` with ``strategy`` pruning its visual tokens.

    Hooks are attached only while a call runs, so ``model`` itself stays untouched and can be used densely
    (or wrapped with another strategy) at any time.
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        *,
        seed: int | None = None,
        execution: str = "eager",
        bucket: int | None = None,
    ) -> None:
        self.model = model
        self.strategy = strategy
        self.adapter: Adapter = adapter_for(model)
        self.seed = seed
        self.last_report: Report | None = None
        self.reports: list[Report] = []
        self._session = PruningSession(
            model, self.adapter, strategy, seed=seed
        )  # validates the attention impl
        self.execution = check_execution(execution, model, self.adapter.attn_implementation)
        self._executor: LayerExecutor | None = None
        if self.execution != "eager":
            self._executor = LayerExecutor(self._session, self.execution)
            self._session.bucket = DEFAULT_BUCKET if bucket is None else int(bucket)
        elif bucket:
            self._session.bucket = int(bucket)

    # -- calls -----------------------------------------------------------------------------------------
    def __call__(self, **inputs: Any) -> Any:
        inputs = self._with_cache(inputs)
        with self._attached() as session, self._fast():
            session.request_inputs = inputs
            out = self.model(**inputs)
        report = self._collect(session)
        if report is not None and getattr(out, "logits", None) is not None:
            out.logits = self._scatter_logits(out.logits, session, int(inputs["input_ids"].shape[1]))
        return out

    forward = __call__

    @torch.no_grad()
    def generate(self, **inputs: Any) -> torch.Tensor:
        """Like ``model.generate``: greedy or sampling, batched, ``max_new_tokens``, ``eos_token_id``."""
        if int(inputs.get("num_beams", 1) or 1) > 1:
            raise ValueError("svlm's pruned generation does not support beam search (num_beams > 1) yet.")
        inputs = self._with_cache(inputs, required=True, reserve=_new_tokens(self.model, inputs))
        with self._attached() as session, self._fast():
            session.request_inputs = inputs
            out = self.model.generate(**inputs)
        self._collect(session)
        return out

    def detach(self) -> nn.Module:
        """Return the wrapped model (nothing stays attached between calls; a call running in another
        thread keeps its hooks until it ends)."""
        if not self._session.running:
            self._session.detach()
        return self.model

    # -- helpers ---------------------------------------------------------------------------------------
    def _attached(self) -> PruningSession:
        return self._session  # entering it resets its reports (and refuses a second concurrent call)

    def _fast(self) -> Any:
        """The layer executor of a fast ``execution`` (entered after the session), or a no-op."""
        return self._executor if self._executor is not None else contextlib.nullcontext()

    def _collect(self, session: PruningSession) -> Report | None:
        if session.reports:
            self.last_report = session.reports[-1]
            self.reports = list(session.reports)
            return self.last_report
        return None

    def _with_cache(self, inputs: dict[str, Any], required: bool = False, reserve: int = 0) -> dict[str, Any]:
        validate_inputs(self.adapter, inputs)
        cache = cache_in(inputs)
        if cache is None and (required or inputs.get("use_cache", True) is not False):
            inputs = {**inputs, CACHE_KWARG: PrunedCache(config=self.model.config, reserve_tokens=reserve)}
        elif cache is not None and not isinstance(cache, PrunedCache):
            raise ValueError(
                f"Pass no {CACHE_KWARG} (svlm creates a PrunedCache) or an svlm.PrunedCache; got "
                f"{type(cache).__name__}, which cannot track pruned prompt lengths."
            )
        return inputs

    def _scatter_logits(self, logits: torch.Tensor, session: PruningSession, length: int) -> torch.Tensor:
        """Put the logits of surviving tokens back at their prompt positions (zeros where pruned)."""
        seq = session.layer_seqs[-1]
        if logits.shape[1] != seq.length or seq is session.original:
            return logits
        full = logits.new_zeros(logits.shape[0], length, logits.shape[-1])
        rows = seq.valid & (seq.origin >= 0)
        b_idx, slot = rows.nonzero(as_tuple=True)
        full[b_idx, seq.origin[b_idx, slot]] = logits[b_idx, slot]
        return full

    def __repr__(self) -> str:
        return f"SparseModel({type(self.model).__name__}, {self.strategy!r})"


def _new_tokens(model: nn.Module, inputs: dict[str, Any]) -> int:
    """How many tokens ``generate`` will append at most, when it is said (``max_new_tokens``), else 0."""
    config = inputs.get("generation_config") or getattr(model, "generation_config", None)
    value = inputs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    return int(value) if isinstance(value, int) and value > 0 else 0


def sparsify(
    model: nn.Module,
    strategy: str | Strategy | dict[str, Any] = "dense",
    *,
    execution: str = "eager",
    bucket: int | None = None,
    **kwargs: Any,
) -> SparseModel:
    """Wrap a transformers VLM so that its calls prune visual tokens with ``strategy``.

    ``strategy`` is a registered name (see :func:`svlm.available_strategies`), a ``package.module.Class``
    path, a ``{"class_path": ..., "init_args": {...}}`` dict or a :class:`svlm.Strategy` instance; ``kwargs``
    go to the strategy (``budget=64``, ...).

    ``execution`` picks how the decoder layers run (:mod:`svlm.engine.execution`): ``eager`` (transformers'
    own forward, the default), ``cuda_graphs`` (each layer captured once per shape and replayed: on a GPU
    at small batches, where a layer's cost is launching its kernels), ``compile`` (``torch.compile``) or
    ``static`` (the same static-shape code without either). The fast modes need SDPA attention, pad pruned
    sequences to a multiple of ``bucket`` slots (default 32) so shapes repeat, and give results equal to
    ``eager`` up to floating-point rounding; the KV cache a call returns stays valid until the wrapper's
    next call (its buffers are reused).
    """
    return SparseModel(model, build_strategy(strategy, **kwargs), execution=execution, bucket=bucket)

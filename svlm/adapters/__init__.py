"""Per-family adapters: where the visual tokens are and which transformers modules to hook."""

from __future__ import annotations

from torch import nn

from svlm.adapters.base import Adapter, ModelInfo
from svlm.adapters.families import LlavaAdapter, LlavaNextAdapter, Qwen2VLAdapter, Qwen25VLAdapter

ADAPTERS: tuple[type[Adapter], ...] = (LlavaAdapter, LlavaNextAdapter, Qwen2VLAdapter, Qwen25VLAdapter)
FAMILIES: tuple[str, ...] = tuple(a.family for a in ADAPTERS)


def adapter_for(model: nn.Module) -> Adapter:
    """Pick the adapter from ``model.config.model_type``; unsupported models get a clear error."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls(model)
    supported = ", ".join(t for a in ADAPTERS for t in a.model_types)
    raise ValueError(
        f"Unsupported model type {model_type!r} ({type(model).__name__}). Supported model types: {supported}."
    )


__all__ = ["ADAPTERS", "FAMILIES", "Adapter", "ModelInfo", "adapter_for"]

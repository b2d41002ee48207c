"""Load vision-language models and their processors by name: hub ids, local folders, ``tiny:<family>``."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "FAMILIES",
    "LoadedVLM",
    "check_local_path",
    "family_of",
    "load_vlm",
    "resolve_device",
    "resolve_dtype",
    "zoo_path",
]

#: ``config.model_type`` -> svlm family name, for the families svlm has adapters for.
FAMILIES: dict[str, str] = {
    "llava": "llava",
    "llava_next": "llava_next",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
}

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "16": torch.float16,
}

TINY_PREFIX = "tiny:"
ZOO_PREFIX = "zoo:"


class LoadedVLM(NamedTuple):
    """What :func:`load_vlm` returns; unpacks as ``model, processor, family``."""

    model: nn.Module
    processor: Any
    family: str


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | None = None) -> torch.dtype:
    """Parse a dtype name; ``None``/``"auto"`` means bfloat16 on CUDA and float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}. Valid: auto, {', '.join(sorted(_DTYPES))}.")
    return _DTYPES[key]


def family_of(model_or_config: Any) -> str:
    """svlm family of a model or config from ``config.model_type``; unsupported types get a clear error."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"Unsupported model type {model_type!r}. svlm supports model types: {', '.join(FAMILIES)} "
            "(LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL)."
        )
    return FAMILIES[model_type]


def zoo_path(name: str) -> str:
    """Folder of a model shipped in ``svlm.zoo`` (e.g. ``svlm-shapes-llava``); clear error if missing."""
    import svlm.zoo

    root = Path(svlm.zoo.__file__).resolve().parent
    path = root / name
    if not (path / "config.json").is_file():
        shipped = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())
        raise ValueError(f"No model {name!r} in svlm.zoo ({root}); shipped models: {shipped or 'none'}.")
    return str(path)


def _is_path_like(name: str) -> bool:
    """A name that can only mean a local folder: absolute, starting with ``.`` or ``~``, holding a backslash,
    or with more than the one ``/`` of a hub id (``org/name``)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1


def check_local_path(name: str) -> None:
    """Fail at once on a local model path that does not exist or is a file (instead of a slow, failing hub
    lookup): hub ids (``org/name``) and existing folders pass."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return
    if os.path.exists(expanded) and ("/" in name or _is_path_like(name)):
        raise ValueError(f"{name!r} is a file; pass the model folder (with config.json) instead.")
    if _is_path_like(name):
        raise ValueError(
            f"Model folder {name!r} does not exist. Give an existing folder saved with save_pretrained, a "
            "Hugging Face hub id ('org/name'), zoo:<name> or tiny:<family>."
        )


def _parse_tiny(spec: str) -> tuple[str, dict[str, Any]]:
    """``"tiny:llava?num_layers=4&hidden_size=64"`` -> ``("llava", {"num_layers": 4, "hidden_size": 64})``."""
    family, _, query = spec[len(TINY_PREFIX) :].partition("?")
    kwargs: dict[str, Any] = {}
    for key, value in parse_qsl(query, strict_parsing=bool(query)):
        for cast in (int, float):
            try:
                kwargs[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            kwargs[key] = {"none": None, "true": True, "false": False}.get(value.lower(), value)
    return family, kwargs


def _prepare_processor(processor: Any) -> Any:
    """Left padding (batched generation appends after the prompt) and a pad token."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def load_vlm(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = "sdpa",
    processor_kwargs: dict[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> LoadedVLM:
    """Load a supported VLM, its processor and its family name, in eval mode on ``device``.

    Args:
        name_or_path: Hugging Face hub id (``llava-hf/llava-1.5-7b-hf``), a local folder saved with
            ``save_pretrained``, or ``tiny:<family>[?key=value&...]`` for a tiny random offline model from
            :func:`svlm.testing.tiny_vlm` (keys are its keyword arguments, e.g. ``tiny:llava?num_layers=4``),
            or ``zoo:<name>`` for a model shipped in ``svlm.zoo`` (``zoo:svlm-shapes-llava``).
        dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``bfloat16``, ``float16`` or ``float32``.
        device: ``auto``/None (CUDA when available) or a torch device string.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        processor_kwargs: passed to ``AutoProcessor.from_pretrained`` only (e.g. Qwen's ``max_pixels``).
        from_pretrained_kwargs: passed to ``from_pretrained`` (e.g. ``revision``).
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if name_or_path.startswith(TINY_PREFIX):
        from svlm.testing import FAMILIES as TINY_FAMILIES
        from svlm.testing import tiny_vlm

        if processor_kwargs:
            log.warning("processor_kwargs %s are ignored for tiny models", processor_kwargs)
        family, kwargs = _parse_tiny(name_or_path)
        if family not in TINY_FAMILIES:
            raise ValueError(f"Unknown tiny model family {family!r}. Valid: {', '.join(TINY_FAMILIES)}.")
        kwargs.setdefault("dtype", torch_dtype)
        if attn_implementation is not None:
            kwargs.setdefault("attn_implementation", attn_implementation)
        try:
            tiny = tiny_vlm(family, **kwargs)
        except TypeError as err:
            raise ValueError(f"Bad options in {name_or_path!r}: {err}") from err
        model = tiny.model.to(device).eval()
        return LoadedVLM(model, _prepare_processor(tiny.processor), tiny.family)

    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if name_or_path.startswith(ZOO_PREFIX):
        name_or_path = zoo_path(name_or_path[len(ZOO_PREFIX) :])

    check_local_path(name_or_path)
    name_or_path = os.path.expanduser(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path, **from_pretrained_kwargs)
    family = family_of(config)
    kwargs = dict(from_pretrained_kwargs)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device.type != "cpu" and importlib.util.find_spec("accelerate") is not None:
        kwargs.setdefault("device_map", str(device))  # load straight onto the GPU
    model = AutoModelForImageTextToText.from_pretrained(
        name_or_path, config=config, dtype=torch_dtype, **kwargs
    )
    model = model.to(device)
    processor = AutoProcessor.from_pretrained(
        name_or_path, **{**from_pretrained_kwargs, **(processor_kwargs or {})}
    )
    if not hasattr(processor, "image_processor"):
        raise ValueError(
            f"{name_or_path!r} has no multimodal processor (AutoProcessor gave {type(processor).__name__}); "
            "save the processor with the model (processor.save_pretrained(folder))."
        )
    return LoadedVLM(model.eval(), _prepare_processor(processor), family)

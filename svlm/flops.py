"""Analytic FLOPs and KV-cache accounting for the supported vision-language models.

Why analytic: token pruning changes *how many* tokens each decoder layer sees, so the honest cost of a
strategy is a function of the per-layer token counts and the model shapes. Measuring it with a profiler
on every call would be slow and would depend on the attention kernel; this module computes it from the
config and is cross-checked in ``tests/test_flops.py`` against ``torch.utils.flop_counter.FlopCounterMode``
on tiny models of every family (eager attention).

Conventions (the same as ``FlopCounterMode``):

* one multiply-add = **2 FLOPs**; only matrix products and convolutions are counted. Bias adds, norms,
  activations, softmax, RoPE and residual adds are O(n*d) and left out (they are <1% of a real model).
* attention scores ``QK^T`` and the value product ``AV`` cost ``2 * n_q * n_k * head_dim`` per head each.
  By default the **full** ``n_q x n_k`` rectangle is counted, because eager and SDPA kernels compute it
  (the causal mask is applied after the product); ``causal=True`` counts only the visible (causal)
  query-key pairs, for papers that report it that way.
* projections are GQA-aware: ``k_proj``/``v_proj`` produce ``num_key_value_heads * head_dim`` columns.
* the MLP has 3 matrices (gate, up, down) for SwiGLU-style models (Llama/Vicuna, Qwen2, Mistral) and 2
  for classic ones (CLIP, Qwen2-VL's vision tower).

Relation to the formula used in the token-pruning literature (FastV, SparseVLM, PyramidDrop): per decoder
layer with ``n`` tokens, hidden size ``d`` and MLP width ``m`` they report ``4nd^2 + 2n^2d + 2ndm``. That
formula counts one multiply-add as one FLOP, assumes multi-head attention (no GQA) and a 2-matrix MLP.
In our units the same layer costs ``8nd^2 + 4n^2d + 4ndm`` (exactly 2x). A SwiGLU MLP (LLaVA's Vicuna,
Qwen2) has a third matrix: ``3ndm`` multiply-adds = ``6ndm`` FLOPs (the "6ndm" quoted for SwiGLU is in
FLOPs), and GQA shrinks k/v projections to ``num_key_value_heads * head_dim`` columns; the field formula
ignores both, so its absolute numbers are off for these models while its *ratios* stay close (attention
and MLP both scale with ``n``). Use :func:`field_decoder_flops` only to reproduce published reductions;
everything else here uses the FlopCounterMode convention.

Not modelled: sliding-window decoder layers (off in the supported checkpoints; counted as full attention)
and padding (callers pass the valid tokens of each sample; a padded batch computes more).

All functions count **one sample**; sum the results over a batch (``FlopsBreakdown`` supports ``+``).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = [
    "FAMILIES",
    "FlopsBreakdown",
    "decode_flops",
    "decoder_layer_flops",
    "field_decoder_flops",
    "kv_cache_bytes",
    "llava_next_num_crops",
    "mlp_num_matrices",
    "prefill_flops",
    "rows_scoring_flops",
    "vision_flops",
    "vision_kwargs",
]

FAMILIES: tuple[str, ...] = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")

# Decoder model types whose MLP is gated (gate_proj, up_proj, down_proj) whatever their activation.
_GATED_MLP_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_vl_text",
        "qwen2_5_vl_text",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "internlm2",
        "vicuna",
    }
)
_GATED_ACTIVATIONS = frozenset({"silu", "swish", "swiglu"})

LmHead = Literal["last", "all"] | bool


@dataclass
class FlopsBreakdown:
    """FLOPs of one sample, split by component (all in FLOPs, 1 multiply-add = 2 FLOPs).

    ``decoder`` holds one entry per decoder layer so callers can see where pruning saves compute.
    ``scoring`` is the overhead a pruning strategy adds (e.g. rows-only attention scores), counted
    separately so that a method cannot hide its own cost.
    """

    vision: float = 0.0
    projector: float = 0.0
    decoder: list[float] = field(default_factory=list)
    lm_head: float = 0.0
    scoring: float = 0.0

    @property
    def decoder_total(self) -> float:
        return float(sum(self.decoder))

    @property
    def total(self) -> float:
        return self.vision + self.projector + self.decoder_total + self.lm_head + self.scoring

    def __add__(self, other: FlopsBreakdown) -> FlopsBreakdown:
        """Sum two samples (or prefill + decode); per-layer lists are added element-wise."""
        if not isinstance(other, FlopsBreakdown):
            return NotImplemented
        if self.decoder and other.decoder and len(self.decoder) != len(other.decoder):
            raise ValueError(
                f"cannot add breakdowns with {len(self.decoder)} and {len(other.decoder)} decoder layers"
            )
        if not self.decoder or not other.decoder:
            decoder = list(self.decoder or other.decoder)
        else:
            decoder = [a + b for a, b in zip(self.decoder, other.decoder, strict=True)]
        return FlopsBreakdown(
            vision=self.vision + other.vision,
            projector=self.projector + other.projector,
            decoder=decoder,
            lm_head=self.lm_head + other.lm_head,
            scoring=self.scoring + other.scoring,
        )

    def __radd__(self, other: Any) -> FlopsBreakdown:
        # Lets ``sum(breakdowns)`` work (sum starts from 0).
        if other == 0:
            return self
        return self.__add__(other)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (floats only)."""
        return {
            "vision": float(self.vision),
            "projector": float(self.projector),
            "decoder": [float(x) for x in self.decoder],
            "decoder_total": self.decoder_total,
            "lm_head": float(self.lm_head),
            "scoring": float(self.scoring),
            "total": self.total,
        }


# ----------------------------------------------------------------------------------------------- helpers
def _text_config(config: Any) -> Any:
    """The language-model config of a VLM config, or the config itself for a text-only config."""
    text = getattr(config, "text_config", None)
    return text if text is not None else config


def _infer_family(config: Any, family: str | None) -> str:
    model_type = getattr(config, "model_type", None)
    if family is None:
        if model_type in FAMILIES:
            return model_type
        raise ValueError(
            f"cannot infer the model family from config.model_type={model_type!r}; "
            f"pass family= one of {list(FAMILIES)}"
        )
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {list(FAMILIES)}")
    if model_type in FAMILIES and model_type != family:
        raise ValueError(f"family={family!r} does not match config.model_type={model_type!r}")
    return family


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0 or int(value) != value:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _head_dim(cfg: Any, hidden: int, heads: int) -> int:
    head_dim = getattr(cfg, "head_dim", None)
    return int(head_dim) if head_dim else hidden // heads


def mlp_num_matrices(text_config: Any) -> int:
    """Number of weight matrices in a decoder MLP: 3 for gated (SwiGLU/GeGLU) MLPs, 2 otherwise.

    Detected from ``model_type`` (Llama/Qwen2/Mistral/Gemma families are gated whatever the activation)
    and, for unknown models, from ``hidden_act`` (SiLU/Swish MLPs are SwiGLU in practice).
    """
    text_config = _text_config(text_config)
    if getattr(text_config, "model_type", None) in _GATED_MLP_MODEL_TYPES:
        return 3
    act = str(getattr(text_config, "hidden_act", "") or getattr(text_config, "hidden_activation", ""))
    return 3 if act.lower() in _GATED_ACTIVATIONS else 2


def _attention_pairs(n_queries: int, n_keys: int, causal: bool) -> float:
    """Query-key pairs whose scores are computed.

    Causal: the queries are the last ``n_queries`` positions of ``n_keys``, query ``i`` sees
    ``n_keys - n_queries + i + 1`` keys.
    """
    if not causal:
        return float(n_queries) * n_keys
    if n_queries > n_keys:
        raise ValueError(f"causal attention needs n_queries <= n_keys, got {n_queries} > {n_keys}")
    return float(n_queries) * (n_keys - n_queries) + n_queries * (n_queries + 1) / 2


def _layer_coefficients(text_config: Any) -> tuple[float, float]:
    """(FLOPs per new token: projections + MLP, FLOPs per attended query-key pair) of one decoder layer.

    A layer's cost is linear in these two counts, so they are computed once per config and call.
    """
    cfg = _text_config(text_config)
    d = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = _head_dim(cfg, d, heads)
    m = int(cfg.intermediate_size)
    q_o = 2 * (2 * d * heads * head_dim)  # q_proj and o_proj
    k_v = 2 * (2 * d * kv_heads * head_dim)  # k_proj and v_proj (GQA: fewer heads)
    mlp = mlp_num_matrices(cfg) * 2 * d * m
    per_pair = 2 * (2 * head_dim * heads)  # QK^T and AV, over all query heads (kv repeated)
    return float(q_o + k_v + mlp), float(per_pair)


# ------------------------------------------------------------------------------------------- decoder
def decoder_layer_flops(n_queries: int, n_keys: int, text_config: Any, *, causal: bool = False) -> float:
    """FLOPs of one decoder layer where ``n_queries`` new tokens attend to ``n_keys`` keys.

    Counts q/k/v/o projections (GQA-aware, biases ignored), ``QK^T`` and ``AV`` (full rectangle unless
    ``causal=True``) and the MLP (3 matrices when gated, see :func:`mlp_num_matrices`). Prefill has
    ``n_keys == n_queries``; a decode step has ``n_queries == 1`` and ``n_keys`` = cache length + 1.
    The k/v projections only run on the new tokens; cached keys cost nothing here.
    Accepts a VLM config too (its ``text_config`` is used).
    """
    n_queries = _check_count("n_queries", n_queries)
    n_keys = _check_count("n_keys", n_keys)
    per_token, per_pair = _layer_coefficients(text_config)
    return per_token * n_queries + per_pair * _attention_pairs(n_queries, n_keys, causal)


def field_decoder_flops(tokens_per_layer: Sequence[int], text_config: Any) -> float:
    """The literature's ``sum_l 4 n_l d^2 + 2 n_l^2 d + 2 n_l d m`` (multiply-adds, MHA, 2-matrix MLP).

    Only for comparing with FLOPs reductions published by FastV/SparseVLM-style papers; it ignores GQA
    and the SwiGLU third matrix and uses half our units. Prefer :func:`prefill_flops`.
    """
    cfg = _text_config(text_config)
    d, m = int(cfg.hidden_size), int(cfg.intermediate_size)
    total = 0.0
    for i, n in enumerate(tokens_per_layer):
        n = _check_count(f"tokens_per_layer[{i}]", n)
        total += 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
    return float(total)


def _lm_head_flops(text_config: Any, n_tokens: int) -> float:
    cfg = _text_config(text_config)
    return 2.0 * n_tokens * int(cfg.hidden_size) * int(cfg.vocab_size)


def _check_layers(name: str, values: Sequence[int], text_config: Any) -> list[int]:
    n_layers = int(_text_config(text_config).num_hidden_layers)
    values = list(values)
    if len(values) != n_layers:
        raise ValueError(f"{name} has {len(values)} entries but the model has {n_layers} decoder layers")
    return [_check_count(f"{name}[{i}]", v) for i, v in enumerate(values)]


# -------------------------------------------------------------------------------------------- vision
def _vit_layer_flops(
    n_tokens: int, width: int, mlp_width: int, mlp_matrices: int, attn_pairs: float
) -> float:
    """One ViT block: fused/unfused q,k,v + output projection, QK^T and AV, and the MLP."""
    proj = 4 * 2.0 * n_tokens * width * width
    attn = 2 * 2.0 * width * attn_pairs  # sum over heads of head_dim == width
    mlp = mlp_matrices * 2.0 * n_tokens * width * mlp_width
    return proj + attn + mlp


def _num_feature_layers(config: Any) -> int:
    layer = getattr(config, "vision_feature_layer", -2)
    return 1 if isinstance(layer, int) else len(layer)


def _clip_flops(config: Any, num_crops: int) -> tuple[float, float]:
    """(vision tower, projector) FLOPs for ``num_crops`` square crops through a CLIP ViT + LLaVA projector.

    The whole tower runs (HF computes every layer even though LLaVA reads layer -2), including the CLS
    token. The projector sees every patch feature (+CLS with ``vision_feature_select_strategy='full'``).
    """
    vc = config.vision_config
    d = int(vc.hidden_size)
    patches = (int(vc.image_size) // int(vc.patch_size)) ** 2
    n = patches + 1  # CLS
    conv = 2.0 * patches * int(getattr(vc, "num_channels", 3)) * int(vc.patch_size) ** 2 * d
    layer = _vit_layer_flops(n, d, int(vc.intermediate_size), 2, float(n) * n)
    vision = num_crops * (conv + int(vc.num_hidden_layers) * layer)

    n_feat = patches + (1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0)
    dt = int(_text_config(config).hidden_size)
    proj = 2.0 * n_feat * d * _num_feature_layers(config) * dt + 2.0 * n_feat * dt * dt
    return vision, num_crops * proj


def _grid_list(image_grid_thw: Any) -> list[tuple[int, int, int]]:
    if isinstance(image_grid_thw, torch.Tensor):
        image_grid_thw = image_grid_thw.tolist()
    grids = []
    for row in image_grid_thw:
        if len(row) != 3:
            raise ValueError(f"image_grid_thw rows must be (t, h, w), got {row!r}")
        grids.append(tuple(_check_count("image_grid_thw entry", v) for v in row))
    return grids


def _qwen_window_sq_sum(t: int, h: int, w: int, merge: int, window_units: int) -> float:
    """Sum over Qwen2.5-VL attention windows of (window length)^2 for one (t, h, w) grid.

    Mirrors ``transformers.vision_utils.get_vision_window_index``: windows tile the merged grid
    (``h/merge x w/merge``) in squares of ``window_units`` merged tokens per side, the last row/column
    of windows being partial; each merged token is ``merge^2`` patches.
    """

    def sides(length: int) -> list[int]:
        full, rest = divmod(length, window_units)
        return [window_units] * full + ([rest] if rest else [])

    sum_h = sum(s * s for s in sides(h // merge))
    sum_w = sum(s * s for s in sides(w // merge))
    return float(t) * merge**4 * sum_h * sum_w


def _qwen_flops(config: Any, family: str, image_grid_thw: Any) -> tuple[float, float]:
    """(vision blocks + patch embed, patch merger) FLOPs for Qwen2-VL / Qwen2.5-VL.

    Full attention in the vision tower is per frame (``h*w`` patches). Qwen2.5-VL uses windowed
    attention in every block not listed in ``fullatt_block_indexes``; eager attention computes each
    window separately, so only the window squares are counted.
    """
    vc = config.vision_config
    grids = _grid_list(image_grid_thw)
    n = sum(t * h * w for t, h, w in grids)
    merge = int(vc.spatial_merge_size)
    patch = int(vc.patch_size)
    in_ch = int(getattr(vc, "in_channels", None) or getattr(vc, "in_chans", 3))
    if family == "qwen2_vl":
        d = int(vc.embed_dim)
        mlp_width, mlp_mats = int(d * vc.mlp_ratio), 2
        out_dim = int(vc.hidden_size)
    else:
        d = int(vc.hidden_size)
        mlp_width, mlp_mats = int(vc.intermediate_size), 3
        out_dim = int(vc.out_hidden_size)

    conv = 2.0 * n * in_ch * int(vc.temporal_patch_size) * patch * patch * d
    full_pairs = float(sum(t * (h * w) ** 2 for t, h, w in grids))
    if family == "qwen2_5_vl":
        window_units = int(vc.window_size) // merge // patch
        if window_units < 1:
            raise ValueError(
                f"vision_config.window_size={vc.window_size} is smaller than spatial_merge_size*patch_size"
            )
        window_pairs = sum(_qwen_window_sq_sum(t, h, w, merge, window_units) for t, h, w in grids)
        full_blocks = set(int(i) for i in vc.fullatt_block_indexes)
    else:
        window_pairs = full_pairs
        full_blocks = set(range(int(vc.depth)))
    vision = conv
    for b in range(int(vc.depth)):
        pairs = full_pairs if b in full_blocks else window_pairs
        vision += _vit_layer_flops(n, d, mlp_width, mlp_mats, pairs)

    merged = n / merge**2
    hid = d * merge**2
    merger = 2.0 * merged * hid * hid + 2.0 * merged * hid * out_dim
    return vision, merger


def llava_next_num_crops(config: Any, image_size: Sequence[int]) -> int:
    """Crops the LLaVA-NeXT vision tower runs for one image of ``image_size`` = (height, width).

    Uses transformers' own any-res logic (base image + grid crops), so it matches the processor.
    """
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return int(
        image_size_to_num_patches(
            image_size=tuple(int(s) for s in image_size),
            grid_pinpoints=config.image_grid_pinpoints,
            patch_size=config.vision_config.image_size,
        )
    )


def vision_flops(
    config: Any,
    *,
    family: str | None = None,
    num_vision_patches: int | None = None,
    image_sizes: Sequence[Sequence[int]] | None = None,
    image_grid_thw: Any = None,
) -> tuple[float, float]:
    """(vision tower, projector) FLOPs for the images of one sample. See :func:`prefill_flops`."""
    family = _infer_family(config, family)
    if family in ("llava", "llava_next"):
        if num_vision_patches is None:
            if family == "llava":
                num_vision_patches = 1
            elif image_sizes is not None:
                num_vision_patches = sum(llava_next_num_crops(config, s) for s in image_sizes)
            else:
                raise ValueError(
                    "llava_next needs num_vision_patches (crops through the vision tower) or image_sizes; "
                    "flops.vision_kwargs(config, inputs, sample) derives them, or pass include_vision=False"
                )
        return _clip_flops(config, _check_count("num_vision_patches", num_vision_patches))
    if image_grid_thw is None:
        raise ValueError(
            f"{family} needs image_grid_thw (one (t, h, w) row per image of the sample); "
            "flops.vision_kwargs(config, inputs, sample) derives it, or pass include_vision=False"
        )
    return _qwen_flops(config, family, image_grid_thw)


def _token_counts(input_ids: Any, sample: int, token_id: int | None) -> int:
    if token_id is None or input_ids is None:
        return 0
    return int((torch.as_tensor(input_ids)[sample] == token_id).sum())


def _grids_of_sample(
    grids: Any, input_ids: Any, sample: int, token_id: int | None, merge: int, kind: str
) -> list[tuple[int, int, int]]:
    """Rows of a batch-level ``*_grid_thw`` that belong to ``sample``, matched by placeholder counts."""
    if grids is None:
        return []
    rows = _grid_list(grids)
    counts = [_token_counts(input_ids, b, token_id) for b in range(torch.as_tensor(input_ids).shape[0])]
    start = 0
    for b, want in enumerate(counts):
        taken, got = start, 0
        while got < want and taken < len(rows):
            t, h, w = rows[taken]
            got += t * h * w // merge**2
            taken += 1
        if got != want:
            raise ValueError(
                f"cannot match {kind}_grid_thw rows to the {kind} placeholders of sample {b} "
                f"({want} placeholders, grids give {got})"
            )
        if b == sample:
            return rows[start:taken]
        start = taken
    raise ValueError(f"sample {sample} is out of range for a batch of {len(counts)}")


def vision_kwargs(
    config: Any, inputs: Mapping[str, Any], sample: int = 0, *, family: str | None = None
) -> dict:
    """The image-geometry arguments of :func:`prefill_flops` for one sample of a processor batch.

    ``inputs`` is what the processor returned (``input_ids`` plus ``pixel_values`` / ``image_sizes`` /
    ``image_grid_thw`` / ``video_grid_thw``), before any pruning. Images are assigned to samples by
    counting each sample's placeholder tokens, so samples with several (or no) images work.
    """
    family = _infer_family(config, family)
    input_ids = inputs.get("input_ids")
    if input_ids is None:
        raise ValueError("vision_kwargs needs inputs['input_ids'] to assign images to samples")
    batch = torch.as_tensor(input_ids).shape[0]
    if not 0 <= sample < batch:
        raise ValueError(f"sample {sample} is out of range for a batch of {batch}")
    image_token = getattr(config, "image_token_id", None)
    if family == "llava":
        vc = config.vision_config
        per_image = (int(vc.image_size) // int(vc.patch_size)) ** 2
        per_image += 1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0
        return {"num_vision_patches": _token_counts(input_ids, sample, image_token) // per_image}
    if family == "llava_next":
        sizes = inputs.get("image_sizes")
        has_image = [_token_counts(input_ids, b, image_token) > 0 for b in range(batch)]
        if sizes is None or not has_image[sample]:
            return {"num_vision_patches": 0}
        sizes = torch.as_tensor(sizes).tolist()
        if len(sizes) != sum(has_image):
            raise ValueError(
                f"image_sizes has {len(sizes)} rows for {sum(has_image)} samples with images; for several "
                "images per sample pass num_vision_patches to prefill_flops yourself"
            )
        return {"image_sizes": [sizes[sum(has_image[:sample])]]}
    merge = int(config.vision_config.spatial_merge_size)
    grids = _grids_of_sample(inputs.get("image_grid_thw"), input_ids, sample, image_token, merge, "image")
    video_token = getattr(config, "video_token_id", None)
    grids += _grids_of_sample(inputs.get("video_grid_thw"), input_ids, sample, video_token, merge, "video")
    return {"image_grid_thw": grids}


# ------------------------------------------------------------------------------------------- prefill
def prefill_flops(
    config: Any,
    tokens_per_layer: Sequence[int],
    *,
    family: str | None = None,
    include_vision: bool = True,
    include_lm_head: LmHead = "last",
    scoring_flops: float = 0.0,
    num_vision_patches: int | None = None,
    image_sizes: Sequence[Sequence[int]] | None = None,
    image_grid_thw: Any = None,
    causal: bool = False,
) -> FlopsBreakdown:
    """Prefill FLOPs of one sample.

    Args:
        config: a ``LlavaConfig``, ``LlavaNextConfig``, ``Qwen2VLConfig`` or ``Qwen2_5_VLConfig``.
        tokens_per_layer: tokens entering each decoder layer (its queries and keys; length = layers).
        family: one of :data:`FAMILIES`; inferred from ``config.model_type`` when omitted.
        include_vision: add the vision tower and projector (they run whatever the LLM-side pruning).
        include_lm_head: ``"last"`` (one position, as in ``generate``), ``"all"`` / ``True`` (every
            position left after the last layer, as in a plain forward) or ``False``.
        scoring_flops: a strategy's own overhead (see :func:`rows_scoring_flops`), reported separately.
        num_vision_patches: images through the vision tower for ``llava`` (default 1) or crops for
            ``llava_next`` (transformers calls them ``image_num_patches``: base image + grid crops).
        image_sizes: ``llava_next`` alternative to ``num_vision_patches``: (height, width) per image.
        image_grid_thw: ``qwen2_vl``/``qwen2_5_vl``: one (t, h, w) patch grid per image of the sample.
        causal: count only visible query-key pairs (default: the full rectangle, like FlopCounterMode).
    """
    text = _text_config(config)
    tokens = _check_layers("tokens_per_layer", tokens_per_layer, text)
    per_token, per_pair = _layer_coefficients(text)
    decoder = [per_token * n + per_pair * _attention_pairs(n, n, causal) for n in tokens]

    if include_lm_head is True or include_lm_head == "all":
        lm_head = _lm_head_flops(text, tokens[-1] if tokens else 0)
    elif include_lm_head == "last":
        lm_head = _lm_head_flops(text, 1)
    elif include_lm_head is False:
        lm_head = 0.0
    else:
        raise ValueError(f"include_lm_head must be 'last', 'all', True or False, got {include_lm_head!r}")

    vision = projector = 0.0
    if include_vision:
        vision, projector = vision_flops(
            config,
            family=family,
            num_vision_patches=num_vision_patches,
            image_sizes=image_sizes,
            image_grid_thw=image_grid_thw,
        )
    elif family is not None:
        _infer_family(config, family)  # still validate the name
    if scoring_flops < 0:
        raise ValueError(f"scoring_flops must be >= 0, got {scoring_flops!r}")
    return FlopsBreakdown(
        vision=vision, projector=projector, decoder=decoder, lm_head=lm_head, scoring=float(scoring_flops)
    )


# -------------------------------------------------------------------------------------------- decode
def decode_flops(
    config: Any,
    kv_lengths_per_layer: Sequence[int],
    n_new_tokens: int,
    *,
    include_lm_head: bool = True,
    scoring_flops: float = 0.0,
) -> FlopsBreakdown:
    """FLOPs of ``n_new_tokens`` decode steps of one sample.

    ``kv_lengths_per_layer[l]`` is the cache length of layer ``l`` before decoding starts (the tokens that
    layer saw in prefill, so pruned layers are cheaper). Step ``i`` (0-based) feeds one token that attends
    to ``kv_lengths_per_layer[l] + i + 1`` keys (the cache plus itself). Note that ``generate`` with
    ``max_new_tokens=N`` runs ``N - 1`` decode steps: the first new token comes from the prefill logits.
    """
    text = _text_config(config)
    kv = _check_layers("kv_lengths_per_layer", kv_lengths_per_layer, text)
    steps = _check_count("n_new_tokens", n_new_tokens)
    per_token, per_pair = _layer_coefficients(text)
    decoder = [steps * per_token + per_pair * (steps * k + steps * (steps + 1) / 2) for k in kv]
    lm_head = _lm_head_flops(text, steps) if include_lm_head else 0.0
    return FlopsBreakdown(decoder=decoder, lm_head=lm_head, scoring=float(scoring_flops))


# ------------------------------------------------------------------------------------------- scoring
def rows_scoring_flops(n_rows: float, n_keys: float, num_heads: int, head_dim: int) -> float:
    """Overhead of scoring ``n_rows`` query rows against ``n_keys`` keys (rows-only attention).

    ``2 * rows * keys * head_dim`` per head for ``q k^T`` plus ~3 FLOPs per score for the softmax
    (max-subtract, exp, normalise); head averaging and top-k are O(rows * keys) and ignored.
    Row and key counts may be fractional (e.g. a batch total divided by the batch size).
    """
    values = {"n_rows": n_rows, "n_keys": n_keys, "num_heads": num_heads, "head_dim": head_dim}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    r, k, h, hd = (float(v) for v in values.values())
    return 2.0 * r * k * hd * h + 3.0 * r * k * h


# ---------------------------------------------------------------------------------------------- memory
def _dtype_bytes(dtype: torch.dtype | str | int) -> int:
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        if dtype <= 0:
            raise ValueError(f"dtype as a byte count must be positive, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
        resolved = getattr(torch, aliases.get(name, name), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use a torch.dtype, e.g. 'float16' or 'bfloat16'")
        dtype = resolved
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, a dtype name or a byte count, got {dtype!r}")
    return dtype.itemsize


def kv_cache_bytes(
    config: Any, tokens_per_layer: Sequence[int], dtype: torch.dtype | str | int = torch.float16
) -> int:
    """Bytes of the KV cache of one sample: ``sum_l 2 * num_kv_heads * head_dim * tokens_l * bytes``.

    ``tokens_per_layer[l]`` is what layer ``l``'s cache holds (with pruning, the tokens it saw).
    """
    text = _text_config(config)
    tokens = _check_layers("tokens_per_layer", tokens_per_layer, text)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = _head_dim(text, int(text.hidden_size), heads)
    return int(sum(2 * kv_heads * head_dim * n for n in tokens) * _dtype_bytes(dtype))

"""Images with the visual tokens each strategy kept, per pruning layer: a quick check of what is pruned."""

from __future__ import annotations

import hashlib
import logging
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from svlm.results import atomic_open

log = logging.getLogger(__name__)

__all__ = ["KeptTokenOverlay", "caption", "kept_grid", "overlay_figure", "pruning_layers"]


def pruning_layers(visual_tokens: Sequence[int], max_layers: int | None = None) -> list[int]:
    """Layer 0 plus every layer whose visual-token count differs from the layer before it."""
    layers = [0] + [i for i in range(1, len(visual_tokens)) if visual_tokens[i] != visual_tokens[i - 1]]
    return layers[:max_layers] if max_layers else layers


def kept_grid(
    visual_positions: torch.Tensor, kept_positions: torch.Tensor, grid: tuple[int, int], offset: int = 0
) -> np.ndarray:
    """Boolean ``[rows, cols]`` map of which visual tokens of one image survive.

    Args:
        visual_positions: sequence positions of all visual tokens of the sample (sorted, as in the input).
        kept_positions: sequence positions of the tokens entering the layer (any order, text included).
        grid: ``(rows, cols)`` of the image's tokens.
        offset: index of the image's first token among ``visual_positions`` (for several images per sample).
    """
    rows, cols = grid
    own = visual_positions[offset : offset + rows * cols].cpu()
    if own.numel() != rows * cols:
        raise ValueError(
            f"grid {rows}x{cols} needs {rows * cols} visual tokens, the sample has {own.numel()}"
        )
    kept = torch.isin(own, kept_positions.cpu().long())
    return kept.reshape(rows, cols).numpy()


def caption(question: Any, answer: Any, reference: Any, width: int = 100, max_lines: int = 4) -> str:
    """The question, the point's answer and the reference answer(s), wrapped (and cut) for a figure."""

    def text(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            value = " / ".join(dict.fromkeys(str(v) for v in value))
        return " ".join(str(value).split())

    lines = []
    if question is not None:
        lines += textwrap.wrap(f"Q: {text(question)}", width, max_lines=max_lines - 1, placeholder=" ...")
    parts = [
        f"answer: {text(answer)!r}" if answer is not None else "",
        f"reference: {text(reference)!r}" if reference is not None else "",
    ]
    if any(parts):
        lines += textwrap.wrap("   ".join(p for p in parts if p), width, max_lines=1, placeholder=" ...")
    return "\n".join(lines)


def overlay_figure(
    rgb: np.ndarray,
    maps: Sequence[tuple[int, np.ndarray]],
    alpha: float,
    title: str,
    text: str = "",
) -> Any:
    """A matplotlib figure: one panel per ``(layer, kept map)``, dropped patches veiled in white, the title,
    the caption ``text`` (question and answers) above the panels and a legend of kept / dropped patches."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    text_lines = text.count("\n") + 1 if text else 0
    fig, axes = plt.subplots(
        1,
        len(maps),
        figsize=(max(3 * len(maps), 6), 3.6 + 0.2 * text_lines),
        squeeze=False,
        layout="constrained",
    )
    for ax, (layer, kept) in zip(axes[0], maps, strict=True):
        rows, cols = kept.shape
        shade = np.ones((rows, cols, 4), dtype=float)  # dropped patches fade to white
        shade[..., 3] = np.where(kept, 0.0, alpha)
        ax.imshow(rgb, extent=(0, cols, rows, 0))
        ax.imshow(shade, extent=(0, cols, rows, 0), interpolation="nearest")
        ax.set_title(f"entering layer {layer}: {int(kept.sum())}/{rows * cols} kept", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}\n{text}" if text else title, fontsize=9, ha="center")
    handles = [
        Patch(facecolor="none", edgecolor="black", label="kept patch (as is)"),
        Patch(facecolor="white", edgecolor="grey", alpha=max(alpha, 0.3), label="dropped patch (faded)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


def folder_name(label: str) -> str:
    """A folder name for a point label that stays inside ``overlays/`` and never collides: letters, digits,
    ``_.-`` kept, no leading dot (``.``, ``..``, hidden names); a label that had to change gets a short digest
    of itself appended, so ``a/b`` and ``a_b`` stay apart."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_").lstrip(".")
    if safe and safe == label:
        return safe
    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    return f"{safe or 'point'}-{digest}"


def _display_image(image: Any, center_crop: bool) -> np.ndarray:
    """RGB array of the image as the vision tower sees it (square centre crop for CLIP-style processors)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    if center_crop:
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    return np.asarray(image)


def _item(batch: Any, key: str, index: int) -> Any:
    values = batch.get(key) if isinstance(batch, Mapping) else None
    return values[index] if values is not None and index < len(values) else None


class KeptTokenOverlay(Callback):
    """Save, for the first ``num_samples`` test samples, the image with the kept visual tokens highlighted.

    One PNG per (strategy point, sample) with one panel per pruning layer (layer 0 and each layer where the
    number of visual tokens changes): kept patches are shown as they are, dropped ones fade to white; the
    question, the point's answer and the reference answer are printed above the panels, a legend below. Token
    geometry comes from the family adapter (``visual_grids``); families whose tokens are not one plain grid
    per image (LLaVA-NeXT anyres crops) are skipped with a logged reason. Points that prune nothing are
    skipped.

    Args:
        num_samples: How many test samples (from the start of the test set) to draw.
        dirpath: Output folder. Defaults to ``<trainer.default_root_dir>/overlays``.
        labels: Only draw these strategy points (by label); all pruning points when unset.
        max_layers: At most this many panels per figure.
        alpha: Opacity of the white veil over dropped patches (0 = invisible, 1 = white).
    """

    def __init__(
        self,
        num_samples: int = 4,
        dirpath: str | None = None,
        labels: list[str] | None = None,
        max_layers: int = 6,
        alpha: float = 0.75,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = num_samples
        self.dirpath = dirpath
        self.labels = labels
        self.max_layers = max_layers
        self.alpha = alpha
        self.saved: list[Path] = []
        self.skipped: str | None = None
        self._seen = 0

    def _dir(self, trainer: Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath is not None else Path(trainer.default_root_dir) / "overlays"

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._seen = 0
        self.saved = []
        self.skipped = None

    def _skip(self, reason: str) -> None:
        if self.skipped is None:
            log.warning("KeptTokenOverlay: no overlays drawn: %s", reason)
        self.skipped = reason
        self._seen = self.num_samples

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._seen >= self.num_samples or not trainer.is_global_zero:
            return
        if not isinstance(outputs, Mapping) or "reports" not in outputs or "inputs" not in outputs:
            self._skip("the module's test_step does not return 'reports' and 'inputs'")
            return
        hf_model = getattr(pl_module, "vlm", None)
        try:
            from svlm.adapters import adapter_for

            adapter = adapter_for(hf_model)
        except (ImportError, ValueError) as err:
            self._skip(f"no adapter for the model ({err})")
            return
        inputs = outputs["inputs"]
        images = batch["images"]
        processor = getattr(pl_module, "processor", None)
        center_crop = bool(getattr(getattr(processor, "image_processor", None), "do_center_crop", False))
        visual = adapter.visual_mask(inputs["input_ids"])
        for sample in range(len(images)):
            if self._seen >= self.num_samples:
                break
            try:
                grids = adapter.visual_grids(inputs, sample)
            except (ValueError, NotImplementedError, KeyError) as err:
                self._skip(f"{adapter.family}: visual-token grid unknown ({err})")
                return
            positions = visual[sample].nonzero().flatten()
            if not grids or sum(r * c for r, c in grids) != positions.numel():
                self._skip(
                    f"{adapter.family}: visual tokens are not plain grids "
                    f"({positions.numel()} tokens vs grids {grids})"
                )
                return
            image = images[sample][0] if isinstance(images[sample], (list, tuple)) else images[sample]
            question = _item(batch, "questions", sample)
            reference = _item(batch, "answers", sample)
            for label, report in outputs["reports"].items():
                if self.labels is not None and label not in self.labels:
                    continue
                answers = (outputs.get("answers") or {}).get(label)
                answer = answers[sample] if answers is not None and sample < len(answers) else None
                text = caption(question, answer, reference, width=40 * min(self.max_layers, 4))
                path = self._dir(trainer) / folder_name(label) / f"sample_{self._seen:03d}.png"
                if self._draw(report, sample, positions, grids[0], image, center_crop, label, path, text):
                    self.saved.append(path)
            self._seen += 1

    def _draw(
        self,
        report: Any,
        sample: int,
        positions: torch.Tensor,
        grid: tuple[int, int],
        image: Any,
        center_crop: bool,
        label: str,
        path: Path,
        text: str = "",
    ) -> bool:
        counts = list(report.visual_tokens[sample])
        maps = [
            (layer, kept_grid(positions, report.positions(layer, sample), grid))
            for layer in range(len(counts))
        ]
        if all(m.all() for _, m in maps):
            return False  # nothing pruned: nothing to show
        layers = pruning_layers(counts, self.max_layers)
        rgb = _display_image(image, center_crop)
        fig = overlay_figure(
            rgb, [maps[layer] for layer in layers], self.alpha, f"{label} - sample {self._seen}", text
        )
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return True

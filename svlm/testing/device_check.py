"""The GPU acceptance checks without pytest, for machines that lack it (``tests/gpu_check.sh`` falls back
to this): every registered strategy runs forward and ``generate`` on every family in float32 and bfloat16;
drop-only strategies match the masked-key oracle in float32; a batch equals each sample alone. One JSON row
per check in ``DIR/device_check.json``, rewritten after each (a run cut short keeps what it checked).

``python -m svlm.testing.device_check --out DIR [--device cuda] [--families llava,qwen2_vl]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import svlm
from svlm.testing import FAMILIES, random_image, tiny_vlm
from svlm.testing.oracle import oracle_logits

QUESTIONS = (
    "What colour is the square in the top left corner?",
    "How many blue blocks are there in the image? Answer with a single word.",
)
BUDGET = 0.6
EXACT_TOL = {"cpu": 1e-4, "cuda": 1e-3}


def _kept_error(out: torch.Tensor, ref: torch.Tensor, report: Any) -> float:
    last = report.info.num_layers - 1
    return max(
        float((out[b, report.positions(last, b)] - ref[b, report.positions(last, b)]).abs().max())
        for b in range(report.batch_size)
    )


@torch.no_grad()
def check(vlm: Any, name: str, exact: bool, tol: float) -> dict[str, Any]:
    images = [random_image(1), random_image(2, size=(392, 280))]
    inputs = vlm.inputs(images, list(QUESTIONS))
    kwargs = {} if name == "dense" else {"budget": BUDGET}
    sparse = svlm.sparsify(vlm.model, name, **kwargs)
    row: dict[str, Any] = {}
    logits = sparse(**inputs).logits
    report = sparse.last_report
    row["finite"] = bool(torch.isfinite(logits[:, -1]).all())
    row["budget"] = report.budget
    ids = sparse.generate(**inputs, max_new_tokens=3, do_sample=False)
    row["generated"] = int(ids.shape[1] - inputs["input_ids"].shape[1])
    ok = row["finite"] and row["generated"] == 3
    if exact and sparse.strategy.drops_only:
        row["oracle_error"] = _kept_error(logits, oracle_logits(vlm.model, inputs, report), report)
        ok &= row["oracle_error"] <= tol
    if exact and name in ("fastv", "random", "sparsevlm"):
        errors = []
        for b in range(len(images)):
            alone = vlm.inputs(images[b : b + 1], list(QUESTIONS[b : b + 1]))
            single = svlm.sparsify(vlm.model, name, **kwargs)(**alone).logits[0, -1]
            errors.append(float((single - logits[b, -1]).abs().max()))
        row["batch_vs_alone_error"] = max(errors)
        ok &= row["batch_vs_alone_error"] <= tol * 10  # logits of a whole prompt, not kept tokens only
    row["ok"] = bool(ok)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--strategies", default=None, help="comma-separated (default: all registered)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "device_check.json"
    rows: list[dict[str, Any]] = []
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for family in args.families.split(","):
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            vlm = tiny_vlm(family, dtype=dtype)
            vlm.model.to(args.device)
            names = args.strategies.split(",") if args.strategies else svlm.available_strategies()
            for name in names:
                row: dict[str, Any] = {"family": family, "dtype": dtype_name, "strategy": name}
                start = time.perf_counter()
                try:
                    row.update(
                        check(vlm, name, dtype == torch.float32, EXACT_TOL[torch.device(args.device).type])
                    )
                except Exception as error:  # noqa: BLE001 - record and go on
                    row.update(ok=False, error=f"{type(error).__name__}: {error}"[:500])
                    row["traceback"] = traceback.format_exc()[-1500:]
                row["seconds"] = round(time.perf_counter() - start, 3)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
                failed = [r for r in rows if not r["ok"]]
                path.write_text(
                    json.dumps({"rows": rows, "failed": len(failed), "checked": len(rows)}, indent=1)
                )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

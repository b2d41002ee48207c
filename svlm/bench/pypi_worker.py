"""The PyPI ``sparsevlm`` side of the comparison, run in a process of its own.

``python -m svlm.bench.pypi_worker`` is started by :class:`svlm.bench.pypi.PypiWorker`. sparsevlm 0.1.3
ships a top-level package named ``kernels`` that is not Hugging Face's ``kernels`` (which transformers
>= 5.25 imports on every model load): installed into the project's environment it breaks transformers
there, and imported into the bench's process it would shadow the real one. So it lives in a folder of its
own (``pip install --no-deps --target .venv-sparsevlm sparsevlm==0.1.3``, what ``make bench`` does) and
only this process puts that folder on ``sys.path``.

Protocol: one JSON object per line. The first line on stdin is the set-up (model spec, dtype, device,
keep share, ...); the worker answers ``{"ok": true, ...}`` once the model is loaded. Then each request
``{"cmd": "run" | "memory", "new_tokens": N}`` gets one answer with a timed run (the fields of
:class:`svlm.bench.timing.Run`) or the peak memory; ``{"cmd": "exit"}`` ends it. An error is answered
``{"ok": false, "error": "..."}``. Everything else the process prints goes to stderr, so stdout carries
only the protocol.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

PYPI_LABEL = "sparsevlm-pypi"


def import_sparsevlm(folder: str | os.PathLike[str]) -> Callable[..., Any]:
    """``sparsevlm.sparsevlm_generate`` imported from ``folder`` with the package's own ``kernels``.

    Hugging Face's ``kernels`` (if installed) is bound first, so that transformers keeps it; while
    sparsevlm imports, its own ``kernels`` takes the name; afterwards the Hugging Face one is put back.
    """
    import transformers.integrations.hub_kernels  # noqa: F401  binds Hugging Face's `kernels`, if installed

    root = str(Path(folder).resolve())
    if not (Path(root) / "sparsevlm" / "__init__.py").is_file():
        raise FileNotFoundError(f"no sparsevlm package in {root}")

    def is_kernels(name: str) -> bool:
        return name == "kernels" or name.startswith("kernels.")

    saved = {k: v for k, v in sys.modules.items() if is_kernels(k)}
    for key in saved:
        del sys.modules[key]
    sys.path.insert(0, root)
    try:
        import sparsevlm
    finally:
        sys.path.remove(root)
        for key in [k for k in sys.modules if is_kernels(k)]:
            del sys.modules[key]
        sys.modules.update(saved)
    if not str(Path(sparsevlm.__file__).resolve()).startswith(root):
        raise ImportError(f"sparsevlm was imported from {sparsevlm.__file__}, not from {root}")
    return sparsevlm.sparsevlm_generate


class _Worker:
    """The loaded model and one PyPI runner per output length."""

    def __init__(self, setup: dict[str, Any]) -> None:
        import torch

        from svlm.bench.memory import steady_allocator
        from svlm.bench.runners import Case, cast_pixels, make_inputs
        from svlm.bench.timing import TIMERS
        from svlm.engine.layout import set_linear_layout
        from svlm.models import load_vlm

        self.generate = import_sparsevlm(setup["sparsevlm_path"])
        if setup.get("num_threads") is not None:
            torch.set_num_threads(int(setup["num_threads"]))
        self.device = torch.device(setup["device"])
        if setup.get("steady_memory") and self.device.type == "cpu":
            steady_allocator()
        model, self.processor, _ = load_vlm(setup["model"], setup["dtype"], self.device, "eager")
        set_linear_layout(model, setup["layout"])
        inputs = cast_pixels(
            make_inputs(self.processor, 1, setup["image_size"], setup["question"], self.device), model
        )
        self.keep = float(setup["keep"])
        self.clock = TIMERS[setup["timer"]]
        self.case = lambda n: Case("comparison", model, inputs, self.device, 1, int(n), "eager")
        self.model = model
        self.runners: dict[int, Any] = {}

    def runner(self, new_tokens: int) -> Any:
        if new_tokens not in self.runners:
            runner = pypi_runner(self.case(new_tokens), self.processor, self.keep, self.generate)
            runner.clock = self.clock
            self.runners[new_tokens] = runner
        return self.runners[new_tokens]

    def probe_sdpa(self) -> str:
        """Whether the package runs on SDPA attention (its README allows sdpa): one untimed call."""
        try:
            self.model.set_attn_implementation("sdpa")
        except Exception as err:
            return f"not probed ({type(err).__name__}: {err})"
        try:
            self.runner(1).call()
        except Exception as err:
            return f"fails with {type(err).__name__}: {err}".strip()
        finally:
            self.model.set_attn_implementation("eager")
            self.model.generation_config.min_new_tokens = None
        return "runs"


def pypi_runner(case: Any, processor: Any, keep: float, sparsevlm_generate: Callable[..., Any]) -> Any:
    """The PyPI ``sparsevlm`` package's own entry point, called as its README shows (batch 1 only)."""
    model, inputs, device = case.model, case.inputs, case.device
    n_vis = int((inputs["input_ids"][0] == int(model.config.image_token_id)).sum())
    keep_n_vis = max(1, round(n_vis * keep))

    def call() -> Any:
        model.generation_config.min_new_tokens = case.new_tokens  # it passes no generate kwargs; same length
        return sparsevlm_generate(
            model,
            processor,
            inputs,
            n_vis=n_vis,
            keep_n_vis=keep_n_vis,
            max_new_tokens=case.new_tokens,
            device=str(device),
        )

    # token_forward=1: after pruning the cache it re-feeds the last prompt token through generate()
    return case.runner(PYPI_LABEL, PYPI_LABEL, call, budget_target=keep, token_forward=1)


def _answer(out: IO[str], **fields: Any) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


def serve(inp: IO[str], out: IO[str]) -> None:
    """Answer the set-up line and then each request of ``inp`` on ``out`` until ``exit`` or end of input."""
    import torch

    from svlm.bench.memory import peak_memory_mb

    try:
        worker = _Worker(json.loads(inp.readline()))
        with torch.inference_mode():
            sdpa = worker.probe_sdpa()
    except Exception as err:
        _answer(out, ok=False, error=f"{type(err).__name__}: {err}")
        return
    _answer(out, ok=True, sdpa=sdpa, torch=torch.__version__)
    for line in inp:
        request = json.loads(line)
        if request.get("cmd") == "exit":
            return
        try:
            runner = worker.runner(int(request["new_tokens"]))
            with torch.inference_mode():
                if request["cmd"] == "run":
                    _answer(out, ok=True, run=dataclasses.asdict(runner.run()))
                elif request["cmd"] == "memory":
                    _answer(out, ok=True, peak_mem_mb=peak_memory_mb(runner.run, worker.device))
                else:
                    raise ValueError(f"unknown request {request!r}")
        except Exception as err:
            _answer(out, ok=False, error=f"{type(err).__name__}: {err}")


def main() -> None:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # any print, Python or C, goes to stderr
    sys.stdout = sys.stderr
    serve(sys.stdin, protocol)


if __name__ == "__main__":
    main()

"""``RankCalibrator``: the LightningModule that ``svlm fit`` trains — a search for SparseVLM's per-layer
rank-rule parameters under a visual-token budget, judged by fidelity to the dense model.

One training step is one search iteration on one calibration batch:

1. the dense model's answer-position prediction and the uncalibrated SparseVLM schedule (``budget=B``) are
   run once per calibration sample and cached (reference for fidelity, FLOPs and logging);
2. the incumbent and ``offspring`` candidates each get their global multiplier bisected so that the mean
   budget over the calibration samples seen so far meets the target (and, with ``match_flops``, their
   decoder FLOPs stay at or below the default schedule's) — predicted from cached singular values, no forward;
3. incumbent and candidates run on the batch (a paired comparison); the best candidate replaces the
   incumbent if its objective (``kl`` or ``cosine``) is lower, and the step size adapts (1/5th rule).

Validation (each epoch, held-out split) generates with the dense model, the default schedule and the current
calibrated schedule and reports fidelity, accuracy, budget and FLOPs; the schedule file is written
(atomically) after every validation and at the end of training. Search state lives in the module's
parameter (incumbent), the optimizer (step size, random generator) and ``on_save_checkpoint`` (statistics),
so ``--ckpt_path`` resumes a search exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from svlm.calibrate.budget import (
    Geometry,
    RankStats,
    RecordingSparseVLM,
    Simulation,
    simulate,
    solve_multiplier,
)
from svlm.calibrate.evaluation import BatchResult, PointTally, batch_result, relative_to_dense
from svlm.calibrate.fidelity import (
    Answer,
    check_objective,
    fidelity,
    forward_answer,
    generate_answer,
    tokenize,
)
from svlm.calibrate.params import RankSpace, default_shape, make_space
from svlm.calibrate.schedule import model_record, save_schedule
from svlm.calibrate.search import EvolutionSearch
from svlm.models import load_vlm, resolve_device
from svlm.module import check_load_options, check_model_name
from svlm.strategies.base import parse_budget
from svlm.strategies.sparsevlm import SparseVLM

log = logging.getLogger(__name__)

__all__ = ["RankCalibrator"]

CHECKPOINT_KEY = "svlm_calibration"


class RankCalibrator(pl.LightningModule):
    """Calibrates SparseVLM's per-layer rank thresholds (``rank_scale``/``rank_bias``/``rank_rtol``) for a
    budget on a small calibration split and writes a schedule file that ``svlm test`` loads
    (``strategy: sparsevlm`` with ``kwargs: {schedule: <path>}``).

    Args:
        model: Hugging Face id, local folder, or ``tiny:<family>[?...]``.
        budget: Target mean visual tokens entering each decoder layer (e.g. 64, 128, 192 of 576).
        objective: ``kl`` (KL divergence of the next-token distribution at the answer position, dense ||
            pruned) or ``cosine`` (1 - cosine of the last token's final hidden state).
        parametrization: ``rank`` (v1 rank rule per layer: share, adaptivity, rtol) or ``counts`` (fixed
            per-layer counts with an exact budget).
        layers: SparseVLM pruning layers of the 32-layer reference (scaled to the model's depth).
        version: SparseVLM preset table whose shape starts the search (and defines the default baseline).
        init_adaptivity: Start value of every layer's rank adaptivity (0: start at the default schedule).
        init_log10_rtol: Start value of every layer's log10 rank threshold.
        sigma: Initial search step size (unit-box coordinates).
        offspring: Candidates per search iteration.
        coordinates: Coordinates changed per candidate (None: all).
        match_flops: Also keep the decoder FLOPs at or below those of the default schedule (calibration set).
        margin: Aim this fraction below the budget (and FLOPs), a safety margin for held-out data.
        resolve_tolerance: Re-solve a candidate's multiplier when its measured batch budget misses the
            prediction by more than this fraction of the target (its own singular values are then used).
        schedule_path: Where to write the schedule (default ``<trainer.default_root_dir>/schedule.yaml``).
        max_new_tokens: Greedy answer length in validation (accuracy).
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        benchmark: Benchmark name for the accuracy metric (default: from the datamodule or batches).
        main_metric: Metric reported as ``accuracy`` (default: the benchmark's headline metric).
        processor_kwargs: Passed to ``AutoProcessor.from_pretrained``.
        seed: Seed of the search's random generator.
    """

    def __init__(
        self,
        model: str = "tiny:llava",
        budget: float = 64.0,
        objective: str = "kl",
        parametrization: str = "rank",
        layers: list[int] | None = None,
        version: str = "v2",
        init_adaptivity: float = 0.0,
        init_log10_rtol: float = -3.0,
        sigma: float = 0.1,
        offspring: int = 1,
        coordinates: int | None = 2,
        match_flops: bool = True,
        margin: float = 0.002,
        resolve_tolerance: float = 0.02,
        schedule_path: str | None = None,
        max_new_tokens: int = 4,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        benchmark: str | None = None,
        main_metric: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        budget = parse_budget(budget)
        if budget is None or budget < 1:
            raise ValueError(f"budget must be a number of visual tokens per layer (>= 1), got {budget}.")
        if not 0 <= init_adaptivity <= 1:
            raise ValueError(f"init_adaptivity must be in [0, 1], got {init_adaptivity}.")
        if not 0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin}.")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        check_model_name(model)
        check_load_options(dtype, attn_implementation)
        self.model_name = model
        self.budget = float(budget)
        self.objective = check_objective(objective)
        self.layers = [int(x) for x in (layers if layers is not None else (2, 6, 15))]
        if not self.layers or sorted(set(self.layers)) != self.layers:
            raise ValueError(f"layers must be strictly increasing pruning layers, got {self.layers}.")
        self.version = version
        self.space = make_space(parametrization, len(self.layers))
        shape = default_shape(self.budget, len(self.layers), version)
        start = self.space.initial(shape, adaptivity=init_adaptivity, log10_rtol=init_log10_rtol)
        self.theta = nn.Parameter(start.float(), requires_grad=False)  # the search incumbent (unit box)
        self.search_kwargs = {
            "sigma": sigma,
            "offspring": offspring,
            "coordinates": coordinates,
            "seed": seed,
        }
        EvolutionSearch([torch.zeros(1)], **self.search_kwargs)  # validate the search options early
        self.match_flops, self.margin, self.resolve_tolerance = match_flops, margin, resolve_tolerance
        self.schedule_path = schedule_path
        self.max_new_tokens = max_new_tokens
        self.dtype_name, self.attn_implementation = dtype, attn_implementation
        self.processor_kwargs = dict(processor_kwargs or {})
        self.benchmark, self.main_metric = benchmark, main_metric
        # the VLM is not a registered submodule: it stays out of state_dict and checkpoints
        self.__dict__["vlm"] = None
        self.processor: Any = None
        self.geometry: Geometry | None = None
        self.stats = RankStats()
        self.multiplier = 1.0
        self.reference: dict[str, dict[str, float]] = {}  # per calibration sample: default schedule's numbers
        self._dense: dict[str, Answer] = {}  # per calibration sample: dense answer-position prediction
        self._val_cache: dict[tuple[str, int], tuple[BatchResult, Answer | None]] = {}
        self._tallies: dict[str, PointTally] = {}
        self._val_params: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.points: list[dict[str, Any]] = []
        self.last_validation: dict[str, Any] | None = None

    # -- model ---------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else resolve_device("auto")
        vlm, processor, _ = load_vlm(
            self.model_name, self.dtype_name, device, self.attn_implementation, self.processor_kwargs
        )
        for p in vlm.parameters():
            p.requires_grad_(False)
        self.__dict__["vlm"] = vlm
        self.processor = processor
        self.geometry = Geometry.of(vlm.config, self.layers)
        if len(self.geometry.layers) != len(self.layers):
            raise ValueError(
                f"Pruning layers {self.layers} collapse to {list(self.geometry.layers)} on this "
                f"{self.geometry.num_layers}-layer model; give {len(self.geometry.layers)} layers instead."
            )

    def _ensure_model(self) -> nn.Module:
        if self.vlm is None:
            self.configure_model()
        return self.vlm

    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            raise ValueError("Calibration runs on one device; set trainer.devices=1.")

    def configure_optimizers(self) -> EvolutionSearch:
        return EvolutionSearch([self.theta], **self.search_kwargs)

    # -- schedules -----------------------------------------------------------------------------------------
    def default_strategy(self) -> SparseVLM:
        """The uncalibrated baseline: SparseVLM's budget mode (preset shape solved to the budget)."""
        return SparseVLM(budget=self.budget, layers=self.layers, version=self.version)

    def solve(self, unit: torch.Tensor) -> tuple[float, Any]:
        """Multiplier and rule of ``unit`` meeting the budget (and FLOPs) on the calibration statistics."""
        ids = [i for i in self.stats.n_visual if i in self.stats.svals] or list(self.stats.n_visual)
        if not ids:
            raise RuntimeError("No calibration statistics yet: run at least one training step.")
        _, n_visual, n_text, svals = self.stats.pack(ids, steps=len(self.layers))
        budget = self.budget * (1 - self.margin)
        flops = None
        if self.match_flops and all(i in self.reference for i in ids):
            flops = sum(self.reference[i]["flops"] for i in ids) * (1 - self.margin)

        def predict(m: float) -> tuple[float, float]:
            sim = simulate(self.geometry, self.space.rule(unit, m, svals), n_visual, n_text, svals)
            return float(sim.budget.mean()), float(sim.flops.sum())

        multiplier = solve_multiplier(predict, budget, flops, initial=self.multiplier)
        return multiplier, self.space.rule(unit, multiplier, svals)

    def schedule_params(self, unit: torch.Tensor | None = None) -> dict[str, Any]:
        """SparseVLM keyword arguments of ``unit`` (default: the incumbent), solved on the calibration set."""
        unit = self.theta.detach().cpu() if unit is None else unit
        _, rule = self.solve(unit)
        return self.space.strategy_params(rule, self.layers)

    def _strategy(self, rule: Any) -> SparseVLM:
        params = self.space.strategy_params(rule, self.layers)
        return RecordingSparseVLM(**params) if isinstance(self.space, RankSpace) else SparseVLM(**params)

    # -- training: one search iteration per batch ----------------------------------------------------------
    def _inputs(self, batch: Mapping[str, Any]) -> Any:
        model = self._ensure_model()
        return tokenize(self.processor, batch, next(model.parameters()).device)

    def _dense_answers(self, ids: list[str], inputs: Any) -> Answer:
        if any(i not in self._dense for i in ids):
            answer, _ = forward_answer(self.vlm, inputs, "dense")
            answer = answer.cpu()
            for row, sid in enumerate(ids):
                self._dense[sid] = answer.index([row])
        return Answer.cat([self._dense[i] for i in ids])

    def _reference(self, ids: list[str], inputs: Any, dense: Answer) -> None:
        """Run the default schedule once per sample: token counts, FLOPs and fidelity to compare with."""
        if all(i in self.reference and i in self.stats for i in ids):
            return
        answer, report = forward_answer(self.vlm, inputs, self.default_strategy())
        self.stats.update_tokens(ids, report)
        values = fidelity(dense, answer.cpu())
        for row, sid in enumerate(ids):
            self.reference[sid] = {
                "flops": self.geometry.tokens_flops(report.tokens[row]),
                "budget": float(report.budget_per_sample[row]),
                "kl": float(values["kl"][row]),
                "cosine": float(values["cosine"][row]),
            }

    def _run(self, rule: Any, inputs: Any, dense: Answer) -> tuple[torch.Tensor, Any, SparseVLM]:
        strategy = self._strategy(rule)
        answer, report = forward_answer(self.vlm, inputs, strategy)
        values = fidelity(dense, answer.cpu())
        return values[self.objective], report, strategy

    def _predict(self, ids: list[str], rule: Any) -> Simulation:
        """What ``rule`` keeps on these samples, from their cached singular values (the incumbent's)."""
        _, n_visual, n_text, svals = self.stats.pack(ids, steps=len(self.layers))
        return simulate(self.geometry, rule, n_visual, n_text, svals)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        ids = [str(i) for i in batch["ids"]]
        inputs = self._inputs(batch)
        dense = self._dense_answers(ids, inputs)
        self._reference(ids, inputs, dense)
        optimizer = self.optimizers()
        search: EvolutionSearch = optimizer.optimizer
        steps = len(self.layers)
        recording = isinstance(self.space, RankSpace)

        incumbent = self.theta.detach().cpu()
        m_inc, rule_inc = self.solve(incumbent)
        f_inc, report_inc, strategy_inc = self._run(rule_inc, inputs, dense)
        if recording:
            self.stats.update_svals(ids, strategy_inc.records, steps)

        kept = torch.stack([d.visual_after.cpu().double() for d in report_inc.decisions], dim=-1)
        values, runs = [], []
        for candidate in search.ask():
            m_c, rule_c = self.solve(candidate)
            predicted = self._predict(ids, rule_c)
            if torch.equal(predicted.counts, kept):
                # same counts on every sample and step -> same kept tokens -> the incumbent's very run
                values.append(float(f_inc.mean()))
                runs.append((m_c, report_inc, strategy_inc, 0.0))
                continue
            f_c, report_c, strategy_c = self._run(rule_c, inputs, dense)
            gap = report_c.budget - float(predicted.budget.mean())
            if recording and abs(gap) > self.resolve_tolerance * self.budget:
                saved = {i: self.stats.svals[i] for i in ids}
                self.stats.update_svals(ids, strategy_c.records, steps)
                m_c, rule_c = self.solve(candidate)
                f_c, report_c, strategy_c = self._run(rule_c, inputs, dense)
                self.stats.restore_svals(saved)
            values.append(float(f_c.mean()))
            runs.append((m_c, report_c, strategy_c, gap))
        accepted = search.tell(float(f_inc.mean()), values)
        if accepted is not None:
            m_inc, report_inc, strategy_inc = runs[accepted][:3]
            if recording:
                self.stats.update_svals(ids, strategy_inc.records, steps)
        self.multiplier = m_inc
        optimizer.step()  # counts the iteration (global_step); the search moved the parameter itself

        n = len(ids)
        default = {k: sum(self.reference[i][k] for i in ids) / n for k in ("kl", "cosine", "budget")}
        current = min([float(f_inc.mean())] + ([values[accepted]] if accepted is not None else []))
        self.log_dict(
            {
                "train/objective": current,
                "train/objective_default": default[self.objective],
                "train/objective_best_candidate": min(values),
                "train/budget": float(report_inc.budget),
                "train/budget_default": default["budget"],
                "train/budget_gap": float(sum(abs(r[3]) for r in runs) / len(runs)),
                "train/accepted": float(accepted is not None),
                "train/sigma": search.sigma,
                "train/multiplier": m_inc,
            },
            on_step=True,
            on_epoch=False,
            batch_size=n,
        )
        self.log("train/objective_epoch", current, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/default_epoch", default[self.objective], on_step=False, on_epoch=True, batch_size=n)

    # -- validation: held-out fidelity, accuracy, budget, FLOPs --------------------------------------------
    def _benchmark_name(self, batch: Mapping[str, Any]) -> str | None:
        if self.benchmark:
            return self.benchmark
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        name = getattr(datamodule, "benchmark", None) or (batch.get("tasks") or [None])[0]
        self.benchmark = name
        return name

    def _tally(self, key: str, label: str, strategy: str, batch: Mapping[str, Any]) -> PointTally:
        if key not in self._tallies:
            metric = None
            name = self._benchmark_name(batch)
            if name and batch.get("answers") is not None:
                from svlm.metrics import metric_for

                metric = metric_for(name)
            budget = None if strategy == "dense" else self.budget
            self._tallies[key] = PointTally(label, strategy, budget, metric, self.main_metric)
        return self._tallies[key]

    def on_validation_epoch_start(self) -> None:
        for tally in self._tallies.values():
            tally.reset()
        self._val_params = self.schedule_params() if len(self.stats) else None

    def _cached(
        self, key: str, batch_idx: int, inputs: Any, strategy: Any, dense: Answer | None
    ) -> tuple[BatchResult, Answer]:
        """Dense and default runs do not change between epochs: run them once per validation batch."""
        if (key, batch_idx) not in self._val_cache:
            answers, answer, report = generate_answer(
                self.vlm, self.processor, inputs, strategy, self.max_new_tokens
            )
            answer = answer.cpu()
            result = batch_result(answers, answer, dense if dense is not None else answer, report)
            self._val_cache[(key, batch_idx)] = (result, answer)
        return self._val_cache[(key, batch_idx)]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        inputs = self._inputs(batch)
        dense_result, dense = self._cached("dense", batch_idx, inputs, "dense", None)
        default_result, _ = self._cached("default", batch_idx, inputs, self.default_strategy(), dense)
        self._tally("dense", "dense", "dense", batch).add(dense_result, batch)
        self._tally("default", f"sparsevlm-{self.budget:g}", "sparsevlm", batch).add(default_result, batch)
        if self._val_params is not None:
            answers, answer, report = generate_answer(
                self.vlm, self.processor, inputs, SparseVLM(**self._val_params), self.max_new_tokens
            )
            result = batch_result(answers, answer.cpu(), dense, report)
            self._tally("calibrated", "calibrated", "calibrated", batch).add(result, batch)

    def on_validation_epoch_end(self) -> None:
        tallies = [self._tallies[k] for k in ("dense", "default", "calibrated") if k in self._tallies]
        current = relative_to_dense([t.point() for t in tallies if t.results])
        for p in current:
            p.update(model=self.model_name, benchmark=self.benchmark, epoch=self.current_epoch)
        by_key = {p["strategy"]: p for p in current}
        calibrated = by_key.get("calibrated")
        if calibrated is not None and not self.trainer.sanity_checking:
            calibrated = {**calibrated, "label": f"calibrated-e{self.current_epoch}"}
            calibrated["kwargs"] = dict(self._val_params or {})
            self.history.append(calibrated)
            self.last_validation = {"params": self._val_params, "points": current}
            self._write_schedule()
        self.points = [by_key[k] for k in ("dense", "sparsevlm") if k in by_key] + list(self.history)
        scalars = {}
        for prefix, p in (("val", by_key.get("calibrated")), ("val_default", by_key.get("sparsevlm"))):
            if p is None:
                continue
            for key in ("kl", "cosine", "accuracy", "budget", "flops_ratio", "prefill_tflops"):
                if isinstance(p.get(key), float) and math.isfinite(p[key]):
                    scalars[f"{prefix}/{key}"] = p[key]
        if "dense" in by_key and math.isfinite(by_key["dense"]["accuracy"]):
            scalars["val_dense/accuracy"] = by_key["dense"]["accuracy"]
        if scalars:
            self.log_dict(scalars, batch_size=1)

    # -- output --------------------------------------------------------------------------------------------
    def on_train_end(self) -> None:
        if len(self.stats):
            path = self._write_schedule()
            if path is not None:
                rank_zero_info(f"schedule: {path.resolve()}")

    def output_path(self) -> Path:
        if self.schedule_path:
            return Path(self.schedule_path)
        root = self.trainer.default_root_dir if self._trainer is not None else "."
        return Path(root) / "schedule.yaml"

    def schedule_metrics(self, params: dict[str, Any]) -> dict[str, Any]:
        """What calibration measured, for the schedule file (plain, human-readable numbers)."""
        unit = self.theta.detach().cpu()
        m, rule = self.solve(unit)
        ids = list(self.stats.n_visual)
        _, n_visual, n_text, svals = self.stats.pack(ids, steps=len(self.layers))
        sim = simulate(self.geometry, rule, n_visual, n_text, svals)
        reference_flops = sum(self.reference[i]["flops"] for i in ids if i in self.reference)
        search = self._search()
        metrics: dict[str, Any] = {
            "model": self.model_name,
            "benchmark": self.benchmark,
            "budget_target": self.budget,
            "objective": self.objective,
            "parametrization": self.space.kind,
            "version": self.version,
            "pruning_layers": list(self.geometry.layers),
            "calibration": {
                "samples": len(ids),
                "budget": _num(sim.budget.mean()),
                "counts_per_step": [_num(c) for c in sim.counts.mean(0)],
                "decoder_flops_vs_default": _num(sim.flops.sum() / reference_flops)
                if reference_flops
                else None,
                "multiplier": _num(m),
            },
            "search": {
                "iterations": search.iterations if search else 0,
                "accepted": search.accepted if search else 0,
                "sigma": _num(search.sigma) if search else None,
                "coordinates": {k: _num(v) for k, v in self.space.describe(unit).items()},
            },
        }
        if self.last_validation is not None and self.last_validation["params"] == params:
            keys = ("budget", "budget_output", "prefill_tflops", "flops_ratio", "kl", "cosine")
            metrics["validation"] = {
                p["strategy"]: {
                    **{k: _num(p.get(k)) for k in keys},
                    "samples": int(p["samples"]),
                    "accuracy": _num(p.get("accuracy")),
                    "kept_per_step": [_num(x) for x in p.get("kept_per_step", [])],
                }
                for p in self.last_validation["points"]
            }
            metrics["validation"]["epoch"] = int(self.last_validation["points"][0].get("epoch", 0))
        return metrics

    def _search(self) -> EvolutionSearch | None:
        if self._trainer is None:
            return None
        optimizers = self.trainer.optimizers
        return optimizers[0] if optimizers else None

    def _write_schedule(self) -> Path | None:
        if self._trainer is not None and not self.trainer.is_global_zero:
            return None
        params = self.schedule_params()
        from svlm.adapters import adapter_for

        model = model_record(self.model_name, adapter_for(self._ensure_model()).info().num_layers)
        path = save_schedule(self.output_path(), "sparsevlm", params, self.schedule_metrics(params), model)
        log.info("Calibrated schedule written to %s", path)
        return path

    # -- checkpoints ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "stats": self.stats.state_dict(),
            "reference": dict(self.reference),
            "multiplier": self.multiplier,
            "history": list(self.history),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise ValueError("This checkpoint was not written by RankCalibrator (no calibration state).")
        self.stats.load_state_dict(state["stats"])
        self.reference = dict(state["reference"])
        self.multiplier = float(state["multiplier"])
        self.history = list(state["history"])


def _num(value: Any) -> float | None:
    """A plain rounded float for YAML (None for missing/NaN)."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.6g}")

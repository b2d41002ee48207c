"""A (1 + lambda) evolution strategy over the unit box, shaped as a ``torch.optim.Optimizer``.

Why an optimizer: Lightning then checkpoints and restores the search for free — the incumbent is the
LightningModule's parameter (``state_dict``), the step size, random generator and counters are optimizer
state — and every search iteration advances ``trainer.global_step`` like a gradient step would.

One iteration: :meth:`ask` proposes ``offspring`` candidates (Gaussian steps of size ``sigma`` on
``coordinates`` randomly chosen coordinates, or on all of them), the caller evaluates the incumbent and the
candidates *on the same batch* (a paired comparison, which cancels most of the sample-to-sample noise), and
:meth:`tell` keeps the best candidate if it beats the incumbent and adapts ``sigma`` by the 1/5th success
rule (grow on success, shrink slowly on failure). Ties are rejected: a change is kept only on evidence, so
coordinates that do not matter on the calibration data (e.g. a rank threshold at adaptivity 0) stay where
they started instead of drifting to values that could act on other data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

__all__ = ["EvolutionSearch"]


class EvolutionSearch(torch.optim.Optimizer):
    """(1 + lambda)-ES with 1/5th-rule step size on one parameter that lives in [0, 1]^D.

    Args:
        params: One tensor (the incumbent, changed in place by :meth:`tell`).
        sigma: Initial step size (in unit-box coordinates).
        offspring: Candidates per iteration (lambda).
        coordinates: Coordinates mutated per candidate (``None``: all; 1: coordinate search).
        seed: Seed of the search's own random generator (saved in the optimizer state).
        sigma_min, sigma_max: Bounds of the step size.
        tolerance: A candidate must beat the incumbent by more than this (relative) to be accepted.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        sigma: float = 0.1,
        offspring: int = 1,
        coordinates: int | None = None,
        seed: int = 0,
        sigma_min: float = 1e-3,
        sigma_max: float = 0.5,
        tolerance: float = 0.0,
    ) -> None:
        if not 0 < sigma_min <= sigma <= sigma_max:
            raise ValueError(
                f"Need 0 < sigma_min <= sigma <= sigma_max, got {sigma_min}, {sigma}, {sigma_max}."
            )
        if offspring < 1:
            raise ValueError(f"offspring must be >= 1, got {offspring}.")
        if coordinates is not None and coordinates < 1:
            raise ValueError(f"coordinates must be >= 1 or None (all), got {coordinates}.")
        defaults = {
            "sigma": sigma,
            "offspring": offspring,
            "coordinates": coordinates,
            "sigma_min": sigma_min,
            "sigma_max": sigma_max,
            "tolerance": tolerance,
            "seed": seed,
        }
        super().__init__(params, defaults)
        if len(self.param_groups) != 1 or len(self.param_groups[0]["params"]) != 1:
            raise ValueError("EvolutionSearch optimises exactly one tensor.")

    # -- accessors ---------------------------------------------------------------------------------------
    @property
    def group(self) -> dict:
        return self.param_groups[0]

    @property
    def incumbent(self) -> torch.Tensor:
        return self.group["params"][0]

    @property
    def sigma(self) -> float:
        return float(self.group["sigma"])

    def _state(self) -> dict:
        state = self.state[self.incumbent]
        if "rng" not in state:
            generator = torch.Generator().manual_seed(int(self.group["seed"]))
            state.update(rng=generator.get_state(), iterations=0, accepted=0, pending=None)
        return state

    @property
    def iterations(self) -> int:
        return int(self._state()["iterations"])

    @property
    def accepted(self) -> int:
        return int(self._state()["accepted"])

    # -- search ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def ask(self) -> list[torch.Tensor]:
        """Candidates for this iteration (a fresh list each call; the generator state advances)."""
        state = self._state()
        generator = torch.Generator()
        # Optimizer.load_state_dict casts state tensors to the parameter's dtype: the bytes survive as floats
        generator.set_state(torch.as_tensor(state["rng"]).cpu().to(torch.uint8))
        x = self.incumbent.detach().double().cpu()
        k = self.group["coordinates"]
        candidates = []
        for _ in range(int(self.group["offspring"])):
            step = torch.randn(x.shape, generator=generator, dtype=torch.float64) * self.sigma
            if k is not None and k < x.numel():
                chosen = torch.randperm(x.numel(), generator=generator)[:k]
                mask = torch.zeros(x.numel(), dtype=torch.bool)
                mask[chosen] = True
                step = torch.where(mask.view(x.shape), step, 0.0)
            candidates.append(_reflect(x + step))
        state["rng"] = generator.get_state()
        state["pending"] = torch.stack(candidates)
        return candidates

    @torch.no_grad()
    def tell(self, incumbent_value: float, candidate_values: Sequence[float]) -> int | None:
        """Record the batch objectives (lower is better); returns the index of the accepted candidate."""
        state = self._state()
        pending = state.get("pending")
        if pending is None or len(candidate_values) != len(pending):
            raise RuntimeError("tell() needs one value per candidate of the last ask().")
        best = min(range(len(candidate_values)), key=lambda i: candidate_values[i])
        margin = float(self.group["tolerance"]) * abs(incumbent_value)
        success = math.isfinite(candidate_values[best]) and candidate_values[best] < incumbent_value - margin
        if success:
            self.incumbent.copy_(pending[best].to(self.incumbent))
            state["accepted"] += 1
        factor = math.exp(1 / 3) if success else math.exp(-1 / 12)  # stationary at a 1/5 success rate
        self.group["sigma"] = min(max(self.sigma * factor, self.group["sigma_min"]), self.group["sigma_max"])
        state["iterations"] += 1
        state["pending"] = None
        return best if success else None

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """No-op on the parameter (:meth:`tell` moves it); lets Lightning count the iteration."""
        return closure() if closure is not None else None


def _reflect(x: torch.Tensor) -> torch.Tensor:
    """Fold a point back into [0, 1] (reflection keeps steps near a bound from sticking to it)."""
    x = torch.remainder(x, 2.0)
    return torch.where(x > 1.0, 2.0 - x, x)

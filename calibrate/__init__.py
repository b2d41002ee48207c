"""Calibration of SparseVLM's per-layer rank rule for ``svlm fit`` (installed as ``svlm.calibrate``).

``RankCalibrator`` is the LightningModule ``svlm fit --config configs/calib.yaml`` trains; it writes a
schedule file (:func:`save_schedule`) that ``svlm.sparsify(model, "sparsevlm", schedule=path)`` and
``svlm test`` load. ``python -m svlm.calibrate.compare`` checks a schedule against the default one.
"""

from svlm.calibrate.budget import (
    Geometry,
    RankRule,
    RankStats,
    RecordingSparseVLM,
    TableRule,
    simulate,
    solve_multiplier,
)
from svlm.calibrate.fidelity import OBJECTIVES, Answer, fidelity
from svlm.calibrate.params import PARAMETRIZATIONS, CountsSpace, RankSpace, default_shape
from svlm.calibrate.schedule import ScheduleError, load_schedule, read_schedule, save_schedule
from svlm.calibrate.search import EvolutionSearch


def __getattr__(name: str):
    # the LightningModule imports Lightning: only when asked for, so that loading a schedule stays light
    if name == "RankCalibrator":
        from svlm.calibrate.module import RankCalibrator

        return RankCalibrator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "OBJECTIVES",
    "PARAMETRIZATIONS",
    "Answer",
    "CountsSpace",
    "EvolutionSearch",
    "Geometry",
    "RankCalibrator",
    "RankRule",
    "RankSpace",
    "RankStats",
    "RecordingSparseVLM",
    "ScheduleError",
    "TableRule",
    "default_shape",
    "fidelity",
    "load_schedule",
    "read_schedule",
    "save_schedule",
    "simulate",
    "solve_multiplier",
]

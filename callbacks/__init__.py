"""Lightning callbacks for svlm runs (installed as ``svlm.callbacks``)."""

from svlm.callbacks.overlay import KeptTokenOverlay
from svlm.callbacks.tradeoff import TradeoffCurve, pareto_front, plot_tradeoff

__all__ = ["KeptTokenOverlay", "TradeoffCurve", "pareto_front", "plot_tradeoff"]

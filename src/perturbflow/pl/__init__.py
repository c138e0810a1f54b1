"""Plots in the scanpy manner: each takes ``show`` and ``save`` and returns its axes."""

from perturbflow.pl._delta_scatter import delta_scatter
from perturbflow.pl._metrics import metrics

__all__ = ["delta_scatter", "metrics"]

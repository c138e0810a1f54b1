"""Plots in the scanpy manner: each takes ``ax``, ``show`` and ``save`` and returns its axes."""

from perturbflow.pl._delta_scatter import delta_scatter
from perturbflow.pl._embedding import embedding
from perturbflow.pl._metrics import metrics
from perturbflow.pl._trajectories import trajectories

__all__ = ["delta_scatter", "embedding", "metrics", "trajectories"]

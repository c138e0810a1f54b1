"""Rectified flow: the straight path, its loss and ODE solvers."""

from perturbflow.flow._loss import rectified_flow_loss
from perturbflow.flow._path import interpolate, sample_time, target_velocity
from perturbflow.flow._solvers import adaptive, euler, integrate, midpoint
from perturbflow.flow._straightness import Straightness, path_straightness, straightness

__all__ = [
    "Straightness",
    "adaptive",
    "euler",
    "integrate",
    "interpolate",
    "midpoint",
    "path_straightness",
    "rectified_flow_loss",
    "sample_time",
    "straightness",
    "target_velocity",
]
from perturbflow.flow._ensemble import FlowEnsemble
from perturbflow.flow._module import LatentFlowModule

__all__ += ["FlowEnsemble", "LatentFlowModule"]

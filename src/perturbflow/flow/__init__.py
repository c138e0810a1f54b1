"""Rectified flow: the straight path, its loss and ODE solvers."""

from perturbflow.flow._loss import rectified_flow_loss
from perturbflow.flow._path import interpolate, sample_time, target_velocity
from perturbflow.flow._solvers import adaptive, euler, integrate, midpoint

__all__ = [
    "adaptive",
    "euler",
    "integrate",
    "interpolate",
    "midpoint",
    "rectified_flow_loss",
    "sample_time",
    "target_velocity",
]
from perturbflow.flow._module import LatentFlowModule

__all__ += ["LatentFlowModule"]

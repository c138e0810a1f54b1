"""Training: the Lightning plan of the flow, its fitting on groups, and the calibration."""

from perturbflow.train._calibration import (
    CORRECTION_SCALES,
    calibration_split,
    choose_correction_scale,
)
from perturbflow.train._fit_flow import build_flow, fit_flow
from perturbflow.train._plan import FlowTrainingPlan

__all__ = [
    "CORRECTION_SCALES",
    "FlowTrainingPlan",
    "build_flow",
    "calibration_split",
    "choose_correction_scale",
    "fit_flow",
]

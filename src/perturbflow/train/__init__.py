"""Training: the flow's groups of cells, its Lightning plan and fitting, and the calibration."""

from perturbflow.train._calibration import (
    CORRECTION_SCALES,
    calibration_split,
    choose_correction_scale,
)
from perturbflow.train._fit_flow import build_flow, fit_flow
from perturbflow.train._groups import (
    build_groups,
    cells_by_group,
    count_statistics,
    decoded_shifts,
    gene_space_shifts,
)
from perturbflow.train._plan import FlowTrainingPlan

__all__ = [
    "CORRECTION_SCALES",
    "FlowTrainingPlan",
    "build_flow",
    "build_groups",
    "calibration_split",
    "cells_by_group",
    "choose_correction_scale",
    "count_statistics",
    "decoded_shifts",
    "fit_flow",
    "gene_space_shifts",
]

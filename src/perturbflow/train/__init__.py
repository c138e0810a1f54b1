"""Training: the flow's groups of cells, its Lightning plan and fitting, and the calibration."""

from perturbflow.train._calibration import (
    CORRECTION_SCALES,
    calibration_split,
    choose_correction_scale,
)
from perturbflow.train._checkpoints import (
    DEFAULT_EVERY_N_STEPS,
    TrainingRun,
    digest,
    is_main_process,
    is_unfinished_run,
    open_run,
    run_stage,
    stage_trainer_kwargs,
)
from perturbflow.train._context_axes import context_axes
from perturbflow.train._decoding_choice import (
    DECODINGS,
    choose_decoding,
    decoding_scores,
    fitted_share,
    new_context_exact_mean,
)
from perturbflow.train._fit_flow import build_flow, build_model_flow, fit_flow, fit_flows
from perturbflow.train._fit_vae import fit_vae
from perturbflow.train._groups import (
    build_groups,
    cells_by_group,
    count_statistics,
    decoded_shifts,
    gene_space_shifts,
)
from perturbflow.train._new_context import (
    FEW_CONTEXTS_FRACTION,
    MIN_CONTEXTS,
    MIN_GAIN,
    NEW_CONTEXT_PARTS,
    GeneSpace,
    apply_part,
    best_parts,
    contexts_to_hold_out,
    nearest_context,
    new_context_scores,
)
from perturbflow.train._plan import FlowTrainingPlan
from perturbflow.train._reflow import flow_couplings, reflow

__all__ = [
    "CORRECTION_SCALES",
    "DECODINGS",
    "DEFAULT_EVERY_N_STEPS",
    "FEW_CONTEXTS_FRACTION",
    "MIN_CONTEXTS",
    "MIN_GAIN",
    "NEW_CONTEXT_PARTS",
    "FlowTrainingPlan",
    "GeneSpace",
    "TrainingRun",
    "apply_part",
    "best_parts",
    "build_flow",
    "build_groups",
    "build_model_flow",
    "calibration_split",
    "cells_by_group",
    "choose_correction_scale",
    "choose_decoding",
    "context_axes",
    "contexts_to_hold_out",
    "count_statistics",
    "decoded_shifts",
    "decoding_scores",
    "digest",
    "fit_flow",
    "fit_flows",
    "fit_vae",
    "fitted_share",
    "flow_couplings",
    "gene_space_shifts",
    "is_main_process",
    "is_unfinished_run",
    "nearest_context",
    "new_context_exact_mean",
    "new_context_scores",
    "open_run",
    "reflow",
    "run_stage",
    "stage_trainer_kwargs",
]

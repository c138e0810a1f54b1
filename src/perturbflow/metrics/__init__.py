"""Evaluation: metrics of predicted against real cells, and simple baselines."""

from perturbflow.data import log_normalize
from perturbflow.metrics._baselines import (
    AdditiveBaseline,
    Baseline,
    ContextMeanBaseline,
    ControlBaseline,
    MeanShiftBaseline,
    TrainMeanBaseline,
    get_baseline,
    list_baselines,
    register_baseline,
)
from perturbflow.metrics._de import de_overlap, rank_genes, top_de_genes
from perturbflow.metrics._distances import energy_distance, energy_floor, mmd_rbf
from perturbflow.metrics._evaluate import evaluate_predictions, summarize
from perturbflow.metrics._linear import LinearBaseline
from perturbflow.metrics._metrics import (
    discrimination_score_l1,
    mae,
    mse,
    pearson,
    pearson_delta,
)
from perturbflow.metrics._noise_ceiling import noise_ceiling_split

__all__ = [
    "AdditiveBaseline",
    "Baseline",
    "ContextMeanBaseline",
    "ControlBaseline",
    "LinearBaseline",
    "MeanShiftBaseline",
    "TrainMeanBaseline",
    "de_overlap",
    "discrimination_score_l1",
    "energy_distance",
    "energy_floor",
    "evaluate_predictions",
    "get_baseline",
    "list_baselines",
    "log_normalize",
    "mae",
    "mmd_rbf",
    "mse",
    "noise_ceiling_split",
    "pearson",
    "pearson_delta",
    "rank_genes",
    "register_baseline",
    "summarize",
    "top_de_genes",
]

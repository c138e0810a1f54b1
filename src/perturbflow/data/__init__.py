"""Data: setup and validation, perturbation parsing, log-normalisation, pairing, synthetic data."""

from perturbflow.data._expression import (
    TARGET_SUM,
    group_means,
    log_normalize,
    log_normalize_rows,
    log_normalized_mean,
    mean_exact_shift,
)
from perturbflow.data._pairing import GaussianMap, Group, PairedSetDataset, gaussian_map, ot_pairing
from perturbflow.data._perturbations import canonical_label, parse_perturbation
from perturbflow.data._setup import (
    DataRegistry,
    context_labels,
    get_registry,
    perturbation_atoms,
    setup_anndata,
    split_labels,
)
from perturbflow.data._streaming import GroupMeans, is_on_disk, open_on_disk, read_rows, row_blocks
from perturbflow.data._synthetic import synthetic
from perturbflow.data._validate import check_counts, get_counts

__all__ = [
    "TARGET_SUM",
    "DataRegistry",
    "GaussianMap",
    "Group",
    "GroupMeans",
    "PairedSetDataset",
    "canonical_label",
    "check_counts",
    "context_labels",
    "gaussian_map",
    "get_counts",
    "get_registry",
    "group_means",
    "is_on_disk",
    "log_normalize",
    "log_normalize_rows",
    "log_normalized_mean",
    "mean_exact_shift",
    "open_on_disk",
    "ot_pairing",
    "parse_perturbation",
    "perturbation_atoms",
    "read_rows",
    "row_blocks",
    "setup_anndata",
    "split_labels",
    "synthetic",
]

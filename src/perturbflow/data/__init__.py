"""Data: setup and validation, perturbation parsing, pairing, synthetic data."""

from perturbflow.data._pairing import Group, PairedSetDataset, ot_pairing
from perturbflow.data._perturbations import canonical_label, parse_perturbation
from perturbflow.data._setup import (
    DataRegistry,
    context_labels,
    get_registry,
    perturbation_atoms,
    setup_anndata,
    split_labels,
)
from perturbflow.data._synthetic import synthetic
from perturbflow.data._validate import check_counts, get_counts

__all__ = [
    "DataRegistry",
    "Group",
    "PairedSetDataset",
    "canonical_label",
    "check_counts",
    "context_labels",
    "get_counts",
    "get_registry",
    "ot_pairing",
    "parse_perturbation",
    "perturbation_atoms",
    "setup_anndata",
    "split_labels",
    "synthetic",
]

"""Preprocessing in the scanpy manner: check counts, parse perturbation labels."""

from perturbflow.pp._preprocess import check_counts, parse_perturbations

__all__ = ["check_counts", "parse_perturbations"]

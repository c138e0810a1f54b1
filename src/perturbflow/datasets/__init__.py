"""Datasets: the built-in synthetic Perturb-seq generator and public datasets by manifest."""

from perturbflow.data._synthetic import synthetic
from perturbflow.datasets._manifests import (
    download,
    get_manifest,
    list_datasets,
    load,
    validate_manifest,
)

__all__ = ["download", "get_manifest", "list_datasets", "load", "synthetic", "validate_manifest"]
